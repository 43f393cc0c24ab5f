"""python -m derm_jax.report --workdir=DIR [--n_boot=2000] [--seed=0] [--no_figures]."""

from __future__ import annotations

import sys

from derm_jax.report import main

if __name__ == "__main__":
  sys.exit(main())
