"""The VAE task (self-supervised arm): model, loss, train and eval steps, what to evaluate.

`build(config)` returns the `Task` that the shared loop (derm_jax/train/loop.py) trains for
one or many members (a study pretrains one VAE per seed as one program);
`train_members(members)`, `train_and_evaluate(config, workdir)` and
`evaluate(config, workdir, step)` are the entry points (`python -m derm_jax.main`).
Read top to bottom: state -> train step -> eval step -> image grids -> build -> entry points.
"""


import functools
import numbers
from collections.abc import Sequence
from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from derm_jax import fileio, plots
from derm_jax.data import device_augment, input_pipeline, registry, unlabeled
from derm_jax.evaluation import vae as vae_evaluator
from derm_jax.models import vae as vae_lib
from derm_jax.tasks import common, losses
from derm_jax.train import loop, optim, population, restore
from derm_jax.train import mesh as mesh_lib
from derm_jax.train.population import Member
from derm_jax.train.task import Task


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def create_train_state(model, tx, rng, image_size: int) -> TrainState:
  """A member's starting state; `tx=None`: no optimiser state (a checkpoint will be read)."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init({"params": rng, "dropout": rng}, x, rng, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=None if tx is None else tx.init(params))


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


def train_step(state: TrainState, batch, key, *, model, tx, loss_config, image_size: int, aug):
  """One optimisation step of one member; the step's randomness (augmentation included) is
  a pure function of the member's key and the step number."""
  rng = jax.random.fold_in(key, state.step)
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


EVAL_STREAM = 2**30      # fold_in(member key, .): the evaluation's posterior samples
IMAGES_STREAM = 2**30 + 1  # and the image grids' prior samples


def eval_step(state: TrainState, batch, key, *, model, loss_config, image_size: int):
  """Per-image ELBO, reconstruction NLL, KL and MSE (the evaluator averages them), and the
  posterior mean ('latent': the latent map of the last validation pass is drawn from it)."""
  rng = jax.random.fold_in(key, EVAL_STREAM)
  x = device_augment.model_images(batch["image"], image_size=image_size)
  # One key per image (from its position in the split): the posterior sample, and so the
  # ELBO estimate, of an image is the same whatever the eval batch size or process count.
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(batch["index"])
  x_hat, mean, logvar, _ = _apply(model, state.params, state.batch_stats, x, keys, train=False)
  _, per_image = losses.vae_loss(x, x_hat, mean, logvar, state.step, loss_config,
                                 mask=batch["mask"])
  return {**per_image, "latent": mean.astype(jnp.float32)}


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


summarize_train = common.mean_summary(("loss", "recon", "kl", "elbo", "grad_norm"))


def _write_images(task: Task, run: population.Run, step: int, rows: list[dict], p_images):
  """Each member's reconstruction grid (inputs above reconstructions) and prior samples,
  as PNG + TensorBoard. Every process runs the computation; process 0 writes."""
  config = task.config
  n = config.num_image_samples
  batch = next(input_pipeline.eval_batches(task.dataset.source("val"), global_batch_size=n,
                                           image_size=config.image_size,
                                           process_index=0, process_count=1))
  x = jax.make_array_from_process_local_data(mesh_lib.replicated(task.mesh), batch["image"])
  recon, samples = p_images(run.states, x, run.keys)
  if jax.process_index() != 0:
    return
  x, recon, samples = np.asarray(x), np.asarray(recon), np.asarray(samples)
  for m, (member, row) in enumerate(zip(run.members, rows, strict=True)):
    img_dir = fileio.join(member.workdir, "images")
    fileio.makedirs(img_dir)
    elbo = row.get("val/elbo")
    when = f"step {step}" + (f", validation ELBO {elbo:,.0f} nats/image" if elbo else "")
    for name, grid, labels, title in (
        ("recon", [x, recon[m]], ["input", "reconstruction"], f"Reconstructions, {when}"),
        ("samples", [samples[m]], ["prior sample"], f"Samples from the prior, {when}")):
      for path in (fileio.join(img_dir, f"{name}_{step:07d}.png"),
                   fileio.join(member.workdir, f"{name}.png")):
        plots.save_image_grid(grid, path, row_labels=labels, title=title)
    writer = run.writers[m]
    writer.write_image(step, "recon", np.concatenate([np.concatenate(list(x), 1),
                                                      np.concatenate(list(recon[m]), 1)], 0))
    writer.write_image(step, "samples", np.concatenate(list(samples[m]), 1))


def build(config) -> Task:
  """Model, optimiser, mesh, steps and evaluators of a VAE config (members: one per seed)."""
  dataset = registry.get(config.data)
  # The training split, and the unlabelled pool (config.data.unlabeled) where there is one:
  # self-supervised, so every image counts; never val or test.
  train_source = unlabeled.pretraining_source(dataset)
  model = vae_lib.create_vae(config.model, config.image_size, config.get("dtype", "float32"))
  mesh_lib.check_batch_sizes(config)
  mesh = mesh_lib.make_mesh()
  spe, total_steps, warmup = optim.schedule_steps(config, len(train_source))
  tx = optim.make_optimizer(config.optimizer, total_steps, warmup)
  p_init = {tx_: jax.jit(functools.partial(create_train_state, model, tx_,
                                           image_size=config.image_size))
            for tx_ in (tx, None)}

  def init_member(member_config, workdir: str, for_inference: bool = False):
    del workdir
    init_rng, step_rng = jax.random.split(jax.random.key(int(member_config.seed)))
    state = p_init[None if for_inference else tx](init_rng)
    return jax.tree.map(np.asarray, state), np.asarray(jax.random.key_data(step_rng))

  def images(state, x, key):
    return _reconstruct_and_sample(state, x, jax.random.fold_in(key, IMAGES_STREAM),
                                   model=model, num_samples=config.num_image_samples)

  p_images = jax.jit(lambda states, x, keys: jax.vmap(images, in_axes=(0, None, 0))(
      states, x, jax.random.wrap_key_data(keys)))
  schedule = optim.learning_rate_schedule(config.optimizer.lr, total_steps, warmup,
                                          config.optimizer.end_lr_factor)

  def make_evaluator(source, has_labels: bool = True):
    del has_labels
    return vae_evaluator.VaeEvaluator(source, batch_size=config.eval_batch_size, mesh=mesh)

  def after_eval(task, run, step, rows):
    _write_images(task, run, step, rows, p_images)

  return Task(
      config=config, meta=dataset.meta, dataset=dataset, mesh=mesh, steps_per_epoch=spe,
      total_steps=total_steps, learning_rate=lambda step: float(schedule(step)),
      init_member=init_member,
      train_step=functools.partial(train_step, model=model, tx=tx, loss_config=config.loss,
                                   image_size=config.image_size, aug=config.aug),
      eval_step=functools.partial(eval_step, model=model, loss_config=config.loss,
                                  image_size=config.image_size),
      summarize_train=summarize_train, make_evaluator=make_evaluator,
      train_source=train_source, progress_keys=("loss", "elbo"), after_eval=after_eval)


def encode_step(state: TrainState, batch, *, model, image_size: int):
  """Posterior means of a batch: the VAE's latent representation of each image."""
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  x = device_augment.model_images(batch["image"], image_size=image_size)
  mean, _ = model.apply(variables, x, train=False, method=model.encode)
  return {"mean": mean}


def latents(run: population.Run, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
  """(posterior means (N, M, D), labels (N,)) of every image of `split` for the run's
  members: those of the validation pass at the run's last step where it made one (no
  second pass), else one encoder pass over the split."""
  from derm_jax.evaluation import common
  task = run.task
  config = task.config
  last = run.val_evaluator
  if split == "val" and last is not None and run.val_step == run.step:
    return last.latents, last.labels

  def make_encode():  # once per task: one program for every group of a study stage
    model = vae_lib.create_vae(config.model, config.image_size, config.get("dtype", "float32"))
    return jax.jit(jax.vmap(functools.partial(encode_step, model=model,
                                              image_size=config.image_size),
                            in_axes=(0, None), out_axes=1))

  encode = task.once("encode", make_encode)
  out = common.collect(lambda batch: encode(run.states, batch), task.dataset.source(split),
                       batch_size=config.eval_batch_size, mesh=task.mesh)
  return out["mean"], out["label"]


def write_latent_maps(run: population.Run, split: str = "val") -> list[str]:
  """MEMBER_DIR/latent_pca.png for each member: the first two principal components of the
  posterior means of `split` (`latents`), one dot per image coloured by its class."""
  from derm_jax import stats
  task = run.task
  means, labels = latents(run, split)
  paths = []
  for m, member in enumerate(run.members):
    path = fileio.join(member.workdir, "latent_pca.png")
    paths.append(path)
    if jax.process_index() == 0:
      xy, var = stats.pca_2d(means[:, m], return_variance=True)
      plots.save_latent_map(xy, labels, list(task.meta.class_names), path,
                            title=f"VAE latents of the {split} split (PCA, "
                                  f"{100 * float(np.sum(var[:2])):.0f}% of variance), "
                                  f"step {run.step}")
  return paths


RECON_KINDS = ("gaussian", "l1")


def check_config(k) -> None:
  """This task's own fields, on derm_jax/validate.py's checker (every problem names its
  field; nothing is raised here)."""
  k.integer("model.latent_dim", 1)
  widths = k.get("model.decoder_widths")
  widths_ok = (isinstance(widths, (list, tuple)) and len(widths) > 0
               and all(isinstance(w, numbers.Integral) and not isinstance(w, bool) and w > 0
                       for w in widths))
  if not widths_ok:
    k.add("model.decoder_widths", f"={widths!r} must be a non-empty sequence of positive "
          "integers")
  if k.model_ok and widths_ok:
    try:
      vae_lib.check_image_size(k.get("image_size"), k.get("model.backbone"),
                               dict(k.get("model.backbone_kwargs") or {}), tuple(widths))
    except ValueError as e:
      k.add("image_size", f"={k.get('image_size')!r}: {k.reason(e)}")
  if k.has("loss.recon"):
    k.choice("loss.recon", RECON_KINDS)
  k.number("loss.sigma", 0, low_open=True, required=False)
  k.number("loss.l1_scale", 0, low_open=True, required=False)
  k.number("loss.beta", 0, required=False)
  k.integer("loss.kl_warmup_steps", 0, required=False)
  k.number("loss.free_bits", 0, required=False)
  k.integer("num_image_samples", 0, required=False)


def backbone_variables(tree: dict) -> dict:
  """The encoder's backbone out of a restored VAE checkpoint tree: what a classifier with
  init.source='pretrained' starts from (derm_jax/tasks/registry.py)."""
  return vae_lib.backbone_variables(tree)


def train_members(members: Sequence[Member], task=None) -> population.Run:
  """Trains the members' VAEs (one population: one program), resuming from their latest
  checkpoints; ends with each member's latent map of the validation split. `task`: one
  built for an earlier group of the same stage, reused with its compiled programs."""
  task = task or build(members[0].config)
  run = loop.train(task, members)
  write_latent_maps(run)
  return run


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Trains one VAE in `workdir`; returns its last evaluation row."""
  return train_members([Member("vae", workdir, config)]).last_rows[0]


def evaluate(config, workdir: str, step: int | None = None,
             splits=("val", "test")) -> dict[str, float]:
  """Restores a checkpoint (latest or `step`) and reports ELBO, reconstruction and KL."""
  return restore.evaluate_checkpoint(build(config), "vae", workdir, step, splits)
