"""Tests of SimCLR / MICLe pretraining (derm_jax/tasks/simclr.py) on the shared loop: a tiny
run learns and writes k-NN rows and a verified checkpoint, that checkpoint starts a
classifier bit for bit (init.source='simclr'), --mode=eval reproduces the last k-NN row,
MICLe partners come from the anchor's lesion in the training split, and bad settings are
one clear error each."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from conftest import REPO
from test_folder_dataset import csv_folder, picture

from derm_jax import validate
from derm_jax.errors import ConfigError, NotARunError

STEPS = 40  # two evaluations (every 20 steps) and one checkpoint, at step 40


def _config_module(name: str):
  spec = importlib.util.spec_from_file_location(f"{name}_config",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(data_dir):
  """configs/simclr.py made small: a tiny ConvNeXt at 32 px, batch 32, STEPS steps."""
  c = _config_module("simclr").get_config()
  c.data.data_dir = data_dir
  c.image_size = 32
  c.model.backbone = "convnext_nano_cpu"
  c.model.backbone_kwargs.dims = (16, 32, 48, 64)
  c.model.backbone_kwargs.depths = (1, 1, 1, 1)
  c.projection.hidden = 64
  c.projection.out_dim = 32
  c.batch_size = 32
  c.eval_batch_size = 100
  c.total_steps = STEPS
  c.optimizer.warmup_steps = 5
  c.log_every_steps = 5
  c.eval_every_epochs = 20 / (1700 // 32)  # every 20 steps
  c.knn.max_train = 500
  return c


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def simclr_run(data_dir, tmp_path_factory):
  """ONE tiny SimCLR run for the module: (config, workdir)."""
  from derm_jax.tasks import simclr as simclr_task
  c = tiny_config(data_dir)
  workdir = str(tmp_path_factory.mktemp("simclr") / "run")
  simclr_task.train_and_evaluate(c, workdir)
  return c, workdir


def test_tiny_run_learns_and_writes_knn_rows_and_a_verified_checkpoint(simclr_run):
  from derm_jax.train import checkpoint
  c, workdir = simclr_run
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [20, 40]
  # Each row's train metrics are exact means over the steps since the previous one: the
  # NT-Xent loss of steps 21-40 is well below that of steps 1-20 (log 63 = 4.14 is chance).
  assert rows[1]["train/loss"] < rows[0]["train/loss"] - 0.1, rows
  for r in rows:
    assert 0 <= r["val/knn_accuracy"] <= 1 and 0 <= r["val/knn_balanced_accuracy"] <= 1
    assert 0 <= r["train/contrastive_accuracy"] <= 1 and np.isfinite(r["train/grad_norm"])
  ckpts = os.path.join(workdir, "checkpoints")
  assert checkpoint.check_step(ckpts, STEPS).status == checkpoint.INTACT
  step, tree = checkpoint.restore_state_tree(ckpts)
  assert step == STEPS and set(tree["params"]) == {"backbone", "projection"}
  assert json.load(open(os.path.join(workdir, "config.json")))["task"] == "simclr"


def test_checkpoint_starts_a_classifier_bit_for_bit(simclr_run, tmp_path):
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import checkpoint
  c, workdir = simclr_run
  cls = _config_module("classify").get_config()
  cls.data.data_dir = c.data.data_dir
  cls.image_size = c.image_size
  cls.model.backbone = c.model.backbone
  cls.model.backbone_kwargs = c.model.backbone_kwargs.copy_and_resolve_references()
  cls.init.source = "pretrained"
  cls.init.pretrained_workdir = workdir
  validate.validate_config(cls)
  task = classifier_task.build(cls)
  state, _ = task.init_member(cls, str(tmp_path / "cls"))
  _, tree = checkpoint.restore_state_tree(os.path.join(workdir, "checkpoints"))
  got, want = _flat(state.frozen["backbone"]), _flat(tree["params"]["backbone"])
  assert got.keys() == want.keys() and got
  for k in got:
    assert got[k].dtype == want[k].dtype, k
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert not state.batch_stats and not tree.get("batch_stats")  # ConvNeXt: LayerNorm only
  # ... and that is the trained backbone, not a random one.
  scratch = cls.copy_and_resolve_references()
  scratch.init.source = "scratch"
  other, _ = task.init_member(scratch, str(tmp_path / "scratch"))
  other = _flat(other.frozen["backbone"])
  assert not [k for k in got if got[k].ndim >= 2 and np.array_equal(got[k], other[k])]

  # The source is checked: an empty workdir setting, a VAE run, another backbone.
  cls.init.pretrained_workdir = ""
  with pytest.raises(ConfigError, match="init.pretrained_workdir"):
    validate.validate_config(cls)
  other_run = tmp_path / "vae_run"
  other_run.mkdir()
  (other_run / "config.json").write_text(json.dumps({"task": "vae"}))
  cls.init.source = "simclr"  # an older config's name: a SimCLR run, nothing else
  cls.init.pretrained_workdir = str(other_run)
  with pytest.raises(ConfigError, match="holds a 'vae' run, not a simclr one"):
    task.init_member(cls, str(tmp_path / "cls2"))
  cls.init.source = "pretrained"
  cls.init.pretrained_workdir = str(tmp_path / "nothing")
  with pytest.raises(NotARunError):
    task.init_member(cls, str(tmp_path / "cls3"))
  from derm_jax.tasks import backbone_init
  cls.init.pretrained_workdir = workdir
  cls.model.backbone_kwargs.depths = (1, 1, 2, 1)
  with pytest.raises(ConfigError, match="backbone"):
    backbone_init.check_source(cls, str(tmp_path / "cls4"))


def test_eval_mode_reproduces_the_last_knn_row(simclr_run):
  from derm_jax import main
  c, workdir = simclr_run
  last = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))][-1]
  results = main.run(c, workdir, mode="eval")  # the run's own config.json, via main
  assert results["step"] == STEPS
  assert results["val/knn_accuracy"] == last["val/knn_accuracy"]
  assert results["val/knn_balanced_accuracy"] == last["val/knn_balanced_accuracy"]
  assert 0 <= results["test/knn_accuracy"] <= 1
  assert os.path.exists(os.path.join(workdir, f"eval_step{STEPS}.json"))


def test_micle_partners_share_the_lesion_and_stay_in_the_training_split(data_dir, tmp_path):
  """A folder dataset with lesion groups of 3 and an unlabelled pool: the loop gives a
  positives='lesion' member partners of the anchor's lesion from the training split, a
  positives='views' member the anchors themselves; the two train as one population."""
  from derm_jax.data import unlabeled
  from derm_jax.tasks import simclr as simclr_task
  from derm_jax.train import feed as feed_lib
  from derm_jax.train.population import Member
  root = csv_folder(tmp_path / "lesions", {"a": 15, "b": 15}, group_size=3)
  pool = tmp_path / "pool"
  for i in range(4):
    picture(pool / f"u{i}.png", 900 + i)
  c = tiny_config(data_dir)
  c.data.name = "folder"
  c.data.path = str(root)
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.stored_size = 16
  c.data.unlabeled = (str(pool),)
  c.batch_size = 8
  c.eval_batch_size = 8
  c.total_steps = 2
  c.eval_every_epochs = 1000.0
  c.log_every_steps = 1
  lesion = c.copy_and_resolve_references()
  lesion.positives = "lesion"
  validate.validate_config(lesion)
  members = [Member("micle", str(tmp_path / "micle"), lesion),
             Member("simclr", str(tmp_path / "simclr"), c)]
  task = simclr_task.build(lesion)
  dataset = task.dataset
  n_train = len(dataset.source("train"))
  assert len(task.train_source) == n_train + 4  # the pool comes after the training split
  groups = list(dataset.metadata("train")["lesion_id"]) + [f"pool{i}" for i in range(4)]
  groups = np.asarray(groups)
  source, split = feed_lib.training_split(task)
  feed = feed_lib.Feed(task, members, source, split, scan_len=6, start=0)
  xs = feed.xs(0, 6)
  idx, partners = np.asarray(xs["indices"]), np.asarray(xs["partner_image"])  # (L, M, B)
  anchors, mine = idx[:, 0], partners[:, 0]
  assert (groups[mine] == groups[anchors]).all()       # the anchor's own lesion ...
  assert ((mine < n_train) == (anchors < n_train)).all()  # ... within the training split
  assert (mine[anchors >= n_train] == anchors[anchors >= n_train]).all()  # pool: itself
  assert (mine != anchors).any()
  np.testing.assert_array_equal(partners[:, 1], idx[:, 1])  # 'views': the image itself
  # Neither val nor test images: the training split's lesions only.
  train_lesions = set(groups[:n_train])
  for s in ("val", "test"):
    assert not train_lesions & set(dataset.metadata(s)["lesion_id"])
  assert unlabeled.pretraining_source(dataset).num_unlabeled == 4
  # Both members train side by side, the MICLe one on its partner images.
  run = simclr_task.train_members(members)
  assert run.step == 2 and len(run.last_rows) == 2
  assert all(np.isfinite(r["train/loss"]) for r in run.last_rows)
  # In groups of one, as a study stage trains them on a CPU: a group reuses the task (and
  # compiled programs) of the group before when it draws partners as that one did, and
  # builds its own when not (MICLe after SimCLR).
  seed1 = c.copy_and_resolve_references()
  seed1.seed = 1
  first = simclr_task.train_members([Member("simclr 0", str(tmp_path / "g0"), c)])
  second = simclr_task.train_members([Member("simclr 1", str(tmp_path / "g1"), seed1)],
                                     first.task)
  assert second.task is first.task and second.programs is first.programs
  assert simclr_task.lesion_table(second.task) is None
  third = simclr_task.train_members([Member("micle 0", str(tmp_path / "g2"), lesion)],
                                    second.task)
  assert third.task is not first.task and simclr_task.lesion_table(third.task) is not None
  assert third.step == 2 and np.isfinite(third.last_rows[0]["train/loss"])


def _error(config) -> str:
  with pytest.raises(ConfigError) as e:
    validate.validate_config(config)
  return str(e.value)


def test_bad_settings_are_one_clear_error_each(data_dir, tmp_path):
  from derm_jax.tasks import simclr as simclr_task
  c = tiny_config(data_dir)
  validate.validate_config(c)

  # MICLe on DermaMNIST: its images have lesion ids (the packaged table), so pairs exist.
  micle = c.copy_and_resolve_references()
  micle.positives = "lesion"
  validate.validate_config(micle)
  assert simclr_task.lesion_table(simclr_task.build(micle)) is not None
  # A DermaMNIST-layout file the lesion table does not know has no lesion ids: refused.
  rng = np.random.default_rng(0)
  npz = tmp_path / "other.npz"
  np.savez(npz, **{f"{s}_{k}": (rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
                                if k == "images" else np.arange(n).reshape(n, 1) % 7)
                   for s, n in (("train", 21), ("val", 7), ("test", 7))
                   for k in ("images", "labels")})
  bad = c.copy_and_resolve_references()
  bad.positives = "lesion"
  bad.data.source, bad.data.npz_path = "npz", str(npz)
  with pytest.raises(ConfigError, match="positives='lesion'"):
    simclr_task.build(bad)

  bad = c.copy_and_resolve_references()
  bad.optimizer.name = "sgd"
  msg = _error(bad)
  assert msg.startswith("1 invalid config setting") and "config.optimizer.name='sgd'" in msg
  with pytest.raises(ConfigError, match="optimizer.name"):
    simclr_task.make_optimizer(bad.optimizer, 10, 1)

  bad = c.copy_and_resolve_references()
  bad.loss.temperature = -0.1
  msg = _error(bad)
  assert msg.startswith("1 invalid config setting") and "config.loss.temperature=-0.1" in msg


def test_knn_subset_is_fixed_and_keeps_every_class():
  from derm_jax.evaluation import knn
  labels = np.repeat(np.arange(4), [700, 200, 90, 10])
  a = knn.stratified_subset(labels, 100)
  np.testing.assert_array_equal(a, knn.stratified_subset(labels, 100))
  assert len(a) == 100 and len(set(a)) == 100
  np.testing.assert_array_equal(np.bincount(labels[a]), [70, 20, 9, 1])
  np.testing.assert_array_equal(knn.stratified_subset(labels, 0), np.arange(1000))
  assert np.bincount(labels[knn.stratified_subset(labels, 5)]).min() == 1
