"""The VAE task (self-supervised arm): model, loss, train and eval steps, what to evaluate.

`build(config)` returns the typed `Experiment` that the shared loop
(derm_jax/train/loop.py) trains; `train_and_evaluate(config, workdir)` and
`evaluate(config, workdir, step)` are reached through `python -m derm_jax.main`.
Read top to bottom: state -> train step -> eval step -> image grids -> build -> entry points.
"""


import functools
import json
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from derm_jax import fileio, plots
from derm_jax.data import device_augment, input_pipeline, registry
from derm_jax.evaluation import vae as vae_evaluator
from derm_jax.models import vae as vae_lib
from derm_jax.tasks import losses
from derm_jax.train import loop, optim
from derm_jax.train import mesh as mesh_lib
from derm_jax.train.experiment import Experiment


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


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
  if not train:
    x_hat, mean, logvar = model.apply(variables, x, rng, train=False)
    return x_hat, mean, logvar, batch_stats
  rngs = {"dropout": jax.random.fold_in(rng, 1)}
  if batch_stats:
    (x_hat, mean, logvar), updates = model.apply(variables, x, rng, train=True, rngs=rngs,
                                                 mutable=["batch_stats"])
    return x_hat, mean, logvar, updates["batch_stats"]
  x_hat, mean, logvar = model.apply(variables, x, rng, train=True, rngs=rngs)
  return x_hat, mean, logvar, batch_stats


def train_step(state: TrainState, batch, *, model, tx, loss_config, base_rng, image_size: int,
               aug):
  """One optimisation step; the step's randomness (augmentation included) is a pure
  function of the step number."""
  rng = jax.random.fold_in(base_rng, state.step)
  x = device_augment.train_images(batch["image"], rng, image_size=image_size, aug=aug)

  def loss_fn(params):
    x_hat, mean, logvar, new_bs = _apply(model, params, state.batch_stats, x, rng, train=True)
    loss, per_image = losses.vae_loss(x, x_hat, mean, logvar, state.step, loss_config)
    return loss, (per_image, new_bs)

  (loss, (per_image, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                            opt_state=opt_state)
  grad_norm = optax.tree.norm(grads)
  outputs = {"loss": loss, "recon": per_image["recon"].mean(), "kl": per_image["kl"].mean(),
             "elbo": per_image["elbo"].mean(), "grad_norm": grad_norm,
             "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return new_state, outputs


def eval_step(state: TrainState, batch, *, model, loss_config, rng, image_size: int):
  """Per-image ELBO, reconstruction NLL, KL and MSE (the evaluator averages them)."""
  x = device_augment.model_images(batch["image"], image_size=image_size)
  # One key per image (from its position in the split): the posterior sample, and so the
  # ELBO estimate, of an image is the same whatever the eval batch size or process count.
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(batch["index"])
  x_hat, mean, logvar, _ = _apply(model, state.params, state.batch_stats, x, keys, train=False)
  _, per_image = losses.vae_loss(x, x_hat, mean, logvar, state.step, loss_config,
                                 mask=batch["mask"])
  return per_image


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


def summarize_train(outputs: list[dict]) -> dict[str, float]:
  """Mean of each per-step scalar over a window of steps."""
  return {k: float(np.mean([o[k] for o in outputs], dtype=np.float64))
          for k in ("loss", "recon", "kl", "elbo", "grad_norm")}


def _write_images(exp: Experiment, state, step: int, row: dict, writer, workdir: str,
                  p_images, base_rng):
  """Reconstruction grid (inputs above reconstructions) and prior samples, as PNG + TensorBoard.

  Every process runs the computation (the state is a global array); process 0 writes."""
  config = exp.config
  n = config.num_image_samples
  batch = next(input_pipeline.eval_batches(exp.dataset.source("val"), global_batch_size=n,
                                           image_size=config.image_size,
                                           process_index=0, process_count=1))
  x = jax.make_array_from_process_local_data(mesh_lib.replicated(exp.mesh), batch["image"])
  recon, samples = p_images(state, x, jax.random.fold_in(base_rng, 2**30 + 1))
  if jax.process_index() != 0:
    return
  x, recon, samples = np.asarray(x), np.asarray(recon), np.asarray(samples)
  img_dir = fileio.join(workdir, "images")
  fileio.makedirs(img_dir)
  elbo = row.get("val/elbo")
  when = f"step {step}" + (f", validation ELBO {elbo:,.0f} nats/image" if elbo else "")
  for name, rows, labels, title in (
      ("recon", [x, recon], ["input", "reconstruction"], f"Reconstructions, {when}"),
      ("samples", [samples], ["prior sample"], f"Samples from the prior, {when}")):
    for path in (fileio.join(img_dir, f"{name}_{step:07d}.png"),
                 fileio.join(workdir, f"{name}.png")):
      plots.save_image_grid(rows, path, row_labels=labels, title=title)
  writer.write_image(step, "recon", np.concatenate([np.concatenate(list(x), 1),
                                                    np.concatenate(list(recon), 1)], 0))
  writer.write_image(step, "samples", np.concatenate(list(samples), 1))


def build(config) -> Experiment:
  """Model, optimiser, mesh, initial state, jitted steps and evaluators of a VAE config."""
  dataset = registry.get(config.data)
  model = vae_lib.create_vae(config.model, config.image_size, config.get("dtype", "float32"))
  mesh_lib.check_batch_sizes(config)
  mesh = mesh_lib.make_mesh()
  spe, total_steps, warmup = optim.schedule_steps(config, len(dataset.source("train")))
  tx = optim.make_optimizer(config.optimizer, total_steps, warmup)
  rng = jax.random.key(config.seed)
  init_rng, base_rng = jax.random.split(rng)
  repl, sharded = mesh_lib.replicated(mesh), mesh_lib.data_sharded(mesh)
  state = jax.jit(functools.partial(create_train_state, model, tx, image_size=config.image_size),
                  out_shardings=repl)(init_rng)
  p_train = jax.jit(
      functools.partial(train_step, model=model, tx=tx, loss_config=config.loss,
                        base_rng=base_rng, image_size=config.image_size, aug=config.aug),
      in_shardings=(repl, sharded), out_shardings=(repl, repl), donate_argnums=0)
  p_eval = jax.jit(
      functools.partial(eval_step, model=model, loss_config=config.loss,
                        rng=jax.random.fold_in(base_rng, 2**30), image_size=config.image_size),
      in_shardings=(repl, sharded), out_shardings=sharded)
  p_images = jax.jit(functools.partial(_reconstruct_and_sample, model=model,
                                       num_samples=config.num_image_samples))
  schedule = optim.learning_rate_schedule(config.optimizer.lr, total_steps, warmup,
                                          config.optimizer.end_lr_factor)

  def make_evaluator(source):
    return vae_evaluator.VaeEvaluator(p_eval, source, batch_size=config.eval_batch_size,
                                      mesh=mesh)

  def after_eval(exp, state, step, row, writer, workdir):
    _write_images(exp, state, step, row, writer, workdir, p_images, base_rng)

  return Experiment(
      config=config, meta=dataset.meta, dataset=dataset, mesh=mesh, state=state,
      train_step=p_train, eval_step=p_eval, steps_per_epoch=spe, total_steps=total_steps,
      learning_rate=lambda step: float(schedule(step)), summarize_train=summarize_train,
      make_evaluator=make_evaluator, progress_keys=("loss", "elbo"), after_eval=after_eval)


def encode_step(state: TrainState, batch, *, model, image_size: int):
  """Posterior means of a batch: the VAE's latent representation of each image."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  x = device_augment.model_images(batch["image"], image_size=image_size)
  mean, _ = model.apply(variables, x, train=False, method=model.encode)
  return {"mean": mean}


def write_latent_map(exp: Experiment, state, workdir: str, split: str = "val") -> str:
  """DIR/latent_pca.png: the first two principal components of the posterior means of
  `split`, one dot per image coloured by its class."""
  from derm_jax import stats
  from derm_jax.evaluation import common
  model = vae_lib.create_vae(exp.config.model, exp.config.image_size,
                           exp.config.get("dtype", "float32"))
  p_encode = jax.jit(functools.partial(encode_step, model=model,
                                       image_size=exp.config.image_size))
  out = common.collect(p_encode, state, exp.dataset.source(split),
                       batch_size=exp.config.eval_batch_size, mesh=exp.mesh)
  path = fileio.join(workdir, "latent_pca.png")
  if jax.process_index() == 0:
    xy, var = stats.pca_2d(out["mean"], return_variance=True)
    plots.save_latent_map(xy, out["label"], list(exp.meta.class_names), path,
                          title=f"VAE latents of the {split} split (PCA, "
                                f"{100 * float(np.sum(var[:2])):.0f}% of variance), "
                                f"step {int(state.step)}")
  return path


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains the VAE, resuming from the latest checkpoint in `workdir` if there is one;
  returns the last evaluation row. Ends with the latent map of the validation split."""
  exp = build(config)
  state, last_eval = loop.train(exp, workdir)
  write_latent_map(exp, state, workdir)
  return last_eval


def evaluate(config, workdir: str, step: int | None = None,
             splits=("val", "test")) -> dict[str, float]:
  """Restores a checkpoint (latest or `step`) and reports ELBO, reconstruction and KL."""
  exp = build(config)
  state = loop.restore(exp, workdir, step)
  results: dict[str, Any] = {"step": int(state.step)}
  for split in splits:
    for k, v in exp.make_evaluator(exp.dataset.source(split)).run(state).items():
      results[f"{split}/{k}"] = v
  logging.info("Eval of %s at step %d: %s", workdir, results["step"],
               ", ".join(f"{k}={v:.4f}" for k, v in results.items() if k != "step"))
  if jax.process_index() == 0:
    with fileio.open(fileio.join(workdir, f"eval_step{results['step']}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
