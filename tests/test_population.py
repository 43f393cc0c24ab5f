"""The population program (derm_jax/train/population.py, the loop in derm_jax/train/loop.py):
members trained side by side equal members trained alone; batches gathered on the device
equal the Grain pipeline's; a run trains the same whichever way its data arrive; the
population runs sharded over 8 devices."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, tiny_classify_config

TINY_CLASSIFY = os.path.join(REPO, "tests", "configs", "tiny_classify.py")


def _classify_config(data_dir, seed=0, **overrides):
  return tiny_classify_config(data_dir, **{"init.source": "scratch", "seed": seed,
                                           **overrides})


def _params(workdir):
  from derm_jax.train import checkpoint
  return checkpoint.restore_state_tree(os.path.join(workdir, "checkpoints"))[1]["params"]


def _rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_device_batches_equal_the_grain_pipelines(data_dir):
  """Step s's batch gathered on the device (the split in device memory, the indices of the
  training stream) holds the images and labels the Grain pipeline reads for step s, in
  the same order, across an epoch boundary and from a resumed position."""
  from ml_collections import ConfigDict

  from derm_jax import config_lib
  from derm_jax.data import device_data, input_pipeline, memory_source, registry
  from derm_jax.train import mesh as mesh_lib
  cfg = config_lib.data()
  cfg.data_dir = data_dir
  source = memory_source.InMemorySource.load(registry.get(cfg).source("train"), 100)
  aug = ConfigDict({"on_device": True})
  ds = input_pipeline.train_dataset(source, global_batch_size=64, image_size=32, aug=aug,
                                    seed=5)
  stream = input_pipeline.TrainIndices(len(source), 5)
  split = device_data.DeviceSplit.load(source, mesh_lib.make_mesh(), 64)
  assert split is not None and split.placement == device_data.REPLICATED
  spe = len(source) // 64
  steps = [0, 1, spe - 1, spe, spe + 1, 3 * spe + 2]  # epoch boundaries crossed
  idx = np.stack([stream.global_batches(s, 1, 64)[0] for s in steps])
  on_device = jax.jit(split.gather)(split.arrays, idx)
  for row, s in enumerate(steps):
    host = ds[s]
    np.testing.assert_array_equal(np.asarray(on_device["image"][row]), host["image"])
    np.testing.assert_array_equal(np.asarray(on_device["label"][row]), host["label"])
  resumed = input_pipeline.from_step(ds, spe)
  np.testing.assert_array_equal(resumed[1]["image"], ds[spe + 1]["image"])
  # Epochs are permutations: every example once per epoch, another order each epoch.
  e0, e1 = stream.epoch(0), stream.epoch(1)
  assert sorted(e0) == list(range(len(source))) and not np.array_equal(e0, e1)


def test_a_run_trains_the_same_with_its_data_on_the_device_or_streamed(data_dir, tmp_path):
  """The same run with the training split in device memory and streamed through Grain
  (`input.device_data_mb=0`), and with its steps dispatched one at a time (the CPU's
  default) or scanned two per dispatch (`steps_per_dispatch=2`: the accelerators' way; the
  last chunk of a 5-step run skips its second step): bit-identical metrics and parameters.
  (The first also takes a profile: `profile_steps` writes a trace and changes nothing.)"""
  from derm_jax.tasks import classifier as classifier_task
  results = {}
  for name, mb, profile, per_dispatch in (("device", 64, (2, 3), 0), ("grain", 0, (), 0),
                                          ("scanned", 64, (), 2)):
    c = _classify_config(data_dir, **{"total_steps": 5, "log_every_steps": 2,
                                     "input.device_data_mb": mb, "profile_steps": profile,
                                     "steps_per_dispatch": per_dispatch})
    results[name] = classifier_task.train_and_evaluate(c, str(tmp_path / name))
  # profile_steps (which changes no number) wrote a jax.profiler trace of steps 2-3.
  traces = [f for _, _, fs in os.walk(tmp_path / "device" / "profile") for f in fs]
  assert any(f.endswith((".xplane.pb", ".trace.json.gz")) for f in traces), traces
  for other in ("grain", "scanned"):
    assert _rows(tmp_path / "device") == _rows(tmp_path / other), other
    for a, b in zip(jax.tree.leaves(_params(tmp_path / "device")),
                    jax.tree.leaves(_params(tmp_path / other)), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=other)
    assert results["device"]["accuracy"] == results[other]["accuracy"], other


def test_a_later_group_of_a_stage_reuses_its_task_and_equals_a_fresh_run(data_dir, tmp_path):
  """A study stage trains its groups of members with one task: the second group reuses
  the first's training split and compiled programs (nothing is decoded or compiled again)
  and ends bit for bit where the same member trained with a fresh task ends. A member
  whose config differs from the task's in more than the member fields is refused."""
  from derm_jax.errors import ConfigError
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import feed
  from derm_jax.train.population import Member
  kw = {"total_steps": 3, "log_every_steps": 1}
  first = Member("s0", str(tmp_path / "s0"), _classify_config(data_dir, 0, **kw))
  later = Member("s1", str(tmp_path / "s1"), _classify_config(data_dir, 1, **kw))
  run0, _ = classifier_task.train_members([first])
  split = feed.training_split(run0.task)
  run1, (test1,) = classifier_task.train_members([later], run0.task)
  assert run1.task is run0.task and run1.programs is run0.programs
  assert feed.training_split(run1.task) is split
  fresh = classifier_task.train_and_evaluate(later.config, str(tmp_path / "fresh"))
  assert _rows(tmp_path / "s1") == _rows(tmp_path / "fresh")
  for a, b in zip(jax.tree.leaves(_params(tmp_path / "s1")),
                  jax.tree.leaves(_params(tmp_path / "fresh")), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (test1["accuracy"], test1["loss"]) == (fresh["accuracy"], fresh["loss"])
  other = Member("lr", str(tmp_path / "lr"),
                 _classify_config(data_dir, 2, **kw, **{"optimizer.lr": 0.5}))
  with pytest.raises(ConfigError, match=r"differ in \['optimizer.lr'\]"):
    classifier_task.train_members([other], run0.task)
  assert not os.path.exists(tmp_path / "lr" / "checkpoints")


@pytest.mark.slow
def test_a_member_of_a_population_equals_the_member_trained_alone(data_dir, tmp_path):
  """Member 'seed 1' of a population [seed 0, seed 1] equals 'seed 1' trained alone up to
  float32 rounding: it computes only from its own state, key and data.

  Tolerance: the population runs the step vmapped over members, which batches the
  convolutions' kernels and sums their products in another order, so a step's outputs
  differ from the lone step's by float32 rounding (measured: train loss 3.6e-7 apart at
  step 1, 1.2e-6 at step 2, on a loss of ~1.9): losses and BatchNorm statistics (no
  optimiser in between) are compared at 1e-5 / 2e-6 (not the AUC: a rank statistic, in
  which near-tied pairs of the 250 images swap). Parameters go through Adam, whose
  update is the gradient divided by its RMS: lr * sign(g) on the first update, so a
  parameter whose gradient is rounding noise (~0) can step the other way. After the one
  update here (step 1 trains at warm-up lr 0) every parameter is within 2 lr of the lone
  run's (measured: 1.5e-4, backbone lr 1e-4) and 90% within 1e-6 (measured: 95.6%).
  Later steps amplify the differences by chaos (train loss 3e-5 apart at step 3, 3e-3 at
  step 4), not by a different computation, so the comparison stops after 2 steps."""
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import checkpoint
  from derm_jax.train.population import Member
  kw = {"total_steps": 2, "log_every_steps": 1, "freeze_backbone": False,
        "eval_every_epochs": 1 / 34, "optimizer.warmup_steps": 1,
        "class_weighted_loss": True, "balanced_sampling": True}
  members = [Member(name, str(tmp_path / name), _classify_config(data_dir, seed, **kw))
             for name, seed in (("s0", 0), ("s1", 1))]
  _, tests = classifier_task.train_members(members)
  lone_config = _classify_config(data_dir, 1, **kw)
  alone = classifier_task.train_and_evaluate(lone_config, str(tmp_path / "alone"))
  trees = {n: checkpoint.restore_state_tree(str(tmp_path / n / "checkpoints"))[1]
           for n in ("s1", "alone")}
  for row, lone in zip(_rows(tmp_path / "s1"), _rows(tmp_path / "alone"), strict=True):
    for k in ("train/loss", "val/loss"):
      np.testing.assert_allclose(row[k], lone[k], rtol=0, atol=1e-5, err_msg=k)
  np.testing.assert_allclose(tests[1]["loss"], alone["loss"], rtol=0, atol=1e-5)
  for a, b in zip(jax.tree.leaves(trees["s1"]["batch_stats"]),
                  jax.tree.leaves(trees["alone"]["batch_stats"]), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-6)
  diff = np.concatenate([np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
                         for a, b in zip(jax.tree.leaves(trees["s1"]["params"]),
                                         jax.tree.leaves(trees["alone"]["params"]),
                                         strict=True)])
  max_lr = max(lone_config.optimizer.lr, lone_config.optimizer.backbone_lr)
  assert diff.max() <= 2 * max_lr, diff.max()
  assert np.mean(diff <= 1e-6) >= 0.9, np.mean(diff <= 1e-6)
  # ... the other seed really is another member, and fine-tuning moved every backbone
  # tensor of it away from its own initialisation.
  assert _rows(tmp_path / "s0")[0]["train/loss"] != _rows(tmp_path / "s1")[0]["train/loss"]
  start, _ = classifier_task.build(members[0].config).init_member(members[0].config,
                                                                  members[0].workdir)
  trained = checkpoint.restore_state_tree(str(tmp_path / "s0" / "checkpoints"))[1]
  assert set(trained["params"]) == {"head", "backbone"}
  for a, b in zip(jax.tree.leaves(start.params["backbone"]),
                  jax.tree.leaves(trained["params"]["backbone"]), strict=True):
    assert not np.array_equal(np.asarray(a), np.asarray(b))


EIGHT_DEVICES = """
import json, logging, os, sys
import jax, numpy as np
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, os.path.join({repo!r}, "tests", "configs"))
import tiny_classify
from derm_jax.tasks import classifier as classifier_task
from derm_jax.train.population import Member
assert jax.device_count() == {devices}
members = []
for seed in (0, 1):
  c = tiny_classify.get_config()
  c.data.data_dir = {data_dir!r}
  c.init.source = "scratch"
  c.seed = seed
  c.batch_size, c.eval_batch_size, c.total_steps = 48, 96, 3
  c.input.device_data_mb = {mb}
  members.append(Member(f"seed {{seed}}", os.path.join({out!r}, f"seed_{{seed}}"), c))
run, tests = classifier_task.train_members(members)
print("RESULT " + json.dumps({{"tests": [{{k: t[k] for k in ("accuracy", "macro_auc", "loss")}}
                                       for t in tests]}}))
"""


@pytest.mark.slow
def test_population_runs_sharded_over_8_devices(data_dir, tmp_path):
  """A population of two members on 8 virtual CPU devices, its training split SHARDED over
  them (a device-memory budget too small for a replica), against the same on 1 device:
  the same test metrics (float32 rounding apart: the batch's sums are split 8 ways)."""
  out = {}
  for devices, mb in ((8, 3), (1, 64)):  # 1,700 images of 28 px: 4 MB, 0.5 MB per device
    code = EIGHT_DEVICES.format(repo=REPO, devices=devices, data_dir=data_dir, mb=mb,
                                out=str(tmp_path / str(devices)))
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    if devices == 8:
      assert "Training split on the devices (sharded)" in r.stderr, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    out[devices] = json.loads(line[len("RESULT "):])["tests"]
  for eight, one in zip(out[8], out[1], strict=True):
    for k in eight:
      np.testing.assert_allclose(eight[k], one[k], rtol=2e-4, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_a_kill_during_one_members_save_costs_one_checkpoint_interval(data_dir, tmp_path):
  """A two-member program keeping one checkpoint is killed while the second member's step-4
  checkpoint is being saved (its step 4 never finalised; an unfinished Orbax save leaves no
  step). Old steps are deleted only once every member holds a newer one, so both still
  share step 2: the rerun resumes there (not from step 0) and ends where an uninterrupted
  run ends."""
  import shutil

  from absl import logging as absl_logging

  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import loop
  from derm_jax.train.population import Member
  kw = {"total_steps": 6, "log_every_steps": 2, "checkpoint_every_steps": 2,
        "keep_checkpoints": 1, "eval_every_epochs": 100.0}

  def members(root, **extra):
    return [Member(f"s{s}", str(root / f"s{s}"), _classify_config(data_dir, s, **kw, **extra))
            for s in (0, 1)]

  with pytest.raises(loop.StoppedAfterStep):
    classifier_task.train_members(members(tmp_path / "killed", stop_after_step=4))
  for s in (0, 1):
    steps = sorted(os.listdir(tmp_path / "killed" / f"s{s}" / "checkpoints"))
    assert {"2", "4"} <= set(steps), steps  # the shared step survives this round's saves
  shutil.rmtree(tmp_path / "killed" / "s1" / "checkpoints" / "4")  # its save never finished
  logged = []
  handler = type("H", (absl_logging.logging.Handler,), {
      "emit": lambda self, record: logged.append(record.getMessage())})()
  logger = absl_logging.get_absl_logger()
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(absl_logging.logging.INFO)
  try:
    classifier_task.train_members(members(tmp_path / "killed"))
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  assert any(m.startswith("Resuming from checkpoint at step 2 ") for m in logged), logged
  assert not any("no step in common" in m for m in logged)
  classifier_task.train_members(members(tmp_path / "whole"))
  for s in (0, 1):
    for a, b in zip(jax.tree.leaves(_params(tmp_path / "killed" / f"s{s}")),
                    jax.tree.leaves(_params(tmp_path / "whole" / f"s{s}")), strict=True):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kept = [d for d in os.listdir(tmp_path / "whole" / f"s{s}" / "checkpoints") if d.isdigit()]
    assert kept == ["6"]  # keep_checkpoints once the run is complete
