"""Checkpoint integrity: manifests, damaged-step fallback, and one-line errors."""

import json
import logging
import os

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from derm_jax.errors import CheckpointError, DermJaxError
from derm_jax.train import checkpoint

STATE = {"w": jnp.arange(4000, dtype=jnp.float32), "opt": {"mu": jnp.ones((16, 8))}}


def state_at(step):
  return {"w": STATE["w"] * step, "opt": {"mu": STATE["opt"]["mu"] * step}}


def save_steps(directory, steps=(1, 2)):
  ckpt = checkpoint.Checkpointer(str(directory), max_to_keep=5)
  for s in steps:
    ckpt.save(s, state_at(s))
  ckpt.close()


def largest_data_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
           if f != checkpoint.MANIFEST_NAME]
  return max(files, key=os.path.getsize)


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def flip_bytes(path, n=400):
  data = bytearray(open(path, "rb").read())
  start = max(0, len(data) // 2 - n // 2)
  for i in range(start, min(len(data), start + n)):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def warnings_text(caplog):
  return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_manifest_written_for_every_step(tmp_path):
  save_steps(tmp_path, (1, 2, 3))
  for s in (1, 2, 3):
    assert os.path.isfile(tmp_path / str(s) / checkpoint.MANIFEST_NAME)
    assert checkpoint.check_step(str(tmp_path), s).status == checkpoint.INTACT
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.latest_step() == 3
  np.testing.assert_array_equal(ckpt.restore(None, STATE)["w"], state_at(3)["w"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_latest_step_falls_back_and_explicit_restore_refuses(tmp_path, caplog, damage):
  save_steps(tmp_path, (1, 2))
  bad = largest_data_file(tmp_path / "2")
  {"truncate": truncate, "flip": flip_bytes, "delete": os.remove}[damage](bad)

  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=5)
  with caplog.at_level(logging.WARNING):
    assert ckpt.latest_step() == 1
  assert "step 2" in warnings_text(caplog)
  assert f"rm -r {tmp_path / '2'}" in warnings_text(caplog)
  assert ckpt.all_steps() == [1, 2]
  restored = ckpt.restore(None, STATE)
  np.testing.assert_array_equal(restored["w"], state_at(1)["w"])
  np.testing.assert_array_equal(restored["opt"]["mu"], state_at(1)["opt"]["mu"])

  with pytest.raises(CheckpointError) as err:
    ckpt.restore(2, STATE)
  msg = str(err.value)
  assert "step 2" in msg and os.path.relpath(bad, tmp_path / "2") in msg
  assert f"rm -r {tmp_path / '2'}" in msg and "\n" not in msg
  assert isinstance(err.value, DermJaxError)

  # Training resumed from step 1 saves step 2 again: the damaged one is moved aside.
  ckpt.save(2, state_at(2))
  ckpt.close()
  assert os.path.isdir(tmp_path / "2.damaged")
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.all_steps() == [1, 2] and ckpt.latest_step() == 2
  np.testing.assert_array_equal(ckpt.restore(2, STATE)["w"], state_at(2)["w"])


def test_module_restores_verify_too(tmp_path, caplog):
  save_steps(tmp_path, (1, 2))
  flip_bytes(largest_data_file(tmp_path / "2"))
  with caplog.at_level(logging.WARNING):
    step, tree = checkpoint.restore_state_tree(str(tmp_path))
  assert step == 1 and "step 2" in warnings_text(caplog)
  np.testing.assert_array_equal(tree["w"], state_at(1)["w"])
  with pytest.raises(CheckpointError, match="step 2 is damaged"):
    checkpoint.restore_state_tree(str(tmp_path), 2)

  class Target(dict):
    def replace(self, **kw):
      return Target({**self, **kw})

  with pytest.raises(CheckpointError, match="rm -r"):
    checkpoint.restore_for_inference(str(tmp_path), Target(STATE), 2)
  with pytest.raises(checkpoint.CheckpointNotFoundError, match="step 7"):
    checkpoint.restore_for_inference(str(tmp_path), Target(STATE), 7)


def test_manifest_is_published_with_the_step(tmp_path):
  """A step's manifest is part of its save: a process that dies the moment the step appears
  (as with kill -9 right after the save) leaves the step with its manifest, verified."""
  import subprocess
  import sys
  code = f"""
import os, time
import jax.numpy as jnp
from derm_jax.train import checkpoint
ckpt = checkpoint.Checkpointer({str(tmp_path)!r}, max_to_keep=5)
ckpt.save(1, {{"w": jnp.arange(4000, dtype=jnp.float32)}})
while not os.path.isdir(os.path.join({str(tmp_path)!r}, "1")):
  time.sleep(0.001)
os._exit(0)  # no close(), no further save: nothing else could write the manifest
"""
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.isfile(tmp_path / "1" / checkpoint.MANIFEST_NAME)
  assert checkpoint.check_step(str(tmp_path), 1).status == checkpoint.INTACT


def test_step_without_manifest_in_a_new_directory_is_never_restored(tmp_path, caplog):
  """In a directory written by this version (it has the marker), a step without a manifest
  is a save a kill interrupted: skipped with a warning naming the step used instead, and
  an explicit restore of it is refused."""
  save_steps(tmp_path, (1, 2))
  assert os.path.isfile(tmp_path / checkpoint.VERIFIED_MARKER)
  os.remove(tmp_path / "2" / checkpoint.MANIFEST_NAME)  # killed before it was written
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=5)
  assert ckpt.check(2).status == checkpoint.DAMAGED
  with caplog.at_level(logging.WARNING):
    assert ckpt.latest_step() == 1
  assert "step 2" in warnings_text(caplog) and "resumes from step 1" in warnings_text(caplog)
  with pytest.raises(CheckpointError, match="did not complete"):
    ckpt.restore(2, STATE)
  ckpt.close()


def test_every_step_damaged_says_training_starts_again(tmp_path, caplog):
  save_steps(tmp_path, (1, 2))
  for s in (1, 2):
    flip_bytes(largest_data_file(tmp_path / str(s)))
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=5)
  with caplog.at_level(logging.WARNING):
    assert ckpt.latest_step() is None
  text = warnings_text(caplog)
  assert "starts again from step 0" in text and "resumes from" not in text
  ckpt.close()


def test_train_window_is_saved_and_restored_with_the_state(tmp_path):
  window = {"loss": np.arange(6, dtype=np.float32).reshape(3, 2),
            "label": np.array([[1, 2], [3, 4], [5, 6]], np.int32)}
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=5)
  ckpt.save(1, state_at(1))
  ckpt.save(2, state_at(2), window=window)
  ckpt.close()
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  state, got = ckpt.restore_with_window(2, STATE)
  np.testing.assert_array_equal(state["w"], state_at(2)["w"])
  assert got.keys() == window.keys()
  for k in window:
    np.testing.assert_array_equal(got[k], window[k])
    assert got[k].dtype == window[k].dtype
  assert ckpt.restore_with_window(1, STATE)[1] is None


# Orbax leaves coroutines of the failed read behind; they are reported at garbage collection.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unverified_steps_of_old_directories_are_used_and_fall_back_when_unreadable(
    tmp_path, caplog):
  save_steps(tmp_path, (1, 2))
  # A directory of an earlier version: no marker, and step 2 without a manifest.
  os.remove(tmp_path / checkpoint.VERIFIED_MARKER)
  os.remove(tmp_path / "2" / checkpoint.MANIFEST_NAME)
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.check(2).status == checkpoint.UNVERIFIED
  assert ckpt.latest_step() == 2
  np.testing.assert_array_equal(ckpt.restore(None, STATE)["w"], state_at(2)["w"])

  os.remove(largest_data_file(tmp_path / "2"))
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  with caplog.at_level(logging.WARNING):
    np.testing.assert_array_equal(ckpt.restore(None, STATE)["w"], state_at(1)["w"])
  assert "step 2" in warnings_text(caplog)
  with pytest.raises(CheckpointError, match=r"step 2 \(no integrity manifest\).*rm -r"):
    ckpt.restore(2, STATE)
  step, restored = ckpt.restore_latest(STATE)
  assert step == 1
  np.testing.assert_array_equal(restored["w"], state_at(1)["w"])


def test_steps_of_earlier_versions_with_an_iterator_item_still_restore(tmp_path):
  """Earlier versions also saved a Grain iterator state (`data/`) with every step; such
  steps are covered by the manifest and their state restores (the data item is ignored)."""
  import orbax.checkpoint as ocp
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  next(it)
  with ocp.CheckpointManager(str(tmp_path)) as mngr:
    mngr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(state_at(1)),
                                          data=grain.checkpoint.CheckpointSave(it)))
  checkpoint.write_manifest(str(tmp_path / "1"))
  ckpt = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  manifest = json.loads((tmp_path / "1" / checkpoint.MANIFEST_NAME).read_text())
  assert any(f.startswith("data/") for f in manifest["files"])
  assert ckpt.check(1).status == checkpoint.INTACT
  step, restored = ckpt.restore_latest(STATE)
  assert step == 1
  np.testing.assert_array_equal(restored["w"], state_at(1)["w"])


def test_missing_or_empty_directory_is_one_line_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointNotFoundError, match="No checkpoint directory"):
    checkpoint.restore_state_tree(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError):
    checkpoint.Checkpointer(str(tmp_path / "nope"), read_only=True)
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoint.CheckpointNotFoundError, match="No checkpoint found"):
    checkpoint.restore_state_tree(str(tmp_path / "empty"))
  ckpt = checkpoint.Checkpointer(str(tmp_path / "empty"), read_only=True)
  assert ckpt.latest_step() is None
  with pytest.raises(checkpoint.CheckpointNotFoundError):
    ckpt.restore(None, STATE)
  (tmp_path / "file").write_text("x")
  with pytest.raises(CheckpointError, match="not a directory"):
    checkpoint.Checkpointer(str(tmp_path / "file"))
