"""derm_jax: self-supervised (VAE) pretraining vs ImageNet transfer for dermoscopy, in JAX/Flax."""

__version__ = "0.1.0"
