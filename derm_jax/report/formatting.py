"""Markdown building blocks of the report: numbers, intervals and tables as text, and config
entries looked up in a flattened config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from derm_jax import stats


def _no_negative_zero(x: float, digits: int) -> float:
  """0.0 for a number that rounds to zero, so that it is never printed as '-0.000'."""
  return 0.0 if abs(x) < 0.5 * 10.0**-digits else x


def fmt(
  mean: float | None,
  std: float | None = None,
  digits: int = 3,
  scale: float = 1.0,
  suffix: str = "",
  sign: bool = False,
) -> str:
  if mean is None:
    return "n/a"
  spec = f"{'+' if sign else ''}.{digits}f"
  text = f"{_no_negative_zero(mean * scale, digits):{spec}}"
  if std is not None:
    text += f" ± {std * scale:.{digits}f}"
  return text + suffix


def fms(ms: tuple[float | None, float | None, int], **kw: Any) -> str:
  return fmt(ms[0], ms[1], **kw)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return lines


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  if isinstance(d, dict):
    for k, v in d.items():
      key = f"{prefix}.{k}" if prefix else str(k)
      if isinstance(v, dict):
        out.update(flatten(v, key))
      else:
        out[key] = v
  return out


def config_field(flat: dict[str, Any], names: Sequence[str]) -> Any:
  for name in names:
    if "." in name:  # an exact dotted path
      if name in flat:
        return flat[name]
      continue
    hits = [k for k in flat if k.split(".")[-1] == name]
    if hits:
      hits.sort(key=lambda k: (k.count("."), k))  # shallowest first
      return flat[hits[0]]
  return None


def fmt_value(v: Any) -> str:
  if v is None:
    return "—"
  if isinstance(v, (list, tuple)):
    return (
      "×".join(str(x) for x in v) if all(isinstance(x, (int, float)) for x in v) else json.dumps(v)
    )
  return str(v)


def fmt_ci(iv: stats.Interval | None, digits: int = 3, sign: bool = False) -> str:
  """'[lo, hi]' of an interval, 'n/a' without one."""
  if iv is None or iv.lo is None or iv.hi is None:
    return "n/a"
  spec = f"{'+' if sign else ''}.{digits}f"
  lo, hi = _no_negative_zero(iv.lo, digits), _no_negative_zero(iv.hi, digits)
  return f"[{lo:{spec}}, {hi:{spec}}]"


def fmt_diff(iv: stats.Interval | None, digits: int = 3) -> str:
  """'+0.050 [+0.010, +0.090]'."""
  if iv is None or iv.estimate is None:
    return "n/a"
  est = _no_negative_zero(iv.estimate, digits)
  return f"{est:+.{digits}f} {fmt_ci(iv, digits, sign=True)}"


def int_list(values: Sequence[Any]) -> str:
  """'8' when all equal, else '6/8' (integers, in seed order)."""
  ints = [round(v) for v in values if v is not None]
  if not ints:
    return "n/a"
  return str(ints[0]) if len(set(ints)) == 1 else "/".join(str(v) for v in ints)
