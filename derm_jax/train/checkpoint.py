"""Orbax checkpoints of the whole training state plus the Grain iterator state.

Layout: `<workdir>/checkpoints/<step>/{state,data}`. Orbax writes each step into a
temporary directory and renames it when complete, so a run killed at any moment
(even `kill -9` mid-write) leaves only complete checkpoints; stale temporaries are
cleaned on the next start. `restore` puts arrays straight into the shardings of the
given abstract target, so a checkpoint moves between device counts and meshes.
"""

from __future__ import annotations

import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of jax.Arrays: a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpointer:
  """Thin wrapper over ocp.CheckpointManager with 'state' and (optional) 'data' items."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int | None, target_state, data_iterator=None):
    """Restores `state` (into target's shapes/shardings) and, if given, the iterator in place."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint found in {self.directory}.")
    if step not in self.all_steps():
      raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory}; "
                              f"available: {self.all_steps()}")
    items = {"state": ocp.args.StandardRestore(abstract_like(target_state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def restore_state_tree(directory: str, step: int | None = None) -> tuple[int, dict]:
  """Restores the raw 'state' pytree (nested dicts of arrays on one local device) of a
  run's checkpoint, without the model that wrote it and whatever mesh it was saved from.
  Used to take a pretrained VAE's encoder."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoint directory {directory!r}.")
  mngr = ocp.CheckpointManager(os.path.abspath(directory),
                               options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers={"state": ocp.StandardCheckpointHandler()})
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint found in {directory!r}.")
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          mngr.item_metadata(step)["state"])
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  finally:
    mngr.close()
  return step, restored["state"]


def restore_for_inference(directory: str, target_state, step: int | None, sharding):
  """`target_state` with every field but `opt_state` replaced by the checkpoint's values.

  The optimiser state is not read, so a checkpoint stays evaluable whatever optimiser (or
  optax version) trained it. Raises FileNotFoundError naming the missing step."""
  if step is not None:
    available = Checkpointer(directory, read_only=True).all_steps()
    if step not in available:
      raise FileNotFoundError(f"No checkpoint for step {step} in {directory}; "
                              f"available: {available}")
  _, tree = restore_state_tree(directory, step)
  put = lambda t: jax.tree.map(  # noqa: E731
      lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), t)
  fields = {k: put(v if v is not None else {}) for k, v in tree.items() if k != "opt_state"}
  return target_state.replace(**fields)
