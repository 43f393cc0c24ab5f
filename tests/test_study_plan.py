"""The study's plan (derm_jax/study/plan.py, the members derm_jax/study/stages.py trains):
by default one VAE per seed, each seed's VAE arm starting from its own VAE, so that the VAE
arm's spread over seeds includes the pretraining's."""

import os

from conftest import compare_config

from derm_jax.study import plan


def _compare(**fields):
  return compare_config(**fields)


def _vaes(c, wd):
  return [(r.name, r.workdir, r.config) for r in plan.pretraining_runs(c, wd).get("vae", [])]


def _classifiers(c, wd):
  return [(r.name, r.workdir, r.config) for r in plan.classifier_runs(c, wd)]


def test_one_vae_per_seed_is_the_default(tmp_path):
  wd = str(tmp_path / "study")
  c = _compare(seeds=(0, 1, 2), arms=("vae", "scratch"))
  assert c.vae_per_seed is True
  vaes = _vaes(c, wd)
  assert [(n, d, int(cfg.seed)) for n, d, cfg in vaes] == [
      (f"vae seed {s}", os.path.join(wd, "vae", f"seed_{s}"), s) for s in (0, 1, 2)]
  by_name = {n: cfg for n, _, cfg in _classifiers(c, wd)}
  for s in (0, 1, 2):
    vae_arm = by_name[f"vae seed {s}"]
    assert vae_arm.init.pretrained_workdir == os.path.join(wd, "vae", f"seed_{s}")
    assert int(vae_arm.seed) == s
    assert by_name[f"scratch seed {s}"].init.pretrained_workdir == ""
  del c["vae_per_seed"]  # a config without the field (an older study's config.json)
  assert [d for _, d, _ in _vaes(c, wd)] == [d for _, d, _ in vaes]


def test_one_vae_for_all_seeds_or_a_pretrained_one_when_asked(tmp_path):
  wd = str(tmp_path / "study")
  shared = _compare(seeds=(3, 4), arms=("vae",), vae_per_seed=False)
  assert [(d, int(cfg.seed)) for _, d, cfg in _vaes(shared, wd)] == [
      (os.path.join(wd, "vae"), 3)]
  assert {cfg.init.pretrained_workdir for _, _, cfg in _classifiers(shared, wd)} == {
      os.path.join(wd, "vae")}
  reused = _compare(seeds=(3, 4), arms=("vae",), vae_workdir="/pretrained/vae")
  assert _vaes(reused, wd) == []
  assert {cfg.init.pretrained_workdir for _, _, cfg in _classifiers(reused, wd)} == {
      "/pretrained/vae"}
