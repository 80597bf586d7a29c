"""Evaluation on the host: accuracies, membership-inference attacks, distances to the retrained model.

Everything here reads per-example outputs (logits, losses, labels) that the device code saved, and
uses numpy, scipy and scikit-learn only; ``population`` holds the statistics over many models.
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
from mu_jax.evaluation.population import (
    example_epsilon,
    forget_score,
    logit_scaled_confidence,
    neurips_score,
    retrained_ceiling,
    tow,
    ulira,
)

__all__ = [
    "SVC_FEATURES",
    "auroc",
    "example_epsilon",
    "forget_score",
    "js_divergence",
    "kl_divergence",
    "log_sigmoid",
    "log_softmax",
    "logit_scaled_confidence",
    "loss_attack",
    "modified_entropy",
    "multilabel_accuracy",
    "neurips_score",
    "nomus",
    "param_l2_distance",
    "per_example_loss",
    "probabilities",
    "reference_mia",
    "retrained_ceiling",
    "roc_curve_scores",
    "sigmoid",
    "softmax",
    "svc_features",
    "svc_mia",
    "svc_mia_all",
    "svc_mia_forget_efficacy",
    "top1_agreement",
    "topk_accuracy",
    "tow",
    "tpr_at_fpr",
    "ulira",
]
