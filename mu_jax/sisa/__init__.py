"""SISA (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021): sharded, isolated, sliced, aggregated.

The training set is split into S shards, each trained as its own model over R cumulative slices with
a checkpoint after every slice (:mod:`~mu_jax.sisa.partition`, :mod:`~mu_jax.sisa.train`). A forget
request retrains only the shards it touches, from the checkpoint of their last untouched slice,
which is exact unlearning (:mod:`~mu_jax.sisa.unlearn`). Predictions are a majority vote or the mean
softmax of the shard models (:mod:`~mu_jax.sisa.aggregate`). ``experiments/sisa.py`` runs it all.
"""

from mu_jax.sisa.aggregate import (
    aggregate_probs,
    outputs_from_probs,
    predict,
    predictions,
    shard_logits,
)
from mu_jax.sisa.partition import (
    Partition,
    avg_epochs_per_slice,
    epoch_schedule,
    make_partition,
    slice_epochs,
    slice_key,
)
from mu_jax.sisa.train import (
    ShardTrainer,
    SlicePlan,
    TrainReport,
)
from mu_jax.sisa.unlearn import (
    Request,
    RequestError,
    UnlearnReport,
    applied_requests,
    ensure_trained,
    expected_cost,
    load_report,
    make_request,
    recorded_wall_s,
    removed_ids,
    retrain_from_scratch,
    unlearn_request,
)

__all__ = [
    "Partition",
    "Request",
    "RequestError",
    "ShardTrainer",
    "SlicePlan",
    "TrainReport",
    "UnlearnReport",
    "aggregate_probs",
    "applied_requests",
    "avg_epochs_per_slice",
    "ensure_trained",
    "epoch_schedule",
    "expected_cost",
    "load_report",
    "make_partition",
    "make_request",
    "outputs_from_probs",
    "predict",
    "predictions",
    "recorded_wall_s",
    "removed_ids",
    "retrain_from_scratch",
    "shard_logits",
    "slice_epochs",
    "slice_key",
    "unlearn_request",
]
