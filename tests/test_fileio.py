"""Workdirs on cloud storage: every run output goes through derm_jax.fileio / etils.epath.

The fake bucket is an in-memory fsspec filesystem registered for `gs://`, put behind
etils.epath's own fsspec backend (the one epath uses for gs:// without TensorFlow), so the
code under test runs exactly the calls it makes on a real bucket, without any network. The
tests run in an empty current folder and check that nothing lands in `<cwd>/gs:`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from typing import ClassVar

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.utils import stringify_path
from ml_collections import ConfigDict

from derm_jax import fileio
from derm_jax.errors import WorkdirBusyError

WORKDIR = "gs://bucket/run"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeGcs(MemoryFileSystem):
  """An in-memory bucket store: `gs://bucket/a/b` is the key `bucket/a/b`."""

  protocol = ("gs", "gcs")
  root_marker = ""
  cachable = False
  store: ClassVar[dict] = {}
  pseudo_dirs: ClassVar[list] = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return path.rstrip("/")


@pytest.fixture
def bucket(monkeypatch, tmp_path):
  """The fake gs:// store (dict of object name -> bytes); cwd is an empty tmp folder."""
  from etils.epath import backend, gpath
  FakeGcs.store = {}
  FakeGcs.pseudo_dirs = [""]
  fs = FakeGcs()
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath -> fsspec backend
  monkeypatch.setattr(backend.fsspec_backend, "_get_filesystem", lambda name: fs)
  monkeypatch.chdir(tmp_path)
  yield FakeGcs.store
  assert not (tmp_path / "gs:").exists(), "a gs:// path was written as a local folder"
  assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def objects(store) -> dict[str, bytes]:
  return {k: bytes(v.getvalue()) for k, v in store.items()}


def read(store, url: str) -> bytes:
  return bytes(store[url.removeprefix("gs://")].getvalue())


# ----------------------------------------------------------------------------- paths


def test_urls_are_never_made_local():
  """`fileio.normalize` is what derm_jax.main applies to --workdir."""
  for url in ("gs://b/run", "gs://b/run/"):
    assert fileio.normalize(url) == "gs://b/run"
    assert fileio.abspath(url) == "gs://b/run"
  assert fileio.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert fileio.dirname("gs://b/run/x.png") == "gs://b/run"
  assert fileio.dirname("gs://b") == "gs://b"
  assert fileio.basename("gs://b/run/x.png") == "x.png"
  assert fileio.is_remote("gs://b") and fileio.scheme("S3://b") == "s3"
  assert not fileio.is_remote("/gs/b") and not fileio.is_remote("runs/gs:x")
  # Local paths: as before (absolute, ~ expanded).
  assert fileio.normalize("~/runs/x") == os.path.join(os.path.expanduser("~"), "runs/x")
  assert fileio.normalize("runs/x") == os.path.abspath("runs/x")
  assert fileio.join("/a", "b") == "/a/b"


def test_local_helpers_behave_as_before(tmp_path):
  path = tmp_path / "sub" / "f.json"
  old = os.umask(0o022)
  try:
    assert fileio.atomic_write_text(path, "x\n") == str(path)
  finally:
    os.umask(old)
  assert path.read_text() == "x\n" and os.listdir(path.parent) == ["f.json"]  # no tmp left
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # umask respected, unlike mkstemp
  fileio.append_text(path, "y\n")
  assert path.read_text() == "x\ny\n"
  (tmp_path / "sub" / "d").mkdir()
  (tmp_path / "sub" / "d" / "g").write_bytes(b"12")
  assert fileio.list_files(tmp_path / "sub") == ["d/g", "f.json"]
  assert fileio.getsize(tmp_path / "sub" / "d" / "g") == 2


def test_remote_text_binary_append_and_listing(bucket):
  f = fileio.join(WORKDIR, "a", "f.txt")
  fileio.atomic_write_text(f, "one\n")
  fileio.append_text(f, "two\n")
  assert fileio.read_text(f) == "one\ntwo\n"
  fileio.write_bytes(fileio.join(WORKDIR, "b.bin"), b"\x00\x01")
  assert fileio.getsize(fileio.join(WORKDIR, "b.bin")) == 2
  assert sorted(fileio.listdir(WORKDIR)) == ["a", "b.bin"]
  assert fileio.isdir(fileio.join(WORKDIR, "a")) and fileio.isfile(f)
  assert fileio.list_files(WORKDIR) == ["a/f.txt", "b.bin"]
  with pytest.raises(ValueError), fileio.open(f, "a"):
    pass
  with pytest.raises(RuntimeError), fileio.open(f, "w") as out:  # an error publishes nothing
    out.write("half")
    raise RuntimeError
  assert fileio.read_text(f) == "one\ntwo\n"
  assert set(objects(bucket)) == {"bucket/run/a/f.txt", "bucket/run/b.bin"}


# ----------------------------------------------------------------------------- a run's files


def test_run_outputs_land_in_the_bucket(bucket, monkeypatch):
  from derm_jax import plots
  from derm_jax.train import outputs

  config = ConfigDict({"task": "vae", "seed": 0, "optimizer": {"lr": 1e-3}})
  outputs.write_config(WORKDIR, config)
  assert json.loads(read(bucket, WORKDIR + "/config.json"))["seed"] == 0
  outputs.check_resume_config(WORKDIR, config)  # same settings: fine
  with pytest.raises(ValueError, match="seed"):
    outputs.check_resume_config(WORKDIR, ConfigDict({**config.to_dict(), "seed": 1}))

  # TensorBoard: tensorboardX writes gs:// itself, with google-cloud-storage; missing -> clear
  # error before anything is written.
  monkeypatch.setitem(outputs._TB_CLIENTS, "gs", ("no_such_module_xyz", "google-cloud-storage"))
  with pytest.raises(outputs.TensorBoardUnavailable, match="google-cloud-storage"):
    outputs.MetricWriter(WORKDIR)
  events = []

  class FakeTb:
    def __getattr__(self, name):
      return lambda *a, **k: events.append(name)

  monkeypatch.setattr(outputs, "_summary_writer", lambda logdir: FakeTb())
  writer = outputs.MetricWriter(WORKDIR)
  for step in (10, 20, 30):
    writer.write_scalars(step, {"train/loss": 1.0 / step}, jsonl=True, epoch=step // 10)
  writer.write_row({"step": 30, "val/elbo": float("nan")})
  writer.write_image(30, "recon", np.zeros((4, 4, 3)))
  writer.close()
  rows = [json.loads(x) for x in read(bucket, WORKDIR + "/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows] == [10, 20, 30, 30] and rows[3]["val/elbo"] is None
  assert {"add_scalar", "add_image", "close"} <= set(events)
  writer.truncate_after(20)
  rows = [json.loads(x) for x in read(bucket, WORKDIR + "/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows] == [10, 20]

  outputs.write_parameter_overview(WORKDIR, {"dense": {"kernel": np.zeros((3, 2), np.float32)}})
  assert b"dense/kernel" in read(bucket, WORKDIR + "/parameters.txt")

  grid = plots.save_image_grid([np.zeros((2, 8, 8, 3))], WORKDIR + "/images/recon_0000030.png",
                               row_labels=["input"], title="step 30")
  assert grid == WORKDIR + "/images/recon_0000030.png"
  assert read(bucket, grid).startswith(PNG_MAGIC)
  cm = plots.save_confusion_matrix(np.eye(2) * 3, ["nv", "mel"], WORKDIR + "/confusion.png",
                                   title="test")
  assert read(bucket, cm).startswith(PNG_MAGIC)


def test_predictions_evaluation_outputs_and_report(bucket):
  from derm_jax import metrics, report
  from derm_jax.evaluation import classification, predictions

  names = ["akiec", "mel", "nv"]
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 60)
  ids = [str(1000 + i) for i in range(60)]
  for a, arm in enumerate(("vae", "imagenet")):
    run = fileio.join(WORKDIR, "arms", arm, "seed_0")
    probs = rng.dirichlet(np.ones(3), 60)
    probs[np.arange(60), labels] += 0.5 + a
    probs /= probs.sum(1, keepdims=True)
    result = metrics.classification_metrics(labels, probs, 3, loss=0.5)
    result["class_names"] = names
    result["majority_baseline"] = metrics.majority_baseline(labels, labels, 3)
    preds = classification.Predictions(index=np.arange(60), ids=np.array(ids), labels=labels,
                                       probs=probs)
    meta = type("Meta", (), {"class_names": names})
    classification.write_outputs(result, preds, meta, run, metrics_name="test_metrics.json",
                                 confusion_name="confusion_test.png",
                                 predictions_name="test_predictions.csv", title=arm)
    fileio.atomic_write_text(fileio.join(run, "config.json"), json.dumps(
        {"seed": 0, "data": {"name": "dermamnist", "image_size": 28}, "init": {"source": arm},
         "model": {"backbone": "convnext_tiny"}, "freeze_backbone": False}))
    for e in (1, 2):
      fileio.append_text(fileio.join(run, "metrics.jsonl"), json.dumps(
          {"epoch": e, "step": 10 * e, "train/loss": 1.0 / e, "val/loss": 1.1 / e,
           "train/accuracy": 0.5 + 0.1 * e, "val/accuracy": 0.5 + 0.05 * e}) + "\n")
  back = predictions.read_predictions_csv(WORKDIR + "/arms/vae/seed_0/test_predictions.csv")
  assert back.class_names == tuple(names) and len(back) == 60
  assert read(bucket, WORKDIR + "/arms/vae/seed_0/confusion_test.png").startswith(PNG_MAGIC)
  path = report.write_report(WORKDIR, n_boot=50, figures=True)
  assert path == WORKDIR + "/report.md"
  text = read(bucket, path).decode()
  assert f"Workdir: `{WORKDIR}`" in text
  assert read(bucket, WORKDIR + "/figures/loss.png").startswith(PNG_MAGIC)
  assert all(k.startswith("bucket/run/") for k in objects(bucket))


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_manifest_and_integrity_in_the_bucket(bucket):
  from derm_jax.train import checkpoint, outputs

  ckpts = WORKDIR + "/checkpoints"
  step = ckpts + "/3"
  fileio.write_bytes(step + "/state/array.bin", b"\x01" * 1000)
  fileio.write_bytes(step + "/state/_METADATA", b"{}")
  assert outputs.workdir_has_run(WORKDIR)
  assert checkpoint.check_step(ckpts, 3).status == checkpoint.UNVERIFIED
  manifest = checkpoint.write_manifest(step)
  assert manifest == step + "/" + checkpoint.MANIFEST_NAME
  record = json.loads(read(bucket, manifest))
  assert sorted(record["files"]) == ["state/_METADATA", "state/array.bin"]
  assert record["files"]["state/array.bin"]["size"] == 1000
  c = checkpoint.check_step(ckpts, 3)
  assert c.status == checkpoint.INTACT and c.path == step
  fileio.write_bytes(step + "/state/array.bin", b"\x02" * 1000)  # same size, changed
  c = checkpoint.check_step(ckpts, 3)
  assert c.status == checkpoint.DAMAGED and "array.bin" in c.problem and "sha256" in c.problem
  fileio.remove(step + "/state/_METADATA")
  assert "missing" in checkpoint.check_step(ckpts, 3).problem
  fileio.rename(step, step + ".damaged")  # what Checkpointer does to set a damaged step aside
  assert fileio.listdir(ckpts) == ["3.damaged"]
  assert checkpoint.check_step(ckpts, 3).status == checkpoint.DAMAGED


def test_converted_weights_dir_in_the_bucket_is_checked_there(bucket):
  from derm_jax.convert import store
  out = store.output_path(WORKDIR + "/imagenet_convnext_tiny/")
  assert os.fspath(out) == WORKDIR + "/imagenet_convnext_tiny"
  store.check_output_dir(out, overwrite=False)  # absent: fine
  fileio.write_bytes(WORKDIR + "/imagenet_convnext_tiny/checkpoint/x", b"1")
  with pytest.raises(store.PretrainedError, match="not empty"):
    store.check_output_dir(out, overwrite=False)
  with pytest.raises(store.PretrainedError, match="no meta.json"):
    store.load_meta(WORKDIR + "/imagenet_convnext_tiny")


# ----------------------------------------------------------------------------- the lock


def test_remote_lock_is_advisory_and_named(bucket, monkeypatch, caplog):
  from derm_jax.train import workdir_lock
  monkeypatch.setattr(workdir_lock, "REMOTE_SETTLE_S", 0.0)
  lock_url = WORKDIR + "/" + workdir_lock.LOCK_NAME
  with workdir_lock.WorkdirLock(WORKDIR) as lock:
    assert lock.held and lock.path == lock_url
    record = json.loads(read(bucket, lock_url))
    assert record["pid"] == os.getpid() and record["token"]
    with workdir_lock.WorkdirLock(WORKDIR + "/"):  # re-entrant within the process
      pass
    assert json.loads(read(bucket, lock_url))["token"] == record["token"]
  assert read(bucket, lock_url) == b""  # a clean release empties it

  other = {"host": socket.gethostname() + "-other", "pid": 1, "since": "2024-01-01 00:00:00 UTC"}
  fileio.atomic_write_text(lock_url, json.dumps(other) + "\n")
  with pytest.raises(WorkdirBusyError) as err:
    workdir_lock.WorkdirLock(WORKDIR).acquire()
  assert lock_url in str(err.value) and "-other" in str(err.value)

  dead = {"host": socket.gethostname(), "pid": 2 ** 22 + 12345, "since": "yesterday"}
  fileio.atomic_write_text(lock_url, json.dumps(dead) + "\n")
  with caplog.at_level(logging.WARNING), workdir_lock.WorkdirLock(WORKDIR):
    assert json.loads(read(bucket, lock_url))["pid"] == os.getpid()
  assert f"pid {dead['pid']}" in caplog.text

  # Another run that wrote its record between our write and our read-back wins.
  real_write = fileio.atomic_write_text

  def racing_write(path, text):
    real_write(path, text)
    if text:
      real_write(path, json.dumps({**other, "token": "theirs"}) + "\n")

  monkeypatch.setattr(workdir_lock.fileio, "atomic_write_text", racing_write)
  fileio.atomic_write_text(lock_url, "")
  with pytest.raises(WorkdirBusyError):
    workdir_lock.WorkdirLock(WORKDIR).acquire()
  assert not workdir_lock.WorkdirLock(WORKDIR).held
