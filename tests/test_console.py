"""The console a user sees: --print_config, --help, hints for unknown fields, one line per
error, no library noise, the compile line, whole epochs, the closing line of a run."""

import json
import logging
import os
import sys

import pytest
from conftest import REPO, TINY_VAE, run_main

from derm_jax import config_text, console
from derm_jax.train import loop

TINY_CLASSIFY = os.path.join(REPO, "tests", "configs", "tiny_classify.py")


def _compare(preset=None):
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import compare
  return compare.get_config(preset)


# ----------------------------------------------------------------------------- config


def test_print_config_prints_fields_with_comments_and_leaves_the_workdir_alone(tmp_path):
  workdir = tmp_path / "never"
  r = run_main(["--config=configs/compare.py", "--config.seeds=(0,1)", "--print_config",
                f"--workdir={workdir}"], timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert "classifier.num_epochs = 10" in lines
  assert "seeds = (0, 1)" in lines  # the resolved value, overrides included
  # the config file's comments, above and beside the fields they annotate
  assert "# > 0: every stage (each pretraining, every classifier, probe and fraction) stops " \
         "after" in lines
  assert any(ln.startswith("classifier.total_steps = 0  # > 0 overrides num_epochs")
             for ln in lines)
  assert any(ln.startswith("data.npz_path = ''  # for source='npz'") for ln in lines)
  assert not workdir.exists()
  r = run_main(["--config=tests/configs/tiny_vae.py", "--print_config"], timeout=120)
  assert r.returncode == 0 and "model.latent_dim = 16" in r.stdout, r.stderr[-2000:]
  assert "smoke_steps = 0" in r.stdout  # accepted by derm_jax.main for a single run too


def test_help_exits_0_and_points_to_print_config():
  r = run_main(["--help"], timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "--print_config" in r.stdout and "--[no]print_config" in r.stdout


def test_unknown_field_names_the_nearest_fields_of_each_stage():
  r = run_main(["--config=configs/compare.py", "--config.num_epochs=2", "--workdir=/tmp/never"],
               timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1, lines
  assert "no field 'num_epochs'" in lines[0]
  for path in ("classifier.num_epochs", "vae.num_epochs", "simclr.num_epochs"):
    assert path in lines[0], lines[0]


def test_nearest_fields():
  c = _compare()
  assert set(config_text.nearest_fields(c, "num_epochs")) == {
      "classifier.num_epochs", "vae.num_epochs", "simclr.num_epochs", "dino.num_epochs"}
  assert config_text.nearest_fields(c, "dat.npz_pth")[0] == "data.npz_path"
  assert config_text.nearest_fields(c, "classifier.optimizer.l")[0] == "classifier.optimizer.lr"


def test_missing_workdir_is_one_line():
  r = run_main([f"--config={TINY_VAE}"], timeout=120)
  assert r.returncode == 2
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: --workdir is required"), lines


def test_smoke_steps_of_a_single_run_is_checked(tmp_path):
  r = run_main([f"--config={TINY_VAE}", "--config.smoke_steps=x", f"--workdir={tmp_path}"],
               timeout=120)
  assert r.returncode == 2 and "--config.smoke_steps=x" in r.stderr, r.stderr[-2000:]
  from derm_jax import validate
  c = _tiny_vae()
  with c.unlocked():
    c.smoke_steps = -1
  assert any("config.smoke_steps=-1" in p for p in validate.config_problems(c))


def _tiny_vae():
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_vae
  return tiny_vae.get_config()


def test_apply_smoke_steps():
  from derm_jax import config_lib
  c = _tiny_vae()
  with c.unlocked():
    c.smoke_steps = 3
  config_lib.apply_smoke_steps(c)
  assert c.total_steps == 3 and c.log_every_steps == 2
  study = _compare()
  study.smoke_steps = 3
  assert config_lib.apply_smoke_steps(study).classifier.total_steps == 0  # the stages do it


# ----------------------------------------------------------------------------- messages


def test_an_error_is_printed_once(tmp_path):
  missing = tmp_path / "nope.npz"
  r = run_main(["--config=configs/classify.py", f"--workdir={tmp_path / 'w'}",
                "--config.data.source=npz", f"--config.data.npz_path={missing}",
                "--config.init.source=scratch"], timeout=300)
  assert r.returncode == 1, r.stderr[-2000:]
  mentions = [ln for ln in r.stderr.splitlines() if str(missing) in ln]
  assert len(mentions) == 1 and mentions[0].startswith("error: "), r.stderr[-2000:]


def test_library_noise_is_dropped_and_warnings_come_once(caplog):
  from absl import logging as absl_logging
  console.install_noise_filter()
  with caplog.at_level(logging.INFO):
    absl_logging.warning("Using custom data configuration: DermaMNISTConfig(name='x')")
    absl_logging.warning("a real warning")
  assert "custom data configuration" not in caplog.text
  assert "a real warning" in caplog.text
  once = console._OnceFilter()
  rec = lambda msg, *a: logging.LogRecord("x", logging.WARNING, "f.py", 1, msg, a, None)  # noqa: E731
  assert once.filter(rec("w %s", 1)) and not once.filter(rec("w 1")) and once.filter(rec("v"))


def test_progress_text_shows_whole_epochs_as_integers():
  assert loop.progress_text(68, 34, 68) == "epoch 2/2 (step 68)"
  assert loop.progress_text(34, 34, 68) == "epoch 1/2 (step 34)"
  assert loop.progress_text(26, 13, 30) == "step 26/30 (epoch 2)"
  assert loop.progress_text(30, 13, 30) == "step 30/30 (epoch 2.31)"


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.slow  # ~50 s on a busy 2-core machine (compiling)
def test_a_classifier_run_is_quiet_and_closes_with_what_to_do_next(tmp_path):
  """A fresh data_dir (TFDS prepares the data): no TFDS prints or config dumps; the compile
  line comes before compiling ends; the closing line has the numbers, the outputs and the
  next command; smoke_steps stops the run; predictions carry class names."""
  work = tmp_path / "w"
  r = run_main([f"--config={TINY_CLASSIFY}", f"--workdir={work}",
                f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.init.source=scratch",
                "--config.smoke_steps=3"], timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  both = r.stdout + r.stderr
  assert "Downloading and preparing" not in both and "downloaded and prepared" not in both
  assert "custom data configuration" not in both and "Config(" not in both
  assert "Preparing the dataset dermamnist" in r.stderr
  start = r.stderr.index("Compiling the train and evaluation steps")
  assert start < r.stderr.index("Train program compiled (or loaded) in")
  assert "step 3/3 (epoch 0.09)" in r.stderr
  done = [ln for ln in r.stdout.splitlines() if ln.startswith("Done:")]
  assert len(done) == 1, r.stdout
  assert "test balanced accuracy" in done[0] and f"Outputs in {work}" in done[0]
  assert f"python -m derm_jax.evaluate --workdir={work} --isic_images=" in done[0]
  config = json.loads((work / "config.json").read_text())
  assert config["smoke_steps"] == 3 and config["total_steps"] == 3
  assert json.loads((work / "test_metrics.json").read_text())["step"] == 3
  rows = (work / "test_predictions.csv").read_text().splitlines()[1:]
  assert rows and all(r.split(",")[1] in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
                      for r in rows)


@pytest.mark.slow
def test_a_vae_run_closes_with_its_elbo_and_how_to_use_it(data_dir, tmp_path):
  work = tmp_path / "vae"
  r = run_main([f"--config={TINY_VAE}", f"--workdir={work}", f"--config.data.data_dir={data_dir}",
                "--config.smoke_steps=2"], timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  done = [ln for ln in r.stdout.splitlines() if ln.startswith("Done:")]
  assert len(done) == 1 and "validation ELBO" in done[0], r.stdout
  assert f"--config.init.source=pretrained --config.init.pretrained_workdir={work}" in done[0]
