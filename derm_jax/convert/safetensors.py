"""Reads `.safetensors` weight files into numpy arrays without torch or the safetensors package.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
N, N bytes of UTF-8 JSON mapping each tensor name to {"dtype", "shape", "data_offsets":
[begin, end]} (byte offsets into the data that follows the header) plus an optional
"__metadata__" {str: str}, then the raw little-endian tensor bytes.

Everything is validated before any tensor memory is allocated: the header length against the
file size, the JSON structure, each dtype (F64, F32, F16, BF16, I64, I32, I16, I8, U8,
BOOL), shape and byte range (inside the data, size == prod(shape) * itemsize, no two ranges
overlapping), so the arrays together never exceed the file's size. A shape whose non-zero
dimensions multiply past what numpy can address (2**63 bytes; e.g. 2**61 x 2**61 x 0) is
refused by name too, never handed to numpy.

The header itself is bounded so that a hostile one costs little to refuse:
`MAX_HEADER_BYTES` = 8 MiB of JSON (checked before it is read) and `MAX_TENSORS` = 16384
entries (counted while parsing, which stops at the first one past the limit). Real weight
files are far below both: a ConvNeXt or EfficientNet header is tens of KiB with a few
hundred tensors, and even large language-model shards list a few thousand.
Tensors are then read from their exact byte ranges. BF16 becomes float32 (exact: the bf16
bits are the high half of the float32), BOOL becomes np.bool_.

Public API: `load_state_dict(path) -> dict[str, np.ndarray]` (writeable, C-contiguous arrays
in the file's order) and `looks_like_safetensors(path)` (content sniffing, False without
opening anything that is not a regular file, such as a FIFO); every problem
with the file raises `SafetensorsError` (a `ValueError`) whose one-line message names the file
and what is wrong.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from typing import Any

import numpy as np

from derm_jax.errors import DermJaxError

__all__ = ["MAX_HEADER_BYTES", "MAX_TENSORS", "SafetensorsError",
           "SafetensorsFileNotFoundError", "load_state_dict", "looks_like_safetensors"]

MAX_HEADER_BYTES = 8 << 20  # JSON header bytes (the reference implementation allows 100 MB)
MAX_TENSORS = 16384  # tensor entries in the header
_MAX_RANK = 64
_MAX_DIM = 1 << 62
_MAX_NBYTES = (1 << 63) - 1  # numpy's limit on an array's size in bytes

# safetensors dtype -> numpy dtype of the stored bytes (BF16 / BOOL are converted after)
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("u1"),
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}


class SafetensorsError(DermJaxError, ValueError):
  """The file is not a readable safetensors file (wrong format, truncated, inconsistent)."""


class SafetensorsFileNotFoundError(SafetensorsError, FileNotFoundError):
  """The file does not exist (both a `SafetensorsError` and a `FileNotFoundError`)."""


def _header_length(head: bytes) -> int:
  return struct.unpack("<Q", head[:8])[0]


def looks_like_safetensors(path: str | os.PathLike) -> bool:
  """True if `path` starts like a safetensors file: a plausible header length and '{'."""
  try:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):  # opening a FIFO would wait for a writer
      return False
    size = info.st_size
    with open(path, "rb") as f:
      head = f.read(9)
  except OSError:
    return False
  if len(head) < 9:
    return False
  n = _header_length(head)
  return 2 <= n <= min(MAX_HEADER_BYTES, size - 8) and head[8:9] == b"{"


class _TooManyTensors(Exception):
  """Raised from inside json.loads to stop parsing a header with too many entries."""


class _ObjectHook:
  """json `object_pairs_hook`: refuses duplicate keys and stops the parse (by raising
  `_TooManyTensors`) once the header has more JSON objects than MAX_TENSORS entries, the
  top level and `__metadata__` can account for."""

  def __init__(self):
    self.objects = 0

  def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    self.objects += 1
    if self.objects > MAX_TENSORS + 2:
      raise _TooManyTensors
    out: dict[str, Any] = {}
    for k, v in pairs:
      if k in out:
        raise ValueError(f"duplicate key {k[:100]!r} in the header")
      out[k] = v
    return out


def _is_int(v: Any) -> bool:
  return type(v) is int


def _read_header(path: str, f: Any, size: int) -> tuple[dict[str, Any], int]:
  """(the parsed JSON header, file offset where the data starts)."""

  def fail(reason: str) -> SafetensorsError:
    return SafetensorsError(f"{path}: {reason}")

  head = f.read(8)
  if len(head) < 8:
    raise fail(f"not a safetensors file: {size} bytes, too short for the 8-byte header length")
  n = _header_length(head)
  if n > MAX_HEADER_BYTES:
    raise fail(f"not a safetensors file (or corrupt): header length {n} exceeds the "
               f"{MAX_HEADER_BYTES}-byte limit (MAX_HEADER_BYTES)")
  if 8 + n > size:
    raise fail(f"truncated or not a safetensors file: header length {n} but only {size - 8} "
               "bytes follow")
  raw = f.read(n)
  if len(raw) != n:
    raise fail(f"truncated file: header of {n} bytes, read {len(raw)}")
  try:
    header = json.loads(raw.decode("utf-8"), object_pairs_hook=_ObjectHook())
  except _TooManyTensors:
    raise fail(f"the header lists more than {MAX_TENSORS} tensors (the MAX_TENSORS "
               "limit of this reader)") from None
  except (UnicodeDecodeError, ValueError, RecursionError) as e:
    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    raise fail(f"not a safetensors file: the header is not valid JSON ({reason})") from e
  if not isinstance(header, dict):
    raise fail(f"not a safetensors file: the header is a JSON {type(header).__name__}, "
               "not an object")
  if len(header) - ("__metadata__" in header) > MAX_TENSORS:
    raise fail(f"the header lists more than {MAX_TENSORS} tensors (the MAX_TENSORS "
               "limit of this reader)")
  return header, 8 + n


def _validate(path: str, header: dict[str, Any], data_len: int
              ) -> list[tuple[str, np.dtype, str, tuple[int, ...], int, int]]:
  """[(name, stored dtype, safetensors dtype, shape, begin, end)] in header order."""
  entries = []
  for name, info in header.items():
    if name == "__metadata__":
      if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
        raise SafetensorsError(f"{path}: __metadata__ is not a map of strings to strings")
      continue
    where = f"{path}: tensor {name[:100]!r}"
    if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
      keys = sorted(info)[:5] if isinstance(info, dict) else type(info).__name__
      raise SafetensorsError(f"{where}: entry must have exactly dtype, shape and data_offsets "
                             f"(got {keys})")
    dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
      raise SafetensorsError(f"{where}: unknown dtype {str(dtype_name)[:20]!r} (known: "
                             f"{', '.join(_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > _MAX_RANK
        or not all(_is_int(d) and 0 <= d < _MAX_DIM for d in shape)):
      raise SafetensorsError(f"{where}: shape {str(shape)[:80]} is not a list of at most "
                             f"{_MAX_RANK} non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)):
      raise SafetensorsError(f"{where}: data_offsets {str(offsets)[:80]} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
      raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] outside the "
                             f"{data_len} data bytes (truncated file?)")
    dtype = _DTYPES[dtype_name]
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
      raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] hold {end - begin} "
                             f"bytes, but {dtype_name}{shape} needs {nbytes}")
    if math.prod(d for d in shape if d) * dtype.itemsize > _MAX_NBYTES:  # e.g. [2**61]*2+[0]
      raise SafetensorsError(f"{where}: shape {shape} is too large: its non-zero dimensions "
                             "alone exceed 2**63 bytes, more than numpy can address")
    entries.append((name, dtype, dtype_name, tuple(shape), begin, end))
  previous = None
  for name, _, _, _, begin, end in sorted(entries, key=lambda e: (e[4], e[5])):
    if begin == end:
      continue
    if previous is not None and begin < previous[1]:
      raise SafetensorsError(f"{path}: tensors {previous[0][:100]!r} and {name[:100]!r} "
                             f"overlap (bytes [{previous[2]}, {previous[1]}) and "
                             f"[{begin}, {end}))")
    previous = (name, end, begin)
  return entries


def _to_numpy(raw: np.ndarray, dtype_name: str) -> np.ndarray:
  if dtype_name == "BF16":
    return (raw.astype(np.uint32) << 16).view(np.float32)
  if dtype_name == "BOOL":
    return raw != 0
  if not raw.dtype.isnative:
    return raw.astype(raw.dtype.newbyteorder("="))
  return raw


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file as {name: np.ndarray} (see the module docstring).

  Raises `SafetensorsFileNotFoundError` for a missing file and `SafetensorsError` (a
  ValueError) for anything wrong with it.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise SafetensorsFileNotFoundError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise SafetensorsError(f"{path}: not a regular file")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    header, data_start = _read_header(path, f, size)
    entries = _validate(path, header, size - data_start)
    if not entries:
      raise SafetensorsError(f"{path}: the file holds no tensors")
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, dtype_name, shape, begin, end in sorted(entries, key=lambda e: e[4]):
      raw = np.empty(shape, dtype)
      f.seek(data_start + begin)
      got = f.readinto(memoryview(raw.reshape(-1).view(np.uint8))) if end > begin else 0
      if got != end - begin:
        raise SafetensorsError(f"{path}: truncated file: tensor {name[:100]!r} has "
                               f"{got} of {end - begin} bytes")
      arrays[name] = _to_numpy(raw, dtype_name)
  return {name: arrays[name] for name, *_ in entries}
