"""Parity of converted ConvNeXt-Tiny weights with the real timm and torchvision models.

Random (seeded) PyTorch weights go through the whole user path: torch.save -> .pth ->
derm_jax.convert.pth.load_state_dict (torch-free) -> convert_state_dict -> flax, and the
flax logits must match PyTorch's on the same images. Needs the [torch] extra.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from derm_jax.convert import convnext as convert
from derm_jax.convert.pth import load_state_dict
from derm_jax.models.convnext import IMAGENET_MEAN, IMAGENET_STD, ConvNeXt

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")

TOLERANCE = 1e-4


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Non-trivial values everywhere: the default init (zero biases, unit norms, layer scale
  1e-6) would hide bias / norm / block mapping mistakes."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith(("gamma", "layer_scale")):
        p.copy_(0.5 * noise)
      elif name.endswith("bias"):
        p.copy_(0.05 * noise)
      elif p.ndim == 1:  # LayerNorm weight
        p.copy_(1.0 + 0.2 * noise)
      else:  # conv / linear weights: keep the scale of the original init (std 0.02)
        p.copy_(0.02 * noise)
  return model.eval()


def _build(source: str) -> torch.nn.Module:
  torch.manual_seed(0)
  if source == "timm":
    timm = pytest.importorskip("timm")
    return _randomize(timm.create_model("convnext_tiny", pretrained=False), seed=1)
  torchvision = pytest.importorskip("torchvision")
  return _randomize(torchvision.models.convnext_tiny(weights=None), seed=2)


@pytest.fixture(scope="module", params=["timm", "torchvision"])
def reference(request, tmp_path_factory) -> tuple[str, torch.nn.Module, dict[str, np.ndarray]]:
  """(source, torch model, state dict read back from a .pth file without torch)."""
  model = _build(request.param)
  path = tmp_path_factory.mktemp(request.param) / "convnext_tiny.pth"
  torch.save(model.state_dict(), path)
  return request.param, model, load_state_dict(path)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
  return np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)


_CLASSIFIER = ConvNeXt(num_classes=1000)
_BACKBONE = ConvNeXt(num_classes=None)
_classify = jax.jit(lambda v, x: _CLASSIFIER.apply(v, x, train=False))
_features = jax.jit(lambda v, x: _BACKBONE.apply(v, x, train=False))


def _torch_input(images: np.ndarray) -> torch.Tensor:
  x = (images - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_logits_and_features_match_torch(reference, images):
  source, model, sd = reference
  assert convert.arch_from_state_dict(sd) == source
  assert len(sd) == 182 and all(isinstance(v, np.ndarray) for v in sd.values())
  variables = convert.convert_state_dict(sd)
  with torch.no_grad():
    x = _torch_input(images)
    ref_logits = model(x).numpy()
    ref_features = (model.forward_features(x) if source == "timm" else model.features(x)).numpy()
  logits = np.asarray(_classify(variables, images))
  diff = float(np.max(np.abs(logits - ref_logits)))
  print(f"{source}: max |logits| {np.max(np.abs(ref_logits)):.3f}, max abs diff {diff:.3g}")
  assert np.max(np.abs(ref_logits)) > 0.5  # the comparison is not trivially small
  assert diff <= TOLERANCE

  # Backbone mode: the same weights without the head give the last stage's feature map.
  body = convert.convert_state_dict(sd, num_classes=None)
  assert "head" not in body["params"] and "head_norm" not in body["params"]
  features = np.asarray(_features(body, images))
  assert features.shape == (2, 7, 7, 768)
  np.testing.assert_allclose(features, ref_features.transpose(0, 2, 3, 1), atol=TOLERANCE * 10,
                             rtol=1e-4)


def test_converted_tree_matches_model(reference):
  _, _, sd = reference
  params = convert.convert_state_dict(sd)["params"]
  shapes = jax.eval_shape(
      lambda: _CLASSIFIER.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                               train=False))["params"]
  assert jax.tree.structure(params) == jax.tree.structure(shapes)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(shapes), strict=True):
    assert got.shape == want.shape and got.dtype == np.float32
  n = sum(v.size for v in jax.tree.leaves(params))
  assert n == 28_589_128
  # A DataParallel 'module.' prefix is accepted.
  wrapped = convert.convert_state_dict({f"module.{k}": v for k, v in sd.items()})
  np.testing.assert_array_equal(wrapped["params"]["head"]["kernel"], params["head"]["kernel"])


def test_truncated_state_dict_names_missing_keys(reference):
  source, _, sd = reference
  last_block = "stages.2.blocks.8." if source == "timm" else "features.5.8."
  truncated = {k: v for k, v in sd.items() if not k.startswith(last_block)}
  with pytest.raises(ValueError, match=r"missing source keys \(9\).*" + last_block.replace(".", r"\.")):
    convert.convert_state_dict(truncated)
  head = "head.fc.weight" if source == "timm" else "classifier.2.weight"
  reshaped = dict(sd, **{head: np.zeros((10, 768), np.float32)})
  with pytest.raises(ValueError, match=r"wrong shapes \(1\): " + head.replace(".", r"\.")):
    convert.convert_state_dict(reshaped)
  extra = dict(sd, **{"stages.0.blocks.0.extra" if source == "timm" else "features.1.0.extra":
                      np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected source keys \(1\)"):
    convert.convert_state_dict(extra)


def test_truncated_file_gives_clear_error(tmp_path: Path):
  model = _build("torchvision")
  path = tmp_path / "full.pth"
  torch.save(model.state_dict(), path)
  data = path.read_bytes()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="cut.pth"):
    load_state_dict(cut)


def test_foreign_state_dicts_are_rejected():
  torchvision = pytest.importorskip("torchvision")
  for build in (torchvision.models.resnet18, torchvision.models.efficientnet_b0):
    sd = {k: v.numpy() for k, v in build(weights=None).state_dict().items()}
    with pytest.raises(ValueError, match="Not a ConvNeXt state dict"):
      convert.arch_from_state_dict(sd)
    with pytest.raises(ValueError, match="Not a ConvNeXt state dict"):
      convert.convert_state_dict(sd)
  original = {"downsample_layers.0.0.weight": np.zeros((96, 3, 4, 4), np.float32)}
  with pytest.raises(ValueError, match="facebookresearch"):
    convert.convert_state_dict(original)
  with pytest.raises(ValueError, match="state dict"):
    convert.convert_state_dict([("stem.0.weight", np.zeros(3))])  # type: ignore[arg-type]


def test_safetensors_file_converts_to_the_same_logits(reference, images, tmp_path):
  """timm / the HF hub publish .safetensors: the same weights through that format and the
  whole `derm_jax.convert.convert` path (reader -> converter -> Orbax directory) give the
  PyTorch logits."""
  st_torch = pytest.importorskip("safetensors.torch")
  from derm_jax.convert import convert as convert_file
  from derm_jax.convert import read_state_dict, store

  source, model, sd = reference
  path = tmp_path / f"{source}.safetensors"
  st_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
  st_sd = read_state_dict(path)
  assert sorted(st_sd) == sorted(sd)  # safetensors stores names sorted
  for k, v in sd.items():  # bit-identical to what the .pth reader got
    np.testing.assert_array_equal(st_sd[k], v, err_msg=k)
  if source != "timm":
    return
  out = convert_file("convnext_tiny", src=path, out=tmp_path / "converted")
  arch, variables = store.load_pretrained(out)
  assert arch == "convnext_tiny" and store.load_meta(out)["source"] == path.name
  with torch.no_grad():
    ref_logits = model(_torch_input(images)).numpy()
  logits = np.asarray(_classify(variables, images))
  diff = float(np.max(np.abs(logits - ref_logits)))
  print(f"{source} via safetensors: max abs logit diff {diff:.3g}")
  assert np.max(np.abs(ref_logits)) > 0.5 and diff <= TOLERANCE
