"""Evaluation on the host: accuracies, membership-inference attacks, distances to the retrained model.

Everything here reads per-example outputs (logits, losses, labels) that the device code saved, and
uses numpy, scipy and scikit-learn only.
"""

from mu_jax.evaluation.attacks import (
    SVC_FEATURES,
    auroc,
    loss_attack,
    modified_entropy,
    roc_curve_scores,
    svc_features,
    svc_mia,
    svc_mia_all,
    svc_mia_forget_efficacy,
    tpr_at_fpr,
)
from mu_jax.evaluation.distances import (
    js_divergence,
    kl_divergence,
    param_l2_distance,
    top1_agreement,
)
from mu_jax.evaluation.metrics import (
    log_sigmoid,
    log_softmax,
    multilabel_accuracy,
    per_example_loss,
    probabilities,
    sigmoid,
    softmax,
    topk_accuracy,
)
from mu_jax.evaluation.mia import nomus, reference_mia

__all__ = [
    "SVC_FEATURES",
    "auroc",
    "js_divergence",
    "kl_divergence",
    "log_sigmoid",
    "log_softmax",
    "loss_attack",
    "modified_entropy",
    "multilabel_accuracy",
    "nomus",
    "param_l2_distance",
    "per_example_loss",
    "probabilities",
    "reference_mia",
    "roc_curve_scores",
    "sigmoid",
    "softmax",
    "svc_features",
    "svc_mia",
    "svc_mia_all",
    "svc_mia_forget_efficacy",
    "top1_agreement",
    "topk_accuracy",
    "tpr_at_fpr",
]
