"""Self-supervised arm: trains the VAE on dermoscopic images, and evaluates its checkpoints.

Read top to bottom: data -> mesh -> model and state -> jitted steps -> checkpoint
(resume) -> loop with progress, evals, images and checkpoints -> final outputs.
Entry points: `train_and_evaluate(config, workdir)` and `evaluate(config, workdir, step)`,
both reached through `python -m derm_jax.main`.
"""


import functools
import json
import os
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metrics as clu_metrics
from clu import parameter_overview

from derm_jax import losses, plots
from derm_jax.data import dermamnist, input_pipeline
from derm_jax.models import vae as vae_lib
from derm_jax.train import checkpoint, optim, outputs
from derm_jax.train import mesh as mesh_lib


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  recon: clu_metrics.Average.from_output("recon")
  kl: clu_metrics.Average.from_output("kl")
  elbo: clu_metrics.Average.from_output("elbo")
  grad_norm: clu_metrics.Average.from_output("grad_norm")


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  elbo: clu_metrics.Average.from_output("elbo")
  recon: clu_metrics.Average.from_output("recon")
  kl: clu_metrics.Average.from_output("kl")
  mse: clu_metrics.Average.from_output("mse")


def create_train_state(model, tx, rng, image_size: int) -> TrainState:
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init({"params": rng, "dropout": rng}, x, rng, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


def _apply(model, state_params, batch_stats, x, rng, train: bool):
  variables = {"params": state_params}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  rngs = {"dropout": jax.random.fold_in(rng, 1)}
  if train and batch_stats:
    (x_hat, mean, logvar), updates = model.apply(variables, x, rng, train=True, rngs=rngs,
                                                 mutable=["batch_stats"])
    return x_hat, mean, logvar, updates["batch_stats"]
  x_hat, mean, logvar = model.apply(variables, x, rng, train=train, rngs=rngs)
  return x_hat, mean, logvar, batch_stats


def train_step(state: TrainState, batch, *, model, tx, loss_config, base_rng):
  """One optimisation step; the step's randomness is a pure function of the step number."""
  rng = jax.random.fold_in(base_rng, state.step)
  x = batch["image"]

  def loss_fn(params):
    x_hat, mean, logvar, new_bs = _apply(model, params, state.batch_stats, x, rng, train=True)
    loss, per_image = losses.vae_loss(x, x_hat, mean, logvar, state.step, loss_config)
    return loss, (per_image, new_bs)

  (loss, (per_image, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                            opt_state=opt_state)
  metrics = TrainMetrics.single_from_model_output(
      loss=loss, recon=per_image["recon"], kl=per_image["kl"], elbo=per_image["elbo"],
      grad_norm=optax.tree.norm(grads))
  return new_state, metrics


def eval_step(state: TrainState, batch, *, model, loss_config, rng):
  x = batch["image"]
  x_hat, mean, logvar, _ = _apply(model, state.params, state.batch_stats, x, rng, train=False)
  _, per_image = losses.vae_loss(x, x_hat, mean, logvar, state.step, loss_config,
                                 mask=batch["mask"])
  return EvalMetrics.single_from_model_output(mask=batch["mask"], **per_image)


def _reconstruct_and_sample(state, x, rng, *, model, num_samples: int):
  """Reconstructions of x (posterior means) and decoded samples from the prior."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  mean, _ = model.apply(variables, x, train=False, method=model.encode)
  recon = model.apply(variables, mean, method=model.decode)
  z = jax.random.normal(rng, (num_samples, mean.shape[-1]))
  samples = model.apply(variables, z, method=model.decode)
  return recon, samples


def _sources(config):
  return {split: dermamnist.get_data_source(config.data, split)
          for split in ("train", "val", "test")}


def _build(config, train_size: int):
  """Model, optimiser, mesh, initial state and jitted functions for a config."""
  model = vae_lib.create_vae(config.model, config.image_size)
  mesh_lib.check_batch_sizes(config)
  mesh = mesh_lib.make_mesh()
  spe, total_steps, warmup = optim.schedule_steps(config, train_size)
  tx = optim.make_optimizer(config.optimizer, total_steps, warmup)
  rng = jax.random.key(config.seed)
  init_rng, base_rng = jax.random.split(rng)
  repl = mesh_lib.replicated(mesh)
  state = jax.jit(functools.partial(create_train_state, model, tx, image_size=config.image_size),
                  out_shardings=repl)(init_rng)
  p_train = jax.jit(
      functools.partial(train_step, model=model, tx=tx, loss_config=config.loss,
                        base_rng=base_rng),
      in_shardings=(repl, mesh_lib.data_sharded(mesh)), out_shardings=(repl, repl),
      donate_argnums=0)
  p_eval = jax.jit(
      functools.partial(eval_step, model=model, loss_config=config.loss,
                        rng=jax.random.fold_in(base_rng, 2**30)),
      in_shardings=(repl, mesh_lib.data_sharded(mesh)), out_shardings=repl)
  p_images = jax.jit(functools.partial(_reconstruct_and_sample, model=model,
                                       num_samples=config.num_image_samples))
  return dict(model=model, mesh=mesh, state=state, p_train=p_train, p_eval=p_eval,
              p_images=p_images, spe=spe, total_steps=total_steps, base_rng=base_rng)


def run_eval(p_eval, state, source, config, mesh) -> dict[str, float]:
  """Averages of the eval metrics over a whole split (padding masked out)."""
  acc = None
  for batch in input_pipeline.eval_batches(source, global_batch_size=config.eval_batch_size,
                                           image_size=config.image_size):
    m = p_eval(state, mesh_lib.shard_batch(batch, mesh))
    acc = m if acc is None else acc.merge(m)
  return {k: float(v) for k, v in acc.compute().items()}


def _write_images(b, state, source, config, writer, workdir, step, is_main: bool):
  """Reconstruction grid (inputs above reconstructions) and prior samples, as PNG + TensorBoard.

  Every process runs the computation (the state is a global array); process 0 writes."""
  n = config.num_image_samples
  batch = next(input_pipeline.eval_batches(source, global_batch_size=n,
                                           image_size=config.image_size,
                                           process_index=0, process_count=1))
  x = jax.make_array_from_process_local_data(mesh_lib.replicated(b["mesh"]), batch["image"])
  recon, samples = b["p_images"](state, x, jax.random.fold_in(b["base_rng"], 2**30 + 1))
  if not is_main:
    return
  x, recon, samples = np.asarray(x), np.asarray(recon), np.asarray(samples)
  img_dir = os.path.join(workdir, "images")
  os.makedirs(img_dir, exist_ok=True)
  for name, rows in (("recon", [x, recon]), ("samples", [samples])):
    plots.save_image_grid(rows, os.path.join(img_dir, f"{name}_{step:07d}.png"))
    plots.save_image_grid(rows, os.path.join(workdir, f"{name}.png"))
  writer.write_image(step, "recon", np.concatenate([np.concatenate(list(x), 1),
                                                    np.concatenate(list(recon), 1)], 0))
  writer.write_image(step, "samples", np.concatenate(list(samples), 1))


def _check_finite(step: int, loss_plus_grad_norm) -> None:
  if not np.isfinite(float(loss_plus_grad_norm)):
    raise FloatingPointError(
        f"Non-finite training loss or gradient at step {step}; stopping. The last "
        f"checkpoint (before step {step}) is kept; lower the learning rate or enable "
        f"gradient clipping (config.optimizer.grad_clip).")


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains the VAE, resuming from the latest checkpoint in `workdir` if there is one."""
  # 1. Data: validated before anything is written to the workdir.
  sources = _sources(config)
  # 2. Model, mesh, state, steps (validates image size and batch size).
  b = _build(config, len(sources["train"]))
  state, mesh, total_steps, spe = b["state"], b["mesh"], b["total_steps"], b["spe"]
  train_ds = input_pipeline.train_dataset(
      sources["train"], global_batch_size=config.batch_size, image_size=config.image_size,
      aug=config.aug, seed=config.seed)
  train_iter = input_pipeline.train_iterator(train_ds, config.input.num_threads,
                                             config.input.prefetch)
  # 3. Workdir, outputs, checkpoint manager; resume if possible.
  ckpt, writer, is_main = outputs.open_run(workdir, config, config.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    logging.info("Resuming from checkpoint at step %d in %s", start, ckpt.directory)
    state = ckpt.restore(start, state, train_iter)
    writer.truncate_after(start)
  else:
    start = 0
    logging.info(parameter_overview.get_parameter_overview(state.params))
  logging.info("Training %d steps (%d per epoch, batch %d on %d devices).", total_steps, spe,
               config.batch_size, jax.device_count())

  # 4. Loop.
  try:
    progress = outputs.Progress(total_steps, start, config.batch_size, config.log_every_steps)
    eval_every = max(1, int(config.eval_every_epochs * spe))
    ckpt_every = config.checkpoint_every_steps or spe
    train_metrics, prev = None, None
    last_eval: dict[str, float] = {}
    for step in range(start + 1, total_steps + 1):
      batch = mesh_lib.shard_batch(next(train_iter), mesh)
      state, m = b["p_train"](state, batch)
      if prev is not None:  # check the previous step while this one runs
        _check_finite(step - 1, prev)
      prev = m.loss.total + m.grad_norm.total  # non-finite if either is
      train_metrics = m if train_metrics is None else train_metrics.merge(m)
      if step == start + 1:
        progress.restart_clock(step)
      is_last = step == total_steps
      if step % config.log_every_steps == 0 or is_last:
        scalars = {f"train/{k}": v for k, v in train_metrics.compute().items()}
        _check_finite(step, prev)
        writer.write_scalars(step, scalars)
        progress(step, {"loss": scalars["train/loss"], "elbo": scalars["train/elbo"]})
        train_metrics = None
      if step % eval_every == 0 or is_last:
        _check_finite(step, prev)
        last_eval = {f"val/{k}": v for k, v in
                     run_eval(b["p_eval"], state, sources["val"], config, mesh).items()}
        writer.write_scalars(step, last_eval, jsonl=True, epoch=round(step / spe, 3))
        logging.info("step %d | %s", step, ", ".join(f"{k}={v:.4f}" for k, v in last_eval.items()))
        _write_images(b, state, sources["val"], config, writer, workdir, step, is_main)
        writer.flush()
      if step % ckpt_every == 0 or is_last:
        _check_finite(step, prev)
        ckpt.save(step, state, train_iter)
  finally:  # also on errors: finish pending saves, keep the last good checkpoint
    ckpt.close()
    writer.close()
  if start >= total_steps:
    logging.info("Checkpoint at step %d already completes the %d-step run.", start, total_steps)
  return last_eval


def evaluate(config, workdir: str, step: int | None = None,
             splits=("val", "test")) -> dict[str, float]:
  """Restores a checkpoint (latest or `step`) and reports ELBO, reconstruction and KL."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"No checkpoints directory in workdir {workdir!r}.")
  sources = {s: dermamnist.get_data_source(config.data, s) for s in ("train", *splits)}
  b = _build(config, len(sources["train"]))
  state = checkpoint.restore_for_inference(ckpt_dir, b["state"], step,
                                          mesh_lib.replicated(b["mesh"]))
  results: dict[str, Any] = {"step": int(state.step)}
  for split in splits:
    for k, v in run_eval(b["p_eval"], state, sources[split], config, b["mesh"]).items():
      results[f"{split}/{k}"] = v
  logging.info("Eval of %s at step %d: %s", workdir, results["step"], results)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_step{results['step']}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
