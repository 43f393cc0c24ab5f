"""Evaluation: metrics, evaluators (one small class per kind of evaluation, shared by
training, --mode=eval and derm_jax.evaluate), predictions files, and scoring a saved run."""
