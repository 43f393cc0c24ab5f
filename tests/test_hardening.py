"""What a user meets when something is wrong: a busy workdir refused before any heavy work,
one line for the project's own errors and a traceback for bugs, unknown config fields,
and preflight refusals of unusable backbones, each in seconds, naming the fix."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY_VAE, run_main
from conftest import tiny_classify_config as _classify

from derm_jax.errors import ConfigError, DermJaxError, NotARunError


def test_a_busy_workdir_is_refused_before_any_data_is_prepared(tmp_path):
  """The lock comes right after the config's validation: the data_dir of the refused run
  is never created (no data prepared, nothing compiled), and nothing is written."""
  from derm_jax.train.workdir_lock import WorkdirLock
  workdir, data_dir = tmp_path / "run", tmp_path / "never_prepared"
  with WorkdirLock(str(workdir)):
    r = run_main([f"--config={TINY_VAE}", f"--config.data.data_dir={data_dir}",
                  f"--workdir={workdir}"])
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert "error:" in r.stderr and str(os.getpid()) in r.stderr  # names the holder
  assert not data_dir.exists() and not (workdir / "config.json").exists()


@pytest.mark.slow
def test_two_real_runs_into_one_workdir(data_dir, tmp_path):
  """A second `derm_jax.main` into the workdir of a live one fails at once, naming the
  first; the first is unaffected and finishes."""
  args = [f"--config={TINY_VAE}", f"--config.data.data_dir={data_dir}",
          "--config.total_steps=20", f"--workdir={tmp_path / 'run'}"]
  first = subprocess.Popen([sys.executable, "-m", "derm_jax.main", *args], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    lock = tmp_path / "run" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
      time.sleep(0.05)
    second = run_main(args)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert str(first.pid) in second.stderr, second.stderr[-2000:]
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
  finally:
    if first.poll() is None:
      first.kill()


def test_unknown_config_fields_are_one_line():
  for flag, words in (("--config.foo=1", "no field 'foo'"),
                      ("--config.model.latnt_dim=8", 'Did you mean "latent_dim"')):
    r = run_main([f"--config={TINY_VAE}", flag, "--workdir=/tmp/never"])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and flag in lines[0] and words in lines[0], lines


BUG = """
import sys
from absl import app
from derm_jax import console, main
def broken(*args, **kwargs):
  raise {exc}("planted")
main.run = broken
sys.argv = ["derm_jax.main", "--config={config}", "--workdir={workdir}"]
app.run(main.main, flags_parser=console.parse_flags)
"""


@pytest.mark.parametrize("exc, one_line", [("ValueError", False), ("KeyError", False),
                                           ("ConfigError", True)])
def test_only_the_projects_own_errors_are_one_line(tmp_path, exc, one_line):
  """A DermJaxError (bad input the project recognises) is one line and exit status 1; any
  other exception, even a ValueError, is a bug: its traceback is kept (non-zero exit)."""
  code = BUG.format(exc=exc, config=TINY_VAE, workdir=tmp_path / "w")
  if exc == "ConfigError":
    code = "from derm_jax.errors import ConfigError\n" + code
  r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode != 0
  assert ("Traceback" in r.stderr) != one_line, r.stderr[-2000:]
  if one_line:
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == "error: planted"


# ----------------------------------------------------------------------------- preflight


def _refused(config, workdir, *words, kind=DermJaxError):
  """preflight.check refuses `config` in seconds (nothing trains), naming `words`."""
  from derm_jax import preflight
  t0 = time.monotonic()
  with pytest.raises(kind) as e:
    preflight.check(config, str(workdir))
  msg = str(e.value)
  assert "\n" not in msg and all(w in msg for w in words), msg
  return time.monotonic() - t0


@pytest.mark.slow
def test_preflight_refuses_unusable_backbones_and_outside_sets(study, data_dir, tmp_path):
  """Each refused before anything trains, with its message: a VAE workdir that pretrained
  another backbone, one without a checkpoint, one that is not a run; converted ImageNet
  weights of another architecture; a backbone whose ImageNet weights ship in no package;
  an outside set listing an image that is missing."""
  vae = study / "vae" / "seed_0"
  _refused(_classify(data_dir, **{"init.source": "vae", "init.vae_workdir": str(vae),
                                  "model.backbone": "efficientnet_lite1", "image_size": 32}),
           tmp_path, "efficientnet_lite0", "efficientnet_lite1", kind=ConfigError)
  empty = tmp_path / "vae_without_checkpoint"
  empty.mkdir()
  (empty / "config.json").write_text((vae / "config.json").read_text())
  _refused(_classify(data_dir, **{"init.source": "vae", "init.vae_workdir": str(empty)}),
           tmp_path, "has no checkpoint", kind=NotARunError)
  _refused(_classify(data_dir, **{"init.source": "vae", "init.vae_workdir": str(tmp_path)}),
           tmp_path, "no config.json", kind=NotARunError)
  lite0 = study / "arms" / "imagenet" / "seed_0" / "imagenet_efficientnet_lite0"
  _refused(_classify(data_dir, **{"init.source": "imagenet", "init.imagenet_dir": str(lite0),
                                  "model.backbone": "efficientnet_lite1"}),
           tmp_path, "efficientnet_lite0", "efficientnet_lite1", kind=ConfigError)
  _refused(_classify(data_dir, **{"init.source": "imagenet",
                                  "model.backbone": "efficientnet_lite3"}),
           tmp_path, "No ImageNet weights for 'efficientnet_lite3'", kind=ConfigError)
  isic = os.path.join(REPO, "tests", "data", "isic2018_sample")
  csv = tmp_path / "gt.csv"
  csv.write_text(open(f"{isic}/ISIC2018_Task3_Training_GroundTruth.csv").read()
                 + "ISIC_9999999,1,0,0,0,0,0,0\n")
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_compare
  c = tiny_compare.get_config()
  c.data.data_dir = data_dir
  c.arms = ("scratch",)
  c.external = (f"set={isic}/ISIC2018_Task3_Training_Input,{csv}",)
  _refused(c, tmp_path / "study", "ISIC_9999999")


@pytest.mark.slow
def test_a_study_reusing_a_pretrained_vae(study, data_dir, tmp_path):
  """`config.vae_workdir` (how a study adds seeds to an earlier one): no VAE is trained,
  every seed's VAE arm starts from that workdir, and the preflight checks it."""
  from derm_jax import preflight
  from derm_jax.study import plan
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_compare
  c = tiny_compare.get_config()
  c.data.data_dir = data_dir
  c.external = ()
  c.seeds = (1, 2)
  c.arms = ("vae", "scratch")
  c.vae_workdir = str(study / "vae" / "seed_0")
  wd = str(tmp_path / "more_seeds")
  assert "vae" not in plan.pretraining_runs(c, wd)
  members = [(r.name, r.workdir, r.config) for r in plan.classifier_runs(c, wd)]
  assert [n for n, _, _ in members] == ["vae seed 1", "scratch seed 1", "vae seed 2",
                                        "scratch seed 2"]
  for name, _, cfg in members:
    assert cfg.init.pretrained_workdir == (c.vae_workdir if name.startswith("vae") else "")
  preflight.check(c, wd)  # the reused VAE is a VAE of the study's backbone, with a checkpoint
  c.vae_workdir = str(tmp_path / "nothing_here")
  with pytest.raises(NotARunError, match="no config.json"):
    preflight.check(c, wd)
  assert json.load(open(study / "vae" / "seed_0" / "config.json"))["task"] == "vae"
