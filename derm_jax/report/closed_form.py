"""The report's section on the closed-form probes (STUDY/closed_form_probes.json, written by
`python -m derm_jax.probes` or at the end of a study): a ridge-regression linear probe and a
k-NN on each arm's frozen starting features at every label fraction, side by side with the
study's SGD linear probe and classifier where it has them, and a figure of the curves.

Reads JSON only (no JAX); the numbers are derm_jax/evaluation/closed_form.py's `table_rows`.
"""

from __future__ import annotations

import json
from typing import Any

from derm_jax import fileio, layout, plots
from derm_jax.evaluation import closed_form
from derm_jax.report.formatting import table

# |closed-form - SGD probe| (balanced accuracy) within which the two protocols "agree": about
# the seed-to-seed spread of one arm's SGD probe on DermaMNIST.
AGREE = 0.02
FIGURE = "closed_form_label_efficiency.png"


def read(workdir: str) -> dict[str, Any] | None:
  """The study's closed_form_probes.json, or None when it has none (or it is unreadable)."""
  path = fileio.join(workdir, layout.CLOSED_FORM)
  if not fileio.isfile(path):
    return None
  try:
    doc = json.loads(fileio.read_text(path))
  except (OSError, ValueError):
    return None
  return doc if isinstance(doc, dict) and doc.get("arms") else None


def _pct(v: float | None, sd: float | None = None) -> str:
  if v is None:
    return "—"
  return f"{100 * v:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _signed(v: float | None) -> str:
  return "—" if v is None else f"{100 * v:+.1f}"


def _percent(fraction: float) -> str:
  return f"{100 * fraction:g}%"


def lines(workdir: str, fig_dir: str | None, smoke: bool = False) -> list[str]:
  """The section's markdown lines ([] without closed-form results); draws its figure into
  `fig_dir` (None: no figure). A smoke run gets the numbers but no ranking of the arms."""
  doc = read(workdir)
  if doc is None:
    return []
  rows = closed_form.table_rows(doc)
  if not rows:
    return []
  L = ["## Closed-form probes: label efficiency from frozen features", ""]
  subset = (doc.get("settings") or {}).get("subset_seeds") or []
  L.append(
    "Each arm's *starting* backbone (the weights its classifier started from: the VAE's "
    "encoder, a SimCLR or DINO checkpoint, ImageNet, random), frozen; its pooled features of "
    "every image computed once and cached; then, per label fraction and subset seed "
    f"({', '.join(map(str, subset)) or 'as recorded'}; the same nested class-stratified "
    "subsets as the SGD label-fraction runs), a class-balanced ridge-regression probe (λ "
    "chosen on the whole validation split) and a cosine k-NN (k chosen on validation). "
    "Test balanced accuracy in %, mean ± sd over seeds and subsets. "
    "`ridge − SGD probe`: the closed-form probe minus the study's SGD linear probe of the "
    "same arm, seed and subset (where the study trained one)."
  )
  L.append("")
  body = []
  for r in rows:
    body.append([
        f"`{r['arm']}`", _percent(r["fraction"]),
        "—" if r["n_train"] is None else f"{int(round(r['n_train'])):,}",
        _pct(r["ridge_balanced_accuracy"], _spread(r, "ridge")),
        _pct(r["knn_balanced_accuracy"], _spread(r, "knn")),
        _pct(r["sgd_probe_balanced_accuracy"]), _signed(r["ridge_minus_sgd_probe"]),
        _pct(r["sgd_classifier_balanced_accuracy"])])
  L += table(["arm", "fraction", "train images", "ridge", "k-NN", "SGD probe",
              "ridge − SGD probe", "SGD classifier"], body)
  L.append("")
  L += _agreement(rows)
  if not smoke:
    L += _ranking(rows)
  if doc.get("seconds") is not None:
    L.append(f"Cost: {float(doc['seconds']):.0f} s for every arm, seed, fraction and subset "
             "(features computed once per run and cached in its features/ folder); each SGD "
             "probe or label-fraction run is a full training run.")
    L.append("")
  if fig_dir is not None:
    _figure(rows, fileio.join(fig_dir, FIGURE))
    L += [f"![closed-form label efficiency](figures/{FIGURE})", ""]
  return L


def _spread(row: dict[str, Any], method: str) -> float | None:
  """The sd of a cell where it has a spread: over seeds and label subsets, and with all the
  labels (every subset the same) over seeds only."""
  spread = row["num_seeds"] if row["fraction"] >= 1.0 else row["num_records"]
  return row[f"{method}_balanced_accuracy_sd"] if spread > 1 else None


def _agreement(rows: list[dict[str, Any]]) -> list[str]:
  """Where the closed-form probe agrees with the SGD probe (within AGREE) and where not."""
  paired = [r for r in rows if r["ridge_minus_sgd_probe"] is not None]
  if not paired:
    return ["The study trained no SGD linear probe (`config.linear_probe`), so the "
            "closed-form probe is not compared with it here.", ""]
  agree = [r for r in paired if abs(r["ridge_minus_sgd_probe"]) <= AGREE]
  apart = [r for r in paired if abs(r["ridge_minus_sgd_probe"]) > AGREE]
  text = (f"Closed-form vs SGD probe: {len(agree)} of {len(paired)} (arm, fraction) pairs "
          f"agree within {100 * AGREE:.0f} points")
  if apart:
    text += "; they differ for " + ", ".join(
        f"`{r['arm']}` at {_percent(r['fraction'])} "
        f"({_signed(r['ridge_minus_sgd_probe'])})" for r in apart)
  return [text + ".", ""]


def _ranking(rows: list[dict[str, Any]]) -> list[str]:
  """The arms ordered by the ridge probe at each fraction (the label-efficiency answer)."""
  out = []
  for f in sorted({r["fraction"] for r in rows}):
    at = [r for r in rows if r["fraction"] == f and r["ridge_balanced_accuracy"] is not None]
    if len(at) < 2:
      continue
    at.sort(key=lambda r: -r["ridge_balanced_accuracy"])
    out.append(f"- {_percent(f)} of the labels: " + " > ".join(
        f"`{r['arm']}` {_pct(r['ridge_balanced_accuracy'])}" for r in at))
  if not out:
    return []
  return ["Ridge probe, arms by test balanced accuracy (differences smaller than the sds "
          "above are not resolved):", "", *out, ""]


def _figure(rows: list[dict[str, Any]], path: str) -> None:
  lines_: dict[tuple[str, str], list[tuple[float, Any, Any, Any]]] = {}
  for method, label in (("ridge", "ridge probe"), ("knn", "k-NN")):
    for r in rows:
      est, sd = r[f"{method}_balanced_accuracy"], _spread(r, method)
      lo = None if est is None or sd is None else est - sd
      hi = None if est is None or sd is None else est + sd
      lines_.setdefault((r["arm"], label), []).append((r["fraction"], est, lo, hi))
  plots.save_label_efficiency(
      {"test balanced accuracy": lines_}, path,
      "Closed-form probes on frozen starting features\n(points: mean over seeds and label "
      "subsets; bars: ± 1 sd)")
