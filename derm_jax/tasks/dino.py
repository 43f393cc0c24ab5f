"""The DINO task: self-distillation with no labels (Caron et al., ICCV 2021), a backbone for the classifier.

`build(config)` returns the `Task` that the shared loop (derm_jax/train/loop.py) trains for
one or many members. A student and a teacher share one architecture (any backbone of
derm_jax.models.registry, then `DinoHead`). Each step makes, on the device, two global
views of every image (`config.aug`: a random resized crop of `aug.crop_scale`, 0.4-1.0, at
`image_size`) and `dino.local_crops` local views (the same augmentation with a crop of
`dino.local_crop_scale`, 0.05-0.4, at `dino.local_size`); the teacher sees the global views,
the student all of them, and the student is trained to match the teacher's centred,
sharpened distribution over `head.out_dim` prototypes on every pair of different views
(`dino_loss`). The teacher is never trained: after each optimiser step it becomes an EMA of
the student (`teacher_momentum`, cosine from `dino.momentum_teacher` to 1), and the centre
of its outputs an EMA of their batch mean (`update_center`).

Choices (and how they follow the paper's code, facebookresearch/dino):
* BatchNorm. The teacher runs in train mode, as the official teacher does (it is never
  put in eval mode): its BatchNorm normalises with the statistics of its batch of 2B global
  views, and its own running averages (`teacher_batch_stats`) follow those batches; the EMA
  covers parameters only, not these statistics. The student's running averages follow its
  global batch, then its local batch. k-NN and a classifier use the teacher's running
  averages (eval mode). A backbone without BatchNorm (ConvNeXt) has none of this.
* Multi-crop. The global and local views differ in size, so the student runs the backbone
  twice, once per size (as DINO's MultiCropWrapper does); the head sees them together.
* Teacher regularisation. The teacher's backbone is a clone with every drop rate
  (dropout, drop-connect, drop-path) set to 0: the official teacher has no drop path.
* Last layer. `DinoHead`'s last layer is weight-normalised with its norm fixed at 1
  (DINO's `norm_last_layer=True`), and is frozen (its gradient and update zeroed) during
  the first `dino.freeze_last_layer` epochs.
* Optimiser. AdamW on the warm-up + cosine schedule of derm_jax/train/optim.py, after
  global-norm clipping (3.0 in DINO); weight decay (cosine from `optimizer.weight_decay` to
  `optimizer.weight_decay_end`) on kernels only, as DINO leaves biases and norms alone.
* Evaluation. DINO evaluates (and hands on) the teacher: `eval_step` gives the pooled
  teacher backbone features the k-NN monitor (derm_jax/evaluation/knn.py) votes with, and
  `backbone_variables` takes the teacher's backbone out of a checkpoint for a classifier.
* Collapse. Each step reports the teacher's mean entropy and the entropy of its
  batch-mean distribution; when they meet, the teacher's output says nothing about the
  image. docs/dino.md has what short runs at our scale measured.

Entry points: `train_members(members)`, `train_and_evaluate(config, workdir)`,
`evaluate(config, workdir, step)` and `backbone_variables(state_tree)`.
Read top to bottom: state -> loss and schedules -> head and models -> optimiser -> views
and forward passes -> train and eval steps -> config checks -> build -> entry points.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from derm_jax.data import device_augment, registry, unlabeled
from derm_jax.errors import ConfigError
from derm_jax.evaluation import knn
from derm_jax.models import registry as model_registry
from derm_jax.tasks import backbone_init, common, contrastive
from derm_jax.train import loop, optim, population, restore
from derm_jax.train import mesh as mesh_lib
from derm_jax.train.population import Member
from derm_jax.train.task import Task

INIT_SOURCES = ("scratch", "imagenet")
LAST_LAYER = "prototypes"  # the head's weight-normalised last layer (a parameter of DinoHead)

# fold_in(step rng, .): the streams of a train step's random draws.
VIEWS_STREAM = 1
DROPOUT_STREAM = 2


class DinoState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any               # the student: {'backbone': ..., 'head': ...}, all it trains
  teacher: Any              # same structure: an EMA of `params`, never in the optimiser
  batch_stats: Any          # the student's {'backbone': ...} if it has BatchNorm, else {}
  teacher_batch_stats: Any  # the teacher's own running statistics (same structure)
  center: jax.Array         # (out_dim,) float32: running mean of the teacher's outputs
  opt_state: Any            # of `params` only


# ----------------------------------------------------------------------------- the loss


def dino_loss(student_logits, teacher_logits, center, student_temp, teacher_temp):
  """DINO's cross entropy between the teacher's and the student's views of each image.

  Teacher probabilities p_t = softmax((t - center) / teacher_temp) of each global view;
  student log-probabilities log p_s = log_softmax(s / student_temp) of each view. Student
  views 0 and 1 are the global views the teacher saw (in the teacher's order), any after
  them local views. The loss is the mean, over every pair (teacher view i, student view j)
  with j != i, of the batch mean of -sum_k p_t[i] * log p_s[j]:

    loss = 1 / (2 (V - 1)) * sum_{i in 0,1} sum_{j != i} mean_b CE(p_t[i, b], p_s[j, b])

  Pure jnp: inside jit a batch sharded over devices gives the mean over the global batch.
  Gradients do not reach the teacher's logits (nor the centre): they are stop_gradient-ed.

  Args:
    student_logits: (V, B, K) or a sequence of V (B, K) arrays, V >= 2.
    teacher_logits: (2, B, K) (or a sequence of 2), the teacher's outputs on the global views.
    center: (K,) the running centre subtracted from the teacher's logits.
    student_temp, teacher_temp: temperatures > 0 (floats or scalar arrays).

  Returns:
    (loss, aux): the float32 scalar loss and float32 scalars 'teacher_entropy' (mean
    entropy of a teacher distribution; log K when the teacher is uniform),
    'teacher_marginal_entropy' (entropy of the batch-mean teacher distribution; near 0 when
    every image falls on the same prototype) and 'student_entropy' (mean over the student's
    views). Collapse shows as the two teacher entropies meeting (their difference, the
    mutual information between image and prototype, going to 0).
  """
  s = jnp.stack(list(student_logits)) if not hasattr(student_logits, "ndim") else student_logits
  t = jnp.stack(list(teacher_logits)) if not hasattr(teacher_logits, "ndim") else teacher_logits
  if s.ndim != 3 or t.ndim != 3 or t.shape[0] != 2 or s.shape[0] < 2 or s.shape[1:] != t.shape[1:]:
    raise ValueError(f"Expected student logits (V>=2, B, K) and teacher logits (2, B, K); "
                     f"got {s.shape} and {t.shape}.")
  s = s.astype(jnp.float32)
  t = jax.lax.stop_gradient(t.astype(jnp.float32))
  center = jax.lax.stop_gradient(jnp.asarray(center, jnp.float32))
  p_t = jax.nn.softmax((t - center) / jnp.asarray(teacher_temp, jnp.float32), axis=-1)
  log_p_s = jax.nn.log_softmax(s / jnp.asarray(student_temp, jnp.float32), axis=-1)
  # ce[i, j] = mean_b -sum_k p_t[i, b, k] log p_s[j, b, k]
  ce = -jnp.einsum("ibk,jbk->ij", p_t, log_p_s,
                   precision=jax.lax.Precision.HIGHEST) / s.shape[1]
  v = s.shape[0]
  pairs = 1.0 - jnp.eye(2, v, dtype=jnp.float32)  # j != i
  loss = (ce * pairs).sum() / pairs.sum()

  def entropy(p, log_p):
    return -(p * log_p).sum(-1)

  marginal = p_t.mean(axis=(0, 1))
  aux = {"teacher_entropy": entropy(p_t, jnp.log(jnp.maximum(p_t, 1e-30))).mean(),
         "teacher_marginal_entropy": entropy(marginal, jnp.log(jnp.maximum(marginal, 1e-30))),
         "student_entropy": entropy(jnp.exp(log_p_s), log_p_s).mean()}
  return loss, aux


def update_center(center, teacher_logits, momentum):
  """center * momentum + (1 - momentum) * (mean of the teacher's logits over views and the
  (global) batch): DINO's centring, which with sharpening avoids collapse."""
  t = jnp.asarray(teacher_logits, jnp.float32)
  batch_center = t.reshape(-1, t.shape[-1]).mean(axis=0)
  m = jnp.asarray(momentum, jnp.float32)
  return jnp.asarray(center, jnp.float32) * m + batch_center * (1.0 - m)


def teacher_momentum(step, base: float, total_steps: int):
  """The EMA momentum of step `step` (0-based): cosine from `base` at step 0 to 1 at
  `total_steps` (DINO's momentum schedule)."""
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 1.0)
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * frac) + 1.0) / 2.0


def teacher_temperature(step, warmup_temp: float, temp: float, warmup_steps: int):
  """The teacher temperature of step `step`: linear from `warmup_temp` to `temp` over the
  first `warmup_steps` steps, then `temp`."""
  if warmup_steps <= 0:
    return jnp.asarray(temp, jnp.float32)
  frac = jnp.minimum(jnp.asarray(step, jnp.float32) / warmup_steps, 1.0)
  return jnp.asarray(warmup_temp + (temp - warmup_temp) * frac, jnp.float32)


def ema(teacher, student, momentum):
  """momentum * teacher + (1 - momentum) * student, leaf by leaf."""
  m = jnp.asarray(momentum, jnp.float32)
  return jax.tree.map(lambda t, s: (t * m + s * (1.0 - m)).astype(t.dtype), teacher, student)


# ----------------------------------------------------------------------------- models


class DinoHead(nn.Module):
  """DINO's projection head on pooled backbone features, in float32.

  pool -> [Dense(hidden) -> (batch norm) -> GELU] x (num_layers - 1) -> Dense(bottleneck)
  -> L2-normalise -> weight-normalised Dense(out_dim, no bias): logits are cosines between
  the embedding and `out_dim` prototype directions (each column of the 'prototypes' kernel
  normalised; its norm is not a parameter, DINO's norm_last_layer=True). num_layers=1 is
  the bottleneck layer alone. Dense kernels start truncated-normal (std 0.02), biases 0.

  `batch_norm` (DINO's use_bn_in_head): each hidden layer's outputs are normalised with the
  statistics of the batch the head is applied to (the global batch inside jit), then
  scaled and shifted by learned 'bn_{i}_scale' and 'bn_{i}_bias'. Only batch statistics
  are used (the head is a training device: k-NN and classifiers read the backbone), so
  the head keeps no running averages.
  """
  hidden: int = 512
  bottleneck: int = 128
  out_dim: int = 1024
  num_layers: int = 3
  batch_norm: bool = False

  @nn.compact
  def __call__(self, feats):
    if self.num_layers < 1:
      raise ValueError(f"DinoHead.num_layers={self.num_layers} must be at least 1.")
    init = nn.initializers.truncated_normal(0.02)
    x = contrastive.pool_features(feats.astype(jnp.float32))
    for i in range(self.num_layers - 1):
      x = nn.Dense(self.hidden, kernel_init=init, name=f"hidden_{i}")(x)
      if self.batch_norm:
        x = _batch_normalize(x, name=f"bn_{i}", module=self)
      x = nn.gelu(x)
    x = nn.Dense(self.bottleneck, kernel_init=init, name="bottleneck")(x)
    x = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))
    v = self.param(LAST_LAYER, nn.initializers.lecun_normal(), (self.bottleneck, self.out_dim))
    w = v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=0, keepdims=True), 1e-12))
    return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)


def _batch_normalize(x, *, name: str, module: nn.Module, eps: float = 1e-5):
  """(x - batch mean) / sqrt(batch variance + eps) * scale + bias, per feature; the
  parameters are `module`'s '{name}_scale' and '{name}_bias' (BatchNorm1d in train mode)."""
  scale = module.param(f"{name}_scale", nn.initializers.ones, (x.shape[-1],))
  bias = module.param(f"{name}_bias", nn.initializers.zeros, (x.shape[-1],))
  mean = x.mean(axis=0)
  var = jnp.square(x - mean).mean(axis=0)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def teacher_module(backbone: nn.Module) -> nn.Module:
  """The backbone with every drop rate (fields named *drop*: dropout, drop-connect,
  drop-path) set to 0: the teacher's forward pass in train mode is deterministic. Same
  parameters and statistics as the student's."""
  zero = {f.name: 0.0 for f in dataclasses.fields(backbone)
          if "drop" in f.name and isinstance(getattr(backbone, f.name), float)}
  return backbone.clone(**zero) if zero else backbone


def create_models(config):
  """(student backbone, teacher backbone, head) of a DINO config."""
  model_registry.check_image_size(config.model.backbone, dict(config.model.backbone_kwargs),
                                  config.image_size)
  backbone = model_registry.get_backbone(config.model.backbone,
                                         dtype=jnp.dtype(config.get("dtype", "float32")),
                                         **dict(config.model.backbone_kwargs))
  head = DinoHead(hidden=config.head.hidden, bottleneck=config.head.bottleneck,
                  out_dim=config.head.out_dim, num_layers=config.head.num_layers,
                  batch_norm=bool(config.head.get("batch_norm", False)))
  return backbone, teacher_module(backbone), head


def create_train_state(backbone_vars: dict, head_params, out_dim: int, tx) -> DinoState:
  """A member's starting state (host arrays): the teacher a copy of the student, the centre
  zeros; `tx=None`: no optimiser state (inference)."""
  params = {"backbone": backbone_vars["params"], "head": head_params}
  bs = {"backbone": backbone_vars["batch_stats"]} if backbone_vars.get("batch_stats") else {}
  opt_state = None if tx is None else jax.jit(tx.init)(params)
  copy = lambda tree: jax.tree.map(np.array, tree)  # noqa: E731
  return jax.tree.map(np.asarray, DinoState(
      step=np.zeros((), np.int32), params=params, teacher=copy(params), batch_stats=bs,
      teacher_batch_stats=copy(bs), center=np.zeros((out_dim,), np.float32),
      opt_state=opt_state))


# ----------------------------------------------------------------------------- optimiser


def _decay_mask(params):
  """Kernels (ndim > 1) get weight decay; biases and norm scales not (as in DINO)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def weight_decay_schedule(opt_config, total_steps: int) -> optax.Schedule:
  """Cosine from `weight_decay` at step 0 to `weight_decay_end` at `total_steps` (DINO:
  0.04 -> 0.4); constant `weight_decay` when `weight_decay_end` is absent or negative."""
  start = float(opt_config.weight_decay)
  end = float(opt_config.get("weight_decay_end", -1.0))
  if end < 0:
    return optax.constant_schedule(start)
  total = max(int(total_steps), 1)

  def schedule(count):
    frac = jnp.minimum(jnp.asarray(count, jnp.float32) / total, 1.0)
    return end + (start - end) * (1.0 + jnp.cos(jnp.pi * frac)) / 2.0

  return schedule


def make_optimizer(opt_config, total_steps: int, warmup_steps: int
                   ) -> optax.GradientTransformation:
  """AdamW on derm_jax/train/optim.py's warm-up + cosine learning rate, after global-norm
  clipping when `grad_clip` > 0; weight decay (`weight_decay_schedule`) on kernels only."""
  schedule = optim.learning_rate_schedule(opt_config.lr, total_steps, warmup_steps,
                                          opt_config.end_lr_factor)
  chain = []
  if opt_config.get("grad_clip", 0.0) > 0:
    chain.append(optax.clip_by_global_norm(opt_config.grad_clip))
  chain.append(optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                           weight_decay=weight_decay_schedule(opt_config, total_steps),
                           mask=_decay_mask))
  return optax.chain(*chain)


def _with_last_layer(tree, fn):
  """`tree` ({'backbone', 'head'}) with fn applied to the head's last layer."""
  head = dict(tree["head"])
  head[LAST_LAYER] = fn(head[LAST_LAYER])
  return {**tree, "head": head}


# ----------------------------------------------------------------------------- views


def local_augmentation(aug, crop_scale):
  """A copy of `config.aug` for the local views: random resized crop of `crop_scale`."""
  local = aug.copy_and_resolve_references()
  with local.unlocked():
    local.random_resized_crop = True
    local.crop_scale = tuple(float(s) for s in crop_scale)
  return local


def multi_crop_views(images_u8, key, *, image_size: int, aug, local_crops: int,
                     local_size: int, local_aug, grayscale: float):
  """(global views (2B, S, S, 3), local views (L*B, s, s, 3) or None), float32 in [0, 1].

  View v (0, 1 global; 2.. local) is augment_batch(images, fold_in(key, v)) with `aug` at
  `image_size` (global) or `local_aug` at `local_size` (local), then `random_grayscale`
  with probability `grayscale`; views are stacked view-major ([view 0 of every image;
  view 1 ...]). A pure function of (images, key)."""
  def view(v, size, a):
    k = jax.random.fold_in(key, v)
    x = device_augment.augment_batch(images_u8, k, image_size=size, aug=a)
    return contrastive.random_grayscale(x, k, grayscale)

  globals_ = jnp.concatenate([view(v, image_size, aug) for v in (0, 1)])
  if local_crops <= 0:
    return globals_, None
  locals_ = jnp.concatenate([view(2 + v, local_size, local_aug) for v in range(local_crops)])
  return globals_, locals_


def _features(backbone, params, batch_stats, x, rng):
  """(pooled backbone features (N, C) float32, batch_stats) of images `x` in train mode
  (BatchNorm normalises with the batch's statistics and updates its running averages)."""
  feats, batch_stats = common.apply_backbone(backbone, params["backbone"], batch_stats, x,
                                             train=True, rng=rng)
  return contrastive.pool_features(feats.astype(jnp.float32)), batch_stats


def objective(params, teacher, batch_stats, teacher_batch_stats, center, global_views,
              local_views, rng, *, backbone, teacher_backbone, head, student_temp,
              teacher_temp):
  """The DINO loss of the student `params` on one batch of views.

  The teacher (train mode, its parameters behind stop_gradient) sees the global views; the
  student the global views, then (a second backbone call, another image size) the local
  ones, and its head sees the pooled features of all of them at once (DINO's
  MultiCropWrapper). Returns (loss, (aux, student batch_stats, teacher batch_stats,
  teacher logits (2, B, K)))."""
  b = global_views.shape[0] // 2
  teacher = jax.lax.stop_gradient(teacher)
  t_feats, t_bs = _features(teacher_backbone, teacher, teacher_batch_stats, global_views,
                            jax.random.fold_in(rng, 1))
  t = head.apply({"params": teacher["head"]}, t_feats)
  t = jax.lax.stop_gradient(t).reshape(2, b, -1)
  feats, bs = _features(backbone, params, batch_stats, global_views, jax.random.fold_in(rng, 2))
  if local_views is not None:
    local_feats, bs = _features(backbone, params, bs, local_views, jax.random.fold_in(rng, 3))
    feats = jnp.concatenate([feats, local_feats])
  s = head.apply({"params": params["head"]}, feats)
  s = s.reshape(-1, b, s.shape[-1])
  loss, aux = dino_loss(s, t, center, student_temp, teacher_temp)
  return loss, (aux, bs, t_bs, t)


# ----------------------------------------------------------------------------- steps


def train_step(state: DinoState, batch, key, *, backbone, teacher_backbone, head, tx,
               image_size: int, aug, local_crops: int, local_size: int, local_aug,
               grayscale: float, student_temp: float, teacher_temp: float,
               warmup_teacher_temp: float, warmup_teacher_temp_steps: int,
               momentum_teacher: float, center_momentum: float, total_steps: int,
               freeze_last_layer_steps: int):
  """One optimisation step of one member: views -> loss -> AdamW on the student (its last
  layer frozen during the first `freeze_last_layer_steps` steps) -> the teacher becomes
  m * teacher + (1 - m) * student (m = `teacher_momentum` of this step) -> the centre
  moves towards the batch mean of the teacher's logits. Its randomness (views, dropout) is
  a pure function of the member's key and the step number."""
  rng = jax.random.fold_in(key, state.step)
  global_views, local_views = multi_crop_views(
      batch["image"], jax.random.fold_in(rng, VIEWS_STREAM), image_size=image_size, aug=aug,
      local_crops=local_crops, local_size=local_size, local_aug=local_aug,
      grayscale=grayscale)
  temp = teacher_temperature(state.step, warmup_teacher_temp, teacher_temp,
                             warmup_teacher_temp_steps)
  momentum = teacher_momentum(state.step, momentum_teacher, total_steps)

  def loss_fn(params):
    return objective(params, state.teacher, state.batch_stats, state.teacher_batch_stats,
                     state.center, global_views, local_views,
                     jax.random.fold_in(rng, DROPOUT_STREAM), backbone=backbone,
                     teacher_backbone=teacher_backbone, head=head,
                     student_temp=student_temp, teacher_temp=temp)

  (loss, (aux, bs, t_bs, t_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  frozen = state.step < freeze_last_layer_steps
  freeze = functools.partial(_with_last_layer,
                             fn=lambda g: jnp.where(frozen, jnp.zeros_like(g), g))
  grads = freeze(grads)  # (before clipping: a frozen layer takes no share of the norm)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, freeze(updates))
  new_state = state.replace(
      step=state.step + 1, params=params, teacher=ema(state.teacher, params, momentum),
      batch_stats=bs, teacher_batch_stats=t_bs,
      center=update_center(state.center, t_logits, center_momentum), opt_state=opt_state)
  return new_state, {"loss": loss, **aux, "grad_norm": grad_norm, "teacher_temp": temp,
                     "momentum": momentum,
                     "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}


def eval_step(state: DinoState, batch, key, *, teacher_backbone, image_size: int):
  """Pooled TEACHER backbone features (float32, eval mode) of the un-augmented images:
  what k-NN votes with (DINO evaluates the teacher)."""
  del key  # deterministic
  x = device_augment.model_images(batch["image"], image_size=image_size)
  feats, _ = common.apply_backbone(teacher_backbone, state.teacher["backbone"],
                                   state.teacher_batch_stats, x, train=False)
  return {"features": contrastive.pool_features(feats).astype(jnp.float32)}


SUMMARY_KEYS = ("loss", "teacher_entropy", "teacher_marginal_entropy", "student_entropy",
                "grad_norm", "teacher_temp", "momentum")


summarize_train = common.mean_summary(SUMMARY_KEYS)


# ----------------------------------------------------------------------------- config checks


def config_problems(config) -> list[tuple[str, Any, str]]:
  """DINO's own settings: (field, value, what is wrong) of each problem."""
  d, h = config.dino, config.head
  problems = []

  def need(ok: bool, field: str, value, what: str) -> None:
    if not ok:
      problems.append((field, value, what))

  for f in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
    need(float(d[f]) > 0, f"dino.{f}", d[f], "must be > 0")
  need(0 <= float(d.momentum_teacher) <= 1, "dino.momentum_teacher", d.momentum_teacher,
       "must be in [0, 1]")
  need(0 <= float(d.center_momentum) < 1, "dino.center_momentum", d.center_momentum,
       "must be in [0, 1)")
  need(float(d.warmup_teacher_temp_epochs) >= 0, "dino.warmup_teacher_temp_epochs",
       d.warmup_teacher_temp_epochs, "must be >= 0")
  need(float(d.freeze_last_layer) >= 0, "dino.freeze_last_layer", d.freeze_last_layer,
       "must be >= 0 (epochs)")
  need(0 <= float(d.grayscale) <= 1, "dino.grayscale", d.grayscale, "must be in [0, 1]")
  need(int(d.local_crops) == d.local_crops and d.local_crops >= 0, "dino.local_crops",
       d.local_crops, "must be an integer >= 0")
  scale = tuple(d.local_crop_scale)
  need(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "dino.local_crop_scale", scale,
       "must be (low, high) with 0 < low <= high <= 1")
  if d.local_crops > 0:
    try:
      model_registry.check_image_size(config.model.backbone,
                                      dict(config.model.backbone_kwargs), int(d.local_size))
    except ValueError as e:
      need(False, "dino.local_size", d.local_size,
           f"cannot be used: {str(e).split(': ', 1)[-1]}")
  for f in ("hidden", "bottleneck", "out_dim", "num_layers"):
    need(int(h[f]) >= 1, f"head.{f}", h[f], "must be >= 1")
  need(config.aug.get("on_device", True) is True, "aug.on_device", config.aug.get("on_device"),
       "must be True: DINO makes its views on the device from the stored images")
  need(config.init.source in INIT_SOURCES, "init.source", config.init.source,
       f"must be one of {list(INIT_SOURCES)} (DINO's starting backbone)")
  return problems


def check_config(k) -> None:
  """This task's own fields, on derm_jax/validate.py's checker (every problem names its
  field, under its stage's name in a study)."""
  for field, value, what in config_problems(k.c):
    k.add(field, f"={value!r} {what}")


def _check(config) -> None:
  problems = config_problems(config)
  if problems:
    raise ConfigError(f"{len(problems)} invalid DINO setting{'s' * (len(problems) > 1)}: "
                      + "; ".join(f"config.{f}={v!r} {w}" for f, v, w in problems))


# ----------------------------------------------------------------------------- build


def build(config) -> Task:
  """Models, optimiser, schedules, mesh, steps and the k-NN evaluator of a DINO config;
  each member's starting point (its seed, where its backbone starts) comes from its own
  config in `init_member`."""
  _check(config)
  dataset = registry.get(config.data)
  meta = dataset.meta
  # The training split, and the unlabelled pool (config.data.unlabeled) where there is one:
  # self-supervised, so every image counts; never val or test.
  train_source = unlabeled.pretraining_source(dataset)
  backbone, teacher_backbone, head = create_models(config)
  mesh_lib.check_batch_sizes(config)
  mesh = mesh_lib.make_mesh()
  spe, total_steps, warmup = optim.schedule_steps(config, len(train_source))
  tx = make_optimizer(config.optimizer, total_steps, warmup)
  shapes = backbone_init.backbone_variable_shapes(backbone, config.image_size)
  feat_shape = jax.eval_shape(
      lambda v: backbone.apply(v, jnp.zeros((1, config.image_size, config.image_size, 3)),
                               train=False), shapes)
  init_head = jax.jit(lambda rng: head.init(rng, jnp.zeros(feat_shape.shape, jnp.float32))[
      "params"])
  out_dim = int(config.head.out_dim)

  def init_member(member_config, workdir: str, for_inference: bool = False):
    bb_rng, head_rng, step_rng = jax.random.split(jax.random.key(int(member_config.seed)), 3)
    if for_inference:  # a checkpoint provides every value: nothing loaded or drawn
      bb_vars = backbone_init.placeholder_backbone_variables(backbone, config.image_size)
      head_params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                 jax.eval_shape(init_head, head_rng))
    else:
      bb_vars = backbone_init.init_backbone_variables(member_config, backbone, workdir, bb_rng)
      head_params = init_head(head_rng)
    state = create_train_state(bb_vars, head_params, out_dim, None if for_inference else tx)
    return state, np.asarray(jax.random.key_data(step_rng))

  schedule = optim.learning_rate_schedule(config.optimizer.lr, total_steps, warmup,
                                          config.optimizer.end_lr_factor)
  make_evaluator = knn.monitor(config, dataset, mesh)

  d = config.dino
  step = functools.partial(
      train_step, backbone=backbone, teacher_backbone=teacher_backbone, head=head, tx=tx,
      image_size=config.image_size, aug=config.aug, local_crops=int(d.local_crops),
      local_size=int(d.local_size), local_aug=local_augmentation(config.aug,
                                                                 d.local_crop_scale),
      grayscale=float(d.grayscale), student_temp=float(d.student_temp),
      teacher_temp=float(d.teacher_temp), warmup_teacher_temp=float(d.warmup_teacher_temp),
      warmup_teacher_temp_steps=int(round(float(d.warmup_teacher_temp_epochs) * spe)),
      momentum_teacher=float(d.momentum_teacher), center_momentum=float(d.center_momentum),
      total_steps=total_steps,
      freeze_last_layer_steps=int(round(float(d.freeze_last_layer) * spe)))
  return Task(
      config=config, meta=meta, dataset=dataset, mesh=mesh, steps_per_epoch=spe,
      total_steps=total_steps, learning_rate=lambda s: float(schedule(s)),
      init_member=init_member, train_step=step,
      eval_step=functools.partial(eval_step, teacher_backbone=teacher_backbone,
                                  image_size=config.image_size),
      summarize_train=summarize_train, make_evaluator=make_evaluator,
      train_source=train_source, progress_keys=("loss", "teacher_marginal_entropy"))


# ----------------------------------------------------------------------------- entry points


def backbone_variables(state_tree: dict) -> dict:
  """The backbone a classifier starts from, out of a restored DINO checkpoint tree (a dict
  as `train.checkpoint.restore_state_tree` returns): the TEACHER's backbone, as DINO hands
  on (its k-NN and linear evaluations use the teacher), with the teacher's own BatchNorm
  running statistics when the backbone has them. The head, student, centre and optimiser
  state are left behind."""
  if "teacher" not in state_tree or "backbone" not in (state_tree["teacher"] or {}):
    raise ConfigError(f"Not a DINO checkpoint: its state has {sorted(state_tree)}, no "
                      "'teacher' backbone.")
  out = {"params": state_tree["teacher"]["backbone"]}
  stats = state_tree.get("teacher_batch_stats")
  if stats:
    out["batch_stats"] = stats["backbone"]
  return out


def train_members(members: Sequence[Member], task=None) -> population.Run:
  """Trains the members' DINO backbones as one population (one program), resuming from
  their latest checkpoints. `task`: one built for an earlier group of the same stage,
  reused (its compiled programs too)."""
  members = list(members)
  for m in members:
    if m.config.init.source not in INIT_SOURCES:
      raise ConfigError(f"config.init.source={m.config.init.source!r}: DINO starts from "
                        f"one of {list(INIT_SOURCES)}.")
    backbone_init.check_source(m.config, m.workdir)  # fails fast, nothing loaded
  if task is None:
    task = build(members[0].config)
  c = members[0].config
  logging.info("DINO: backbone %s, %d epochs x %d steps, batch %d, 2 global views at %d px "
               "+ %d local at %d px, %d prototypes, teacher momentum %g -> 1.",
               c.model.backbone, c.num_epochs, task.steps_per_epoch, c.batch_size,
               c.image_size, c.dino.local_crops, c.dino.local_size, c.head.out_dim,
               c.dino.momentum_teacher)
  return loop.train(task, members)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains one DINO backbone in `workdir`; returns its last evaluation row."""
  return train_members([Member("dino", workdir, config)]).last_rows[0]


def evaluate(config, workdir: str, step: int | None = None,
             splits=("val", "test")) -> dict[str, Any]:
  """`--mode=eval`: k-NN accuracy of the teacher of a restored checkpoint (latest or
  `step`) on `splits`, written to WORKDIR/eval_step<step>.json."""
  return restore.evaluate_checkpoint(build(config), "dino", workdir, step, splits)

