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


def schedule_steps(config, num_train_examples: int) -> tuple[int, int, int]:
  """(steps per epoch, total steps, warm-up steps) of a run, from its config and data size.

  `config.total_steps > 0` overrides `num_epochs`; `optimizer.warmup_steps > 0` overrides
  `optimizer.warmup_epochs`."""
  spe = max(1, num_train_examples // config.batch_size)
  total = config.get("total_steps", 0) or int(config.num_epochs * spe)
  warmup = config.optimizer.warmup_steps or int(config.optimizer.warmup_epochs * spe)
  return spe, total, warmup


def make_optimizer(opt_config, total_steps: int, warmup_steps: int,
                   lr: float | None = None, clip: bool = True) -> optax.GradientTransformation:
  """AdamW on a warm-up + cosine schedule, after global-norm clipping if `clip`."""
  lr = opt_config.lr if lr is None else lr
  schedule = learning_rate_schedule(lr, total_steps, warmup_steps, opt_config.end_lr_factor)
  chain = []
  if clip and opt_config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt_config.grad_clip))
  chain.append(optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                           weight_decay=opt_config.weight_decay))
  return optax.chain(*chain)
