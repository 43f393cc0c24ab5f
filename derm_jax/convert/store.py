"""On-disk format of converted (pretrained) weights: an Orbax checkpoint plus `meta.json`.

Layout of a converted directory:

  <dir>/meta.json     {"format": "derm_jax.pretrained/1", "arch": ..., "num_classes": ...,
                       "source": file name, "source_sha256": ..., "input": convention,
                       "derm_jax_version": ..., ...}
  <dir>/checkpoint/   Orbax StandardCheckpointer checkpoint of the flax variables
                      ({'params': ..., 'batch_stats': ...}), float32

`save_pretrained` writes into a temporary sibling directory and renames it into place only
when everything is written, so an interrupted or failed save never leaves a half-written
`<dir>`. `load_pretrained(dir) -> (arch, variables)` reads it back as numpy arrays.

`<dir>` may be a cloud-storage URL (`gs://...`, through etils.epath like Orbax itself; see
`derm_jax.fileio`). Object stores have no atomic directory rename, so there the checkpoint
is written in place and `meta.json` last: a save that fails midway is removed, and one that
is killed midway leaves a folder without `meta.json`, which every reader refuses as
incomplete. With `overwrite`, the old contents of a URL are deleted before the new ones are
written (an interrupted overwrite loses them).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid
from typing import Any

import numpy as np

import derm_jax
from derm_jax import fileio
from derm_jax.errors import DermJaxError

FORMAT = "derm_jax.pretrained/1"
META_FILE = "meta.json"
CHECKPOINT_DIR = "checkpoint"

__all__ = ["PretrainedError", "check_output_dir", "load_meta", "load_pretrained",
           "output_path", "save_pretrained"]


class PretrainedError(DermJaxError, ValueError):
  """A converted-weights directory is missing, incomplete or cannot be written."""


def output_path(path: str | os.PathLike) -> pathlib.Path:
  """`path` as an absolute pathlib.Path (`~` expanded), or an etils.epath.Path for a URL
  (same methods: exists, is_dir, iterdir, `/`, read_text, ...)."""
  if fileio.is_remote(path):
    return fileio.epath(fileio.abspath(path))
  return pathlib.Path(path).expanduser().absolute()


def check_output_dir(out: pathlib.Path, overwrite: bool) -> None:
  """Raises PretrainedError unless `out` is absent, an empty directory, or `overwrite`."""
  if out.exists() and not out.is_dir():
    raise PretrainedError(f"{out}: exists and is not a directory")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise PretrainedError(f"{out}: directory exists and is not empty (use overwrite=True / "
                          "--overwrite to replace it)")


def _fresh_sibling(out: pathlib.Path, tag: str) -> pathlib.Path:
  """Creates and returns a new hidden directory next to `out` (same filesystem: renames are
  atomic; `mkdir` honours the umask, unlike `tempfile.mkdtemp`)."""
  path = out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:12]}"
  path.mkdir()
  return path


def save_pretrained(out_dir: str | os.PathLike, arch: str, variables: dict[str, Any],
                    meta: dict[str, Any], *, overwrite: bool = False) -> pathlib.Path:
  """Writes `variables` (flax variable dict) and `meta` to `out_dir`, atomically.

  `meta` should hold what describes the source (e.g. 'source', 'source_sha256',
  'num_classes', 'input'); 'format', 'arch' and 'derm_jax_version' are added. An existing
  non-empty `out_dir` is an error unless `overwrite`. Returns the absolute output path.
  """
  import jax

  out = output_path(out_dir)
  check_output_dir(out, overwrite)
  if not isinstance(variables, dict) or "params" not in variables:
    raise PretrainedError(f"variables for {arch!r} must be a dict with a 'params' entry, got "
                          f"{type(variables).__name__} with keys {list(variables)[:5]}")
  full_meta = {"format": FORMAT, "arch": arch, "derm_jax_version": derm_jax.__version__,
               **{k: v for k, v in meta.items() if k not in ("format", "arch")}}
  try:
    meta_text = json.dumps(full_meta, indent=2, sort_keys=True)
  except TypeError as e:
    raise PretrainedError(f"meta for {arch!r} is not JSON-serialisable: {e}") from e
  host = jax.tree_util.tree_map(lambda a: np.asarray(a), variables)
  if fileio.is_remote(out):
    return _save_in_place(out, host, meta_text)

  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = _fresh_sibling(out, "tmp")
  old: pathlib.Path | None = None
  try:
    _write(tmp, host, meta_text)
    if out.exists():
      old = _fresh_sibling(out, "old")
      os.rename(out, old / "previous")
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None and (old / "previous").exists() and not out.exists():
      os.rename(old / "previous", out)  # put the replaced directory back
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
  return out


def _write(directory, host: dict[str, Any], meta_text: str) -> None:
  """The Orbax checkpoint of `host` into `directory`, then meta.json (written last)."""
  import orbax.checkpoint as ocp

  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(directory / CHECKPOINT_DIR, host)
    checkpointer.wait_until_finished()
  finally:
    checkpointer.close()
  (directory / META_FILE).write_text(meta_text + "\n")


def _save_in_place(out, host: dict[str, Any], meta_text: str):
  """save_pretrained into a URL: checkpoint first, meta.json last (see the module docstring)."""
  if out.exists():
    out.rmtree()
  try:
    _write(out, host, meta_text)
  except BaseException:
    out.rmtree(missing_ok=True)
    raise
  return out


def load_meta(path: str | os.PathLike) -> dict[str, Any]:
  """Reads and validates `<path>/meta.json` of a converted-weights directory."""
  root = output_path(path)
  if not root.exists():
    raise PretrainedError(f"{root}: no such directory (convert weights first: "
                          "python -m derm_jax.convert --arch=... --out=DIR)")
  if not root.is_dir():
    raise PretrainedError(f"{root}: not a directory of converted weights")
  meta_path = root / META_FILE
  if not meta_path.is_file():
    raise PretrainedError(f"{root}: no {META_FILE}; not a directory written by "
                          "derm_jax.convert (python -m derm_jax.convert --out=DIR)")
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PretrainedError(f"{meta_path}: unreadable ({e})") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT or "arch" not in meta:
    raise PretrainedError(f"{meta_path}: not a derm_jax pretrained-weights file "
                          f"(expected format {FORMAT!r} and an 'arch')")
  return meta


def load_pretrained(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
  """Reads a directory written by `save_pretrained`; returns (arch, variables as numpy)."""
  import orbax.checkpoint as ocp

  meta = load_meta(path)
  ckpt = output_path(path) / CHECKPOINT_DIR
  if not ckpt.is_dir():
    raise PretrainedError(f"{ckpt}: checkpoint directory missing (incomplete conversion?)")
  checkpointer = ocp.StandardCheckpointer()
  try:
    variables = checkpointer.restore(ckpt)
  except Exception as e:  # orbax raises many types; all mean the same thing here
    raise PretrainedError(f"{ckpt}: cannot restore the Orbax checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                          ) from e
  finally:
    checkpointer.close()
  return str(meta["arch"]), dict(variables)
