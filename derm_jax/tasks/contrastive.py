"""Building blocks of contrastive self-supervised pretraining (SimCLR, MICLe), pure and jit-able.

A SimCLR step (Chen et al., 2020) is: two augmented views of each image -> backbone ->
`ProjectionHead` -> `nt_xent_loss`. MICLe (Azizi et al., ICCV 2021) is the same step with
the second view taken from a *different* image of the same lesion (see
derm_jax/data/pairs.py for drawing that partner); `two_views(..., partners_u8=...)` makes
those views.

  view1, view2 = two_views(batch["image"], aug_key, image_size=224, aug=config.aug)
  z1 = head.apply(head_vars, backbone.apply(bb_vars, view1, train=True))
  z2 = head.apply(head_vars, backbone.apply(bb_vars, view2, train=True))
  loss, aux = nt_xent_loss(z1, z2, temperature=0.1, mask=batch.get("mask"))

Everything here is plain jnp: inside jit a batch sharded over devices gives the loss over the
global batch (every example is a negative for every other, as in SimCLR's cross-replica
setting), and each function vmaps over a leading population axis.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from derm_jax.data import device_augment

# Per-example stream of the random grayscale draw: fold_in(fold_in(view_key, i), stream),
# distinct from the streams device_augment uses for its own draws.
GRAY_STREAM = 0x67726179  # "gray"
# ITU-R BT.601 luma weights (those of PIL's convert('L') and of the colour jitter's saturation).
_LUMA = (0.299, 0.587, 0.114)
# Logit of an excluded (self or padded) similarity: exp() of it underflows to exactly 0, and,
# unlike -inf, a row of only excluded entries stays finite (no NaN in values or gradients).
_EXCLUDED = -1e9


# ------------------------------------------------------------------------------- the loss


def _l2_normalize(z):
  z = z.astype(jnp.float32)
  return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))


def nt_xent_loss(z1, z2, temperature, mask=None):
  """SimCLR's normalized-temperature cross entropy of N positive pairs (z1[i], z2[i]).

  The embeddings are L2-normalised here (the loss does not depend on their scale), then
  stacked as 2N anchors a = [z1; z2]. Anchor i's positive is its pair's other member
  (i + N mod 2N); the other 2N - 2 embeddings are its negatives; its similarity with itself
  is excluded:

    loss_i = -log( exp(s(i, pos(i)) / T) / sum_{j != i} exp(s(i, j) / T) ),  s = cosine

  and the loss is the mean of loss_i over the 2N anchors.

  Args:
    z1, z2: (N, D) embeddings of the two views (any float dtype; computed in float32).
    temperature: T > 0, a Python float or a scalar array (e.g. one per population member).
    mask: optional (N,) 0/1 or bool: pairs with mask 0 (padding) are neither anchors nor
      negatives, and the mean runs over the 2 * sum(mask) remaining anchors.

  Returns:
    (loss, aux): the scalar float32 loss and a dict with
      'per_anchor': (2N,) loss_i (0 for masked anchors), anchors ordered [z1; z2];
      'accuracy': the fraction of (unmasked) anchors whose positive is the most similar of
        their 2N - 1 candidates (ties go to the lower index, as argmax does).
  """
  n = z1.shape[0]
  if z2.shape != z1.shape or z1.ndim != 2:
    raise ValueError(f"z1 and z2 must both be (N, D); got {z1.shape} and {z2.shape}.")
  z = _l2_normalize(jnp.concatenate([z1, z2], axis=0))
  t = jnp.asarray(temperature, jnp.float32)
  sim = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST) / t  # (2N, 2N)
  pos_index = (jnp.arange(2 * n) + n) % (2 * n)
  valid = (jnp.ones((n,), bool) if mask is None else jnp.asarray(mask).astype(bool))
  valid = jnp.concatenate([valid, valid])
  excluded = jnp.eye(2 * n, dtype=bool) | ~valid[None, :]
  logits = jnp.where(excluded, _EXCLUDED, sim)
  positive = jnp.take_along_axis(logits, pos_index[:, None], axis=1)[:, 0]
  per_anchor = jnp.where(valid, jax.nn.logsumexp(logits, axis=1) - positive, 0.0)
  count = jnp.maximum(valid.sum(), 1).astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=1) == pos_index) & valid
  return per_anchor.sum() / count, {"per_anchor": per_anchor,
                                    "accuracy": correct.sum() / count}


# ------------------------------------------------------------------------ projection head


def pool_features(feats):
  """Global average pool of a backbone feature map (B, H, W, C) -> (B, C); (B, C) unchanged."""
  if feats.ndim == 4:
    return feats.mean(axis=(1, 2), dtype=jnp.float32).astype(feats.dtype)
  if feats.ndim == 2:
    return feats
  raise ValueError(f"Expected features (B, H, W, C) or (B, C), got shape {feats.shape}.")


class ProjectionHead(nn.Module):
  """SimCLR's projection MLP g(h) on pooled backbone features, in float32.

  pool -> [Dense(hidden) -> activation] x (num_layers - 1) -> Dense(out_dim).
  num_layers=2 is SimCLR (v1), 3 is SimCLR v2's deeper head (without its batch norm).
  Parameters: 'hidden_0', 'hidden_1', ... and 'out'.
  """
  hidden: int = 512
  out_dim: int = 128
  num_layers: int = 2
  activation: str = "relu"  # 'relu' | 'gelu'

  @nn.compact
  def __call__(self, feats):
    if self.activation not in ("relu", "gelu"):
      raise ValueError(f"ProjectionHead.activation={self.activation!r}; use 'relu' or 'gelu'.")
    if self.num_layers < 1:
      raise ValueError(f"ProjectionHead.num_layers={self.num_layers} must be at least 1.")
    act = nn.relu if self.activation == "relu" else nn.gelu
    x = pool_features(feats.astype(jnp.float32))
    for i in range(self.num_layers - 1):
      x = act(nn.Dense(self.hidden, name=f"hidden_{i}")(x))
    return nn.Dense(self.out_dim, name="out")(x)


# ------------------------------------------------------------------------------- the views


def random_grayscale(images, key, prob: float):
  """Each float (B, S, S, 3) image replaced by its luma (in all 3 channels) with probability
  `prob`; example i draws with fold_in(fold_in(key, i), GRAY_STREAM)."""
  if prob <= 0:
    return images
  b = images.shape[0]
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), GRAY_STREAM))(
      jnp.arange(b, dtype=jnp.uint32))
  take = jax.vmap(lambda k: jax.random.bernoulli(k, prob))(keys)
  gray = (images[..., 0:1] * _LUMA[0] + images[..., 1:2] * _LUMA[1]
          + images[..., 2:3] * _LUMA[2])
  return jnp.where(take[:, None, None, None], jnp.broadcast_to(gray, images.shape), images)


def view_keys(key):
  """The keys of view 1 and view 2: fold_in(key, 0) and fold_in(key, 1)."""
  return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)


def two_views(images_u8, key, *, image_size: int, aug, partners_u8=None,
              grayscale: float = 0.0):
  """Two independently augmented float32 views (B, image_size, image_size, 3) in [0, 1].

  View v is `device_augment.augment_batch(..., view_keys(key)[v], image_size, aug)` (the
  configured flips, rot90, colour jitter and random resized crop, `aug` as config.aug), then,
  if `grayscale` > 0, `random_grayscale` with that probability (SimCLR uses 0.2; off by
  default). View 1 is made from `images_u8`; view 2 from `partners_u8` when given (MICLe:
  another image of the same lesion, same shape and order as `images_u8`), else from
  `images_u8` again. A pure function of (images, key): the same key gives the same views.
  """
  k1, k2 = view_keys(key)
  second = images_u8 if partners_u8 is None else partners_u8
  views = []
  for images, k in ((images_u8, k1), (second, k2)):
    x = device_augment.augment_batch(images, k, image_size=image_size, aug=aug)
    views.append(random_grayscale(x, k, grayscale))
  return views[0], views[1]
