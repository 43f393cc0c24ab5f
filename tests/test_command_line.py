"""What the command line refuses before anything is prepared, compiled or written: a study's
seeds and label fractions it cannot run, tuple overrides given twice or not as a tuple, a
config file or preset that does not exist. Each is one `error:` line naming what the user
typed (exit status 2 for the command line itself, 1 for a config the validator refuses),
and the workdir is never created."""

from __future__ import annotations

import pytest
from conftest import TINY_COMPARE, TINY_VAE, compare_config, run_main

from derm_jax import validate


def _compare(**fields):
  return compare_config(**fields)


def _error_lines(r) -> list[str]:
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  return [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.parametrize("fields, text", [
    ({"seeds": (-1,)}, "config.seeds=(-1,) must be a non-empty sequence of integers from 0 "
                       "to 4294967295"),
    ({"seeds": (2**32,)}, "config.seeds=(4294967296,) must be"),  # JAX keys keep 32 bits
    ({"seeds": (0, 1, 0)}, "config.seeds=(0, 1, 0) repeats [0]"),
    ({"label_fractions": (0.5,)}, "config.label_fractions=(0.5,) lacks 1.0"),
    ({"label_fractions": (0.1, 0.5)}, "config.label_fractions=(0.1, 0.5) lacks 1.0"),
    ({"label_fractions": (0.5, 0.5, 1.0)},
     "config.label_fractions=(0.5, 0.5, 1.0) repeats [0.5]"),
    ({"label_fractions": (1, 1.0)}, "config.label_fractions=(1, 1.0) repeats [1.0]"),
])
def test_study_seeds_and_fractions_it_cannot_run_are_refused(fields, text):
  problems = validate.config_problems(_compare(**fields))
  assert len(problems) == 1 and text in problems[0], problems


def test_study_seeds_and_fractions_that_run():
  for fields in ({"seeds": (0, 1, 2)}, {"seeds": (2**32 - 1,)},
                 {"label_fractions": (0.01, 0.1, 1.0)}, {"label_fractions": (1.0, 0.5)}):
    assert validate.config_problems(_compare(**fields)) == [], fields


@pytest.mark.parametrize("seed", [-1, 2**32, True])
def test_a_runs_own_seed_is_checked(seed):
  from conftest import tiny_vae_config
  c = tiny_vae_config("")
  c.seed = seed
  problems = validate.config_problems(c)
  assert len(problems) == 1 and problems[0].startswith(f"config.seed={seed!r} must be"), problems


@pytest.mark.parametrize("override, text", [
    ("--config.seeds=(-1,)", "config.seeds=(-1,) must be"),
    ("--config.seeds=(0,0)", "config.seeds=(0, 0) repeats [0]"),
    ("--config.label_fractions=(0.5,)", "config.label_fractions=(0.5,) lacks 1.0"),
    ("--config.label_fractions=(0.5,0.5)", "config.label_fractions=(0.5, 0.5) repeats [0.5]"),
])
def test_the_study_command_refuses_them_before_writing(tmp_path, override, text):
  workdir = tmp_path / "study"
  r = run_main([f"--config={TINY_COMPARE}", override, f"--workdir={workdir}"], timeout=120)
  lines = _error_lines(r)
  assert r.returncode == 1 and len(lines) == 1 and text in lines[0], r.stderr[-3000:]
  assert not workdir.exists()


@pytest.mark.parametrize("args, text", [
    (["--config.arms=('vae','scratch')", "--config.arms=('vae','bogus')"],
     "--config.arms is given 2 times (--config.arms=('vae','scratch'); "
     "--config.arms=('vae','bogus'))"),
    (["--config.arms=('vae','scratch')", "--config.arms=()"], "--config.arms is given 2 times"),
    (["--config.seeds", "(0,1)", "--config.seeds=(2,)"],
     "--config.seeds is given 2 times (--config.seeds (0,1); --config.seeds=(2,))"),
    (["--config.arms=vae"], "--config.arms=vae: --config.arms takes a tuple"),
    (["--config.label_fractions=(nan,)"],
     "--config.label_fractions=(nan,): --config.label_fractions takes a tuple"),
])
def test_tuple_overrides_are_given_once_as_a_tuple(tmp_path, args, text):
  """ml_collections concatenates a repeated tuple override (`()` second trained both arms)
  and wraps text that is no tuple into a 1-tuple of that text ('vae' -> ('vae',), '(nan,)'
  -> ('(nan,)',), which the validator then echoed)."""
  workdir = tmp_path / "study"
  r = run_main([f"--config={TINY_COMPARE}", *args, f"--workdir={workdir}"], timeout=120)
  lines = _error_lines(r)
  assert r.returncode == 2 and len(lines) == 1 and text in lines[0], r.stderr[-3000:]
  assert "('(nan,)',)" not in r.stderr
  assert not workdir.exists()


@pytest.mark.parametrize("config, text", [
    ("{tmp}/no_such_config.py", "error: --config: [Errno 2] No such file or directory: "
                                "'{tmp}/no_such_config.py'"),
    ("configs/vae.py:bogus", "Unknown configs/vae.py preset 'bogus'"),
    ("configs/compare.py:bogus", "Unknown configs/compare.py preset 'bogus'"),
])
def test_a_missing_config_file_or_preset_is_one_line_and_status_2(tmp_path, config, text):
  workdir = tmp_path / "w"
  r = run_main([f"--config={config.format(tmp=tmp_path)}", f"--workdir={workdir}"],
               timeout=120)
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert r.returncode == 2, r.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error:"), lines
  assert text.format(tmp=tmp_path) in lines[0], lines
  assert not workdir.exists()


def test_a_scalar_given_twice_keeps_the_last_value(tmp_path):
  """absl's rule for every other field: the last value wins (here the second, bad one is
  what the validator sees and names)."""
  workdir = tmp_path / "w"
  r = run_main([f"--config={TINY_VAE}", "--config.batch_size=8", "--config.batch_size=0",
                f"--workdir={workdir}"], timeout=120)
  lines = _error_lines(r)
  assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
  assert "config.batch_size=0 must be a positive integer" in lines[0], lines
