"""The report's sections on lesions seen in training and on patient subgroups (test split).

Where each run's test_metrics.json carries `lesion_overlap` (a dataset with lesion ids whose
test lesions also have images in train: DermaMNIST's official split), the test predictions
are split into the images whose lesion was seen in training and the rest, and each is
analysed like an evaluation set (intervals, paired differences). The two groups are
disjoint, so their resamples are independent, and whether an arm's lead over the reference
arm changes once no test lesion was seen in training is tested on the change itself,
(lead on unseen-lesion images) − (lead on seen-lesion images), as the shift section tests
a change under shift (`analysis.shift_change`). The groups also differ in kind (seen-lesion
images are mostly histopathology-confirmed lesions photographed several times), hence the
per-`dx_type` table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from derm_jax.evaluation.predictions import Predictions
from derm_jax.report.analysis import (
  SetAnalysis,
  analyse_sets,
  bootstrap_seed,
  mean_std,
  shift_change,
)
from derm_jax.report.formatting import fms, fmt, fmt_ci, fmt_diff, table
from derm_jax.report.runs import TEST_SET, ArmRuns, EvalSet, arm_pairs, num

GROUPS = {"seen_lesion": "lesion seen in training", "unseen_lesion": "lesion not seen"}


def _subset(ev: EvalSet, keep_ids: set[str], keep: bool, metrics: dict[str, Any]) -> EvalSet:
  p = ev.predictions
  if p is None:
    return EvalSet(metrics=metrics, predictions=None, note=ev.note)
  rows = [i for i, x in enumerate(p.image_ids) if (x in keep_ids) == keep]
  sub = Predictions(image_ids=tuple(p.image_ids[i] for i in rows),
                    labels=None if p.labels is None else p.labels[rows],
                    probs=p.probs[rows], class_names=p.class_names)
  return EvalSet(metrics=metrics, predictions=sub)


def lesion_group_arms(arms: dict[str, ArmRuns], group: str) -> dict[str, ArmRuns]:
  """Copies of `arms` whose runs' test set holds only the images of `group`
  ('seen_lesion' or 'unseen_lesion'); runs without `lesion_overlap` are left out."""
  out = {}
  for name, arm in arms.items():
    runs = []
    for r in arm.runs:
      overlap = r.test.get("lesion_overlap")
      if not isinstance(overlap, dict) or TEST_SET not in r.evals:
        continue
      if not (overlap.get(group) or {}).get("count"):
        continue  # no image in this group (a lesion-grouped split has no seen lesion)
      seen = {str(i) for i in overlap.get("seen_ids", [])}
      metrics = dict((overlap.get(group) or {}).get("metrics") or {})
      ev = _subset(r.evals[TEST_SET], seen, group == "seen_lesion", metrics)
      runs.append(dataclasses.replace(r, evals={TEST_SET: ev}))
    if runs:
      out[name] = dataclasses.replace(arm, runs=runs)
  return out


def has_lesion_overlap(arms: dict[str, ArmRuns]) -> bool:
  return any(isinstance(r.test.get("lesion_overlap"), dict) for a in arms.values()
             for r in a.runs)


def analyse_groups(arms: dict[str, ArmRuns], n_boot: int, seed: int
                   ) -> dict[str, SetAnalysis]:
  """{group: the test-split analysis of that group's images}, each group resampled with
  its own seed (the groups are disjoint, so independently)."""
  out = {}
  for group in GROUPS:
    sub = lesion_group_arms(arms, group)
    if sub:
      out[group] = analyse_sets(sub, n_boot=n_boot, seed=bootstrap_seed(seed, group),
                                test_only=True, calibration=False)[TEST_SET]
  return out


def lesion_lines(arms: dict[str, ArmRuns], test: SetAnalysis, n_boot: int, seed: int,
                 reference: str = "imagenet") -> list[str]:
  """The 'Seen vs unseen lesions' section (empty without lesion_overlap)."""
  if not has_lesion_overlap(arms):
    return []
  first = next(r.test["lesion_overlap"] for a in arms.values() for r in a.runs
               if isinstance(r.test.get("lesion_overlap"), dict))
  counts = {g: first[g]["count"] for g in ("all", *GROUPS)}
  L = ["## Seen vs unseen lesions (test split)", ""]
  if not counts["seen_lesion"]:
    return L + [f"None of the {counts['all']:,} test images has a lesion with an image in the "
                "training split (HAM10000 lesion ids): every test lesion is unseen, and the "
                "test-split numbers above are the unseen-lesion numbers.", ""]
  groups = analyse_groups(arms, n_boot, seed)
  L.append(
    f"Of the {counts['all']:,} test images, {counts['seen_lesion']:,} belong to a lesion that "
    f"also has an image in the training split and {counts['unseen_lesion']:,} do not "
    "(HAM10000 lesion ids). The unseen-lesion images measure what a model does on lesions it "
    "never saw. The two groups differ in kind as well (seen-lesion images are mostly "
    "histopathology-confirmed lesions photographed several times, unseen ones mostly single "
    "follow-up naevi), so a difference between them is not a pure memory effect: see the "
    "table per diagnosis type. Cells: the metric averaged over seeds [95% bootstrap interval "
    "over the group's images]."
  )
  L.append("")
  rows = []
  for a in arms:
    row = [f"`{a}`"]
    for metric in ("balanced_accuracy", "macro_auc"):
      row.append(_cell(test.ci.get(a, {}).get(metric)))
      for g in GROUPS:
        sa = groups.get(g)
        row.append(_cell(sa.ci.get(a, {}).get(metric)) if sa is not None else "n/a")
    rows.append(row)
  L += table(["arm", "balanced acc.: all", "seen lesion", "unseen lesion",
              "macro AUC: all", "seen lesion", "unseen lesion"], rows)
  L.append("")
  L += _lead_lines(arms, groups, test, reference)
  L += _dx_type_lines(arms)
  return L


def _cell(iv) -> str:
  """'0.512 [0.480, 0.545]', 'n/a' without an estimate."""
  if iv is None or iv.estimate is None:
    return "n/a"
  return f"{fmt(iv.estimate)} {fmt_ci(iv)}"


def _lead_lines(arms: dict[str, ArmRuns], groups: dict[str, SetAnalysis], test: SetAnalysis,
                reference: str) -> list[str]:
  seen, unseen = groups.get("seen_lesion"), groups.get("unseen_lesion")
  if seen is None or unseen is None:
    return []
  pairs = [(a, b) for a, b in arm_pairs(list(arms)) if b == reference]
  if not pairs:
    return []
  L = [f"### Does each arm's lead over `{reference}` change on unseen lesions?", ""]
  L.append(
    "Paired differences A − B in balanced accuracy on each group; the change is tested on "
    "itself, (A − B on unseen-lesion images) − (A − B on seen-lesion images), with a 95% "
    "bootstrap interval resampling the two disjoint groups independently. The lead changes "
    "only when that interval excludes 0."
  )
  L.append("")
  rows, verdicts = [], []
  for a, b in pairs:
    ch = shift_change(seen, unseen, a, b, "balanced_accuracy")
    all_diff = test.diffs.get((a, b), {}).get("balanced_accuracy")
    if ch is None:
      rows.append([f"`{a}` − `{b}`", "n/a", "n/a", "n/a", "n/a", "no predictions for both"])
      continue
    if ch.change.lo is None:
      word = "cannot be tested"
    elif ch.change.excludes_zero():
      word = ("**changes**: larger on unseen lesions" if ch.change.lo > 0
              else "**changes**: smaller on unseen lesions")
    else:
      word = "no detectable change"
    rows.append([f"`{a}` − `{b}`", fmt_diff(all_diff.pooled) if all_diff else "n/a",
                 fmt_diff(ch.in_distribution), fmt_diff(ch.shifted), fmt_diff(ch.change), word])
    verdicts.append(f"- `{a}` − `{b}`: {word} (unseen − seen = {fmt_diff(ch.change)}; "
                    f"seeds {', '.join(map(str, ch.seeds))}).")
  L += table(["A − B", "all test images", "seen lesion", "unseen lesion",
              "unseen − seen", "does the lead change?"], rows)
  L += [""] + verdicts + [""]
  return L


def _dx_type_lines(arms: dict[str, ArmRuns]) -> list[str]:
  by: dict[str, dict[str, dict[str, list[float]]]] = {}
  counts: dict[str, dict[str, int]] = {}
  for a, arm in arms.items():
    for r in arm.runs:
      overlap = r.test.get("lesion_overlap")
      if not isinstance(overlap, dict):
        continue
      for t, groups in (overlap.get("by_dx_type") or {}).items():
        for g in GROUPS:
          m = (groups.get(g) or {})
          counts.setdefault(t, {})[g] = int(m.get("count", 0))
          v = num((m.get("metrics") or {}).get("balanced_accuracy"))
          if v is not None:
            by.setdefault(t, {}).setdefault(a, {}).setdefault(g, []).append(v)
  if not counts:
    return []
  L = ["### By diagnosis type (`dx_type`)", ""]
  L.append(
    "Balanced accuracy (mean over seeds) of the seen-lesion and unseen-lesion images of each "
    "diagnosis type (histo: histopathology; follow_up: unchanged at follow-up; consensus: "
    "expert consensus; confocal: reflectance confocal microscopy), with the image counts. "
    "Groups of a few dozen images carry wide intervals (in test_metrics.json)."
  )
  L.append("")
  rows = []
  for t in sorted(counts, key=lambda t: -sum(counts[t].values())):
    row = [t, f"{counts[t].get('seen_lesion', 0)} / {counts[t].get('unseen_lesion', 0)}"]
    for a in arms:
      vals = by.get(t, {}).get(a, {})
      row.append(" / ".join(fmt(float(np.mean(vals[g]))) if vals.get(g) else "n/a"
                            for g in GROUPS))
    rows.append(row)
  L += table(["dx_type", "images seen / unseen", *[f"`{a}` seen / unseen" for a in arms]],
             rows)
  L.append("")
  return L


def subgroup_lines(arms: dict[str, ArmRuns], attributes: Sequence[str] = (
    "dx_type", "age_band", "sex", "localization")) -> list[str]:
  """'Subgroups (test split)': balanced accuracy per subgroup (mean ± std over seeds, and
  the first seed's 95% interval), from test_metrics.json's `subgroups`."""
  subs = {a: [r.test.get("subgroups") for r in arm.runs if isinstance(r.test.get("subgroups"),
                                                                       dict)]
          for a, arm in arms.items()}
  if not any(subs.values()):
    return []
  L = ["## Subgroups (test split)", ""]
  L.append(
    "Balanced accuracy per patient subgroup and diagnosis type: mean ± std over seeds "
    "[95% bootstrap interval of the first seed]. Groups under "
    f"{next(s for v in subs.values() for s in v)['min_count']} images get counts only."
  )
  L.append("")
  for attr in attributes:
    groups: dict[str, int] = {}
    for v in subs.values():
      for s in v:
        for g, d in (s["by"].get(attr) or {}).items():
          groups.setdefault(g, int(d["count"]))
    if not groups:
      continue
    rows = []
    for g, n in groups.items():
      row = [g, f"{n:,}"]
      for a in arms:
        cells = [s["by"].get(attr, {}).get(g) for s in subs[a]]
        vals = [num((c.get("metrics") or {}).get("balanced_accuracy")) for c in cells if c]
        ci = next(((c.get("intervals") or {}).get("balanced_accuracy") for c in cells
                   if c and c.get("intervals")), None)
        known = [v for v in vals if v is not None]
        row.append("counts only" if not known else
                   fms(mean_std(known)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
      rows.append(row)
    L += [f"### {attr}", ""] + table([attr, "images", *[f"`{a}`" for a in arms]], rows) + [""]
  return L
