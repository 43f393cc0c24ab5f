"""The VAE of the self-supervised arm: backbone encoder -> Gaussian posterior -> decoder -> image.

encoder  any registered backbone (`config.model.backbone`, e.g. ConvNeXt or
         EfficientNet-Lite) -> global average pool -> Dense to the mean and log-variance
         of a `config.model.latent_dim`-dimensional diagonal Gaussian posterior q(z|x).
decoder  Dense(z) -> a (S/2^n)x(S/2^n) grid -> n blocks of [nearest 2x upsample,
         3x3 conv, GroupNorm, GELU] with `config.model.decoder_widths` channels -> 3x3
         conv -> sigmoid: the mean of p(x|z) for images in [0, 1].
After pretraining, the backbone's parameters (`params['encoder']['backbone_net']`) are what
the classifier reuses as a feature extractor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from derm_jax.models import registry


class Encoder(nn.Module):
  backbone: str
  backbone_kwargs: dict[str, Any]
  latent_dim: int
  dtype: Any = jnp.float32  # compute dtype of the backbone; the posterior is float32

  def setup(self):
    # Assigned in setup, so its parameters live under params['encoder']['backbone_net'].
    self.backbone_net = registry.get_backbone(self.backbone, dtype=self.dtype,
                                              **self.backbone_kwargs)
    self.posterior = nn.Dense(2 * self.latent_dim, dtype=jnp.float32)

  def __call__(self, x, train: bool):
    feats = self.backbone_net(x, train=train)
    pooled = feats.astype(jnp.float32).mean(axis=(1, 2))
    stats = self.posterior(pooled)
    mean, logvar = jnp.split(stats, 2, axis=-1)
    return mean, logvar


class Decoder(nn.Module):
  image_size: int
  widths: Sequence[int]
  out_channels: int = 3
  dtype: Any = jnp.float32  # convolutions; GroupNorm statistics and the output are float32

  @nn.compact
  def __call__(self, z):
    n_up = len(self.widths)
    start = self.image_size // 2**n_up
    x = nn.Dense(start * start * self.widths[0], dtype=self.dtype, name="project")(z)
    x = nn.gelu(x.reshape(z.shape[0], start, start, self.widths[0]))
    for i, w in enumerate(self.widths):
      b, h, wd, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * wd, c), method="nearest")
      x = nn.Conv(w, (3, 3), dtype=self.dtype, name=f"up{i}_conv")(x)
      x = nn.GroupNorm(num_groups=min(8, w), dtype=jnp.float32,
                       name=f"up{i}_norm")(x).astype(self.dtype)
      x = nn.gelu(x)
    x = nn.Conv(self.out_channels, (3, 3), dtype=self.dtype, name="out_conv")(x)
    return nn.sigmoid(x.astype(jnp.float32))


class VAE(nn.Module):
  backbone: str
  backbone_kwargs: dict[str, Any]
  latent_dim: int
  image_size: int
  decoder_widths: Sequence[int]
  dtype: Any = jnp.float32  # compute dtype (parameters are float32 either way)

  def setup(self):
    self.encoder = Encoder(self.backbone, dict(self.backbone_kwargs), self.latent_dim,
                           dtype=self.dtype)
    self.decoder = Decoder(self.image_size, tuple(self.decoder_widths), dtype=self.dtype)

  def __call__(self, x, rng, train: bool):
    """Returns (reconstruction mean, posterior mean, posterior log-variance).

    `rng`: one key for the batch, or one key per example (shape (B,)), so that an example's
    posterior sample does not depend on the batch it is in (evaluation uses this)."""
    mean, logvar = self.encoder(x, train)
    if jnp.ndim(rng):
      eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(rng)
    else:
      eps = jax.random.normal(rng, mean.shape, mean.dtype)
    z = mean + jnp.exp(0.5 * logvar) * eps
    return self.decoder(z), mean, logvar

  def encode(self, x, train: bool = False):
    return self.encoder(x, train)

  def decode(self, z):
    return self.decoder(z)


def check_image_size(image_size: int, backbone: str, backbone_kwargs: dict,
                     decoder_widths: Sequence[int]) -> None:
  """Raises ValueError naming the problem if the VAE cannot take `image_size` inputs."""
  registry.check_image_size(backbone, backbone_kwargs, image_size)
  up = 2 ** len(decoder_widths)
  if image_size % up:
    raise ValueError(
        f"config.image_size={image_size} is not divisible by 2**len(decoder_widths)={up} "
        f"(the decoder upsamples {len(decoder_widths)} times).")


def create_vae(model_config, image_size: int, dtype: Any = "float32") -> VAE:
  """The VAE of `config.model`; `dtype` ('float32' or 'bfloat16') is the compute dtype:
  convolutions and matmuls in it, normalisation statistics, the posterior and the
  reconstruction in float32, parameters float32."""
  check_image_size(image_size, model_config.backbone, dict(model_config.backbone_kwargs),
                   model_config.decoder_widths)
  return VAE(backbone=model_config.backbone,
             backbone_kwargs=dict(model_config.backbone_kwargs),
             latent_dim=model_config.latent_dim, image_size=image_size,
             decoder_widths=tuple(model_config.decoder_widths), dtype=jnp.dtype(dtype))


def backbone_variables(vae_variables: dict) -> dict:
  """The encoder backbone's variables ({'params', 'batch_stats'?}) out of a VAE's variables
  (or a VAE train state's tree): what the classifier's 'vae' arm starts from."""
  out = {"params": vae_variables["params"]["encoder"]["backbone_net"]}
  stats = vae_variables.get("batch_stats") or {}
  if stats:
    out["batch_stats"] = stats["encoder"]["backbone_net"]
  return out
