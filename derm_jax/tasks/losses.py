"""VAE objective: reconstruction negative log-likelihood + beta * KL, with warm-up and free bits.

All quantities are per image, in nats, and are proper log-densities of images in [0, 1]:
  recon='gaussian'  -log N(x | x_hat, sigma^2), sigma = config.loss.sigma ("MSE")
  recon='l1'        -log Laplace(x | x_hat, b),  b = config.loss.l1_scale ("L1")
  kl                KL(q(z|x) || N(0, I)), summed over latent dimensions
  elbo              -(recon + kl): the evidence lower bound, higher is better; it never
                    includes beta, warm-up or free bits, so runs with different settings
                    compare on the same scale.
The training loss is recon + beta_t * max(kl_d, free_bits) summed over dimensions d
(free bits per dimension, on the batch-mean KL), with beta_t ramping linearly from 0 to
`beta` over `kl_warmup_steps`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from derm_jax.errors import ConfigError


def reconstruction_nll(x, x_hat, kind: str, sigma: float = 0.1, l1_scale: float = 0.1):
  """Per-image negative log-likelihood of x under the decoder's distribution."""
  d = math.prod(x.shape[1:])
  if kind == "gaussian":
    sq = jnp.sum(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=-1)
    return sq / (2 * sigma**2) + d * math.log(sigma * math.sqrt(2 * math.pi))
  if kind == "l1":
    ab = jnp.sum(jnp.abs(x - x_hat).reshape(x.shape[0], -1), axis=-1)
    return ab / l1_scale + d * math.log(2 * l1_scale)
  raise ConfigError(f"Unknown config.loss.recon={kind!r}; use 'gaussian' (MSE) or 'l1'.")


def kl_per_dim(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, 1)) per example and latent dimension."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def beta_at(step, beta: float, warmup_steps: int):
  if warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def vae_loss(x, x_hat, mean, logvar, step, loss_config, mask=None):
  """Returns (scalar training loss, dict of per-image metrics arrays of shape (B,))."""
  recon = reconstruction_nll(x, x_hat, loss_config.recon, loss_config.sigma,
                             loss_config.l1_scale)
  kl_d = kl_per_dim(mean, logvar)
  kl = kl_d.sum(-1)
  if mask is None:
    mask = jnp.ones((x.shape[0],), jnp.float32)
  denom = jnp.maximum(mask.sum(), 1.0)
  batch_kl_d = (kl_d * mask[:, None]).sum(0) / denom
  kl_term = jnp.maximum(batch_kl_d, loss_config.free_bits).sum()
  beta_t = beta_at(step, loss_config.beta, loss_config.kl_warmup_steps)
  loss = (recon * mask).sum() / denom + beta_t * kl_term
  per_image = {"recon": recon, "kl": kl, "elbo": -(recon + kl),
               "mse": jnp.mean(jnp.square(x - x_hat).reshape(x.shape[0], -1), -1)}
  return loss, per_image
