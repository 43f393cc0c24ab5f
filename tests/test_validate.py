"""validate_config / validate_workdir (and outputs.workdir_has_run) on the configs of configs/."""

import os
import runpy

import pytest

from derm_jax import validate
from derm_jax.errors import ConfigError, DermJaxError
from derm_jax.train import outputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name, arg=None):
  return runpy.run_path(os.path.join(REPO, "configs", name))["get_config"](arg)


@pytest.mark.parametrize("name,arg", [("vae.py", None), ("vae.py", "paper"),
                                      ("classify.py", None), ("compare.py", None),
                                      ("compare.py", "recipe"), ("compare.py", "paper")])
def test_shipped_configs_are_valid(name, arg):
  validate.validate_config(load(name, arg))


def problems_after(config, **changes):
  for path, value in changes.items():
    *parents, leaf = path.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return validate.config_problems(config)


@pytest.mark.parametrize("changes,field", [
    ({"batch_size": 0}, "config.batch_size=0"),
    ({"eval_batch_size": 0}, "config.eval_batch_size=0"),
    ({"total_steps": -1}, "config.total_steps=-1"),
    ({"num_epochs": 0}, "config.num_epochs=0"),
    ({"model__latent_dim": 0}, "config.model.latent_dim=0"),
    ({"model__decoder_widths": (128, 0)}, "config.model.decoder_widths"),
    ({"optimizer__lr": float("nan")}, "config.optimizer.lr=nan"),
    ({"optimizer__lr": -1e-3}, "config.optimizer.lr=-0.001"),
    ({"optimizer__weight_decay": float("inf")}, "config.optimizer.weight_decay=inf"),
    ({"optimizer__grad_clip": -1.0}, "config.optimizer.grad_clip"),
    ({"optimizer__warmup_steps": -5}, "config.optimizer.warmup_steps"),
    ({"image_size": 0}, "config.image_size=0"),
    ({"input__cache_mb": -1}, "config.input.cache_mb=-1"),
    ({"input__num_workers": -2}, "config.input.num_workers=-2"),
    ({"image_size": 48}, "config.image_size=48"),  # ok for the stride, not the decoder
    ({"aug__color_jitter": -0.1}, "config.aug.color_jitter"),
    ({"aug__crop_scale": (0.0, 1.0)}, "config.aug.crop_scale"),
    ({"aug__crop_scale": (0.9, 0.5)}, "config.aug.crop_scale"),
    ({"aug__crop_scale": (0.5, 1.5)}, "config.aug.crop_scale"),
    ({"aug__crop_ratio": (1.3, 0.7)}, "config.aug.crop_ratio"),
    ({"log_every_steps": 0}, "config.log_every_steps=0"),
    ({"keep_checkpoints": 0}, "config.keep_checkpoints=0"),
    ({"data__name": "nope"}, "config.data.name='nope'"),
    ({"model__backbone": "resnet9000"}, "config.model.backbone='resnet9000'"),
    ({"loss__sigma": 0.0}, "config.loss.sigma"),
])
def test_each_bad_vae_setting_is_named(changes, field):
  problems = problems_after(load("vae.py"), **changes)
  assert len(problems) == 1 and problems[0].startswith(field), problems


def test_total_steps_overrides_num_epochs():
  assert problems_after(load("vae.py"), num_epochs=0, total_steps=10) == []


def test_all_problems_in_one_error():
  c = load("vae.py")
  c.batch_size, c.optimizer.lr, c.model.latent_dim = 0, float("nan"), 0
  with pytest.raises(ConfigError) as err:
    validate.validate_config(c)
  msg = str(err.value)
  assert isinstance(err.value, DermJaxError) and "\n" not in msg
  assert msg.startswith("3 invalid config settings")
  for field in ("config.batch_size=0", "config.optimizer.lr=nan", "config.model.latent_dim=0"):
    assert field in msg


def test_classifier_settings():
  assert problems_after(load("classify.py"), optimizer__backbone_lr=float("nan")) == [
      "config.optimizer.backbone_lr=nan must be a finite number > 0"]
  assert problems_after(load("classify.py"), image_size=40)[0].startswith(
      "config.image_size=40: cannot be used with backbone 'efficientnet_lite0'")
  (p,) = problems_after(load("classify.py"), init__source="pretrained")
  assert p.startswith("config.init.pretrained_workdir")
  (p,) = problems_after(load("classify.py"), head__dropout=1.0)
  assert p.startswith("config.head.dropout=1.0")


def test_compare_checks_stages_as_built_with_shared_names():
  c = load("compare.py")
  c.vae.batch_size = 0
  c.classifier.eval_batch_size = 0
  c.classifier.optimizer.lr = float("nan")
  c.image_size = 48  # shared: bad for the backbone's stride 32
  c.aug.crop_scale = (0.9, 0.5)
  problems = validate.config_problems(c)
  assert "config.vae.batch_size=0 must be a positive integer" in problems
  assert "config.classifier.eval_batch_size=0 must be a positive integer" in problems
  assert "config.classifier.optimizer.lr=nan must be a finite number > 0" in problems
  assert sum(p.startswith("config.image_size=48") for p in problems) == 1  # reported once
  assert sum(p.startswith("config.aug.crop_scale") for p in problems) == 1
  assert not any(p.startswith(("config.vae.image_size", "config.vae.aug")) for p in problems)
  assert len(problems) == 5, problems

  c = load("compare.py")
  c.vae.model.latent_dim = 0
  c.vae_workdir = "/some/pretrained/vae"  # the VAE stage is not run: not checked
  c.arms = ("vae", "imagenet")
  assert validate.config_problems(c) == []
  c.arms = ("vae", "resnet")
  assert validate.config_problems(c)[0].startswith("config.arms=")
  c = load("compare.py")
  c.backbone = "nope"
  assert validate.config_problems(c)[0].startswith("config.backbone='nope'")


def test_unknown_task():
  c = load("vae.py")
  c.task = "segment"
  with pytest.raises(ConfigError, match="config.task='segment'"):
    validate.validate_config(c)


def test_workdir_checks(tmp_path):
  validate.validate_workdir(str(tmp_path))
  validate.validate_workdir(str(tmp_path / "new" / "deeper"))  # parent writable
  assert not (tmp_path / "new").exists()  # nothing created
  (tmp_path / "f").write_text("x")
  with pytest.raises(ConfigError, match=f"{tmp_path / 'f'} is an existing file"):
    validate.validate_workdir(str(tmp_path / "f"))
  with pytest.raises(ConfigError, match="is a file, not a directory"):
    validate.validate_workdir(str(tmp_path / "f" / "run"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_workdir(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  try:
    with pytest.raises(ConfigError, match="cannot be written"):
      validate.validate_workdir(str(ro))
    with pytest.raises(ConfigError, match="nearest existing parent"):
      validate.validate_workdir(str(ro / "run"))
  finally:
    ro.chmod(0o700)


def test_unwritable_workdir_refused_by_write_probe(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(validate.tempfile, "mkstemp", refuse)
  with pytest.raises(ConfigError, match=f"{tmp_path} cannot be written: Permission denied"):
    validate.validate_workdir(str(tmp_path))


def test_workdir_has_run(tmp_path):
  assert not outputs.workdir_has_run(str(tmp_path / "missing"))
  (tmp_path / "config.json").write_text("{}")
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-123").mkdir()
  assert not outputs.workdir_has_run(str(tmp_path))
  (tmp_path / "checkpoints" / "3").mkdir()
  assert outputs.workdir_has_run(str(tmp_path))
