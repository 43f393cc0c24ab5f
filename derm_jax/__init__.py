"""derm_jax: self-supervised (VAE) pretraining vs ImageNet transfer for dermoscopy, in JAX/Flax.

`derm_jax.load(workdir)` restores a trained classifier for prediction (derm_jax/api.py).
"""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None):
  """A trained classifier run, ready to `predict(images)`; see derm_jax/api.py."""
  from derm_jax import api
  return api.load(workdir, step)
