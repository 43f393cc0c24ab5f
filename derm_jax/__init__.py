"""derm_jax: self-supervised (VAE) pretraining vs ImageNet transfer for dermoscopy, in JAX/Flax.

`derm_jax.load(workdir)` restores a trained classifier for prediction (derm_jax/api.py).
"""

__version__ = "0.1.0"

# TFDS logs a dataset's whole config object when a builder is made from one ("Using custom
# data configuration: DermaMNISTConfig(...)"): dropped wherever derm_jax runs (console.py).
from derm_jax import console as _console  # noqa: E402  (stdlib and absl.logging only)

_console.install_noise_filter()


def load(workdir: str, step: int | None = None):
  """A trained classifier run, ready to `predict(images)`; see derm_jax/api.py."""
  from derm_jax import api
  return api.load(workdir, step)
