"""The SimCLR task (contrastive self-supervised pretraining; MICLe on lesion groups).

`build(config)` returns the `Task` that the shared loop (derm_jax/train/loop.py) trains for
one or many members: two augmented views of each image (derm_jax/tasks/contrastive.py
`two_views`) -> backbone (train mode) -> `ProjectionHead` -> NT-Xent loss. A member whose
config has positives='lesion' (MICLe) takes its second view from another image of the same
lesion, which the loop gathers as batch['partner_image'] (`LesionPartners`, this task's
`Task.extra_inputs` hook, over the training source's lesion groups, derm_jax/data/pairs.py).
What SSL users watch during pretraining is k-NN accuracy of the frozen pooled features on
the validation split (derm_jax/evaluation/knn.py `KnnEvaluator`). The checkpoint's backbone
starts a classifier with `init.source='pretrained'` (derm_jax/tasks/backbone_init.py).

Entry points: `train_members(members)`, `train_and_evaluate(config, workdir)` and
`evaluate(config, workdir, step)` (`python -m derm_jax.main`).
Read top to bottom: state -> models and optimiser -> train and eval steps -> lesion groups
-> build -> entry points.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from derm_jax.data import device_augment, pairs, registry, unlabeled
from derm_jax.errors import ConfigError
from derm_jax.evaluation import knn
from derm_jax.models import registry as model_registry
from derm_jax.tasks import backbone_init, common, contrastive
from derm_jax.train import loop, optim, population, restore
from derm_jax.train import mesh as mesh_lib
from derm_jax.train.population import Member
from derm_jax.train.task import Task

OPTIMIZERS = ("lars", "adamw")
POSITIVES = ("views", "lesion")  # SimCLR, MICLe
INIT_SOURCES = ("scratch", "imagenet")

# fold_in(step rng, .): the streams of a train step's random draws.
VIEWS_STREAM = 1
DROPOUT_STREAM = 2


class SimclrState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any        # {'backbone': ..., 'projection': ...}
  batch_stats: Any   # {'backbone': ...} if the backbone has BatchNorm, else {}
  opt_state: Any


# ----------------------------------------------------------------------------- models


def create_models(config):
  """(backbone, projection head) of a SimCLR config."""
  model_registry.check_image_size(config.model.backbone, dict(config.model.backbone_kwargs),
                                  config.image_size)
  backbone = model_registry.get_backbone(config.model.backbone,
                                         dtype=jnp.dtype(config.get("dtype", "float32")),
                                         **dict(config.model.backbone_kwargs))
  projection = contrastive.ProjectionHead(hidden=config.projection.hidden,
                                          out_dim=config.projection.out_dim,
                                          num_layers=config.projection.get("num_layers", 2))
  return backbone, projection


def _decay_mask(params):
  """Kernels (ndim > 1) get weight decay and LARS's trust ratio; biases and norm scales
  not (as in SimCLR)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_config, total_steps: int, warmup_steps: int
                   ) -> optax.GradientTransformation:
  """LARS (momentum, weight decay and trust ratio on kernels only) or AdamW, both on the
  warm-up + cosine schedule of derm_jax/train/optim.py, after global-norm clipping when
  `grad_clip` > 0."""
  name = opt_config.get("name", "lars")
  if name == "adamw":
    return optim.make_optimizer(opt_config, total_steps, warmup_steps)
  if name != "lars":
    raise ConfigError(f"config.optimizer.name={name!r} must be one of {list(OPTIMIZERS)}.")
  schedule = optim.learning_rate_schedule(opt_config.lr, total_steps, warmup_steps,
                                          opt_config.end_lr_factor)
  chain = []
  if opt_config.get("grad_clip", 0.0) > 0:
    chain.append(optax.clip_by_global_norm(opt_config.grad_clip))
  chain.append(optax.lars(schedule, weight_decay=opt_config.weight_decay,
                          weight_decay_mask=_decay_mask,
                          trust_coefficient=opt_config.get("trust_coefficient", 0.001),
                          trust_ratio_mask=_decay_mask,
                          momentum=opt_config.get("momentum", 0.9)))
  return optax.chain(*chain)


def create_train_state(backbone_vars: dict, projection_params, tx) -> SimclrState:
  """A member's starting state (host arrays); `tx=None`: no optimiser state (inference)."""
  params = {"backbone": backbone_vars["params"], "projection": projection_params}
  bs = {"backbone": backbone_vars["batch_stats"]} if backbone_vars.get("batch_stats") else {}
  opt_state = None if tx is None else jax.jit(tx.init)(params)
  return jax.tree.map(np.asarray, SimclrState(step=np.zeros((), np.int32), params=params,
                                              batch_stats=bs, opt_state=opt_state))


# ----------------------------------------------------------------------------- steps


def train_step(state: SimclrState, batch, key, *, backbone, projection, tx, temperature: float,
               image_size: int, aug, grayscale: float):
  """One optimisation step of one member; its randomness (views, dropout) is a pure function
  of the member's key and the step number. Both views go through the backbone as one batch
  (BatchNorm statistics over the 2B views, as SimCLR's global BN)."""
  rng = jax.random.fold_in(key, state.step)
  v1, v2 = contrastive.two_views(batch["image"], jax.random.fold_in(rng, VIEWS_STREAM),
                                 image_size=image_size, aug=aug,
                                 partners_u8=batch.get("partner_image"), grayscale=grayscale)
  n = v1.shape[0]
  x = jnp.concatenate([v1, v2], axis=0)

  def loss_fn(params):
    feats, bs = common.apply_backbone(backbone, params["backbone"], state.batch_stats, x,
                                      train=True, rng=jax.random.fold_in(rng, DROPOUT_STREAM))
    z = projection.apply({"params": params["projection"]}, feats)
    loss, aux = contrastive.nt_xent_loss(z[:n], z[n:], temperature)
    return loss, (aux["accuracy"], bs)

  (loss, (acc, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, updates),
                            batch_stats=bs, opt_state=opt_state)
  grad_norm = optax.tree.norm(grads)
  return new_state, {"loss": loss, "contrastive_accuracy": acc, "grad_norm": grad_norm,
                     "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}


def eval_step(state: SimclrState, batch, key, *, backbone, image_size: int):
  """Pooled backbone features (float32) of the un-augmented images: what k-NN votes with."""
  del key  # deterministic
  x = device_augment.model_images(batch["image"], image_size=image_size)
  feats, _ = common.apply_backbone(backbone, state.params["backbone"], state.batch_stats, x,
                                   train=False)
  return {"features": contrastive.pool_features(feats).astype(jnp.float32)}


summarize_train = common.mean_summary(("loss", "contrastive_accuracy", "grad_norm"))


# ----------------------------------------------------------------------------- lesion groups


def train_lesion_ids(dataset) -> np.ndarray | None:
  """The lesion group of each training example (index i = source('train')[i]), or None
  when the dataset has no groups (DermaMNIST; a folder without a group column)."""
  metadata = getattr(dataset, "metadata", None)
  if metadata is None:
    return None
  ids = metadata("train").get("lesion_id")
  if ids is None or not len(ids) or not any(str(g) for g in ids):
    return None
  return np.asarray(ids)


def sibling_table(dataset, train_source) -> pairs.SiblingTable | None:
  """MICLe's sibling table over the positions of `train_source` (what the loop's stream
  indexes): the training split's lesion groups, then one ungrouped entry per unlabelled
  image that `unlabeled.pretraining_source` appended after them (they have no lesion, so a
  'lesion' member pairs them with themselves). None when no training image has a sibling."""
  ids = train_lesion_ids(dataset)
  if ids is None:
    return None
  n_train = len(dataset.source("train"))
  extra = len(train_source) - n_train
  if len(ids) != n_train or extra < 0:
    raise ConfigError(f"The training split has {n_train} images but {len(ids)} lesion ids and "
                      f"a pretraining source of {len(train_source)}: they must line up.")
  # The pretraining source starts with the training split, in its order: check its ends.
  md_ids = np.asarray(dataset.metadata("train")["id"])
  for i in {0, n_train - 1}:
    if int(train_source[i]["id"]) != int(md_ids[i]):
      raise ConfigError(f"Training source position {i} is image id {train_source[i]['id']}, "
                        f"the lesion table's is {md_ids[i]}: the MICLe pairs would be wrong.")
  table = pairs.sibling_table(list(ids) + [None] * extra)
  return table if pairs.num_with_sibling(table) else None


class LesionPartners:
  """MICLe's extra batch input (`Task.extra_inputs`): for each example of a member whose
  positives are 'lesion', another image of the same lesion, drawn on the host from (the
  member's seed, the step) so that a resumed run draws the same; for the other members the
  example itself. The loop gathers them on the device as batch['partner_image']."""

  def __init__(self, table: pairs.SiblingTable):
    self.table = table

  def __call__(self, members, idx: np.ndarray, step: int, n: int) -> dict[str, np.ndarray]:
    out = idx.copy()
    for m, member in enumerate(members):
      if member.config.get("positives", "views") == "lesion":
        for t in range(n):
          rng = np.random.default_rng([int(member.config.seed), step + t])
          out[t, m] = pairs.sample_partners_np(rng, idx[t, m], self.table)
    return {"partner_image": out}


def lesion_table(task: Task) -> pairs.SiblingTable | None:
  """The lesion groups a task draws MICLe partners from (None: it draws none)."""
  return task.extra_inputs.table if isinstance(task.extra_inputs, LesionPartners) else None


def _check_positives(config, table, dataset) -> None:
  positives = config.get("positives", "views")
  if positives not in POSITIVES:
    raise ConfigError(f"config.positives={positives!r} must be one of {list(POSITIVES)}.")
  if positives == "lesion" and table is None:
    raise ConfigError(f"config.positives='lesion' (MICLe) needs lesion groups, and dataset "
                      f"{dataset.meta.name!r} has no training image sharing a lesion with "
                      "another; use positives='views' (SimCLR).")


def check_config(k) -> None:
  """This task's own fields, on derm_jax/validate.py's checker (every problem names its
  field; whether the data have lesion ids is `preflight`'s)."""
  k.number("loss.temperature", 0, low_open=True)
  k.integer("projection.hidden", 1)
  k.integer("projection.out_dim", 1)
  k.integer("projection.num_layers", 1, required=False)
  k.number("contrastive.grayscale", 0, high=1, required=False)
  if k.has("positives"):
    k.choice("positives", POSITIVES)
  k.choice("optimizer.name", OPTIMIZERS)
  k.number("optimizer.momentum", 0, high=1, high_open=True, required=False)
  k.number("optimizer.trust_coefficient", 0, low_open=True, required=False)
  k.integer("knn.k", 1)
  k.integer("knn.max_train", 0, required=False)
  k.number("knn.temperature", 0, low_open=True, required=False)
  if k.has("init.source"):
    k.choice("init.source", INIT_SOURCES)
  if k.get("aug.on_device", True) is not True:
    k.add("aug.on_device", f"={k.get('aug.on_device')!r}: SimCLR makes its two views on the "
          "device; it must be True")


def preflight(config, dataset, what: str = "config.positives='lesion'") -> None:
  """MICLe needs lesion ids in the data (checked in seconds, before anything trains)."""
  if config.get("positives", "views") != "lesion":
    return
  metadata = getattr(dataset, "metadata", None)
  if metadata is None or "lesion_id" not in metadata("train"):
    raise ConfigError(f"{what} pairs images of one lesion, but this {config.data.name!r} data "
                      "has no lesion ids (dermamnist files the lesion table knows, ham10000, "
                      "isic2019 and folders with a 'group' column have them).")


# ----------------------------------------------------------------------------- build


def build(config, partners: bool | None = None) -> Task:
  """Models, optimiser, mesh, steps and the k-NN evaluator of a SimCLR config; each
  member's starting point (its seed, where its backbone starts) comes from its own config
  in `init_member`. `partners`: whether the task's members draw MICLe partners (the task
  then holds the lesion table, `lesion_table(task)`, and each step gathers a second image); by
  default when `config.positives` is 'lesion'."""
  dataset = registry.get(config.data)
  meta = dataset.meta
  # The training split, and the unlabelled pool (config.data.unlabeled) where there is one:
  # self-supervised, so every image counts; never val or test.
  train_source = unlabeled.pretraining_source(dataset)
  if partners is None:
    partners = config.get("positives", "views") == "lesion"
  table = sibling_table(dataset, train_source) if partners else None
  _check_positives(config, table, dataset)
  if not config.aug.get("on_device", True):
    raise ConfigError("config.aug.on_device=False: SimCLR makes its two views on the device "
                      "from the stored images; set it to True.")
  backbone, projection = create_models(config)
  mesh_lib.check_batch_sizes(config)
  mesh = mesh_lib.make_mesh()
  spe, total_steps, warmup = optim.schedule_steps(config, len(train_source))
  tx = make_optimizer(config.optimizer, total_steps, warmup)
  shapes = backbone_init.backbone_variable_shapes(backbone, config.image_size)
  feat_shape = jax.eval_shape(
      lambda v: backbone.apply(v, jnp.zeros((1, config.image_size, config.image_size, 3)),
                               train=False), shapes)
  init_projection = jax.jit(lambda rng: projection.init(
      rng, jnp.zeros(feat_shape.shape, jnp.float32))["params"])

  def init_member(member_config, workdir: str, for_inference: bool = False):
    bb_rng, proj_rng, step_rng = jax.random.split(jax.random.key(int(member_config.seed)), 3)
    if for_inference:  # a checkpoint provides every value: nothing loaded or drawn
      bb_vars = backbone_init.placeholder_backbone_variables(backbone, config.image_size)
      proj = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                          jax.eval_shape(init_projection, proj_rng))
    else:
      bb_vars = backbone_init.init_backbone_variables(member_config, backbone, workdir, bb_rng)
      proj = init_projection(proj_rng)
    state = create_train_state(bb_vars, proj, None if for_inference else tx)
    return state, np.asarray(jax.random.key_data(step_rng))

  schedule = optim.learning_rate_schedule(config.optimizer.lr, total_steps, warmup,
                                          config.optimizer.end_lr_factor)
  make_evaluator = knn.monitor(config, dataset, mesh)

  return Task(
      config=config, meta=meta, dataset=dataset, mesh=mesh, steps_per_epoch=spe,
      total_steps=total_steps, learning_rate=lambda step: float(schedule(step)),
      init_member=init_member,
      train_step=functools.partial(train_step, backbone=backbone, projection=projection, tx=tx,
                                   temperature=float(config.loss.temperature),
                                   image_size=config.image_size, aug=config.aug,
                                   grayscale=float(config.contrastive.grayscale)),
      eval_step=functools.partial(eval_step, backbone=backbone, image_size=config.image_size),
      summarize_train=summarize_train, make_evaluator=make_evaluator,
      train_source=train_source,
      extra_inputs=LesionPartners(table) if table is not None else None,
      member_fields=("positives",), progress_keys=("loss", "contrastive_accuracy"))


# ----------------------------------------------------------------------------- entry points


def backbone_variables(tree: dict) -> dict:
  """The backbone out of a restored SimCLR checkpoint tree (the projection head is left
  behind): what a classifier with init.source='pretrained' starts from."""
  out = {"params": tree["params"]["backbone"]}
  if tree.get("batch_stats"):
    out["batch_stats"] = tree["batch_stats"]["backbone"]
  return out


def train_members(members: Sequence[Member], task=None) -> population.Run:
  """Trains the members' SimCLR (or MICLe) backbones as one population (one program),
  resuming from their latest checkpoints. `task`: one built for an earlier group of the
  same stage, reused (its compiled programs too) when it draws MICLe partners exactly when
  these members need them."""
  members = list(members)
  for m in members:
    if m.config.init.source not in INIT_SOURCES:
      raise ConfigError(f"config.init.source={m.config.init.source!r}: SimCLR starts from "
                        f"one of {list(INIT_SOURCES)}.")
    backbone_init.check_source(m.config, m.workdir)  # fails fast, nothing loaded
  partners = any(m.config.get("positives", "views") == "lesion" for m in members)
  if task is None or (lesion_table(task) is not None) != partners:
    task = build(members[0].config, partners=partners)
  table = lesion_table(task)
  for m in members:
    _check_positives(m.config, table, task.dataset)
  if partners:
    logging.info("MICLe: %d of %d training images have another image of their lesion.",
                 pairs.num_with_sibling(table), len(table.count))
  logging.info("SimCLR: backbone %s, %s, %d epochs x %d steps, batch %d, temperature %g.",
               members[0].config.model.backbone,
               ", ".join(sorted({m.config.get("positives", "views") for m in members})),
               members[0].config.num_epochs, task.steps_per_epoch,
               members[0].config.batch_size, members[0].config.loss.temperature)
  return loop.train(task, members)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains one SimCLR backbone in `workdir`; returns its last evaluation row."""
  return train_members([Member("simclr", workdir, config)]).last_rows[0]


def evaluate(config, workdir: str, step: int | None = None,
             splits=("val", "test")) -> dict[str, Any]:
  """`--mode=eval`: k-NN accuracy of a restored checkpoint (latest or `step`) on `splits`,
  written to WORKDIR/eval_step<step>.json."""
  return restore.evaluate_checkpoint(build(config), "simclr", workdir, step, splits)
