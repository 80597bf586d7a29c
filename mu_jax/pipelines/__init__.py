"""Pipelines over the experiment engine (:mod:`mu_jax.experiment`): the classification benchmark,
face retrieval and SISA."""
