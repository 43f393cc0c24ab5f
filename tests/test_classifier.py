"""The study's classifier stage: frozen backbone, identical arms, end-to-end compare, evaluate."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import REPO, TINY_COMPARE, run_main

from derm_jax import arms as arm_table

TINY_CLASSIFY = os.path.join(REPO, "tests", "configs", "tiny_classify.py")
ISIC = os.path.join(REPO, "tests", "data", "isic2018_sample")  # training images: not outside
TEST_DEV = os.path.join(REPO, "tests", "data", "isic2018_test_dev")  # an outside set


def _load(name):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tests", "configs",
                                                                   f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def test_arm_configs_differ_only_in_backbone_initialisation():
  from derm_jax.study import plan
  from derm_jax.train.outputs import _flatten
  c = _load("tiny_compare")
  a = _flatten(plan.classifier_config(c, "vae", 3, "/some/vae").to_dict())
  b = _flatten(plan.classifier_config(c, "imagenet", 3, "/some/vae").to_dict())
  assert a.keys() == b.keys()
  diff = {k for k in a if a[k] != b[k]}
  assert diff and all(k.startswith("init.") for k in diff), diff
  assert a["seed"] == b["seed"] == 3
  assert a["model.backbone"] == b["model.backbone"] == c.backbone
  # The VAE stage pretrains exactly the encoder architecture the classifier uses.
  v = plan.pretraining_config(c, "vae", 3)
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
  # The reported test metrics are those of the predictions the run wrote.
  from derm_jax.evaluation.predictions import read_predictions_csv
  preds = read_predictions_csv(os.path.join(workdir, "test_predictions.csv"))
  assert len(preds) == 500 == sum(map(sum, result["confusion_matrix"]))
  assert result["accuracy"] == np.mean(np.argmax(preds.probs, 1) == preds.labels)
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
    assert cfg["init"]["source"] == ("pretrained" if arm == "vae" else arm)
  report = (workdir / "report.md").read_text()
  # (The report's cells against each arm's metrics files: test_study_numbers.py.)
  assert (workdir / "figures" / "gap.png").exists()

  arm_dir = workdir / "arms" / "imagenet" / "seed_0"
  out = tmp_path / "isic_eval"
  import subprocess
  import sys
  cmd = [sys.executable, "-m", "derm_jax.evaluate", f"--workdir={arm_dir}",
         f"--isic_images={TEST_DEV}/ISIC2018_Task3_Test_Input",
         f"--isic_csv={TEST_DEV}/ISIC2018_Task3_Test_GroundTruth_35.csv", f"--out={out}"]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  m = json.load(open(out / "metrics.json"))
  assert sum(map(sum, m["confusion_matrix"])) == 35
  assert m["outside_check"]["overlapping"] == 0 and m["outside_check"]["images"] == 35
  assert (out / "confusion.png").exists()
  # The study scored the same checkpoint on the same outside set itself: same numbers.
  ext = json.load(open(arm_dir / "external" / "isic2018_test" / "metrics.json"))
  for k in ("accuracy", "balanced_accuracy", "macro_auc", "per_class_recall"):
    np.testing.assert_allclose(np.asarray(ext[k], float), np.asarray(m[k], float), atol=1e-5)
  from derm_jax.evaluation.predictions import read_predictions_csv
  p_cli = read_predictions_csv(out / "predictions.csv")
  p_study = read_predictions_csv(arm_dir / "external" / "isic2018_test" / "predictions.csv")
  assert p_cli.image_ids == p_study.image_ids and len(p_cli.image_ids) == 35
  # The study scored both arms in one vmapped pass, the CLI one arm alone: the same
  # arithmetic summed in another order (vmap batches the convolution kernels), so ~1e-6.
  np.testing.assert_allclose(p_cli.probs, p_study.probs, atol=1e-5)
  assert (out / "submission.csv").read_text().startswith("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC")
  # The Python API gives the same probabilities from the image files, and from arrays.
  from PIL import Image

  import derm_jax
  model = derm_jax.load(str(arm_dir))
  assert model.class_names == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
  files = [f"{TEST_DEV}/ISIC2018_Task3_Test_Input/{i}.jpg" for i in p_cli.image_ids[:5]]
  np.testing.assert_allclose(model.predict(files), p_cli.probs[:5], atol=1e-6)
  arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files[:2]]
  np.testing.assert_allclose(model.predict(arrays), p_cli.probs[:2], atol=1e-6)
  cmd = [*cmd[:3], f"--workdir={arm_dir}", f"--isic_images={ISIC}/ISIC2018_Task3_Training_Input",
         f"--isic_csv={ISIC}/ISIC2018_Task3_Training_GroundTruth.csv", f"--out={out}"]
  # Predictions without ground truth: no CSV, no metrics, a predictions file all the same.
  r = subprocess.run([*cmd[:-2], f"--out={tmp_path / 'unlabelled'}"], cwd=REPO,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  unlabelled = read_predictions_csv(tmp_path / "unlabelled" / "predictions.csv")
  assert unlabelled.labels is None and len(unlabelled.image_ids) == 14
  # The report's shift section has the outside set, with both arms' numbers.
  assert "In distribution vs shifted" in report and "isic2018_test" in report
  ext_vae = json.load(open(workdir / "arms" / "vae" / "seed_0" / "external" / "isic2018_test" /
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
def test_population_study_stopped_killed_and_resumed_equals_uninterrupted_run(data_dir,
                                                                              tmp_path):
  """A study's classifier stage (two members trained as one program) run in chunks as a
  preempted job would be: stopped after step 13 (`stop_after_step`, mid-epoch 1), then
  killed with kill -9 after its mid-epoch-2 checkpoint at step 40, then run to the end.
  Every member ends with the uninterrupted study's parameters, and its WHOLE metrics.jsonl
  (train metrics and overfitting gaps of the interrupted epochs included) and test
  metrics equal the uninterrupted run's."""
  import signal
  import subprocess
  import sys
  import time
  args = [f"--config={TINY_COMPARE}", f"--config.data.data_dir={data_dir}",
          "--config.arms=('scratch',)", "--config.seeds=(0,1)", "--config.external=()",
          "--config.population_size=2",  # one program on a CPU too
          "--config.classifier.checkpoint_every_steps=10", "--config.classifier.keep_checkpoints=5"]
  full, chunked = tmp_path / "full", tmp_path / "chunked"
  r = run_main([*args, f"--workdir={full}"])
  assert r.returncode == 0, r.stderr[-3000:]
  r = run_main([*args, "--config.classifier.stop_after_step=13", f"--workdir={chunked}"])
  assert r.returncode == 0 and "Stopping after step 13" in r.stderr, r.stderr[-3000:]
  member_dirs = [chunked / "arms" / "scratch" / f"seed_{s}" for s in (0, 1)]
  proc = subprocess.Popen([sys.executable, "-m", "derm_jax.main", *args,
                           "--config.classifier.stop_after_step=13", f"--workdir={chunked}"],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and not all((d / "checkpoints" / "40").is_dir()
                                           for d in member_dirs):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  for d in member_dirs:
    steps = [int(x.name) for x in (d / "checkpoints").iterdir() if x.name.isdigit()]
    assert 40 in steps and max(steps) < 68, steps  # really interrupted, mid-epoch 2
    assert not (d / "test_metrics.json").exists()
  r = run_main([*args, "--config.classifier.stop_after_step=13", f"--workdir={chunked}"])
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resuming from checkpoint at step" in r.stderr
  from derm_jax.train import checkpoint
  for seed in (0, 1):
    a, b = (w / "arms" / "scratch" / f"seed_{seed}" for w in (full, chunked))
    s1, t1 = checkpoint.restore_state_tree(str(a / "checkpoints"))
    s2, t2 = checkpoint.restore_state_tree(str(b / "checkpoints"))
    assert s1 == s2 == 68
    for x, y in zip(jax.tree.leaves(t1["params"]), jax.tree.leaves(t2["params"]), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows1 = [json.loads(line) for line in open(a / "metrics.jsonl")]
    rows2 = [json.loads(line) for line in open(b / "metrics.jsonl")]
    assert [r_["epoch"] for r_ in rows2] == [1, 2] and "gap/accuracy" in rows2[0]
    assert rows1 == rows2
    assert json.load(open(a / "test_metrics.json")) == json.load(open(b / "test_metrics.json"))


ALL_ARMS = arm_table.NAMES  # every row of the arm table


@pytest.mark.slow
@pytest.mark.imagenet
def test_smoke_study_with_every_arm_protocol_and_fraction_on_the_ham10000_sample(tmp_path):
  """configs/compare.py:ham224 made tiny (the HAM10000 sample, lesion-grouped splits) with
  every arm of the arm table (each pretraining task: VAE, SimCLR/MICLe, DINO), both
  protocols and a label fraction, each stage capped at 2 steps
  (`smoke_steps`): every run is written where the report reads it, the lesion-grouped
  splits reach the arms (subgroup metrics from the metadata), MICLe pretrains, and the
  report names every arm and has the probe and label-efficiency sections."""
  workdir = tmp_path / "all"
  r = run_main([f"--config={os.path.join(REPO, 'tests', 'configs', 'tiny_ham_compare.py')}",
                f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={workdir}",
                f"--config.arms={ALL_ARMS}", "--config.linear_probe=True",
                "--config.label_fractions=(0.5,1.0)", "--config.smoke_steps=2",
                "--config.population_size=64"])  # each stage one program on a CPU too
  assert r.returncode == 0, r.stderr[-4000:]
  for arm in ALL_ARMS:
    for base in ("arms", "probes", "fractions/0.5/arms", "fractions/0.5/probes"):
      run = workdir / base / arm / "seed_0"
      test = json.load(open(run / "test_metrics.json"))
      assert sum(map(sum, test["confusion_matrix"])) == test["num_examples"] > 0
      assert test["step"] == 2  # smoke_steps: each run stops after 2 steps
      assert set(test["subgroups"]["by"]) >= {"sex", "age_band", "localization"}
      cfg = json.load(open(run / "config.json"))
      assert cfg["label_fraction"] == (0.5 if base.startswith("fractions") else 1.0)
      assert cfg["freeze_backbone"] == base.endswith("probes")  # :ham224 fine-tunes
      assert (cfg["head"]["hidden"] == 0) == base.endswith("probes")
  for arm in ("simclr", "imagenet_simclr", "micle", "dino", "imagenet_dino"):
    cfg = json.load(open(workdir / "pretrain" / arm / "seed_0" / "config.json"))
    assert cfg["task"] == arm_table.get(arm).pretraining
    assert cfg["init"]["source"] == arm_table.get(arm).start
    if cfg["task"] == "simclr":
      assert cfg["positives"] == ("lesion" if arm == "micle" else "views")
    assert json.load(open(workdir / "arms" / arm / "seed_0" / "config.json"))["init"][
        "pretrained_workdir"] == str(workdir / "pretrain" / arm / "seed_0")
  report = (workdir / "report.md").read_text()
  assert "ham10000" in report.lower()
  for arm in ALL_ARMS:
    assert f"`{arm}`" in report, arm
  assert "## Second evaluation protocol: linear probe" in report
  assert "## Label efficiency" in report and (workdir / "figures" / "label_efficiency.png").exists()
  # The closed-form probes of every arm, beside the SGD probe the study trained.
  assert "## Closed-form probes" in report and "Closed-form vs SGD probe:" in report
  probes = json.load(open(workdir / "closed_form_probes.json"))
  assert list(probes["arms"]) == list(ALL_ARMS)
