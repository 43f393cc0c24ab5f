"""Evaluators: one small class per kind of evaluation, shared by training, --mode=eval and
derm_jax.evaluate (classification: `classification.py`; VAE: `vae.py`)."""
