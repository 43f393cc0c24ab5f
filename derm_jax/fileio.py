"""Workdir file I/O for local folders and cloud-storage URLs alike (`gs://bucket/run`, ...).

Everything derm_jax writes into (or reads back from) a workdir goes through these helpers:
config.json, metrics.jsonl, parameters.txt, PNG images and figures, reports, predictions
and metrics files, converted weights, checkpoint manifests and the lock file. A path is
*remote* when it is a URL (`scheme://...`); remote paths are handled by `etils.epath`, the
path layer Orbax itself uses, so a workdir works wherever Orbax's checkpoints do (gs://,
s3://, az://, hf://; gs:// needs `gcsfs` or TensorFlow installed, the `[gcs]` extra).
Local paths keep the plain `os` / `open` behaviour they always had (umask-respecting file
modes, fsync'd atomic renames); no local path is ever given to `epath` (which would read
`/gs/...` as a bucket) and no URL is ever given to `os.path.abspath` (which would turn
`gs://b/run` into `<cwd>/gs:/b/run`).

What differs on an object store, and how it is handled here:

* No atomic rename. `atomic_write_text` writes a remote file as one object upload, which
  GCS and S3 publish only when complete (a reader sees the old object or the whole new
  one, never half a file), instead of a temporary file + rename.
* No append. `append_text` on a remote file reads the object and uploads it again with the
  new text at the end: O(file size) per call, fine for metrics.jsonl (one row per
  evaluation), and still never half a file.
* Directory renames (`rename` of a folder) are a copy of every object, then a delete: not
  atomic, and slow for big folders.
* There are no file locks: see `derm_jax.train.workdir_lock` for what a remote lock means.
"""

from __future__ import annotations

import builtins
import io
import os
import posixpath
import re
import uuid
from collections.abc import Callable
from typing import IO, Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URL (`gs://...`, `s3://...`), handled by etils.epath."""
  return bool(_URL.match(os.fspath(path)))


def scheme(path: PathLike) -> str:
  """'gs', 's3', ... for a URL; '' for a local path."""
  m = _URL.match(os.fspath(path))
  return m.group(0)[:-3].lower() if m else ""


def epath(path: PathLike):
  """The `etils.epath.Path` of a remote path (Orbax accepts it as a checkpoint directory)."""
  from etils import epath as epath_lib
  return epath_lib.Path(os.fspath(path))


def _url(path: PathLike) -> str:
  text = os.fspath(path)
  head = _URL.match(text).group(0)
  return head + text[len(head):].rstrip("/")


def abspath(path: PathLike) -> str:
  """`os.path.abspath` for a local path; a URL unchanged (without a trailing '/')."""
  return _url(path) if is_remote(path) else os.path.abspath(os.fspath(path))


def normalize(path: PathLike) -> str:
  """A workdir as given on the command line, made absolute: `~` expanded and the current
  folder prepended for a local path; a URL is returned as it is (no trailing '/')."""
  return abspath(path if is_remote(path) else os.path.expanduser(os.fspath(path)))


def join(path: PathLike, *parts: str) -> str:
  """`os.path.join` for a local path, '/'-joining for a URL."""
  return (posixpath.join if is_remote(path) else os.path.join)(os.fspath(path), *parts)


def dirname(path: PathLike) -> str:
  """`os.path.dirname`; for a URL the parent URL (a bucket is its own parent)."""
  if not is_remote(path):
    return os.path.dirname(os.fspath(path))
  text = _url(path)
  head = _URL.match(text).group(0)
  rest = text[len(head):]
  return head + (posixpath.dirname(rest) if "/" in rest else rest)


def basename(path: PathLike) -> str:
  return posixpath.basename(_url(path)) if is_remote(path) else os.path.basename(
      os.fspath(path))


# ----------------------------------------------------------------------------- queries


def exists(path: PathLike) -> bool:
  return epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: PathLike) -> bool:
  return epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: PathLike) -> bool:
  if is_remote(path):
    p = epath(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def listdir(path: PathLike) -> list[str]:
  """Names in a folder (FileNotFoundError / NotADirectoryError like os.listdir)."""
  if not is_remote(path):
    return os.listdir(path)
  p = epath(path)
  if not p.is_dir():
    raise (NotADirectoryError if p.exists() else FileNotFoundError)(
        f"no such directory: {path}")
  return [c.name for c in p.iterdir()]


def getsize(path: PathLike) -> int:
  if not is_remote(path):
    return os.path.getsize(path)
  p = epath(path)
  if not p.exists():
    raise FileNotFoundError(f"no such file: {path}")
  return int(p.stat().length)


def list_files(root: PathLike) -> list[str]:
  """Every file under `root`, as sorted '/'-separated paths relative to it."""
  out = []
  if not is_remote(root):
    for folder, dirs, files in os.walk(root):
      dirs.sort()
      out += [os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
              for f in files]
    return sorted(out)

  def walk(p, prefix: str) -> None:
    for child in p.iterdir():
      if child.is_dir():
        walk(child, prefix + child.name + "/")
      else:
        out.append(prefix + child.name)

  walk(epath(root), "")
  return sorted(out)


# ----------------------------------------------------------------------------- changes


def makedirs(path: PathLike) -> None:
  """Creates the folder and its parents if missing (on object stores folders are implied by
  the objects in them; this is then at most a marker)."""
  if is_remote(path):
    epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def remove(path: PathLike) -> None:
  if is_remote(path):
    epath(path).unlink()
  else:
    os.remove(path)


def rmtree(path: PathLike) -> None:
  if is_remote(path):
    epath(path).rmtree()
  else:
    import shutil
    shutil.rmtree(path)


def rename(src: PathLike, dst: PathLike) -> None:
  """os.rename; on an object store a copy of every object then a delete (not atomic)."""
  if is_remote(src) or is_remote(dst):
    epath(src).rename(dst)
  else:
    os.rename(src, dst)


def open(path: PathLike, mode: str = "r", newline: str | None = None) -> IO[Any]:
  """builtins.open for a local path. For a URL (modes r, w, rb, wb; append with
  `append_text`): binary modes are epath's file; text is UTF-8, read whole on open or
  uploaded whole on close (workdir text files are small), `newline` as for builtins.open."""
  if not is_remote(path):
    return builtins.open(path, mode, newline=newline)
  if mode not in ("r", "w", "rb", "wb"):
    raise ValueError(f"mode {mode!r} is not supported for {path} (append: append_text)")
  if "b" in mode:
    return epath(path).open(mode)
  if mode == "r":
    with epath(path).open("rb") as f:
      return io.StringIO(f.read().decode("utf-8"), newline=newline)
  return _RemoteTextWriter(path, newline)


class _RemoteTextWriter(io.StringIO):
  """A text file for a URL: collects what is written, uploads it as one object on close."""

  def __init__(self, path: PathLike, newline: str | None):
    super().__init__(newline=newline)
    self._path = path

  def close(self) -> None:
    if self.closed:
      return
    data = self.getvalue().encode("utf-8")
    super().close()
    write_bytes(self._path, data)

  def __exit__(self, exc_type, *rest) -> None:
    if exc_type is None:
      self.close()
    else:  # never publish half a file
      super().close()


def read_text(path: PathLike) -> str:
  with open(path) as f:
    return f.read()


def read_bytes(path: PathLike) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes a whole file (remote: one object upload)."""
  with open(path, "wb") as f:
    f.write(data)


def atomic_write_text(path: PathLike, text: str) -> str:
  """Writes `text` to `path` so that no reader ever sees half a file; returns `path`.

  Local: a hidden temporary file in the same folder (created with the usual umask), fsync,
  then os.replace. Remote: one object upload (published only when complete). The parent
  folder is created if missing."""
  return _atomic_write(path, text, "w")


def atomic_write_bytes(path: PathLike, data: bytes) -> str:
  """`atomic_write_text` for bytes."""
  return _atomic_write(path, data, "wb")


def _atomic_write(path: PathLike, data: str | bytes, mode: str) -> str:
  path = os.fspath(path)
  newline = "" if mode == "w" else None
  if is_remote(path):
    with open(path, mode, newline=newline) as f:
      f.write(data)
    return path
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
  try:
    with builtins.open(tmp, mode.replace("w", "x"), newline=newline) as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def is_atomic_tmp(name: str, of: str) -> bool:
  """Whether file name `name` is a temporary file of `atomic_write_text` for file `of`."""
  return name.startswith(f".{of}.") and name.endswith(".tmp")


def append_text(path: PathLike, text: str) -> None:
  """Appends to a text file. Remote: reads the object and uploads old + new as one write."""
  if not is_remote(path):
    with builtins.open(path, "a") as f:
      f.write(text)
    return
  old = read_text(path) if exists(path) else ""
  with open(path, "w", newline="") as f:
    f.write(old + text)


def save_with(path: PathLike, save: Callable[[Any], Any]) -> str:
  """Calls `save(target)` of a writer that takes a file name or a binary file object
  (matplotlib's savefig, PIL's Image.save): the local path itself, or for a URL an
  in-memory buffer uploaded afterwards. Returns `path` (as str)."""
  path = os.fspath(path)
  if not is_remote(path):
    save(path)
    return path
  buf = io.BytesIO()
  save(buf)
  write_bytes(path, buf.getvalue())
  return path
