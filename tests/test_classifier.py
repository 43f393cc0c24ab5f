"""The study's classifier stage: frozen backbone, identical arms, end-to-end compare, evaluate."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import REPO, run_main

TINY_CLASSIFY = os.path.join(REPO, "tests", "configs", "tiny_classify.py")
ISIC = os.path.join(REPO, "tests", "data", "isic2018_sample")


def _load(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tests", "configs",
                                                                   f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_arm_configs_differ_only_in_backbone_initialisation():
  from derm_jax.study import arms as compare
  from derm_jax.train.outputs import _flatten
  c = _load("tiny_compare")
  a = _flatten(compare.arm_config(c, "vae", 3, "/some/vae").to_dict())
  b = _flatten(compare.arm_config(c, "imagenet", 3, "/some/vae").to_dict())
  assert a.keys() == b.keys()
  diff = {k for k in a if a[k] != b[k]}
  assert diff and all(k.startswith("init.") for k in diff), diff
  assert a["seed"] == b["seed"] == 3
  assert a["model.backbone"] == b["model.backbone"] == c.backbone
  # The VAE stage pretrains exactly the encoder architecture the classifier uses.
  v = compare.vae_stage_config(c)
  assert v.model.backbone == a["model.backbone"] and v.image_size == a["image_size"]


@pytest.mark.imagenet  # init.source='imagenet' (the config's default)
def test_frozen_backbone_is_bit_for_bit_unchanged_and_has_no_optimizer_state(data_dir, tmp_path):
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import checkpoint
  c = _load("tiny_classify")
  c.data.data_dir = data_dir
  c.num_epochs = 1
  workdir = str(tmp_path / "run")
  result = classifier_task.train_and_evaluate(c, workdir)
  assert 0 <= result["accuracy"] <= 1
  from derm_jax.tasks import backbone_init
  backbone = classifier_task.create_models(c, 7)[0]
  start = backbone_init.init_backbone_variables(c, backbone, workdir, jax.random.key(0))
  _, tree = checkpoint.restore_state_tree(os.path.join(workdir, "checkpoints"))
  for col, where in (("params", tree["frozen"]["backbone"]),
                     ("batch_stats", tree["batch_stats"]["backbone"])):
    la, lb = jax.tree.leaves(start[col]), jax.tree.leaves(where)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb, strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert set(tree["params"]) == {"head"}
  head_size = sum(x.size for x in jax.tree.leaves(tree["params"]))
  opt_size = sum(np.asarray(x).size for x in jax.tree.leaves(tree["opt_state"]))
  assert opt_size < 2 * head_size + 10  # Adam moments of the head only
  # The ImageNet initialisation really is the converted ImageNet model.
  from derm_jax.convert import store
  _, imagenet = store.load_pretrained(os.path.join(workdir, "imagenet_efficientnet_lite0"))
  np.testing.assert_array_equal(np.asarray(imagenet["params"]["conv_stem"]["kernel"]),
                                np.asarray(tree["frozen"]["backbone"]["conv_stem"]["kernel"]))


def test_finetuned_backbone_moves(data_dir, tmp_path):
  from derm_jax.tasks import classifier as classifier_task
  from derm_jax.train import checkpoint
  c = _load("tiny_classify")
  c.data.data_dir = data_dir
  c.num_epochs = 1
  c.init.source = "scratch"
  c.freeze_backbone = False
  c.class_weighted_loss = True
  c.balanced_sampling = True
  workdir = str(tmp_path / "ft")
  classifier_task.train_and_evaluate(c, workdir)
  from derm_jax.tasks import backbone_init
  backbone = classifier_task.create_models(c, 7)[0]
  start = backbone_init.init_backbone_variables(c, backbone, workdir,
                                                jax.random.split(jax.random.key(0), 3)[0])
  _, tree = checkpoint.restore_state_tree(os.path.join(workdir, "checkpoints"))
  assert set(tree["params"]) == {"head", "backbone"}
  moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
           zip(jax.tree.leaves(start["params"]), jax.tree.leaves(tree["params"]["backbone"]),
               strict=True)]
  assert all(moved)


def test_balanced_sampling_and_class_weights():
  from derm_jax.data import input_pipeline
  from derm_jax.tasks import classifier as classifier_task
  labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
  idx = np.concatenate([input_pipeline.balanced_indices(labels, 0, e) for e in range(50)])
  frac = np.bincount(labels[idx], minlength=3) / len(idx)
  np.testing.assert_allclose(frac, [1 / 3] * 3, atol=0.03)
  c = _load("tiny_classify")
  c.class_weighted_loss = True
  w = classifier_task.class_weights_for(c, np.array([0, 0, 0, 1, 5, 5]), 7)
  # n / (K * n_c) for present classes, 0 for absent ones.
  np.testing.assert_allclose(w, [6 / 21, 6 / 7, 0, 0, 0, 6 / 14, 0], rtol=1e-6)


@pytest.mark.imagenet  # the imagenet arm
@pytest.mark.slow
def test_compare_end_to_end_then_evaluate_outside_data(study, tmp_path):
  workdir = study  # conftest's session study: VAE -> vae and imagenet arms -> report
  for arm in ("vae", "imagenet"):
    d = workdir / "arms" / arm / "seed_0"
    rows = [json.loads(line) for line in open(d / "metrics.jsonl")]
    assert [r_["epoch"] for r_ in rows] == [1, 2]
    for k in ("train/balanced_accuracy", "val/macro_auc", "gap/accuracy", "gap/loss"):
      assert k in rows[-1]
    test = json.load(open(d / "test_metrics.json"))
    assert len(test["confusion_matrix"]) == 7 and "majority_baseline" in test
    cfg = json.load(open(d / "config.json"))
    assert cfg["init"]["source"] == arm
  report = (workdir / "report.md").read_text()
  assert "vae" in report and "imagenet" in report
  assert (workdir / "figures" / "gap.png").exists()
  assert any((workdir / "compilation_cache").iterdir())  # the arms' shared compiled steps

  arm_dir = workdir / "arms" / "imagenet" / "seed_0"
  out = tmp_path / "isic_eval"
  import subprocess
  import sys
  cmd = [sys.executable, "-m", "derm_jax.evaluate", f"--workdir={arm_dir}",
         f"--isic_images={ISIC}/ISIC2018_Task3_Training_Input",
         f"--isic_csv={ISIC}/ISIC2018_Task3_Training_GroundTruth.csv", f"--out={out}"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(out / "metrics.json"))
  assert sum(map(sum, m["confusion_matrix"])) == 14
  assert (out / "confusion.png").exists()
  # The study scored the same checkpoint on the same outside set itself: same numbers.
  ext = json.load(open(arm_dir / "external" / "isic2018" / "metrics.json"))
  for k in ("accuracy", "balanced_accuracy", "macro_auc", "per_class_recall"):
    np.testing.assert_allclose(np.asarray(ext[k], float), np.asarray(m[k], float), atol=1e-6)
  from derm_jax.evaluation.predictions import read_predictions_csv
  p_cli = read_predictions_csv(out / "predictions.csv")
  p_study = read_predictions_csv(arm_dir / "external" / "isic2018" / "predictions.csv")
  assert p_cli.image_ids == p_study.image_ids and len(p_cli.image_ids) == 14
  np.testing.assert_allclose(p_cli.probs, p_study.probs, atol=1e-6)
  assert (out / "submission.csv").read_text().startswith("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC")
  # The Python API gives the same probabilities from the image files, and from arrays.
  from PIL import Image

  import derm_jax
  model = derm_jax.load(str(arm_dir))
  assert model.class_names == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
  files = [f"{ISIC}/ISIC2018_Task3_Training_Input/{i}.jpg" for i in p_cli.image_ids[:5]]
  np.testing.assert_allclose(model.predict(files), p_cli.probs[:5], atol=1e-6)
  arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files[:2]]
  np.testing.assert_allclose(model.predict(arrays), p_cli.probs[:2], atol=1e-6)
  # Predictions without ground truth: no CSV, no metrics, a predictions file all the same.
  r = subprocess.run([*cmd[:-2], f"--out={tmp_path / 'unlabelled'}"], cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  unlabelled = read_predictions_csv(tmp_path / "unlabelled" / "predictions.csv")
  assert unlabelled.labels is None and len(unlabelled.image_ids) == 14
  by_id = dict(zip(unlabelled.image_ids, unlabelled.probs, strict=True))
  np.testing.assert_allclose([by_id[i] for i in p_cli.image_ids], p_cli.probs, atol=1e-6)
  # The report's shift section has the outside set, with both arms' numbers.
  assert "In distribution vs shifted" in report and "isic2018" in report
  ext_vae = json.load(open(workdir / "arms" / "vae" / "seed_0" / "external" / "isic2018" /
                           "metrics.json"))
  for arm_metrics in (ext, ext_vae):
    assert f"{arm_metrics['balanced_accuracy']:.3f}" in report
  assert (workdir / "figures" / "shift_balanced_accuracy.png").exists()
  bad = tmp_path / "bad.csv"
  bad.write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_9999999,1,0,0,0,0,0,0\n")
  r = subprocess.run([*cmd[:-2], f"--isic_csv={bad}", f"--out={tmp_path / 'bad_out'}"],
                     cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r.returncode != 0 and "ISIC_9999999" in r.stderr
  assert not (tmp_path / "bad_out").exists()


@pytest.mark.slow
def test_classifier_kill_and_resume_equals_uninterrupted_run(data_dir, tmp_path):
  """kill -9 mid-epoch, rerun: final parameters, every epoch's metrics and the test
  metrics equal an uninterrupted run's."""
  import signal
  import subprocess
  import sys
  import time
  args = [f"--config={TINY_CLASSIFY}", f"--config.data.data_dir={data_dir}",
          "--config.init.source=scratch", "--config.num_epochs=3", "--config.image_size=32"]
  full = tmp_path / "full"
  r = run_main([*args, f"--workdir={full}"])
  assert r.returncode == 0, r.stderr[-3000:]
  killed = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-m", "derm_jax.main", *args, f"--workdir={killed}"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = killed / "checkpoints"
  deadline = time.time() + 300
  while time.time() < deadline and not (ckpts / "34").is_dir():
    time.sleep(0.05)
  time.sleep(0.5)  # into the second epoch
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = [int(d.name) for d in ckpts.iterdir() if d.name.isdigit()]
  assert steps and max(steps) < 102, steps  # really interrupted
  assert not (killed / "test_metrics.json").exists()
  r = run_main([*args, f"--workdir={killed}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resuming from checkpoint" in r.stderr
  from derm_jax.train import checkpoint
  s1, t1 = checkpoint.restore_state_tree(str(full / "checkpoints"))
  s2, t2 = checkpoint.restore_state_tree(str(killed / "checkpoints"))
  assert s1 == s2 == 102
  for a, b in zip(jax.tree.leaves(t1["params"]), jax.tree.leaves(t2["params"]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rows1 = [json.loads(line) for line in open(full / "metrics.jsonl")]
  rows2 = [json.loads(line) for line in open(killed / "metrics.jsonl")]
  assert [r_["epoch"] for r_ in rows2] == [1, 2, 3]
  assert rows1 == rows2
  m1 = json.load(open(full / "test_metrics.json"))
  m2 = json.load(open(killed / "test_metrics.json"))
  assert m1 == m2


@pytest.mark.slow
@pytest.mark.imagenet
def test_ham224_preset_runs_on_the_ham10000_sample(tmp_path):
  """configs/compare.py:ham224 end to end on the HAM10000 sample (tiny settings): the
  lesion-grouped splits reach the arms, the report names the dataset, the test metrics
  carry subgroup metrics from the metadata."""
  workdir = tmp_path / "ham"
  r = run_main([f"--config={os.path.join(REPO, 'tests', 'configs', 'tiny_ham_compare.py')}",
                f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={workdir}"])
  assert r.returncode == 0, r.stderr[-4000:]
  for arm in ("vae", "imagenet"):
    test = json.load(open(workdir / "arms" / arm / "seed_0" / "test_metrics.json"))
    assert sum(map(sum, test["confusion_matrix"])) == test["num_examples"] > 0
    assert set(test["subgroups"]["by"]) >= {"sex", "age_band", "localization"}
  report = (workdir / "report.md").read_text()
  assert "ham10000" in report.lower()
