"""Reads PyTorch `.pth` / `.bin` state dicts into numpy arrays without importing torch.

Both serialisation formats written by `torch.save` are supported:

* zip (torch >= 1.6): `<name>/data.pkl` holds the pickled object, each tensor storage is a
  raw little- (or big-, see `<name>/byteorder`) endian record `<name>/data/<key>`;
* legacy (pre-1.6): five consecutive pickles (magic number, protocol version, sys_info,
  the object, the list of storage keys), then every storage as an 8-byte element count
  followed by its raw bytes, in the order of that key list.

The object pickle refers to storages by persistent id. Unpickling goes through an
allow-list (`_ALLOWED`): only what state dicts contain (OrderedDict, the tensor / parameter
rebuild functions, storage types, dtypes, torch.Size) can be named, so no code from the
file is ever run. Tensors are rebuilt with numpy (dtype, storage offset, size, stride).

Public API: `load_state_dict(path) -> dict[str, np.ndarray]`; every problem with the file
raises `PthError` (a `ValueError`) that names the file and what is wrong.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

__all__ = ["PthError", "PthFileNotFoundError", "load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class PthError(ValueError):
  """The file is not a readable PyTorch state dict (not a torch file, truncated, corrupt)."""


class PthFileNotFoundError(PthError, FileNotFoundError):
  """The file does not exist (both a `PthError` and a `FileNotFoundError`)."""


def _numpy_dtype(name: str) -> np.dtype:
  """numpy dtype for a torch dtype name ('float32', 'bfloat16', ...)."""
  simple = {
      "float64": np.float64, "float32": np.float32, "float16": np.float16,
      "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
      "uint64": np.uint64, "uint32": np.uint32, "uint16": np.uint16, "uint8": np.uint8,
      "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
  }
  if name in simple:
    return np.dtype(simple[name])
  import ml_dtypes  # ships with jax; only needed for the exotic float types
  exotic = {
      "bfloat16": "bfloat16", "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2",
      "float8_e4m3fnuz": "float8_e4m3fnuz", "float8_e5m2fnuz": "float8_e5m2fnuz",
  }
  if name in exotic:
    return np.dtype(getattr(ml_dtypes, exotic[name]))
  raise KeyError(name)


# torch dtype attribute name -> canonical name.
_DTYPE_ALIASES = {
    "float": "float32", "double": "float64", "half": "float16", "long": "int64",
    "int": "int32", "short": "int16", "cfloat": "complex64", "cdouble": "complex128",
}
_DTYPE_NAMES = {
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint64",
    "uint32", "uint16", "uint8", "bool", "complex64", "complex128", "float8_e4m3fn",
    "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", *_DTYPE_ALIASES,
}
# Legacy typed storage class -> dtype name (torch still pickles these names).
_STORAGE_TYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}


@dataclasses.dataclass(frozen=True)
class _TorchDtype:
  """Stands in for `torch.<dtype>` in the pickle."""
  name: str

  @property
  def np_dtype(self) -> np.dtype:
    return _numpy_dtype(self.name)


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for `torch.FloatStorage` etc. in the pickle."""
  name: str
  dtype_name: str


@dataclasses.dataclass
class _Storage:
  """One tensor storage: `numel` elements of `dtype_name`; `data` is filled in lazily.

  A legacy storage view has a `root` and starts at element `elem_offset` of it.
  """
  key: str
  dtype_name: str
  numel: int
  data: bytes | None = None
  root: _Storage | None = None
  elem_offset: int = 0


@dataclasses.dataclass
class _LazyTensor:
  """A tensor whose storage bytes may not be read yet (legacy files store them last)."""
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]
  dtype_name: str | None = None  # overrides the storage dtype (_rebuild_tensor_v3)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f"tensor built from {type(storage).__name__}, not a storage")
  return _LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                     tuple(int(s) for s in stride))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, *unused):
  t = _rebuild_tensor(storage, storage_offset, size, stride)
  if not isinstance(dtype, _TorchDtype):
    raise pickle.UnpicklingError(f"_rebuild_tensor_v3 got dtype {dtype!r}")
  t.dtype_name = dtype.name
  return t


def _rebuild_parameter(data, *unused):
  return data


def _torch_size(*args):
  return tuple(*args)


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
}


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickler that only resolves allow-listed globals and storage persistent ids."""

  def __init__(self, file: BinaryIO, storages: dict[str, _Storage], legacy: bool):
    super().__init__(file, encoding="utf-8")
    self._storages = storages
    self._legacy = legacy

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ("torch", "torch.cuda") and name in _STORAGE_TYPES:
      return _StorageType(name, _STORAGE_TYPES[name])
    if module == "torch" and name in _DTYPE_NAMES:
      return _TorchDtype(_DTYPE_ALIASES.get(name, name))
    raise pickle.UnpicklingError(
        f"global '{module}.{name}' is not allowed in a state dict (only tensors, "
        "OrderedDict and plain Python containers are read)")

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid:
      raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
    typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if typename != "storage":
      raise pickle.UnpicklingError(f"unsupported persistent id type {typename!r}")
    if self._legacy:
      if len(pid) != 6:
        raise pickle.UnpicklingError(f"malformed legacy storage id {pid!r}")
      storage_type, key, _location, numel, view = pid[1:]
    else:
      if len(pid) != 5:
        raise pickle.UnpicklingError(f"malformed storage id {pid!r}")
      storage_type, key, _location, numel = pid[1:]
      view = None
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"storage of unknown type {storage_type!r}")
    key = str(key)
    root = self._storages.get(key)
    if root is None:
      root = _Storage(key, storage_type.dtype_name, int(numel))
      self._storages[key] = root
    if view is None:
      return root
    # A legacy view shares the root's bytes, which are only read after the object pickle.
    view_key, offset, view_size = view
    if int(offset) < 0 or int(offset) + int(view_size) > root.numel:
      raise pickle.UnpicklingError(
          f"storage view {view_key!r} [{offset}, {offset}+{view_size}) exceeds its root "
          f"storage {key!r} of {root.numel} elements")
    return _Storage(str(view_key), storage_type.dtype_name, int(view_size), root=root,
                    elem_offset=int(offset))


def _storage_bytes(storage: _Storage) -> tuple[bytes | None, int]:
  """(bytes of the root storage, element offset of `storage` in them)."""
  if storage.root is not None:
    return storage.root.data, storage.elem_offset
  return storage.data, 0


def _materialize(t: _LazyTensor, byteorder: str, where: str) -> np.ndarray:
  storage = t.storage
  dtype_name = t.dtype_name or storage.dtype_name
  dtype = _numpy_dtype(dtype_name)
  storage_dtype = _numpy_dtype(storage.dtype_name)
  data, base = _storage_bytes(storage)
  if data is None:
    raise PthError(f"{where}: storage {storage.key!r} has no data")
  if storage_dtype != dtype:  # untyped (uint8) storage reinterpreted by _rebuild_tensor_v3
    base_bytes = base * storage_dtype.itemsize
    numel_bytes = storage.numel * storage_dtype.itemsize
    data = memoryview(data)[base_bytes:base_bytes + numel_bytes]
    base, numel = 0, numel_bytes // dtype.itemsize
  else:
    numel = storage.numel
  if len(t.size) != len(t.stride):
    raise PthError(f"{where}: tensor size {t.size} and stride {t.stride} differ in rank")
  if any(s < 0 for s in t.size) or any(s < 0 for s in t.stride) or t.offset < 0:
    raise PthError(f"{where}: negative size/stride/offset in tensor {t.size}/{t.stride}")
  if 0 in t.size:
    return np.zeros(t.size, dtype)
  last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
  if last >= numel:
    raise PthError(
        f"{where}: tensor (offset {t.offset}, size {t.size}, stride {t.stride}) reads past "
        f"its storage {storage.key!r} of {numel} elements")
  file_dtype = dtype.newbyteorder("<" if byteorder == "little" else ">")
  flat = np.frombuffer(data, dtype=file_dtype, count=numel, offset=base * dtype.itemsize)
  view = np.lib.stride_tricks.as_strided(
      flat[t.offset:], shape=t.size, strides=[s * dtype.itemsize for s in t.stride],
      writeable=False)
  return np.array(view, dtype=dtype, order="C")  # a C-contiguous copy, native byte order


def _resolve(obj: Any, byteorder: str, where: str) -> Any:
  """Replaces every `_LazyTensor` in nested dicts / lists / tuples by an np.ndarray."""
  if isinstance(obj, _LazyTensor):
    return _materialize(obj, byteorder, where)
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _resolve(v, byteorder, where)
    return out
  if isinstance(obj, list):
    return [_resolve(v, byteorder, where) for v in obj]
  if isinstance(obj, tuple):
    return tuple(_resolve(v, byteorder, where) for v in obj)
  return obj


def _resolve_checked(obj: Any, byteorder: str, path: str) -> Any:
  try:
    return _resolve(obj, byteorder, path)
  except PthError:
    raise
  except (ValueError, TypeError, AttributeError, IndexError, OverflowError, MemoryError) as e:
    raise PthError(f"{path}: corrupt tensor metadata ({type(e).__name__}: {e})") from e


# What unpickling a damaged or foreign file can raise (find_class / persistent_load raise
# pickle.UnpicklingError for anything outside the allow-list).
_PARSE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError,
                 AttributeError, IndexError, struct.error, OverflowError, MemoryError,
                 RecursionError, zipfile.BadZipFile, OSError)


def _load_zip(path: str) -> Any:
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise PthError(f"{path}: corrupt zip archive ({e})") from e
  with zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
      raise PthError(f"{path}: zip archive without '<name>/data.pkl'; not a torch.save file")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = zf.read(prefix + "byteorder").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        raise PthError(f"{path}: unknown byteorder record {byteorder!r}")
    storages: dict[str, _Storage] = {}
    try:
      obj = _StateDictUnpickler(io.BytesIO(zf.read(pkl[0])), storages, legacy=False).load()
    except _PARSE_ERRORS as e:
      raise PthError(f"{path}: cannot unpickle {pkl[0]}: {e}") from e
    for key, storage in storages.items():
      record = f"{prefix}data/{key}"
      try:
        data = zf.read(record)
      except KeyError as e:
        raise PthError(f"{path}: storage record {record!r} missing from the archive") from e
      except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PthError(f"{path}: cannot read storage record {record!r}: {e}") from e
      expected = storage.numel * _numpy_dtype(storage.dtype_name).itemsize
      if len(data) < expected:
        raise PthError(f"{path}: storage record {record!r} has {len(data)} bytes, "
                       f"expected {expected} (truncated?)")
      storage.data = data
  return _resolve_checked(obj, byteorder, path)


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    def load_small(what: str) -> Any:
      try:
        return _StateDictUnpickler(f, {}, legacy=True).load()
      except _PARSE_ERRORS as e:
        raise PthError(f"{path}: not a PyTorch file (cannot read the {what}: {e})") from e

    magic = load_small("magic number")
    if magic != _LEGACY_MAGIC:
      raise PthError(f"{path}: not a PyTorch file (bad magic number {magic!r})")
    protocol = load_small("protocol version")
    if protocol != _LEGACY_PROTOCOL:
      raise PthError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info = load_small("sys_info header")
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    byteorder = "little" if little else "big"
    storages: dict[str, _Storage] = {}
    try:
      obj = _StateDictUnpickler(f, storages, legacy=True).load()
      keys = _StateDictUnpickler(f, {}, legacy=True).load()
    except _PARSE_ERRORS as e:
      raise PthError(f"{path}: corrupt or truncated pickle: {e}") from e
    if not isinstance(keys, list):
      raise PthError(f"{path}: corrupt file (storage key list is a {type(keys).__name__})")
    count_fmt = "<q" if little else ">q"
    for key in keys:
      key = str(key)
      storage = storages.get(key)
      if storage is None:
        raise PthError(f"{path}: storage {key!r} is listed but never used by a tensor")
      header = f.read(8)
      if len(header) != 8:
        raise PthError(f"{path}: truncated file (no size header for storage {key!r})")
      (numel,) = struct.unpack(count_fmt, header)
      if numel != storage.numel:
        raise PthError(f"{path}: corrupt file (storage {key!r} has {numel} elements, "
                       f"the pickle says {storage.numel})")
      nbytes = numel * _numpy_dtype(storage.dtype_name).itemsize
      data = f.read(nbytes)
      if len(data) != nbytes:
        raise PthError(f"{path}: truncated file (storage {key!r}: got {len(data)} of "
                       f"{nbytes} bytes)")
      storage.data = data
    missing = sorted(set(storages) - {str(k) for k in keys})
    if missing:
      raise PthError(f"{path}: corrupt file (no data for storages {missing[:10]})")
  return _resolve_checked(obj, byteorder, path)


def _unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  if isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
    # A training checkpoint: {'state_dict': {...}, 'epoch': ..., ...}.
    for key in ("state_dict", "model", "model_state_dict", "module"):
      if isinstance(obj.get(key), dict):
        return _unwrap(obj[key], path)
  if not isinstance(obj, dict):
    raise PthError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  out: dict[str, np.ndarray] = {}
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      raise PthError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                     "expected a flat state dict (name -> tensor)")
    out[str(k)] = v
  if not out:
    raise PthError(f"{path}: the state dict is empty")
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `torch.save`d state dict as {name: np.ndarray} without torch.

  A top-level {'state_dict': ...} / {'model': ...} wrapper (training checkpoints) is
  unwrapped. Raises `PthFileNotFoundError` for a missing file and `PthError` (a
  ValueError) for anything else wrong with it.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise PthFileNotFoundError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise PthError(f"{path}: not a regular file")
  if zipfile.is_zipfile(path):
    obj = _load_zip(path)
  else:
    obj = _load_legacy(path)
  return _unwrap(obj, path)

