"""Reads PyTorch `.pth` / `.bin` state dicts into numpy arrays without importing torch.

Both serialisation formats written by `torch.save` are supported:

* zip (torch >= 1.6): `<name>/data.pkl` holds the pickled object, each tensor storage is a
  raw little- (or big-, see `<name>/byteorder`) endian record `<name>/data/<key>`;
* legacy (pre-1.6): five consecutive pickles (magic number, protocol version, sys_info,
  the object, the list of storage keys), then every storage as an 8-byte element count
  followed by its raw bytes, in the order of that key list.

The object pickle refers to storages by persistent id. Pickles are not run by Python's
unpickler but by a small interpreter (`_Unpickler`) over `pickletools.genops`, which only
knows the opcodes a state dict needs and only resolves an allow-list of globals
(`_ALLOWED`: OrderedDict, the tensor / parameter rebuild functions, storage types, dtypes,
torch.Size), so no code from the file is ever run. Tensors are rebuilt with numpy (dtype,
storage offset, size, stride).

Hostile files are refused before anything large is allocated:
* every length in the pickle is checked against the bytes actually present, dict keys must be
  atoms (str, bytes, small int, bool, None; nothing that hashes recursively), and the walk
  that turns tensors into arrays visits each object once (shared references are not copied
  per path) down to at most `MAX_DEPTH` levels;
* a zip archive may decompress to at most `ZIP_RATIO` times its size on disk (+1 MiB); entries
  are read in chunks and never past their declared size; only stored / deflated entries;
* a legacy storage may not claim more bytes than the file has left;
* a tensor may not read outside its storage, and (beyond `EXPAND_SLACK_BYTES`) may not have
  more elements than its storage, so zero / overlapping strides cannot inflate it; all
  arrays together may not exceed `OUTPUT_FACTOR` times the storage bytes plus `OUTPUT_SLACK`;
* a tensor whose non-zero dimensions multiply past what numpy can address (2**63 bytes, e.g.
  an empty 2**61 x 2**61 x 0 tensor) is refused by name, never handed to numpy.

Problems found while turning tensors into arrays name the tensor by its key path in the
pickled object (e.g. `'state_dict'/'fc.weight'`).

Public API: `load_state_dict(path) -> dict[str, np.ndarray]`; every problem with the file
raises `PthError` (a `ValueError`) whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickletools
import reprlib
import struct
import zipfile
from typing import Any, BinaryIO

import numpy as np

from derm_jax.errors import DermJaxError

__all__ = ["EXPAND_SLACK_BYTES", "MAX_DEPTH", "OUTPUT_FACTOR", "OUTPUT_SLACK", "PthError",
           "PthFileNotFoundError", "ZIP_RATIO", "load_state_dict"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

MAX_DEPTH = 64  # containers nested deeper than this are refused (state dicts nest 2-5 deep)
ZIP_RATIO = 16  # torch.save stores entries uncompressed (ratio 1)
ZIP_SLACK = 1 << 20
EXPAND_SLACK_BYTES = 64 << 10  # a tensor may be larger than its storage only below this size
OUTPUT_FACTOR = 4  # tensors sharing a storage (tied weights) may each be materialised
OUTPUT_SLACK = 16 << 20
_MAX_RANK = 64  # numpy's limit
_MAX_INT = 1 << 62  # sizes, strides, offsets, element counts
_MAX_KEY_INT = (1 << 61) - 2  # hash(int) is the int itself below this: no crafted collisions
_MAX_NBYTES = (1 << 63) - 1  # numpy's limit on an array's size in bytes
_CHUNK = 1 << 20


class PthError(DermJaxError, ValueError):
  """The file is not a readable PyTorch state dict (not a torch file, truncated, corrupt)."""


class PthFileNotFoundError(PthError, FileNotFoundError):
  """The file does not exist (both a `PthError` and a `FileNotFoundError`)."""


class _Refused(Exception):
  """A problem found while parsing; `load_state_dict` turns it into a PthError."""


_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 2, 40, 40


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


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for `torch.FloatStorage` etc. in the pickle."""
  name: str
  dtype_name: str


@dataclasses.dataclass(eq=False)
class _Storage:
  """One tensor storage: `numel` elements of `dtype_name`; `data` is filled in lazily.

  A legacy storage view has a `root` and starts at element `elem_offset` of it.
  """
  key: str
  dtype_name: str
  numel: int
  data: bytes | bytearray | None = None
  root: _Storage | None = None
  elem_offset: int = 0

  @property
  def nbytes(self) -> int:
    return self.numel * _numpy_dtype(self.dtype_name).itemsize


@dataclasses.dataclass(eq=False)
class _LazyTensor:
  """A tensor whose storage bytes may not be read yet (legacy files store them last)."""
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]
  dtype_name: str | None = None  # overrides the storage dtype (_rebuild_tensor_v3)


def _count(value: Any, what: str) -> int:
  """`value` as a non-negative int below 2**62 (sizes, strides, offsets, counts)."""
  if type(value) is not int or not 0 <= value < _MAX_INT:
    raise _Refused(f"{what} {_short.repr(value)} is not an integer in [0, 2**62)")
  return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or len(value) > _MAX_RANK:
    raise _Refused(f"tensor {what} {_short.repr(value)} is not a tuple of at most "
                   f"{_MAX_RANK} integers")
  return tuple(_count(v, f"tensor {what} entry") for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not isinstance(storage, _Storage):
    raise _Refused(f"tensor built from {type(storage).__name__}, not a storage")
  size, stride = _shape(size, "size"), _shape(stride, "stride")
  if len(size) != len(stride):
    raise _Refused(f"tensor size {size} and stride {stride} differ in rank")
  return _LazyTensor(storage, _count(storage_offset, "storage offset"), size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, *unused):
  t = _rebuild_tensor(storage, storage_offset, size, stride)
  if not isinstance(dtype, _TorchDtype):
    raise _Refused(f"_rebuild_tensor_v3 got dtype {_short.repr(dtype)}")
  t.dtype_name = dtype.name
  return t


def _rebuild_parameter(data, *unused):
  return data


def _torch_size(*args):
  if len(args) != 1 or not isinstance(args[0], (tuple, list)):
    raise _Refused(f"torch.Size{_short.repr(args)} is not torch.Size(sequence)")
  return tuple(args[0])


def _ordered_dict(*args):
  if args:  # building from pairs would hash arbitrary keys; torch pickles OrderedDict()
    raise _Refused("OrderedDict(...) with arguments (torch pickles an empty OrderedDict())")
  return collections.OrderedDict()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
}
_CALLABLES = tuple(_ALLOWED.values())


def _check_key(key: Any) -> Any:
  """Dict keys must be atoms: hashing a (shared, nested) tuple can take exponential time."""
  if type(key) in (str, bytes, bool, type(None)):
    return key
  if type(key) is int and -_MAX_KEY_INT <= key <= _MAX_KEY_INT:
    return key
  raise _Refused(f"dict key {_short.repr(key)} of type {type(key).__name__} (state dict keys "
                 "are str, bytes, small int, bool or None)")


class _CappedReader:
  """Read-only view of a file that never asks for more bytes than the file has left."""

  def __init__(self, f: BinaryIO, size: int):
    self._f, self._size = f, size

  def left(self) -> int:
    return max(self._size - self._f.tell(), 0)

  def read(self, n: int = -1) -> bytes:
    left = self.left()
    return self._f.read(left if n is None or n < 0 else min(n, left))

  def readline(self) -> bytes:
    return self._f.readline(self.left())

  def tell(self) -> int:
    return self._f.tell()


_STR_OPS = {"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING",
            "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "INT", "BININT",
            "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"}
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}


class _Unpickler:
  """Runs one pickle's opcodes (decoded by `pickletools.genops`, which checks every length
  against the bytes present) with the semantics of `pickle.Unpickler`, restricted to what a
  state dict needs: plain containers, allow-listed globals, storage persistent ids."""

  def __init__(self, file: Any, storages: dict[str, _Storage], legacy: bool):
    self._file = file
    self._storages = storages
    self._legacy = legacy

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ("torch", "torch.cuda") and name in _STORAGE_TYPES:
      return _StorageType(name, _STORAGE_TYPES[name])
    if module == "torch" and name in _DTYPE_NAMES:
      return _TorchDtype(_DTYPE_ALIASES.get(name, name))
    raise _Refused(
        f"global '{module}.{name}' is not allowed in a state dict (only tensors, "
        "OrderedDict and plain Python containers are read)")

  def persistent_load(self, pid: Any) -> Any:
    if not isinstance(pid, tuple) or not pid:
      raise _Refused(f"unexpected persistent id {_short.repr(pid)}")
    typename = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if typename != "storage":
      raise _Refused(f"unsupported persistent id type {_short.repr(typename)}")
    if self._legacy:
      if len(pid) != 6:
        raise _Refused(f"malformed legacy storage id {_short.repr(pid)}")
      storage_type, key, _location, numel, view = pid[1:]
    else:
      if len(pid) != 5:
        raise _Refused(f"malformed storage id {_short.repr(pid)}")
      storage_type, key, _location, numel = pid[1:]
      view = None
    if not isinstance(storage_type, _StorageType):
      raise _Refused(f"storage of unknown type {_short.repr(storage_type)}")
    if type(key) not in (str, int):
      raise _Refused(f"storage key {_short.repr(key)} is not a string")
    key = str(key)
    numel = _count(numel, f"element count of storage {key!r}")
    root = self._storages.get(key)
    if root is None:
      root = _Storage(key, storage_type.dtype_name, numel)
      self._storages[key] = root
    elif root.numel != numel or root.dtype_name != storage_type.dtype_name:
      raise _Refused(f"storage {key!r} is declared twice with different sizes / types")
    if view is None:
      return root
    # A legacy view shares the root's bytes, which are only read after the object pickle.
    if not isinstance(view, tuple) or len(view) != 3:
      raise _Refused(f"malformed legacy storage view {_short.repr(view)}")
    view_key, offset, view_size = view
    offset, view_size = _count(offset, "view offset"), _count(view_size, "view size")
    if offset + view_size > root.numel:
      raise _Refused(f"storage view {_short.repr(view_key)} [{offset}, {offset}+{view_size}) "
                     f"exceeds its root storage {key!r} of {root.numel} elements")
    return _Storage(str(view_key)[:100], storage_type.dtype_name, view_size, root=root,
                    elem_offset=offset)

  def load(self) -> Any:
    stack: list[Any] = []
    metastack: list[list[Any]] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
      nonlocal stack
      if not metastack:
        raise _Refused("pickle has an unbalanced MARK")
      items, stack = stack, metastack.pop()
      return items

    def top(kind: type, op: str) -> Any:
      if not stack or not isinstance(stack[-1], kind):
        raise _Refused(f"{op} on a {type(stack[-1]).__name__ if stack else 'empty stack'}")
      return stack[-1]

    def set_items(d: dict, items: list[Any]) -> None:
      if len(items) % 2:
        raise _Refused("odd number of items for a dict")
      for i in range(0, len(items), 2):
        d[_check_key(items[i])] = items[i + 1]

    for opcode, arg, _ in pickletools.genops(self._file):
      op = opcode.name
      if op in _STR_OPS:
        if op in ("STRING", "BINSTRING", "SHORT_BINSTRING"):  # Python 2 str: utf-8 like torch
          try:
            arg = arg.encode("latin-1").decode("utf-8")
          except UnicodeError:
            pass
        stack.append(arg)
      elif op in _CONSTANTS:
        stack.append(_CONSTANTS[op])
      elif op in ("PROTO", "FRAME"):
        pass
      elif op == "STOP":
        if len(stack) != 1 or metastack:
          raise _Refused("pickle stack is not a single object at STOP")
        return stack[0]
      elif op == "MARK":
        metastack.append(stack)
        stack = []
      elif op == "POP":
        if stack:
          stack.pop()
        else:
          pop_mark()
      elif op == "POP_MARK":
        pop_mark()
      elif op == "DUP":
        stack.append(stack[-1])
      elif op in _PUT_OPS:
        if type(arg) is not int or arg < 0 or not stack:
          raise _Refused(f"bad memo put {_short.repr(arg)}")
        memo[arg] = stack[-1]
      elif op == "MEMOIZE":
        memo[len(memo)] = stack[-1]
      elif op in _GET_OPS:
        if arg not in memo:
          raise _Refused(f"memo key {_short.repr(arg)} used before it is defined")
        stack.append(memo[arg])
      elif op == "EMPTY_TUPLE":
        stack.append(())
      elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
        n = int(op[-1])
        if len(stack) < n:
          raise _Refused(f"{op} on a stack of {len(stack)} items")
        items = tuple(stack[-n:])
        del stack[-n:]
        stack.append(items)
      elif op == "TUPLE":
        items = pop_mark()  # (pop_mark rebinds `stack`: never inline it in stack.append)
        stack.append(tuple(items))
      elif op == "EMPTY_LIST":
        stack.append([])
      elif op == "LIST":
        items = pop_mark()
        stack.append(items)
      elif op == "APPEND":
        value = stack.pop()
        top(list, op).append(value)
      elif op == "APPENDS":
        items = pop_mark()
        top(list, op).extend(items)
      elif op == "EMPTY_DICT":
        stack.append({})
      elif op == "DICT":
        d: dict = {}
        set_items(d, pop_mark())  # before stack.append: pop_mark rebinds `stack`
        stack.append(d)
      elif op == "SETITEM":
        value, key = stack.pop(), stack.pop()
        set_items(top(dict, op), [key, value])
      elif op == "SETITEMS":
        items = pop_mark()
        set_items(top(dict, op), items)
      elif op in ("GLOBAL", "STACK_GLOBAL"):
        if op == "GLOBAL":
          module, _, name = arg.partition(" ")
        else:
          name, module = stack.pop(), stack.pop()
          if type(module) is not str or type(name) is not str:
            raise _Refused("STACK_GLOBAL with non-string names")
        stack.append(self.find_class(module, name))
      elif op == "REDUCE":
        args = stack.pop()
        func = stack[-1] if stack else None
        if not any(func is c for c in _CALLABLES):  # identity: never hash pickle objects
          raise _Refused(f"call of {_short.repr(func)}, which is not an allow-listed global")
        if type(args) is not tuple:
          raise _Refused(f"call with arguments of type {type(args).__name__}")
        stack[-1] = func(*args)
      elif op == "BUILD":  # torch sets OrderedDict._metadata this way; it is not needed here
        stack.pop()
        top(dict, op)
      elif op == "NEWOBJ":
        args, cls = stack.pop(), stack.pop()
        if cls is not _ordered_dict or args != ():
          raise _Refused(f"NEWOBJ of {_short.repr(cls)}")
        stack.append(collections.OrderedDict())
      elif op in ("PERSID", "BINPERSID"):
        stack.append(self.persistent_load(arg if op == "PERSID" else stack.pop()))
      else:
        raise _Refused(f"pickle opcode {op} is not used by state dicts")
    raise _Refused("pickle ends without STOP")


def _load_pickle(file: Any, storages: dict[str, _Storage], legacy: bool) -> Any:
  """Unpickles one object; any parse problem becomes `_Refused` with a one-line reason."""
  try:
    return _Unpickler(file, storages, legacy).load()
  except _Refused:
    raise
  except (ValueError, TypeError, KeyError, AttributeError, IndexError, struct.error,
          OverflowError, UnicodeError, EOFError, zipfile.BadZipFile, OSError) as e:
    message = str(e).splitlines()[0][:200] if str(e) else ""
    raise _Refused(f"{type(e).__name__}: {message}") from e


def _storage_bytes(storage: _Storage) -> tuple[bytes | bytearray | None, int]:
  """(bytes of the root storage, element offset of `storage` in them)."""
  if storage.root is not None:
    return storage.root.data, storage.elem_offset
  return storage.data, 0


class _OutputBudget:
  """Bytes all materialised tensors may take: OUTPUT_FACTOR x storage bytes + OUTPUT_SLACK."""

  def __init__(self, storages: dict[str, _Storage]):
    self.storage_bytes = sum(s.nbytes for s in storages.values())
    self.left = OUTPUT_FACTOR * self.storage_bytes + OUTPUT_SLACK

  def take(self, nbytes: int, what: str) -> None:
    if nbytes > self.left:
      raise _Refused(f"{what} would bring the arrays past {OUTPUT_FACTOR}x the file's "
                     f"{self.storage_bytes} storage bytes + {OUTPUT_SLACK >> 20} MiB")
    self.left -= nbytes


def _materialize(t: _LazyTensor, byteorder: str, budget: _OutputBudget,
                 name: str) -> np.ndarray:
  storage = t.storage
  dtype_name = t.dtype_name or storage.dtype_name
  dtype = _numpy_dtype(dtype_name)
  storage_dtype = _numpy_dtype(storage.dtype_name)
  data, base = _storage_bytes(storage)
  if data is None:
    raise _Refused(f"storage {storage.key!r} has no data")
  if storage_dtype != dtype:  # untyped (uint8) storage reinterpreted by _rebuild_tensor_v3
    base_bytes = base * storage_dtype.itemsize
    numel_bytes = storage.numel * storage_dtype.itemsize
    data = memoryview(data)[base_bytes:base_bytes + numel_bytes]
    base, numel = 0, numel_bytes // dtype.itemsize
  else:
    numel = storage.numel
  what = f"tensor {name} (offset {t.offset}, size {t.size}, stride {t.stride})"
  if math.prod(n for n in t.size if n) * dtype.itemsize > _MAX_NBYTES:
    raise _Refused(f"{what} is too large: its non-zero dimensions alone exceed 2**63 bytes, "
                   "more than numpy can address")
  count = math.prod(t.size)
  if count == 0:
    return np.zeros(t.size, dtype)
  last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
  if last >= numel:
    raise _Refused(f"{what} reads past its storage {storage.key!r} of {numel} elements")
  nbytes = count * dtype.itemsize
  if count > numel and nbytes > EXPAND_SLACK_BYTES:
    raise _Refused(f"{what} has zero or overlapping strides: it would materialise {nbytes} "
                   f"bytes from a storage of {numel * dtype.itemsize} bytes")
  budget.take(nbytes, what)
  file_dtype = dtype.newbyteorder("<" if byteorder == "little" else ">")
  flat = np.frombuffer(data, dtype=file_dtype, count=numel, offset=base * dtype.itemsize)
  view = np.lib.stride_tricks.as_strided(
      flat[t.offset:], shape=t.size,
      strides=[s * dtype.itemsize if n > 1 else 0 for n, s in zip(t.size, t.stride, strict=True)],
      writeable=False)  # the stride of a length-1 axis is never used: it may be anything
  return np.array(view, dtype=dtype, order="C")  # a C-contiguous copy, native byte order


def _resolve(obj: Any, byteorder: str, storages: dict[str, _Storage]) -> Any:
  """Replaces every `_LazyTensor` in nested dicts / lists / tuples by an np.ndarray.

  Each object is resolved once (by identity), so shared references cost one visit and stay
  shared; nesting deeper than MAX_DEPTH is refused.
  """
  budget = _OutputBudget(storages)
  done: dict[int, Any] = {}

  def walk(o: Any, depth: int, where: tuple[Any, ...]) -> Any:
    if isinstance(o, (str, bytes, int, float, type(None))):
      return o
    key = id(o)
    if key in done:
      return done[key]
    if depth > MAX_DEPTH:
      raise _Refused(f"containers nested more than {MAX_DEPTH} levels deep")
    if isinstance(o, _LazyTensor):
      name = "/".join(_short.repr(k) for k in where) or "(top level)"
      out = done[key] = _materialize(o, byteorder, budget, name)
    elif isinstance(o, dict):
      out = done[key] = type(o)() if isinstance(o, collections.OrderedDict) else {}
      for k, v in o.items():
        out[k] = walk(v, depth + 1, (*where[-3:], k))
    elif isinstance(o, list):
      out = done[key] = []
      out.extend(walk(v, depth + 1, (*where[-3:], i)) for i, v in enumerate(o))
    elif isinstance(o, tuple):
      out = done[key] = tuple(walk(v, depth + 1, (*where[-3:], i)) for i, v in enumerate(o))
    else:
      out = done[key] = o
    return out

  return walk(obj, 0, ())


def _resolve_checked(obj: Any, byteorder: str, storages: dict[str, _Storage], path: str) -> Any:
  try:
    return _resolve(obj, byteorder, storages)
  except _Refused as e:
    raise PthError(f"{path}: {e}") from e
  except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
          MemoryError) as e:
    raise PthError(f"{path}: corrupt tensor metadata ({type(e).__name__}: {e})") from e


class _ZipBudget:
  """Bytes the archive may decompress to: ZIP_RATIO x its size on disk + ZIP_SLACK."""

  def __init__(self, path: str):
    self.file_size = os.path.getsize(path)
    self.total = ZIP_RATIO * self.file_size + ZIP_SLACK
    self.left = self.total

  def read(self, zf: zipfile.ZipFile, name: str, nbytes: int | None = None) -> bytearray:
    """The first `nbytes` (default: all declared) bytes of entry `name`, read in chunks."""
    info = zf.getinfo(name)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
      raise _Refused(f"entry {name!r} uses compression method {info.compress_type}; "
                     "torch writes stored (uncompressed) entries")
    declared = info.file_size
    if declared > self.total:
      raise _Refused(f"entry {name!r} declares {declared} bytes, absurd for a "
                     f"{self.file_size}-byte archive (limit {ZIP_RATIO}x + 1 MiB)")
    if nbytes is None:
      nbytes = declared
    elif declared < nbytes:
      raise _Refused(f"entry {name!r} has {declared} bytes, expected {nbytes} (truncated?)")
    if nbytes > self.left:
      raise _Refused(f"entry {name!r} would decompress the archive past {self.total} bytes "
                     f"({ZIP_RATIO}x its {self.file_size} bytes on disk + 1 MiB)")
    self.left -= nbytes
    out = bytearray(nbytes)
    got = 0
    with zf.open(info) as f:  # reads of at most _CHUNK bytes inflate at most _CHUNK bytes
      while got < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - got))
        if not chunk:
          raise _Refused(f"entry {name!r} ends after {got} of its {nbytes} bytes")
        out[got:got + len(chunk)] = chunk
        got += len(chunk)
      if nbytes == declared and f.read(1):
        raise _Refused(f"entry {name!r} inflates past its declared {declared} bytes")
    return out


def _load_zip(path: str) -> tuple[Any, str, dict[str, _Storage]]:
  try:
    zf = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    raise PthError(f"{path}: corrupt zip archive ({e})") from e
  budget = _ZipBudget(path)
  with zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
      raise PthError(f"{path}: zip archive without '<name>/data.pkl'; not a torch.save file")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = "little"
    storages: dict[str, _Storage] = {}
    record = pkl[0]
    try:
      if prefix + "byteorder" in names:
        if zf.getinfo(prefix + "byteorder").file_size > 16:
          raise _Refused("byteorder record longer than 16 bytes")
        byteorder = budget.read(zf, prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
          raise _Refused(f"unknown byteorder record {byteorder!r}")
      try:
        obj = _load_pickle(io.BytesIO(budget.read(zf, pkl[0])), storages, legacy=False)
      except _Refused as e:
        raise _Refused(f"cannot unpickle {pkl[0]}: {e}") from e
      for key, storage in storages.items():
        record = f"{prefix}data/{key}"
        if record not in names:
          raise _Refused(f"storage record {record!r} missing from the archive")
        storage.data = budget.read(zf, record, storage.nbytes)
    except _Refused as e:
      raise PthError(f"{path}: {e}") from e
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError) as e:  # RuntimeError: an encrypted entry
      raise PthError(f"{path}: cannot read {record!r}: {e}") from e
  return obj, byteorder, storages


def _load_legacy(path: str) -> tuple[Any, str, dict[str, _Storage]]:
  with open(path, "rb") as raw:
    f = _CappedReader(raw, os.path.getsize(path))

    def load_small(what: str) -> Any:
      try:
        return _load_pickle(f, {}, legacy=True)
      except _Refused as e:
        raise PthError(f"{path}: not a PyTorch file (cannot read the {what}: {e})") from e

    magic = load_small("magic number")
    if magic != _LEGACY_MAGIC:
      raise PthError(f"{path}: not a PyTorch file (bad magic number {_short.repr(magic)})")
    protocol = load_small("protocol version")
    if protocol != _LEGACY_PROTOCOL:
      raise PthError(f"{path}: unsupported legacy protocol version {_short.repr(protocol)}")
    sys_info = load_small("sys_info header")
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    byteorder = "little" if little else "big"
    storages: dict[str, _Storage] = {}
    try:
      obj = _load_pickle(f, storages, legacy=True)
      keys = _load_pickle(f, {}, legacy=True)
    except _Refused as e:
      raise PthError(f"{path}: corrupt or truncated pickle: {e}") from e
    if not isinstance(keys, list):
      raise PthError(f"{path}: corrupt file (storage key list is a {type(keys).__name__})")
    count_fmt = "<q" if little else ">q"
    if not all(type(k) in (str, int) for k in keys):
      raise PthError(f"{path}: corrupt file (storage keys are not all strings)")
    for key in keys:
      key = str(key)[:100]
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
      nbytes = storage.nbytes
      if nbytes > f.left():
        raise PthError(f"{path}: truncated file (storage {key!r} needs {nbytes} bytes, "
                       f"{f.left()} left)")
      data = f.read(nbytes)
      if len(data) != nbytes:
        raise PthError(f"{path}: truncated file (storage {key!r}: got {len(data)} of "
                       f"{nbytes} bytes)")
      storage.data = data
    missing = sorted(set(storages) - {str(k) for k in keys})
    if missing:
      raise PthError(f"{path}: corrupt file (no data for storages {missing[:10]})")
  return obj, byteorder, storages


def _unwrap(obj: Any, path: str) -> dict[str, np.ndarray]:
  for _ in range(MAX_DEPTH):
    if not (isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values())):
      break
    # A training checkpoint: {'state_dict': {...}, 'epoch': ..., ...}.
    inner = [obj[k] for k in ("state_dict", "model", "model_state_dict", "module")
             if isinstance(obj.get(k), dict)]
    if not inner:
      break
    obj = inner[0]
  if not isinstance(obj, dict):
    raise PthError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  out: dict[str, np.ndarray] = {}
  for k, v in obj.items():
    if not isinstance(v, np.ndarray):
      raise PthError(f"{path}: entry {_short.repr(k)} is a {type(v).__name__}, not a tensor; "
                     "expected a flat state dict (name -> tensor)")
    out[str(k)] = v
  if not out:
    raise PthError(f"{path}: the state dict is empty")
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `torch.save`d state dict as {name: np.ndarray} without torch.

  A top-level {'state_dict': ...} / {'model': ...} wrapper (training checkpoints) is
  unwrapped. Raises `PthFileNotFoundError` for a missing file and `PthError` (a
  ValueError) for anything else wrong with it, including files that would need more memory
  than their size justifies (see the module docstring).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise PthFileNotFoundError(f"{path}: no such file")
  if not os.path.isfile(path):
    raise PthError(f"{path}: not a regular file")
  if zipfile.is_zipfile(path):
    obj, byteorder, storages = _load_zip(path)
  else:
    obj, byteorder, storages = _load_legacy(path)
  return _unwrap(_resolve_checked(obj, byteorder, storages, path), path)
