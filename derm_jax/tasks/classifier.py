"""The classifier task (the study's second stage): identical head on any backbone.

Read top to bottom: models -> state (frozen backbone outside the gradient, or fine-tuned
with its own learning rate) -> train and predict steps of one member -> `build(config)`,
the `Task` the shared loop (derm_jax/train/loop.py) trains for one or many members ->
entry points: `train_members(members)` (a study's arms x seeds as one program, each
ending with the test split beside the majority baseline), `train_and_evaluate(config,
workdir)` (one run), `restore` and `evaluate(config, workdir, step)`. Where the backbone starts (VAE encoder,
ImageNet, scratch) is derm_jax/tasks/backbone_init.py; the metrics are
derm_jax/evaluation/classification.py.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from derm_jax import fileio
from derm_jax.data import device_augment, outside, registry, run_data
from derm_jax.evaluation import classification
from derm_jax.models import classifier as classifier_lib
from derm_jax.models import registry as model_registry
from derm_jax.tasks import backbone_init, common
from derm_jax.train import loop, optim, population
from derm_jax.train import mesh as mesh_lib
from derm_jax.train import restore as restore_lib
from derm_jax.train.population import Member
from derm_jax.train.task import Task


class ClsState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any        # trainable: {'head': ...} (+ {'backbone': ...} when fine-tuning)
  frozen: Any        # {'backbone': ...} when the backbone is frozen, else {}
  batch_stats: Any   # {'backbone': ...} if the backbone has BatchNorm, else {}
  opt_state: Any


# ----------------------------------------------------------------------------- config


def check_config(k) -> None:
  """This task's own fields, on derm_jax/validate.py's checker (every problem names its
  field; whether a pretraining run or ImageNet weights exist is the preflight's)."""
  k.integer("head.hidden", 0, required=False)  # 0: a linear head (the linear probe)
  k.number("label_fraction", 0, low_open=True, high=1, required=False)
  k.number("head.dropout", 0, high=1, high_open=True, required=False)
  if (k.has("init.source") and k.choice("init.source", backbone_init.SOURCES)
      and k.get("init.source") not in ("scratch", "imagenet")
      and not backbone_init.pretrained_workdir(k.c)):
    k.add("init.pretrained_workdir", f" is empty; init.source={k.get('init.source')!r} "
          "needs a pretraining run's workdir")


# ----------------------------------------------------------------------------- models


def create_models(config, num_classes: int):
  model_registry.check_image_size(config.model.backbone, dict(config.model.backbone_kwargs),
                                  config.image_size)
  backbone = model_registry.get_backbone(config.model.backbone,
                                         dtype=jnp.dtype(config.get("dtype", "float32")),
                                         **dict(config.model.backbone_kwargs))
  head = classifier_lib.ClassifierHead(num_classes=num_classes, hidden=config.head.hidden,
                                       dropout=config.head.dropout)
  return backbone, head


def create_train_state(backbone_vars: dict, head_params, tx, finetune: bool) -> ClsState:
  """A member's starting state (host arrays); `tx=None`: no optimiser state (inference)."""
  bs = {"backbone": backbone_vars["batch_stats"]} if backbone_vars.get("batch_stats") else {}
  if finetune:
    params, frozen = {"head": head_params, "backbone": backbone_vars["params"]}, {}
  else:
    params, frozen = {"head": head_params}, {"backbone": backbone_vars["params"]}
  opt_state = None if tx is None else jax.jit(tx.init)(params)  # one program, not one eager
  # compile per parameter
  return jax.tree.map(np.asarray, ClsState(step=np.zeros((), np.int32), params=params,
                                           frozen=frozen, batch_stats=bs, opt_state=opt_state))


def make_optimizer(config, total_steps: int, warmup_steps: int, finetune: bool):
  """Head only (frozen backbone), or head + backbone with its own learning rate, clipped
  together by one global norm."""
  if not finetune:
    return optim.make_optimizer(config.optimizer, total_steps, warmup_steps)
  head_tx, bb_tx = (optim.make_optimizer(config.optimizer, total_steps, warmup_steps, lr=lr,
                                         clip=False)
                    for lr in (config.optimizer.lr, config.optimizer.backbone_lr))
  both = optax.multi_transform({"head": head_tx, "backbone": bb_tx},
                               {"head": "head", "backbone": "backbone"})
  if config.optimizer.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.optimizer.grad_clip), both)
  return both


# ----------------------------------------------------------------------------- steps


def _features(backbone, state: ClsState, params, x, rng, train_backbone: bool):
  """Backbone feature map. Frozen: plain inference, outside any gradient."""
  if train_backbone:
    return common.apply_backbone(backbone, params["backbone"], state.batch_stats, x,
                                 train=True, rng=rng)
  bb_params = params["backbone"] if "backbone" in params else state.frozen["backbone"]
  return common.apply_backbone(backbone, bb_params, state.batch_stats, x, train=False)


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: ClsState, batch, key, *, backbone, head, tx, finetune: bool,
               class_weights, image_size: int, aug):
  """One optimisation step of one member; its randomness (dropout, augmentation) is a pure
  function of the member's key and the step number."""
  rng = jax.random.fold_in(key, state.step)
  x = device_augment.train_images(batch["image"], rng, image_size=image_size, aug=aug)
  y = batch["label"]
  if not finetune:
    feats, new_bs = _features(backbone, state, state.params, x, rng, False)
    feats = jax.lax.stop_gradient(feats)

  def loss_fn(params):
    if finetune:
      f, bs = _features(backbone, state, params, x, jax.random.fold_in(rng, 1), True)
    else:
      f, bs = feats, new_bs
    logits = head.apply({"params": params["head"]}, f, train=True, rngs={"dropout": rng})
    ce = _cross_entropy(logits, y)
    w = class_weights[y]
    return (ce * w).sum() / w.sum(), (logits, ce, bs)

  (loss, (logits, ce, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=bs, opt_state=opt_state)
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
  return new_state, {"probs": jax.nn.softmax(logits), "loss": ce, "label": y, "finite": finite}


def eval_step(state: ClsState, batch, key, *, backbone, head, image_size: int):
  del key  # deterministic
  x = device_augment.model_images(batch["image"], image_size=image_size)
  feats, _ = _features(backbone, state, state.params, x, None, False)
  logits = head.apply({"params": state.params["head"]}, feats, train=False)
  return {"probs": jax.nn.softmax(logits), "loss": _cross_entropy(logits, batch["label"])}


# ----------------------------------------------------------------------------- build


def class_weights_for(config, train_labels: np.ndarray, num_classes: int) -> np.ndarray:
  if not config.class_weighted_loss:
    return np.ones((num_classes,), np.float32)
  counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
  w = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
  return w.astype(np.float32)


def member_keys(seed: int):
  """(backbone init, head init, step) keys of the member with this seed."""
  return jax.random.split(jax.random.key(int(seed)), 3)


def build(config, dataset=None) -> Task:
  """Models, optimiser, steps and evaluators of a classifier config; each member's
  starting point (where its backbone starts, its seed) comes from its own config in
  `init_member`. `dataset`: the one to use instead of `config.data`'s (a trained run's
  stored summary, data/run_data.py, to predict without the training data)."""
  dataset = dataset if dataset is not None else registry.get(config.data)
  meta = dataset.meta
  train_labels = np.asarray(dataset.labels("train"))
  backbone, head = create_models(config, meta.num_classes)
  mesh_lib.check_batch_sizes(config)
  mesh = mesh_lib.make_mesh()
  finetune = not config.freeze_backbone
  spe, total_steps, warmup = optim.schedule_steps(config, len(train_labels))
  tx = make_optimizer(config, total_steps, warmup, finetune)
  shapes = backbone_init.backbone_variable_shapes(backbone, config.image_size)
  feat_shape = jax.eval_shape(
      lambda v: backbone.apply(v, jnp.zeros((1, config.image_size, config.image_size, 3)),
                               train=False), shapes)

  def init_member(member_config, workdir: str, for_inference: bool = False):
    bb_rng, head_rng, step_rng = member_keys(member_config.seed)
    if for_inference:  # a checkpoint provides every value: no weights loaded, nothing drawn
      bb_vars = backbone_init.placeholder_backbone_variables(backbone, config.image_size)
    else:
      bb_vars = backbone_init.init_backbone_variables(member_config, backbone, workdir, bb_rng)
    head_params = head.init({"params": head_rng}, jnp.zeros(feat_shape.shape),
                            train=False)["params"]
    state = create_train_state(bb_vars, head_params, None if for_inference else tx, finetune)
    return state, np.asarray(jax.random.key_data(step_rng))

  weights = class_weights_for(config, train_labels, meta.num_classes)
  schedule = optim.learning_rate_schedule(config.optimizer.lr, total_steps, warmup,
                                          config.optimizer.end_lr_factor)

  def make_evaluator(source, has_labels: bool = True):
    return classification.ClassificationEvaluator(
        source, meta, batch_size=config.eval_batch_size, mesh=mesh,
        train_labels=train_labels, has_labels=has_labels)

  return Task(
      config=config, meta=meta, dataset=dataset, mesh=mesh, steps_per_epoch=spe,
      total_steps=total_steps, learning_rate=lambda step: float(schedule(step)),
      init_member=init_member,
      train_step=functools.partial(train_step, backbone=backbone, head=head, tx=tx,
                                   finetune=finetune, class_weights=jnp.asarray(weights),
                                   image_size=config.image_size, aug=config.aug),
      eval_step=functools.partial(eval_step, backbone=backbone, head=head,
                                  image_size=config.image_size),
      summarize_train=functools.partial(classification.train_metrics,
                                        num_classes=meta.num_classes),
      make_evaluator=make_evaluator, train_labels=train_labels,
      balanced_sampling=bool(config.balanced_sampling), progress_keys=("loss", "accuracy"))


# ----------------------------------------------------------------------------- entry points


def test_and_write(run: population.Run) -> list[dict[str, Any]]:
  """Every member's test metrics (with the majority baseline, subgroups and the step) and
  predictions, written into its workdir; one pass over the test split for all members."""
  task = run.task
  ev = task.make_evaluator(task.dataset.source("test"))
  results = ev.run(run.predict)
  for member, test, preds in zip(run.members, results, ev.predictions, strict=True):
    test["step"] = run.step
    classification.add_subgroups(test, preds, task.dataset, "test", task.meta.num_classes)
    who = f" [{member.name}]" if len(run.members) > 1 else ""
    logging.info("test (step %d)%s: %s", test["step"], who, classification.summary_line(test))
    if "lesion_overlap" in test:
      logging.info("test%s, by lesion seen in training: %s", who,
                   classification.lesion_overlap_line(test["lesion_overlap"]))
    if jax.process_index() == 0:
      classification.write_outputs(test, preds, task.meta, member.workdir,
                                   metrics_name="test_metrics.json",
                                   confusion_name="confusion_test.png",
                                   predictions_name="test_predictions.csv",
                                   title=f"{member.config.init.source} backbone, test split")
      _test_to_tensorboard(member.config, member.workdir, test)
  return results


def train_members(members: Sequence[Member],
                  task=None) -> tuple[population.Run, list[dict[str, Any]]]:
  """Trains the members (one population: one program) and scores each on the test split.
  `task`: one built for an earlier group of the same stage, reused with its compiled
  programs."""
  config = members[0].config
  if config.class_weighted_loss and config.balanced_sampling:
    logging.warning("class_weighted_loss and balanced_sampling both correct the class "
                    "imbalance: together they over-weight the rare classes.")
  if config.balanced_sampling:
    logging.info("Balanced sampling: train metrics (and so the overfitting gap) are measured "
                 "on the class-balanced stream, validation on the natural distribution.")
  for m in members:
    fileio.makedirs(m.workdir)
  task = task or build(config)
  # What its training and validation images were, kept in each run: outside sets are
  # checked against it, also where the data are no longer present (data/outside.py).
  # And what of its dataset it needs to predict without it (data/run_data.py).
  fingerprint = task.once("fingerprint", lambda: outside.fingerprint_of(task.dataset))
  if jax.process_index() == 0:
    for m in members:
      outside.write_into(m.workdir, fingerprint)
      run_data.write_into(m.workdir, task.dataset)
  logging.info("Classifier: backbone %s (%s), %s, %d steps (%d per epoch), batch %d.",
               config.model.backbone, ", ".join(sorted({m.config.init.source for m in members})),
               "frozen" if config.freeze_backbone else "fine-tuned", task.total_steps,
               task.steps_per_epoch, config.batch_size)
  run = loop.train(task, members)
  return run, test_and_write(run)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains the head (and the backbone if not frozen), then evaluates on the test split."""
  _, results = train_members([Member("classifier", workdir, config)])
  return results[0]


def _test_to_tensorboard(config, workdir: str, test: dict[str, Any]) -> None:
  """Test metrics, the confusion matrix (as an image) and the config as hyperparameters."""
  from PIL import Image

  from derm_jax.train import outputs
  headline = {f"test/{k}": test.get(k) for k in
              ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "loss")}
  writer = outputs.MetricWriter(workdir)
  try:
    writer.write_scalars(test["step"], {k: v for k, v in headline.items() if v is not None})
    png = fileio.read_bytes(fileio.join(workdir, "confusion_test.png"))
    with Image.open(io.BytesIO(png)) as im:
      writer.write_image(test["step"], "test/confusion_matrix",
                         np.asarray(im.convert("RGB"), np.float32) / 255.0)
    writer.write_hparams(config, headline)
  finally:
    writer.close()


def restore(config, workdir: str, step: int | None = None, dataset=None) -> population.Run:
  """A classifier run's checkpoint (latest or `step`) ready to predict (a Run of one);
  `dataset` as in `build`."""
  return restore_lib.restore(build(config, dataset), [Member("classifier", workdir, config)], step)


def evaluate(config, workdir: str, step: int | None = None) -> dict[str, Any]:
  """`--mode=eval`: the restored checkpoint's metrics on the val and test splits."""
  run = restore(config, workdir, step)
  task = run.task
  results = {}
  for split in ("val", "test"):
    ev = task.make_evaluator(task.dataset.source(split))
    results[split], preds = ev.run(run.predict)[0], ev.predictions[0]
    results[split]["step"] = s = run.step
    if jax.process_index() == 0:
      classification.write_outputs(results[split], preds, task.meta,
                                   fileio.join(workdir, "eval"),
                                   metrics_name=f"{split}_step{s}.json",
                                   confusion_name=f"confusion_{split}_step{s}.png",
                                   predictions_name=f"{split}_step{s}_predictions.csv",
                                   title=f"{split} split, step {s}")
    logging.info("%s: %s", split, classification.summary_line(results[split]))
  return results
