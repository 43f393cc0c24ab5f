"""The classifier task (the study's second stage): identical head on any backbone.

Read top to bottom: models -> state (frozen backbone outside the gradient, or fine-tuned
with its own learning rate) -> train and predict steps -> `build(config, workdir)`, the
typed `Experiment` the shared loop (derm_jax/train/loop.py) trains -> entry points:
`train_and_evaluate(config, workdir)` (ends with the test split beside the majority
baseline) and `evaluate(config, workdir, step)`. Where the backbone starts (VAE encoder,
ImageNet, scratch) is derm_jax/tasks/backbone_init.py; the metrics are
derm_jax/evaluation/classification.py.
"""

from __future__ import annotations

import functools
import io
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from derm_jax import fileio
from derm_jax.data import device_augment, registry
from derm_jax.evaluation import classification
from derm_jax.models import classifier as classifier_lib
from derm_jax.models import registry as model_registry
from derm_jax.tasks import backbone_init
from derm_jax.train import loop, optim
from derm_jax.train import mesh as mesh_lib
from derm_jax.train.experiment import Experiment


class ClsState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any        # trainable: {'head': ...} (+ {'backbone': ...} when fine-tuning)
  frozen: Any        # {'backbone': ...} when the backbone is frozen, else {}
  batch_stats: Any   # {'backbone': ...} if the backbone has BatchNorm, else {}
  opt_state: Any


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
  bs = {"backbone": backbone_vars["batch_stats"]} if backbone_vars.get("batch_stats") else {}
  if finetune:
    params, frozen = {"head": head_params, "backbone": backbone_vars["params"]}, {}
  else:
    params, frozen = {"head": head_params}, {"backbone": backbone_vars["params"]}
  opt_state = jax.jit(tx.init)(params)  # one program, not an eager compile per parameter
  return ClsState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                  batch_stats=bs, opt_state=opt_state)


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
    variables = {"params": params["backbone"], **({"batch_stats": state.batch_stats["backbone"]}
                                                  if state.batch_stats else {})}
    if state.batch_stats:
      feats, upd = backbone.apply(variables, x, train=True, rngs={"dropout": rng},
                                  mutable=["batch_stats"])
      return feats, {"backbone": upd["batch_stats"]}
    return backbone.apply(variables, x, train=True, rngs={"dropout": rng}), state.batch_stats
  bb_params = params["backbone"] if "backbone" in params else state.frozen["backbone"]
  variables = {"params": bb_params, **({"batch_stats": state.batch_stats["backbone"]}
                                       if state.batch_stats else {})}
  return backbone.apply(variables, x, train=False), state.batch_stats


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: ClsState, batch, *, backbone, head, tx, finetune: bool, class_weights,
               base_rng, image_size: int, aug):
  rng = jax.random.fold_in(base_rng, state.step)
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


def eval_step(state: ClsState, batch, *, backbone, head, image_size: int):
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


def build(config, workdir: str, *, load_backbone: bool = True) -> Experiment:
  """Models, backbone initialisation, state, jitted steps and evaluators of a classifier
  config. `load_backbone=False` skips loading pretrained weights (a checkpoint will
  provide every value, as in --mode=eval and derm_jax.evaluate)."""
  dataset = registry.get(config.data)
  meta = dataset.meta
  train_labels = np.asarray(dataset.labels("train"))
  backbone, head = create_models(config, meta.num_classes)
  mesh_lib.check_batch_sizes(config)
  mesh = mesh_lib.make_mesh()
  finetune = not config.freeze_backbone
  spe, total_steps, warmup = optim.schedule_steps(config, len(train_labels))
  tx = make_optimizer(config, total_steps, warmup, finetune)
  rng = jax.random.key(config.seed)
  bb_rng, head_rng, base_rng = jax.random.split(rng, 3)
  if load_backbone:
    bb_vars = backbone_init.init_backbone_variables(config, backbone, workdir, bb_rng)
  else:
    bb_vars = backbone_init.placeholder_backbone_variables(backbone, config.image_size)
  feat_shape = jax.eval_shape(
      lambda v: backbone.apply(v, jnp.zeros((1, config.image_size, config.image_size, 3)),
                               train=False), bb_vars)
  head_params = head.init({"params": head_rng}, jnp.zeros(feat_shape.shape),
                          train=False)["params"]
  repl, sharded = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  state = jax.tree.map(lambda a: jax.make_array_from_process_local_data(repl, np.asarray(a)),
                       create_train_state(bb_vars, head_params, tx, finetune))
  weights = jnp.asarray(class_weights_for(config, train_labels, meta.num_classes))
  out_shardings = {"probs": sharded, "loss": sharded, "label": sharded, "finite": repl}
  p_train = jax.jit(functools.partial(train_step, backbone=backbone, head=head, tx=tx,
                                      finetune=finetune, class_weights=weights,
                                      base_rng=base_rng, image_size=config.image_size,
                                      aug=config.aug),
                    in_shardings=(repl, sharded), out_shardings=(repl, out_shardings),
                    donate_argnums=0)
  p_eval = jax.jit(functools.partial(eval_step, backbone=backbone, head=head,
                                     image_size=config.image_size),
                   in_shardings=(repl, sharded), out_shardings=sharded)
  schedule = optim.learning_rate_schedule(config.optimizer.lr, total_steps, warmup,
                                          config.optimizer.end_lr_factor)

  def make_evaluator(source, has_labels: bool = True):
    return classification.ClassificationEvaluator(
        p_eval, source, meta, batch_size=config.eval_batch_size, mesh=mesh,
        train_labels=train_labels, has_labels=has_labels)

  return Experiment(
      config=config, meta=meta, dataset=dataset, mesh=mesh, state=state, train_step=p_train,
      eval_step=p_eval, steps_per_epoch=spe, total_steps=total_steps,
      learning_rate=lambda step: float(schedule(step)),
      summarize_train=functools.partial(classification.train_metrics,
                                        num_classes=meta.num_classes),
      make_evaluator=make_evaluator, train_labels=train_labels,
      balanced_sampling=bool(config.balanced_sampling),
      progress_keys=("loss", "accuracy"))


# ----------------------------------------------------------------------------- entry points


def test_report(exp: Experiment, state, source) -> tuple[dict[str, Any], Any]:
  """Metrics (with the majority baseline and the step) and per-image predictions."""
  ev = exp.make_evaluator(source)
  result = ev.run(state)
  result["step"] = int(state.step)
  return result, ev.predictions


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains the head (and the backbone if not frozen), then evaluates on the test split."""
  if config.class_weighted_loss and config.balanced_sampling:
    logging.warning("class_weighted_loss and balanced_sampling both correct the class "
                    "imbalance: together they over-weight the rare classes.")
  if config.balanced_sampling:
    logging.info("Balanced sampling: train metrics (and so the overfitting gap) are measured "
                 "on the class-balanced stream, validation on the natural distribution.")
  fileio.makedirs(workdir)
  exp = build(config, workdir)
  logging.info("Classifier: backbone %s (%s, %s), %d epochs x %d steps, batch %d.",
               config.model.backbone, config.init.source,
               "frozen" if config.freeze_backbone else "fine-tuned", config.num_epochs,
               exp.steps_per_epoch, config.batch_size)
  state, _ = loop.train(exp, workdir)
  test, preds = test_report(exp, state, exp.dataset.source("test"))
  classification.add_subgroups(test, preds, exp.dataset, "test", exp.meta.num_classes)
  logging.info("test (step %d): %s", test["step"], classification.summary_line(test))
  if jax.process_index() == 0:
    classification.write_outputs(test, preds, exp.meta, workdir,
                                 metrics_name="test_metrics.json",
                                 confusion_name="confusion_test.png",
                                 predictions_name="test_predictions.csv",
                                 title=f"{config.init.source} backbone, test split")
    _test_to_tensorboard(config, workdir, test)
  return test


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


def evaluate(config, workdir: str, step: int | None = None) -> dict[str, Any]:
  """`--mode=eval`: the restored checkpoint's metrics on the val and test splits."""
  exp = build(config, workdir, load_backbone=False)
  state = loop.restore(exp, workdir, step)
  results = {}
  for split in ("val", "test"):
    results[split], preds = test_report(exp, state, exp.dataset.source(split))
    s = results[split]["step"]
    if jax.process_index() == 0:
      classification.write_outputs(results[split], preds, exp.meta,
                                   fileio.join(workdir, "eval"),
                                   metrics_name=f"{split}_step{s}.json",
                                   confusion_name=f"confusion_{split}_step{s}.png",
                                   predictions_name=f"{split}_step{s}_predictions.csv",
                                   title=f"{split} split, step {s}")
    logging.info("%s: %s", split, classification.summary_line(results[split]))
  return results
