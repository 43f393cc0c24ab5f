"""The paper's "identical classifier": the same head on top of any registered backbone.

head = global average pool -> Dense(hidden) -> GELU -> Dropout -> Dense(num_classes), or,
with hidden=0, the linear probe: global average pool -> Dense(num_classes) (no dropout).
The parameters are 'hidden' (only when hidden > 0) and 'logits'.
Backbone and head are separate modules with separate parameter trees, so a frozen
backbone is applied outside differentiation: no backward pass through it and no
optimiser state for it (see derm_jax/tasks/classifier.py). Change the head with `config.head.*`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class ClassifierHead(nn.Module):
  num_classes: int
  hidden: int = 256
  dropout: float = 0.3

  @nn.compact
  def __call__(self, feats, train: bool):
    # The head is small: it runs in float32 whatever the backbone's dtype (float32 logits).
    feats = feats.astype(jnp.float32)
    if self.hidden < 0:
      raise ValueError(f"ClassifierHead.hidden={self.hidden}: use a positive width, or 0 for "
                       "a linear head.")
    x = feats.mean(axis=(1, 2)) if feats.ndim == 4 else feats
    if self.hidden > 0:
      x = nn.Dense(self.hidden, name="hidden")(x)
      x = nn.gelu(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits")(x)
