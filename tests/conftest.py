"""Shared fixtures: a tiny, fast VAE config on the embedded DermaMNIST subset, and a
TFDS data_dir prepared once per test session."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data_dir with the embedded subset prepared once for all tests."""
  d = str(tmp_path_factory.mktemp("tfds"))
  from derm_jax import config_lib
  from derm_jax.data import dermamnist
  cfg = config_lib.data()
  cfg.data_dir = d
  dermamnist.get_data_source(cfg, "train")
  return d


TINY_VAE = os.path.join(REPO, "tests", "configs", "tiny_vae.py")


def tiny_vae_config(data_dir):
  """The tiny VAE config as a ConfigDict (for in-process tests)."""
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_vae
  c = tiny_vae.get_config()
  c.data.data_dir = data_dir
  return c


def run_main(args, env_extra=None, timeout=600):
  """Runs `python -m derm_jax.main args...` and returns the CompletedProcess."""
  env = dict(os.environ)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "derm_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
