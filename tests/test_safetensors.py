"""Tests for derm_jax.convert.safetensors: reading .safetensors files without torch."""

from __future__ import annotations

import json
import pathlib
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from derm_jax.convert import read_state_dict
from derm_jax.convert import safetensors as st
from derm_jax.convert.__main__ import main

_CODES = {np.dtype("float64"): "F64", np.dtype("float32"): "F32", np.dtype("float16"): "F16",
          np.dtype("int64"): "I64", np.dtype("int32"): "I32", np.dtype("int16"): "I16",
          np.dtype("int8"): "I8", np.dtype("uint8"): "U8", np.dtype("bool"): "BOOL"}


def _write(path: pathlib.Path, entries: dict, data: bytes, metadata: dict | None = None,
           header_length: int | None = None) -> pathlib.Path:
  """A safetensors file with the given header entries and data bytes, written by hand."""
  header = dict(entries)
  if metadata is not None:
    header["__metadata__"] = metadata
  raw = json.dumps(header).encode()
  n = len(raw) if header_length is None else header_length
  path.write_bytes(struct.pack("<Q", n) + raw + data)
  return path


def _save(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> pathlib.Path:
  """Writes `arrays` in the safetensors layout (the spec, independent of the reader)."""
  entries, data = {}, b""
  for name, a in arrays.items():
    raw = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()
    entries[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape),
                     "data_offsets": [len(data), len(data) + len(raw)]}
    data += raw
  return _write(path, entries, data, metadata={"format": "np"})


def _arrays() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      "stem.0.weight": rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
      "f64": rng.standard_normal(5),
      "f16": rng.standard_normal((2, 3)).astype(np.float16),
      "i64": np.arange(-3, 4, dtype=np.int64),
      "i32": np.array([[1, -2], [3, 4]], np.int32),
      "i16": np.array([-7, 7], np.int16),
      "i8": np.array([-128, 127], np.int8),
      "u8": np.arange(250, 256, dtype=np.uint8),
      "bool": np.array([True, False, True]),
      "scalar": np.array(2.5, np.float32),
      "empty": np.zeros((0, 4), np.float32),
  }


def test_reads_every_dtype(tmp_path):
  arrays = _arrays()
  sd = st.load_state_dict(_save(tmp_path / "all.safetensors", arrays))
  assert list(sd) == list(arrays)
  for k, a in arrays.items():
    assert sd[k].dtype == a.dtype and sd[k].shape == a.shape, k
    np.testing.assert_array_equal(sd[k], a, err_msg=k)
    assert sd[k].flags.c_contiguous and sd[k].flags.writeable, k


def test_bf16_becomes_float32(tmp_path):
  values = np.array([1.0, -2.5, 3.140625, 0.0, -0.0, np.inf], np.float32)
  bits = (values.view(np.uint32) >> 16).astype("<u2")  # these values are exact in bf16
  path = _write(tmp_path / "bf16.safetensors",
                {"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]}},
                bits.tobytes())
  w = st.load_state_dict(path)["w"]
  assert w.dtype == np.float32 and w.shape == (2, 3)
  np.testing.assert_array_equal(w.reshape(-1), values)


def test_matches_the_safetensors_package(tmp_path):
  st_numpy = pytest.importorskip("safetensors.numpy")
  arrays = {k: v for k, v in _arrays().items() if k != "scalar"}
  path = tmp_path / "pkg.safetensors"
  st_numpy.save_file(arrays, str(path), metadata={"format": "np"})
  sd = st.load_state_dict(path)
  assert sorted(sd) == sorted(arrays)
  for k, a in arrays.items():
    np.testing.assert_array_equal(sd[k], a, err_msg=k)
    assert sd[k].dtype == a.dtype, k


@pytest.mark.torch
def test_matches_torch_save_file(tmp_path):
  torch = pytest.importorskip("torch")
  st_torch = pytest.importorskip("safetensors.torch")
  g = torch.Generator().manual_seed(0)
  ref = {"bf16": torch.randn(3, 5, generator=g).bfloat16(),
         "f16": torch.randn(4, generator=g).half(), "f32": torch.randn(2, 3, generator=g),
         "i64": torch.arange(6).reshape(2, 3), "bool": torch.tensor([True, False])}
  path = tmp_path / "torch.safetensors"
  st_torch.save_file(ref, str(path))
  sd = st.load_state_dict(path)
  for k, t in ref.items():
    want = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    assert sd[k].dtype == want.dtype, k
    np.testing.assert_array_equal(sd[k], want, err_msg=k)


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
  return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _refused(path: pathlib.Path, match: str) -> None:
  with pytest.raises(st.SafetensorsError, match=match) as info:
    st.load_state_dict(path)
  message = str(info.value)
  assert message.startswith(str(path)) and "\n" not in message, message


def test_malformed_files_are_refused(tmp_path):
  good = _save(tmp_path / "good.safetensors", {"a": np.ones(4, np.float32),
                                               "b": np.zeros(2, np.int64)})
  data = good.read_bytes()
  cases = {
      "short": (data[:5], r"too short for the 8-byte header length"),
      "cut_header": (data[:20], r"header length \d+ but only 12 bytes follow"),
      "cut_data": (data[:-3], r"tensor 'b'.*outside the 29 data bytes \(truncated"),
      "huge_header": (struct.pack("<Q", 2**63) + data[8:],
                      r"header length 9223372036854775808 exceeds"),
      "not_json": (struct.pack("<Q", 4) + b"{abc", r"not valid JSON"),
      "not_object": (struct.pack("<Q", 2) + b"[]", r"JSON list, not an object"),
      "binary": (struct.pack("<Q", 4) + b"\xff\xfe\x00{", r"not valid JSON"),
      "deep_json": (struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,
                    r"not valid JSON|not an object"),
  }
  for name, (content, match) in cases.items():
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(content)
    _refused(path, match)

  def bad(name, entries, data=b"\0" * 16, match=""):
    _refused(_write(tmp_path / f"{name}.safetensors", entries, data), match)

  bad("out_of_bounds", {"w": _entry(offsets=(12, 20))}, match=r"\[12, 20\] outside the 16")
  bad("negative", {"w": _entry(offsets=(-8, 0))}, match=r"outside")
  bad("overlap", {"a": _entry(shape=(3,), offsets=(0, 12)), "b": _entry(offsets=(8, 16))},
      match=r"tensors 'a' and 'b' overlap")
  bad("unknown_dtype", {"w": _entry(dtype="F8_E4M3")}, match=r"unknown dtype 'F8_E4M3'")
  bad("size_mismatch", {"w": _entry(shape=(3,), offsets=(0, 8))},
      match=r"hold 8 bytes, but F32\[3\] needs 12")
  bad("huge_shape", {"w": _entry(shape=(1 << 40, 1 << 40), offsets=(0, 8))},
      match=r"needs 4835703278458516698824704")
  bad("bad_shape", {"w": _entry(shape=(2.0,))}, match=r"shape .* non-negative integers")
  bad("bool_offsets", {"w": {"dtype": "F32", "shape": [2], "data_offsets": [False, 8]}},
      match=r"is not \[begin, end\]")
  bad("extra_key", {"w": dict(_entry(), extra=1)}, match=r"exactly dtype, shape")
  bad("no_tensors", {}, match=r"holds no tensors")
  bad("metadata", {"w": _entry(), "__metadata__": {"a": 1}}, match=r"__metadata__")
  dup = tmp_path / "dup.safetensors"
  raw = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {}}'
  dup.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
  _refused(dup, r"duplicate key 'w'")
  with pytest.raises(st.SafetensorsFileNotFoundError, match="nope.safetensors"):
    st.load_state_dict(tmp_path / "nope.safetensors")


def test_format_is_picked_by_extension_and_content(tmp_path):
  arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
  renamed = _save(tmp_path / "weights.bin", arrays)  # safetensors content, torch-ish name
  np.testing.assert_array_equal(read_state_dict(renamed)["w"], arrays["w"])
  assert st.looks_like_safetensors(renamed)
  zipped = tmp_path / "zip.safetensors"  # extension wins: the error speaks of safetensors
  with zipfile.ZipFile(zipped, "w") as zf:
    zf.writestr("archive/data.pkl", b"")
  assert not st.looks_like_safetensors(zipped)
  with pytest.raises(st.SafetensorsError, match=r"zip\.safetensors.*header length"):
    read_state_dict(zipped)


def test_cli_reports_a_bad_file_in_one_line(tmp_path, capsys):
  path = _write(tmp_path / "bad.safetensors", {"w": _entry(offsets=(0, 800))}, b"\0" * 8)
  out = tmp_path / "out"
  assert main(["--arch=convnext_tiny", f"--src={path}", f"--out={out}"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("derm_jax.convert: error: ") and "\n" not in err
  assert "bad.safetensors" in err and "outside the 8 data bytes" in err
  assert not out.exists()


def _empty_tensors_header(n: int) -> bytes:
  entry = b'{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
  return b"{" + b",".join(b'"t%d":' % i + entry for i in range(n)) + b"}"


def _refused_cheaply(path: pathlib.Path, match: str) -> str:
  """Loads `path`, which must be refused with `match`, using little memory."""
  tracemalloc.start()
  try:
    with pytest.raises(st.SafetensorsError, match=match) as info:
      st.load_state_dict(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  message = str(info.value)
  assert message.startswith(str(path)) and "\n" not in message, message
  assert peak < 64 << 20, (peak, message)
  return message


def test_huge_header_is_refused_before_it_is_read(tmp_path):
  # ~1.7 million empty tensors make a 99 MB header: refused on its declared length alone.
  path = tmp_path / "many.safetensors"
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", 99_000_000) + b'{"t0":')
    f.truncate(8 + 99_000_000)  # sparse: the size is real, the bytes cost nothing
  message = _refused_cheaply(path, r"header length 99000000 exceeds the 8388608-byte limit")
  assert "MAX_HEADER_BYTES" in message
  assert st.MAX_HEADER_BYTES == 8 << 20


def test_too_many_tensors_are_refused_while_parsing(tmp_path):
  n = st.MAX_TENSORS
  ok = tmp_path / "at_limit.safetensors"
  raw = _empty_tensors_header(n)
  ok.write_bytes(struct.pack("<Q", len(raw)) + raw)
  assert len(st.load_state_dict(ok)) == n  # the limit itself is accepted
  for extra in (1, 100_000):  # just past the limit; far past it (parsing stops early)
    path = tmp_path / f"over_{extra}.safetensors"
    raw = _empty_tensors_header(n + extra)
    assert len(raw) <= st.MAX_HEADER_BYTES  # the tensor cap, not the byte cap, refuses it
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    _refused_cheaply(path, rf"more than {n} tensors \(the MAX_TENSORS limit")


def test_shape_too_large_for_numpy_names_file_and_tensor(tmp_path):
  path = _write(tmp_path / "huge.safetensors",
                {"ok": _entry(), "w": _entry(shape=(2**61, 2**61, 0), offsets=(8, 8))},
                b"\0" * 8)
  message = _refused_cheaply(path, r"tensor 'w': shape \[2305843009213693952, "
                                   r"2305843009213693952, 0\] is too large")
  assert "array is too big" not in message
  out = tmp_path / "out"
  assert main(["--arch=convnext_tiny", f"--src={path}", f"--out={out}"]) == 1
  assert not out.exists()
