"""What the study's numbers rest on, checked on ONE tiny study run (the session fixture
`study` of conftest.py, shared with tests/test_classifier.py):

- the VAE arm's backbone starts from the pretrained VAE's encoder, bit for bit (frozen and
  fine-tuned), and the ImageNet arm's from the converted ImageNet weights;
- `python -m derm_jax.evaluate --split=test` and the classifier's `--mode=eval` reproduce the
  run's own final test (and validation) evaluation of the same checkpoint, predictions too;
  the VAE's `--mode=eval` reproduces its last validation row, not an untrained model's;
- the `:recipe` augmentation (random resized crop) runs end to end;
- report.md prints each arm's test metrics as its test_metrics.json has them.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, recipe_aug, run_main

TINY_CLASSIFY = os.path.join(REPO, "tests", "configs", "tiny_classify.py")
TINY_VAE = os.path.join(REPO, "tests", "configs", "tiny_vae.py")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "loss")


def _arm(study, arm):
  return study / "arms" / arm / "seed_0"


def _own_copy(run_dir, tmp_path):
  """A copy of one of the study's run folders, for a test that writes into it: the session
  study is shared by every test (and xdist worker) and stays as trained."""
  copy = tmp_path / "own" / run_dir.name
  shutil.copytree(run_dir, copy)
  return copy


def _arm_config(study, arm):
  # The library function (the CLI modules define absl flags: one of them per process).
  from derm_jax import layout
  return layout.read_config(str(_arm(study, arm)), task="classify")


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_bitwise_equal(got, want, what):
  g, w = _flat(got), _flat(want)
  assert g.keys() == w.keys() and g, what
  for k in g:
    assert g[k].dtype == w[k].dtype and g[k].shape == w[k].shape, (what, k)
    np.testing.assert_array_equal(g[k], w[k], err_msg=f"{what}{k}")


def _initial_backbone(config, workdir):
  """The backbone variables of `build(...)`'s state, before any training step."""
  from derm_jax.tasks import classifier as classifier_task
  state, _ = classifier_task.build(config).init_member(config, str(workdir))
  params = state.frozen["backbone"] if config.freeze_backbone else state.params["backbone"]
  out = {"params": jax.device_get(params)}
  if state.batch_stats:
    out["batch_stats"] = jax.device_get(state.batch_stats["backbone"])
  return out


def _assert_kernels_differ(got, other, what):
  g, o = _flat(got["params"]), _flat(other["params"])
  kernels = [k for k in g if g[k].ndim >= 2]
  assert kernels, what
  same = [k for k in kernels if np.array_equal(g[k], o[k])]
  assert not same, f"{what}: equal to a scratch initialisation at {same[:5]}"


# ----------------------------------------------------------------------------- initialisation


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "finetuned"])
def test_vae_arm_backbone_starts_from_the_vae_encoder(study, tmp_path, frozen):
  """Catches: the 'vae' arm starting from anything but the pretrained encoder (a random init,
  another checkpoint, a partial merge, a dtype cast, BatchNorm statistics left behind)."""
  from derm_jax.models import vae as vae_lib
  from derm_jax.train import checkpoint
  config = _arm_config(study, "vae")
  assert (config.init.source == "pretrained"
          and config.init.pretrained_workdir == str(study / "vae" / "seed_0"))
  config.freeze_backbone = frozen
  _, tree = checkpoint.restore_state_tree(str(study / "vae" / "seed_0" / "checkpoints"))
  encoder = vae_lib.backbone_variables(tree)
  assert "batch_stats" in encoder  # EfficientNet-Lite: BatchNorm statistics come along too
  start = _initial_backbone(config, tmp_path / "run")
  _assert_bitwise_equal(start, encoder, "initial backbone vs VAE encoder")
  config.init.source = "scratch"
  _assert_kernels_differ(start, _initial_backbone(config, tmp_path / "scratch"), "vae init")
  if frozen:  # the study's own arm (frozen) ended where it started: the VAE encoder
    _, arm_tree = checkpoint.restore_state_tree(str(_arm(study, "vae") / "checkpoints"))
    _assert_bitwise_equal({"params": arm_tree["frozen"]["backbone"],
                           "batch_stats": arm_tree["batch_stats"]["backbone"]}, encoder,
                          "trained vae arm's frozen backbone vs VAE encoder")


@pytest.mark.imagenet
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "finetuned"])
def test_imagenet_arm_backbone_starts_from_the_converted_weights(data_dir, tmp_path, frozen):
  """Catches: the 'imagenet' arm not starting from the converted ImageNet weights (conversion
  on first use into the workdir, then every backbone leaf loaded, the ImageNet head dropped)."""
  from derm_jax.convert import store
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_classify
  config = tiny_classify.get_config()
  config.data.data_dir = data_dir
  config.init.source = "imagenet"
  config.freeze_backbone = frozen
  start = _initial_backbone(config, tmp_path)  # converts into tmp_path on first use
  arch, converted = store.load_pretrained(str(tmp_path / "imagenet_efficientnet_lite0"))
  assert arch == "efficientnet_lite0"
  assert set(converted["params"]) - set(start["params"])  # the ImageNet classifier head
  want = {col: {k: converted[col][k] for k in start[col]} for col in start}
  _assert_bitwise_equal(start, want, "initial backbone vs converted ImageNet weights")
  config.init.source = "scratch"
  _assert_kernels_differ(start, _initial_backbone(config, tmp_path / "scratch"),
                         "imagenet init")


# ----------------------------------------------------------------------------- evaluation


def _read_predictions(path):
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert rows
  cols = [c for c in rows[0] if c.startswith("p_")]
  assert len(cols) == 7, rows[0].keys()
  return ([(r["image_id"], r["label"], r["pred"]) for r in rows],
          np.array([[float(r[c]) for c in cols] for r in rows]))


# The study scored its arms in one vmapped pass (both members at once), the CLI and
# --mode=eval score one run alone: the same arithmetic summed in another order (vmap batches
# the convolutions' kernels), so probabilities agree to ~1e-6 and the AUC, a rank statistic
# over 500 images, to ~2e-5 (near-tied pairs). The threshold metrics are equal.
def _assert_same_metrics(got, want, what):
  for k in METRICS:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=f"{what}: {k}")
  assert got["confusion_matrix"] == want["confusion_matrix"], what
  assert got["step"] == want["step"], what


@pytest.mark.slow
def test_evaluate_cli_and_eval_mode_reproduce_the_runs_own_evaluation(study, data_dir, tmp_path):
  """Catches: `derm_jax.evaluate --split=test` or `--mode=eval` (the README's table) scoring
  anything but the trained checkpoint (e.g. the restore leaving the frozen VAE backbone or the
  head at a fresh initialisation), evaluating with training augmentation, or another order."""
  arm = _own_copy(_arm(study, "vae"), tmp_path)  # --mode=eval writes into its workdir
  trained = json.load(open(arm / "test_metrics.json"))
  out = tmp_path / "evaluate"
  from derm_jax import metrics as metrics_lib
  from derm_jax.evaluation.predictions import read_predictions_csv
  ids = list(read_predictions_csv(arm / "test_predictions.csv").image_ids)
  keep = tmp_path / "leak_free_ids.txt"  # half the test images, as the audit would list
  keep.write_text("".join(f"{i}\n" for i in ids[::2]))
  r = subprocess.run([sys.executable, "-m", "derm_jax.evaluate", f"--workdir={arm}",
                      "--split=test", f"--out={out}", f"--leak_free_ids={keep}"], cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "WARNING" not in r.stderr, r.stderr[-3000:]  # no library noise (e.g. Orbax's)
  cli = json.load(open(out / "metrics.json"))
  _assert_same_metrics(cli, trained, "evaluate --split=test vs test_metrics.json")
  assert cli["data"]["split"] == "test"
  # --leak_free_ids: the same metrics on the listed images only, from the same predictions.
  preds = read_predictions_csv(out / "predictions.csv")
  listed = np.isin(np.asarray(preds.image_ids), np.asarray(ids[::2]))
  want = metrics_lib.classification_metrics(preds.labels[listed], preds.probs[listed], 7)
  assert cli["leak_free"]["excluded"] == int((~listed).sum()) == len(ids) - len(ids[::2])
  np.testing.assert_allclose(cli["leak_free"]["accuracy"], want["accuracy"])
  np.testing.assert_allclose(cli["leak_free"]["macro_auc"], want["macro_auc"])

  r = run_main([f"--config={TINY_CLASSIFY}", f"--config.data.data_dir={data_dir}",
                f"--workdir={arm}", "--mode=eval"])
  assert r.returncode == 0, r.stderr[-3000:]
  step = trained["step"]
  ev = json.load(open(arm / "eval" / f"test_step{step}.json"))
  _assert_same_metrics(ev, trained, "--mode=eval test vs test_metrics.json")
  # Its validation split equals the run's final validation row (same checkpoint).
  last = [json.loads(line) for line in open(arm / "metrics.jsonl")][-1]
  assert last["step"] == step
  val = json.load(open(arm / "eval" / f"val_step{step}.json"))
  for k in ("accuracy", "balanced_accuracy", "macro_auc", "loss"):
    np.testing.assert_allclose(val[k], last[f"val/{k}"], rtol=1e-4, atol=1e-5, err_msg=k)

  ids, probs = _read_predictions(arm / "test_predictions.csv")
  for path in (out / "predictions.csv", arm / "eval" / f"test_step{step}_predictions.csv"):
    ids2, probs2 = _read_predictions(path)
    assert ids2 == ids, path
    np.testing.assert_allclose(probs2, probs, rtol=0, atol=1e-5, err_msg=str(path))


@pytest.mark.slow
def test_vae_eval_mode_reproduces_the_last_validation_row(study, data_dir, tmp_path):
  """Catches: the VAE's `--mode=eval` restoring anything but the trained checkpoint (its
  numbers must equal the run's last validation row and differ from an untrained model's)."""
  vae_dir = _own_copy(study / "vae" / "seed_0", tmp_path)  # --mode=eval writes into it
  last = [json.loads(line) for line in open(vae_dir / "metrics.jsonl")][-1]
  r = run_main([f"--config={TINY_VAE}", f"--config.data.data_dir={data_dir}",
                f"--workdir={vae_dir}", "--mode=eval"])
  assert r.returncode == 0, r.stderr[-3000:]
  ev = json.load(open(vae_dir / f"eval_step{last['step']}.json"))
  keys = [k for k in last if k.startswith("val/")]
  assert {"val/elbo", "val/recon", "val/kl"} <= set(keys)
  for k in keys:
    np.testing.assert_allclose(ev[k], last[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # An untrained model (the same config's initial state) scores differently.
  from ml_collections import ConfigDict  # not derm_jax.main: its flags clash with evaluate's

  from derm_jax.tasks import vae as vae_task
  from derm_jax.train import restore
  from derm_jax.train.population import Member
  config = ConfigDict(json.load(open(vae_dir / "config.json")))
  config.data.data_dir = data_dir
  task = vae_task.build(config)
  untrained_run = restore.init_run(task, [Member("untrained", str(vae_dir), config)])
  untrained = task.make_evaluator(task.dataset.source("val")).run(untrained_run.predict)[0]
  assert not np.isclose(untrained["elbo"], last["val/elbo"], rtol=1e-3)
  assert not np.isclose(untrained["recon"], last["val/recon"], rtol=1e-3)


# ----------------------------------------------------------------------------- the study


@pytest.mark.slow
def test_recipe_augmentation_runs_end_to_end(study):
  """Catches: the :recipe preset's random resized crop failing (or being dropped from the
  stages) in a real run; its losses must stay finite and the classifier's fall."""
  aug, _ = recipe_aug()
  for stage in (study / "vae" / "seed_0", _arm(study, "vae")):
    cfg = json.load(open(stage / "config.json"))
    for k, v in aug.items():
      assert cfg["aug"][k] == (list(v) if isinstance(v, tuple) else v), (stage, k)
  vae_rows = [json.loads(line) for line in open(study / "vae" / "seed_0" / "metrics.jsonl")]
  assert all(np.isfinite(v) for r in vae_rows for k, v in r.items() if k.startswith("val/"))
  for arm in ("vae", json.load(open(study / "config.json"))["arms"][1]):
    rows = [json.loads(line) for line in open(_arm(study, arm) / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
      assert np.isfinite(r["train/loss"]) and np.isfinite(r["val/loss"]), (arm, r)
    assert rows[1]["train/loss"] < rows[0]["train/loss"], (arm, rows)


def _report_test_rows(report: str) -> tuple[list[str], dict[str, list[str]]]:
  """The first per-arm table of report.md with test metrics: (header, arm -> its cells)."""
  lines = report.splitlines()
  start = next(i for i, line in enumerate(lines)
               if line.startswith("| arm | seeds |") and "accuracy" in line and "AUC" in line)
  header = [c.strip() for c in lines[start].strip("|").split("|")]
  rows = {}
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    cells = [c.strip() for c in line.strip("|").split("|")]
    rows[cells[0].strip("`")] = cells
  return header, rows


@pytest.mark.slow
def test_report_prints_each_arms_test_metrics(study):
  """Catches: report.md's test table showing numbers other than the arms' test_metrics.json
  (wrong arm, wrong file, wrong metric or column) at its printed precision (3 decimals)."""
  header, rows = _report_test_rows((study / "report.md").read_text())
  cols = {"accuracy": next(i for i, h in enumerate(header) if "accuracy" in h
                           and "balanced" not in h and "val" not in h),
          "balanced_accuracy": next(i for i, h in enumerate(header) if "balanced" in h),
          "macro_auc": next(i for i, h in enumerate(header) if "AUC" in h)}
  arms = json.load(open(study / "config.json"))["arms"]
  assert set(arms) <= set(rows), rows
  for arm in arms:
    m = json.load(open(_arm(study, arm) / "test_metrics.json"))
    cells = rows[arm]
    assert cells[1] == "1", cells
    for k, col in cols.items():
      assert cells[col] == f"{m[k]:.3f}", (arm, k, header[col], cells, m[k])
