"""Orbax checkpoints of the whole training state, verified.

Layout: `<workdir>/checkpoints/<step>/{state,derm_jax_manifest.json}` (steps written by
earlier versions also hold `data/`, a Grain iterator state that is no longer read: the
input pipeline's position is the step itself, see `data/input_pipeline.py`). Orbax writes
each step into a temporary directory and renames it when complete, so a run killed at any
moment (even `kill -9` mid-write) leaves only complete checkpoints; stale temporaries are
cleaned on the next start. `restore` puts arrays straight into the shardings of the given
abstract target, so a checkpoint moves between device counts, meshes and process counts.

Integrity: as part of each save, once Orbax has written the step's files and before it
publishes the step (its post-finalisation callback, in the save's background thread, runs
while the step is still in its temporary directory), process 0 writes
`derm_jax_manifest.json` into the step with the size and sha256 of every data file; Orbax's
rename then publishes data and manifest together. A checkpoints directory created by this
version also holds a marker file (`VERIFIED_MARKER`): there a published step without a
manifest (possible where a store has no atomic rename, e.g. gs://, and a kill came in
between) is treated like a damaged step (skipped, with a warning, and set aside at the next
save), so no step of it is ever restored without its hashes checked. Every restore path (`restore`,
`restore_state_tree`, `restore_for_inference`) checks the step against it first:

* intact (manifest matches): restored.
* damaged (a file missing, truncated or changed): never restored. Asked for the latest
  step (`latest_step()`, `restore(None, ...)`, `step=None` in the module functions), the
  newest intact step is used instead and a warning names the damaged step and the command
  that discards it; asked for that step explicitly, `CheckpointError` says which file is
  wrong and how to discard the step.
* unverified (no manifest, in a directory written by an older version without the
  marker): used if Orbax can restore it, with a log line; if Orbax cannot, a latest-step
  restore falls back to the previous step and an explicit one raises `CheckpointError`.

Besides the state, a step may hold `train_window`: the per-step outputs of the training
steps since the last evaluation (numpy arrays, stacked over steps), so that a run resumed
in the middle of an epoch computes that epoch's train metrics (and the overfitting gap)
over every step of the epoch, exactly as an uninterrupted run does.

A damaged step that is newer than the step training resumed from would make Orbax skip
every later save (it only saves steps after its newest one), so `save` first moves such
steps aside to `<step>.damaged` (logged; delete them when no longer needed).

The directory may be a `gs://` URL (all file access goes through `derm_jax.fileio`): the
manifest is then one object upload (published whole, so still never half a manifest), and
moving a damaged step aside copies its objects and deletes the originals (not atomic: a
kill in between leaves both, and the copy is set aside again at the next save).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from derm_jax import fileio
from derm_jax.errors import CheckpointError

MANIFEST_NAME = "derm_jax_manifest.json"
VERIFIED_MARKER = "derm_jax_steps_have_manifests"  # in the checkpoints directory
WINDOW_ITEM = "train_window"
_MANIFEST_TMP = "." + MANIFEST_NAME + ".tmp"  # the temporary name of earlier versions
MANIFEST_FORMAT = 1
INTACT, UNVERIFIED, DAMAGED = "intact", "unverified", "damaged"


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """No checkpoint directory, no checkpoint in it, or not the requested step."""


@dataclasses.dataclass(frozen=True)
class StepCheck:
  """The integrity of one checkpoint step against its manifest."""

  step: int
  path: str      # the step directory
  status: str    # INTACT | UNVERIFIED | DAMAGED
  problem: str = ""  # for DAMAGED: what is wrong, naming the file

  def discard_command(self) -> str:
    return f"rm -r {shlex.quote(self.path)}"


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a pytree of jax.Arrays: a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


# ----------------------------------------------------------------------------- manifests


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with fileio.open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


# Orbax's own bookkeeping, written or updated while it publishes a step (after our manifest):
# not the checkpoint's data, so not in the manifest.
ORBAX_BOOKKEEPING = ("_CHECKPOINT_METADATA", "commit_success.txt")
_ORBAX_TMP = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


def _step_files(step_path: str) -> list[str]:
  """Paths (relative, '/'-separated, sorted) of the step's data files (the manifest and
  Orbax's bookkeeping excluded)."""
  return [rel for rel in fileio.list_files(step_path)
          if rel not in (MANIFEST_NAME, _MANIFEST_TMP, *ORBAX_BOOKKEEPING)
          and not fileio.is_atomic_tmp(rel, MANIFEST_NAME)]


def write_manifest(step_path: str) -> str:
  """Writes `<step_path>/derm_jax_manifest.json` (size + sha256 of every file); its path."""
  files = {}
  for rel in _step_files(step_path):
    full = fileio.join(step_path, rel)
    files[rel] = {"size": fileio.getsize(full), "sha256": _sha256(full)}
  record = {"format": MANIFEST_FORMAT, "written": time.time(), "files": files}
  return fileio.atomic_write_text(fileio.join(step_path, MANIFEST_NAME),
                                  json.dumps(record, indent=1, sort_keys=True))


def check_step(directory: str, step: int) -> StepCheck:
  """Checks step `step` of checkpoint `directory` against its manifest (hashes every file)."""
  directory = fileio.abspath(directory)
  path = fileio.join(directory, str(step))
  damaged = lambda problem: StepCheck(step, path, DAMAGED, problem)  # noqa: E731
  if not fileio.isdir(path):
    return damaged(f"step directory {path} is missing")
  manifest = fileio.join(path, MANIFEST_NAME)
  if not fileio.exists(manifest):
    if fileio.exists(fileio.join(directory, VERIFIED_MARKER)):
      return damaged(f"its save did not complete (no {MANIFEST_NAME}: the run was stopped "
                     "before the step's file hashes were written)")
    return StepCheck(step, path, UNVERIFIED)
  try:
    with fileio.open(manifest) as f:
      record = json.load(f)
    files = record["files"]
    if not isinstance(files, dict):
      raise TypeError("'files' is not a mapping")
  except (OSError, ValueError, KeyError, TypeError) as e:
    return damaged(f"manifest {manifest} is unreadable ({e})")
  for rel, want in sorted(files.items()):
    full = fileio.join(path, rel)
    try:
      size = fileio.getsize(full)
    except OSError:
      return damaged(f"file {full} is missing")
    if size != want.get("size"):
      return damaged(f"file {full} has {size} bytes, {want.get('size')} were written")
    if _sha256(full) != want.get("sha256"):
      return damaged(f"file {full} has changed since it was written (sha256 mismatch)")
  return StepCheck(step, path, INTACT)


def _damaged_message(check: StepCheck, fallback: int | None = -1) -> str:
  """What is wrong with a damaged step; `fallback`: the step used instead (None: none, so
  training starts again from step 0; -1: not said)."""
  then = ("" if fallback == -1 else
          f" The run resumes from step {fallback} instead." if fallback is not None else
          " No intact step is left: the run starts again from step 0.")
  return (f"checkpoint step {check.step} is damaged: {check.problem}. Discard it with "
          f"`{check.discard_command()}`.{then}")


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


def _restore_checked(directory: str, steps: list[int], step: int | None,
                     check: Callable[[int], StepCheck], restore_fn: Callable[[int], object],
                     warned: set[int] | None = None):
  """Verifies and restores `step` (None: the newest step that verifies and restores).

  Returns (step, restore_fn(step)). Raises CheckpointNotFoundError / CheckpointError."""
  warned = set() if warned is None else warned
  if step is not None:
    if step not in steps:
      raise CheckpointNotFoundError(f"No checkpoint for step {step} in {directory}; "
                                    f"available: {sorted(steps)}")
    c = check(step)
    if c.status == DAMAGED:
      raise CheckpointError(_damaged_message(c))
    return step, _restore_one(c, restore_fn, raise_unverified=True)
  if not steps:
    raise CheckpointNotFoundError(f"No checkpoint found in {directory}")
  skipped = []
  for s in sorted(steps, reverse=True):
    c = check(s)
    if c.status == DAMAGED:
      if s not in warned:
        logging.warning("Skipping %s", _damaged_message(c))
        warned.add(s)
      skipped.append(s)
      continue
    try:
      return s, _restore_one(c, restore_fn, raise_unverified=False)
    except _UnverifiedRestoreFailed as e:
      logging.warning("Skipping unverified checkpoint step %d in %s: Orbax cannot restore it "
                      "(%s). Discard it with `%s`.", s, directory, e.reason,
                      c.discard_command())
      skipped.append(s)
  raise CheckpointError(f"No usable checkpoint in {directory}: step(s) {skipped} are damaged "
                        "(see the warnings above); delete them to start the run afresh.")


class _UnverifiedRestoreFailed(Exception):
  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def _restore_one(c: StepCheck, restore_fn, raise_unverified: bool):
  if c.status == INTACT:
    return restore_fn(c.step)  # intact files: a failure here is not damage, keep it as is
  logging.info("Checkpoint step %d in %s has no integrity manifest (older run, or killed "
               "before it was written): restoring it unverified.", c.step, c.path)
  try:
    return restore_fn(c.step)
  except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types here
    if not raise_unverified:
      raise _UnverifiedRestoreFailed(_first_line(e)) from e
    raise CheckpointError(
        f"checkpoint step {c.step} (no integrity manifest) cannot be restored: "
        f"{_first_line(e)}. If it is damaged, discard it with `{c.discard_command()}`."
    ) from e


def _check_directory(directory: str) -> None:
  if not fileio.exists(directory):
    raise CheckpointNotFoundError(f"No checkpoint directory {directory}")
  if not fileio.isdir(directory):
    raise CheckpointError(f"checkpoint directory {directory} is not a directory")


# ----------------------------------------------------------------------------- Checkpointer


class Checkpointer:
  """A run's checkpoints: ocp.CheckpointManager with a 'state' item (and an optional
  'train_window'), verified by manifests.

  `all_steps()` lists every finalised step, damaged ones included; `usable_steps()` the
  steps that may be restored (not known to be damaged); `latest_step()` the newest of them
  (the one a resumed run should use)."""

  def __init__(self, directory: str, max_to_keep: int | None = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = fileio.abspath(directory)
    if read_only:
      _check_directory(self.directory)
    elif fileio.exists(self.directory) and not fileio.isdir(self.directory):
      raise CheckpointError(f"checkpoint directory {self.directory} is not a directory")
    self._read_only = read_only
    self._writer = not read_only and jax.process_index() == 0
    if self._writer and not _has_steps(self.directory):
      # A new directory: every step it will hold gets its manifest as part of its save.
      fileio.makedirs(self.directory)
      fileio.atomic_write_text(fileio.join(self.directory, VERIFIED_MARKER),
                               "Every checkpoint step in this directory has a manifest.\n")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only, enable_async_checkpointing=async_save,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifests))
    self._mngr = ocp.CheckpointManager(self.directory, options=options)
    self._checks: dict[int, StepCheck] = {}
    self._warned: set[int] = set()

  # -- integrity

  def check(self, step: int) -> StepCheck:
    """The integrity of `step` (cached; intact/damaged results are final)."""
    c = self._checks.get(step)
    if c is None or c.status == UNVERIFIED:
      c = check_step(self.directory, step)
      self._checks[step] = c
    return c

  def usable_steps(self) -> list[int]:
    """Steps that are not known to be damaged (intact, or unverified in an old directory)."""
    return [s for s in self.all_steps() if self.check(s).status != DAMAGED]

  def latest_intact_step(self) -> int | None:
    """The newest step that is not damaged (intact or unverified), warning about skipped ones
    (and saying which step the run resumes from instead)."""
    usable = self.usable_steps()
    fallback = max(usable) if usable else None
    for s in self.all_steps():
      if (fallback is None or s > fallback) and s not in self._warned:
        logging.warning("Skipping %s", _damaged_message(self.check(s), fallback))
        self._warned.add(s)
    return fallback

  def _write_manifests(self) -> None:
    """Manifests for every step lacking one: the step being saved (Orbax's
    post-finalisation callback, before the step is published) and, at close, any older
    published step without one."""
    if not self._writer:
      return
    pending = [n for n in fileio.listdir(self.directory) if _ORBAX_TMP.match(n)]
    for name in pending + [str(s) for s in _finalised_steps(self.directory)]:
      path = fileio.join(self.directory, name)
      s = int(name.split(".")[0])
      if fileio.isdir(path) and not fileio.exists(fileio.join(path, MANIFEST_NAME)):
        try:
          write_manifest(path)
        except FileNotFoundError:  # removed meanwhile (max_to_keep)
          continue
        self._checks.pop(s, None)

  def _set_aside(self, steps: list[int]) -> None:
    """Moves `steps` to `<step>.damaged` (process 0) and makes Orbax forget them."""
    if not steps:
      return
    if self._writer:
      for s in steps:
        src = fileio.join(self.directory, str(s))
        dst = src + ".damaged"
        n = 1
        while fileio.exists(dst):
          n += 1
          dst = f"{src}.damaged{n}"
        fileio.rename(src, dst)
        logging.warning("Moved damaged checkpoint step %d aside to %s (delete it with "
                        "`rm -r %s`).", s, dst, shlex.quote(dst))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("derm_jax_set_aside_damaged")
    self._mngr.reload()
    for s in steps:
      self._checks.pop(s, None)

  def discard_after(self, step: int) -> None:
    """Deletes the steps after `step` (a population resumes all its members from the newest
    step they all have; a member's later steps are computed again, identically)."""
    later = [s for s in self.all_steps() if s > step]
    if not later:
      return
    if self._writer:
      for s in later:
        fileio.rmtree(fileio.join(self.directory, str(s)))
      logging.info("Discarded checkpoint steps %s of %s (after the common step %d).", later,
                    self.directory, step)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("derm_jax_discard_after")
    self._mngr.reload()
    for s in later:
      self._checks.pop(s, None)

  # -- the public API

  def latest_step(self) -> int | None:
    """The step to resume from: the newest step not known to be damaged (None: none)."""
    return self.latest_intact_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def prune(self, keep: int, common: set[int]) -> None:
    """Deletes the steps older than the `keep` newest of `common` (the steps every member
    of a population holds intact). A training loop prunes only once every member's last
    save is complete, so no member loses the step they all share before each holds a
    newer one: a kill, even during one member's save, costs at most one checkpoint
    interval."""
    newest = sorted(common)[-max(int(keep), 1):]
    if self._read_only or not newest:
      return  # (every process deletes: Orbax synchronises the processes on each delete)
    self._mngr.wait_until_finished()
    for s in self.all_steps():
      if s < newest[0]:
        self._mngr.delete(s)
        self._checks.pop(s, None)

  def save(self, step: int, state, window: dict | None = None, force: bool = False) -> bool:
    """Saves `state` (and `window`, a dict of numpy arrays, when not empty) as step `step`;
    asynchronous: the manifest is written when the save completes."""
    self._mngr.wait_until_finished()
    self._set_aside([s for s in self.all_steps()
                     if s >= step and self.check(s).status == DAMAGED])
    items = {"state": ocp.args.StandardSave(state)}
    if window:
      items[WINDOW_ITEM] = ocp.args.StandardSave(window)
    return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int | None, target_state):
    """Restores `state` into the target's shapes and shardings.

    `step=None`: the newest step that verifies and restores (damaged steps are skipped with
    a warning). An explicit damaged or missing step raises CheckpointError."""
    _, (state, _) = _restore_checked(self.directory, self.all_steps(), step, self.check,
                                     self._restore_fn(target_state), self._warned)
    return state

  def restore_latest(self, target_state) -> tuple[int, object]:
    """(step, state) of the newest step that verifies and restores, for resuming a run.

    Like `restore(None, ...)` but also says which step it used: damaged steps, and
    unverified ones that Orbax cannot read, are skipped with a warning naming them.
    Raises CheckpointNotFoundError if there is no checkpoint at all."""
    step, (state, _) = _restore_checked(self.directory, self.all_steps(), None, self.check,
                                        self._restore_fn(target_state), self._warned)
    return step, state

  def restore_with_window(self, step: int, target_state) -> tuple[object, dict | None]:
    """(state, train window or None) of step `step`, verified first."""
    _, out = _restore_checked(self.directory, self.all_steps(), step, self.check,
                              self._restore_fn(target_state), self._warned)
    return out

  def _restore_fn(self, target_state):
    target = abstract_like(target_state)

    def restore_fn(s):
      items = {"state": ocp.args.StandardRestore(target)}
      if fileio.isdir(fileio.join(self.directory, str(s), WINDOW_ITEM)):
        items[WINDOW_ITEM] = ocp.args.StandardRestore()
      out = self._mngr.restore(s, args=ocp.args.Composite(**items))
      window = out[WINDOW_ITEM] if WINDOW_ITEM in items else None
      if window is not None:
        window = {k: np.asarray(v) for k, v in window.items()}
      return out["state"], window

    return restore_fn

  def wait(self):
    self._mngr.wait_until_finished()
    self._write_manifests()

  def close(self):
    self._mngr.wait_until_finished()
    self._write_manifests()
    self._mngr.close()


def _finalised_steps(directory: str) -> list[int]:
  """Step numbers of the finalised step directories (Orbax renames a step's temporary
  directory to its number when the save is complete)."""
  if not fileio.isdir(directory):
    return []
  return sorted(int(n) for n in fileio.listdir(directory)
                if n.isdigit() and fileio.isdir(fileio.join(directory, n)))


def _has_steps(directory: str) -> bool:
  """Whether `directory` exists and holds a step directory (or a set-aside one)."""
  if not fileio.isdir(directory):
    return False
  return any(n.split(".")[0].isdigit() for n in fileio.listdir(directory))


def restore_state_tree(directory: str, step: int | None = None,
                       without: Sequence[str] = ()) -> tuple[int, dict]:
  """Restores the raw 'state' pytree (nested dicts of arrays on one local device) of a
  run's checkpoint, without the model that wrote it and whatever mesh it was saved from.
  Used to take a pretrained VAE's encoder. The step is verified first (see the module
  docstring); `step=None` takes the newest usable step. `without`: top-level fields of the
  state not read at all (e.g. 'opt_state', two thirds of an Adam run's bytes); the returned
  tree lacks them."""
  directory = fileio.abspath(directory)
  _check_directory(directory)
  # The step's 'state' item read directly (no CheckpointManager: a read-only manager logs
  # three warnings about its options on every load, evaluation and --mode=eval).
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  reader = ocp.PyTreeCheckpointHandler()

  def restore_fn(s):
    path = fileio.epath(fileio.join(directory, str(s), "state"))
    metadata = reader.metadata(path)
    tree = getattr(metadata, "tree", metadata)
    target = {k: v for k, v in tree.items() if k not in without}
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                          target)
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
    return {"state": reader.restore(path, args=ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=bool(without)))}

  try:
    step, restored = _restore_checked(directory, _finalised_steps(directory), step,
                                      lambda s: check_step(directory, s), restore_fn)
  finally:
    reader.close()
  return step, restored["state"]


def restore_for_inference(directory: str, target_state, step: int | None = None):
  """`target_state` with every field but `opt_state` replaced by the checkpoint's values
  (host numpy arrays).

  The optimiser state is not read, so a checkpoint stays evaluable whatever optimiser (or
  optax version) trained it. The step is verified first; raises CheckpointNotFoundError (a
  FileNotFoundError) naming a missing step and CheckpointError for a damaged one."""
  _, tree = restore_state_tree(directory, step, without=("opt_state",))
  fields = {k: jax.tree.map(np.asarray, v if v is not None else {}) for k, v in tree.items()}
  return target_state.replace(**fields)
