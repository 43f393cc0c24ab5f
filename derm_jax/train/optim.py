"""Optimiser: AdamW with linear warm-up + cosine decay and global-norm gradient clipping.

Fields of `config.optimizer`: lr, weight_decay, b1, b2, warmup_steps (or warmup_epochs,
converted by the trainer), grad_clip (0 disables), end_lr_factor.
"""

from __future__ import annotations

import optax


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int,
                           end_lr_factor: float = 0.0) -> optax.Schedule:
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup_steps else lr, peak_value=lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * end_lr_factor)


def make_optimizer(opt_config, total_steps: int, warmup_steps: int,
                   lr: float | None = None) -> optax.GradientTransformation:
  lr = opt_config.lr if lr is None else lr
  schedule = learning_rate_schedule(lr, total_steps, warmup_steps, opt_config.end_lr_factor)
  chain = []
  if opt_config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt_config.grad_clip))
  chain.append(optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                           weight_decay=opt_config.weight_decay))
  return optax.chain(*chain)
