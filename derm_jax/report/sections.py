"""The report's section lines: data and setup, reference numbers, warnings, interval and
difference tables, in distribution vs shifted (with the test of the change itself), label
efficiency, and config differences between the arms.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from derm_jax import plots
from derm_jax.report.analysis import (
  METRIC_NAMES,
  EfficiencyPoint,
  PairDiff,
  SetAnalysis,
  ShiftChange,
  mean_std,
  shift_change,
)
from derm_jax.report.formatting import (
  config_field,
  flatten,
  fms,
  fmt,
  fmt_ci,
  fmt_diff,
  fmt_value,
  int_list,
  table,
)
from derm_jax.report.runs import (
  PROTOCOL_LABELS,
  TEST_SET,
  ArmRuns,
  arm_pairs,
  arm_sort_key,
  num,
)
from derm_jax.report.verdicts import set_verdict

# DermaMNIST test-split references (MedMNIST v2; 7 classes, 2,005 test images).
REFERENCES = [
  ("MedMNIST v2 ResNet-18 (28) [reference]", 0.735, 0.917),
  ("MedMNIST v2 ResNet-50 (224) [reference]", 0.731, 0.912),
]
DERMAMNIST_TEST_IMAGES = 2005

CONFIG_FIELDS = {
  "dataset": ["data.name", "dataset", "dataset_name", "data_name", "tfds_name"],
  "init": ["init.source"],
  "frozen backbone": ["freeze_backbone"],
  "backbone": ["backbone", "backbone_name", "encoder", "arch", "architecture"],
  "image size": ["image_size", "img_size", "resolution", "input_size"],
  "epochs (configured)": ["epochs", "num_epochs", "train_epochs", "classifier_epochs"],
  "batch size": ["batch_size", "global_batch_size"],
  "learning rate": ["learning_rate", "lr"],
}

_SOURCES = {
  "embedded": "the stratified DermaMNIST subset packaged with derm_jax",
  "npz": "a local MedMNIST .npz file",
  "download": "the official MedMNIST download",
}


# ----------------------------------------------------------------------------- data and setup


def _dataset_display(name: str | None) -> str:
  return (
    {"dermamnist": "DermaMNIST"}.get(str(name).lower(), str(name)) if name else "an unnamed dataset"
  )


def _data_config(arm: ArmRuns, top: dict[str, Any]) -> dict[str, Any]:
  """name, source, size, npz_path and split sizes of an arm's data (its config, else the study "
  "config)."""
  flat = flatten(arm.runs[0].config)
  top_flat = flatten(top)

  def get(names: Sequence[str]) -> Any:
    v = config_field(flat, names)
    return v if v is not None else config_field(top_flat, names)

  # Split sizes: the config's data.splits, else the dataset description an evaluator stores in
  # test_metrics.json ("data": {"name", "source", "splits": {split: n}, ...}).
  described = (
    flatten({"data": arm.runs[0].test.get("data")})
    if isinstance(arm.runs[0].test.get("data"), dict)
    else {}
  )
  splits = {}
  for src in (described, flat):
    splits.update(
      {
        k.split(".")[-1]: v
        for k, v in src.items()
        if k.startswith("data.splits.") and isinstance(v, int) and not isinstance(v, bool)
      }
    )

  def get_or_described(names: Sequence[str], key: str) -> Any:
    v = get(names)
    return v if v is not None else described.get(f"data.{key}")

  raw = arm.runs[0].test.get("data")
  raw = raw if isinstance(raw, dict) else {}
  per_class = raw.get("per_class") if isinstance(raw.get("per_class"), dict) else None
  pool = raw.get("unlabeled") if isinstance(raw.get("unlabeled"), dict) else None
  configured = get(["data.unlabeled"])
  if isinstance(configured, str):
    configured = [configured]
  return {
    "name": get_or_described(CONFIG_FIELDS["dataset"], "name"),
    "source": get_or_described(["data.source"], "source"),
    "size": get(["data.size"]),
    "npz_path": get(["data.npz_path"]),
    "path": get(["data.path"]),
    "splits": splits,
    "per_class": per_class,
    "class_names": raw.get("class_names"),
    "unlabeled": (
      {k: pool.get(k) for k in ("folders", "found", "used", "dropped_near_duplicates")}
      if pool
      else None
    ),
    "unlabeled_configured": list(configured) if configured else [],
  }


def split_sizes(arms: dict[str, ArmRuns], top: dict[str, Any], sa: SetAnalysis) -> dict[str, int]:
  """Images per split ('train', 'val', 'test') as far as the first arm's files record them
  (the test count from test_metrics.json when nothing else has it)."""
  if not arms:
    return {}
  sizes = dict(_data_config(next(iter(arms.values())), top)["splits"])
  if "test" not in sizes and sa.n_images:
    sizes["test"] = sa.n_images
  return sizes


def _own_data_lines(info: dict[str, Any]) -> list[str]:
  """Every split's counts (per class where recorded) and what the unlabelled pool
  (`config.data.unlabeled`) contributed. Empty for DermaMNIST without a pool."""
  own = str(info["name"] or "").lower() != "dermamnist"
  pool, configured = info["unlabeled"], info["unlabeled_configured"]
  if not own and not pool and not configured:
    return []
  L = []
  if own:
    missing = [k for k in ("train", "val", "test") if k not in info["splits"]]
    if missing:
      L += [
        "Images per split not recorded in these runs' files for: " + ", ".join(missing)
        + " (runs written before test_metrics.json held the dataset's description).",
        "",
      ]
    per_class, names = info["per_class"], info["class_names"]
    if per_class and names:
      cols = [k for k in ("train", "val", "test") if isinstance(per_class.get(k), list)]
      rows = [
        [_class_label(c), *[f"{int(per_class[k][i]):,}" if i < len(per_class[k]) else "—"
                            for k in cols]]
        for i, c in enumerate(names)
      ]
      rows.append(["all classes", *[f"{int(sum(per_class[k])):,}" for k in cols]])
      L += ["Images per class and split:", ""] + table(["class", *cols], rows) + [""]
  if pool:
    folders = pool.get("folders") or configured
    where = (" = " + ", ".join(f"`{f}`" for f in folders)) if folders else ""
    found, used = pool.get("found"), pool.get("used")
    dropped = pool.get("dropped_near_duplicates")
    L += [
      f"Unlabelled pool (`config.data.unlabeled`{where}): {found:,} images found; "
      f"{dropped:,} dropped as near-duplicates of validation or test images; **{used:,} used "
      "for self-supervised pretraining** beside the training split (the VAE and contrastive "
      "arms' pretraining only: no classifier, and no ImageNet arm, sees them)."
      if isinstance(found, int) and isinstance(used, int) and isinstance(dropped, int)
      else f"Unlabelled pool (`config.data.unlabeled`{where}): its counts are incomplete in "
      "the runs' files.",
      "",
    ]
  elif configured:
    L += [
      "An unlabelled pool is configured (`config.data.unlabeled` = "
      + ", ".join(f"`{f}`" for f in configured)
      + "), but the runs' files do not record what it contributed (runs of an older version).",
      "",
    ]
  else:
    L += [
      "No unlabelled pool (`config.data.unlabeled` is empty): self-supervised pretraining used "
      "the training split only.",
      "",
    ]
  return L


def training_mode(arm: ArmRuns) -> tuple[bool | None, str]:
  """(frozen?, wording) from the arm's freeze_backbone entry."""
  v = config_field(flatten(arm.runs[0].config), CONFIG_FIELDS["frozen backbone"])
  if isinstance(v, str):
    v = {"true": True, "false": False}.get(v.lower())
  if v is True:
    return True, "frozen backbone (only the classifier head is trained)"
  if v is False:
    return False, "fine-tuned backbone (trained end to end together with the head)"
  return None, "backbone training mode not recorded (no `freeze_backbone` in config.json)"


def _class_label(code: str, extra: str = "") -> str:
  """'mel (melanoma)', or a class of the user's own as it is: 'benign_nevus'."""
  desc = plots.describe_class(code)
  inside = ", ".join(x for x in ((desc if desc != code else ""), extra) if x)
  return f"{code} ({inside})" if inside else code


def data_lines(
  arms: dict[str, ArmRuns], top: dict[str, Any], sa: SetAnalysis
) -> tuple[list[str], bool]:
  """The 'Data' paragraph and whether every arm uses DermaMNIST."""
  infos = {a: _data_config(arm, top) for a, arm in arms.items()}

  def describe(info: dict[str, Any]) -> str:
    name = info["name"]
    text = (
      f"**{_dataset_display(name)}** (`data.name` = `{name}`)"
      if name
      else "a dataset whose name the config does not record (no `data.name`)"
    )
    src = info["source"] if name in ("dermamnist", "", None) else ""  # DermaMNIST's field
    if name == "folder" and info.get("path"):
      text += f", images in `{info['path']}`"
    if src:
      text += f", source `{src}`" + (f" ({_SOURCES[src]}" if src in _SOURCES else "")
      if src == "download" and info["size"]:
        text += f", {info['size']}×{info['size']} pixels"
      if src == "npz" and info["npz_path"]:
        text += f": `{info['npz_path']}`"
      text += ")" if src in _SOURCES else ""
    sizes = dict(info["splits"])
    from_metrics = "test" not in sizes and bool(sa.n_images)
    if from_metrics:
      sizes["test"] = sa.n_images
    if sizes:
      text += "; images per split: " + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
      if from_metrics:
        text += " (test count from test_metrics.json)"
    return text

  keys = {
    json.dumps({k: v for k, v in i.items()}, sort_keys=True, default=str) for i in infos.values()
  }
  lines = []
  if len(keys) == 1:
    lines.append("Data: " + describe(next(iter(infos.values()))) + ". All arms use the same data.")
  else:
    lines.append("Data (the arms' configs differ!):")
    lines.append("")
    lines += [f"- `{a}`: {describe(i)}" for a, i in infos.items()]
  lines.append("")
  own = _own_data_lines(next(iter(infos.values()))) if len(keys) == 1 else []
  lines += own
  per_split_table = "Images per class and split:" in own
  if (
    not per_split_table
    and sa.support
    and sa.class_names
    and len(sa.support) == len(sa.class_names)
  ):
    lines.append(
      "Test images per class: "
      + ", ".join(
        f"{_class_label(c)} {n:,}"
        for c, n in zip(sa.class_names, sa.support, strict=True)
      )
      + "."
    )
    lines.append("")
  derma = all(str(i["name"] or "").lower() == "dermamnist" for i in infos.values())
  return lines, derma


def reference_sentence(
  arms: dict[str, ArmRuns], top: dict[str, Any], sa: SetAnalysis, derma: bool
) -> str:
  if not derma:
    names = sorted({str(_data_config(arm, top)["name"]) for arm in arms.values()})
    if names == ["None"]:
      return (
        "No published reference numbers are shown: the runs' configs do not name their dataset "
        "(`data.name`), and the MedMNIST v2 numbers apply to DermaMNIST only."
      )
    return (
      "No published reference numbers are shown: the MedMNIST v2 numbers are for DermaMNIST, and "
      "this "
      f"run's data are {', '.join(f'`{n}`' for n in names)}."
    )
  text = (
    "The MedMNIST v2 rows are published DermaMNIST test-split numbers (7 classes, "
    f"{DERMAMNIST_TEST_IMAGES:,} test images) of networks trained end to end; this run's data are "
    "DermaMNIST, so they are a level reference. Training mode here: "
  )
  modes = {a: training_mode(arm) for a, arm in arms.items()}
  text += "; ".join(f"`{a}` {m[1]}" for a, m in modes.items()) + "."
  if any(m[0] for m in modes.values()):
    text += " A frozen backbone is expected to score below end-to-end training."
  sources = {str(_data_config(arm, top)["source"]) for arm in arms.values()}
  if sa.n_images and sa.n_images != DERMAMNIST_TEST_IMAGES:
    text += (
      f" This test split has {sa.n_images:,} images, not the full {DERMAMNIST_TEST_IMAGES:,}"
      + (" (the embedded subset)" if sources == {"embedded"} else "")
      + ", so its numbers carry more sampling noise (see the intervals)."
    )
  return text


# ----------------------------------------------------------------------------- sections


def warning_lines(analysis: dict[str, SetAnalysis], context: str = "") -> list[str]:
  """Majority-class and metrics-vs-predictions warnings; `context` (e.g. 'linear probe, 10% of
  the training labels') names the runs' protocol and label fraction after each arm."""
  lines = []
  where = f" ({context})" if context else ""
  for sa in analysis.values():
    names = sa.class_names or []
    maj = sa.majority_class
    maj_text = (
      "n/a"
      if maj is None
      else (
        f"`{names[maj]}`" + _class_label(names[maj])[len(names[maj]):]
        if maj < len(names)
        else f"class {maj}"
      )
    )
    for arm, checks in sa.majority_checks.items():
      flagged = [(s, c) for s, c in checks if c.indistinguishable]
      if flagged:
        seeds = ", ".join(str(s) for s, _ in flagged)
        lines.append(
          f"- ⚠ **`{arm}`{where} on the {sa.label}: predictions statistically indistinguishable "
          f"from (or worse than) always predicting the majority class {maj_text}** "
          f"(seed{'s' if len(flagged) > 1 else ''} {seeds} of {len(checks)}). "
          + " ".join(f"Seed {s}: {c.reason}." for s, c in flagged)
        )
    if sa.majority_note and any(sa.majority_checks.values()):
      lines.append(
        f"- Note: {sa.majority_note} (used for the majority-class check on the {sa.label})."
      )
    for m in sa.mismatches:
      lines.append(
        f"- ⚠ {sa.label}{where}: the predictions file disagrees with the metrics file: {m}."
      )
  return lines


def interval_lines(sa: SetAnalysis, n_boot: int, arms: Sequence[str]) -> list[str]:
  lines = []
  if not sa.ci:
    lines.append(
      f"Bootstrap intervals are unavailable for the {sa.label}: no run has a usable predictions "
      "file (runs written before per-image predictions were saved have none)."
    )
    lines.append("")
    lines += [f"- {n}" for n in sa.notes]
    lines.append("")
    return lines
  rows = []
  for a in arms:
    if a not in sa.ci:
      rows.append([f"`{a}`", "—", *["n/a"] * len(sa.metrics)])
      continue
    rows.append(
      [
        f"`{a}`",
        ", ".join(str(s) for s in sa.ci_seeds[a]),
        *[f"{fmt(sa.ci[a][m].estimate)} {fmt_ci(sa.ci[a][m])}" for m in sa.metrics],
      ]
    )
  lines += table(["arm", "seeds", *[METRIC_NAMES[m] for m in sa.metrics]], rows)
  lines.append("")
  if sa.notes:
    lines += [f"- {n}" for n in sa.notes]
    lines.append("")
  return lines


DIFF_LEGEND = (
  "A row per pair of arms. Each cell: A − B, the metric averaged over the paired seeds [95% "
  "paired bootstrap interval]; then how many of the paired seeds have their own paired "
  "interval excluding 0 (k of n seeds exclude 0), and the mean ± std of the per-seed "
  "differences."
)


def diff_cell(d: PairDiff) -> str:
  """'+0.050 [+0.010, +0.090]; 2 of 2 seeds exclude 0; per seed +0.050 ± 0.014' (the per-seed
  mean ± std only with several seeds)."""
  n_ex = sum(iv.excludes_zero() for _, iv in d.per_seed)
  cell = f"{fmt_diff(d.pooled)}; {n_ex} of {len(d.per_seed)} seeds exclude 0"
  if len(d.per_seed) > 1:
    cell += f"; per seed {fms(mean_std([iv.estimate for _, iv in d.per_seed]), sign=True)}"
  return cell


def diff_lines(sa: SetAnalysis, legend: bool = True) -> list[str]:
  """Every pair of arms in one table, a row per pair: A − B per metric with its interval, and
  per seed (`DIFF_LEGEND` above it with `legend`)."""
  if not sa.diffs:
    return []
  lines = [DIFF_LEGEND, ""] if legend else []
  rows = []
  for (a, b), diffs in sa.diffs.items():
    seeds = [s for s, _ in diffs[sa.metrics[0]].per_seed]
    rows.append(
      [
        f"`{a}` − `{b}`",
        ", ".join(str(s) for s in seeds),
        *[diff_cell(diffs[m]) for m in sa.metrics],
      ]
    )
  lines += table(["A − B", "paired seeds", *[METRIC_NAMES[m] for m in sa.metrics]], rows)
  lines.append("")
  return lines


def _classes_covered(sa: SetAnalysis) -> str:
  names = sa.class_names or [f"class {i}" for i in range(len(sa.support or []))]
  present = sa.present_classes()
  if not sa.support:
    return "Classes covered: unknown (no support counts)."
  text = f"Covers {len(present)} of {len(names)} classes: " + ", ".join(
    f"{_class_label(names[i], f'n={sa.support[i]:,}')}" for i in present
  )
  absent = [names[i] for i in range(len(names)) if i not in present]
  if absent:
    text += (
      "; absent: "
      + ", ".join(absent)
      + " (macro AUC and balanced accuracy average over the classes present)"
    )
  return text + "."


def outside_check_lines(analysis: dict[str, SetAnalysis]) -> list[str]:
  """What the check of each outside set against the runs' own training and validation
  images found (`outside_check` in its metrics files; data/outside.py)."""
  L = []
  for name, sa in analysis.items():
    if not sa.shifted:
      continue
    checks = [ev.metrics.get("outside_check") for rs in sa.runs.values() for _, ev in rs]
    checks = [c for c in checks if isinstance(c, dict)]
    if not checks:
      L.append(f"- `{name}`: not checked against the runs' training images (runs of an "
               "older version): it may hold some of them.")
      continue
    worst = max(checks, key=lambda c: c.get("overlapping", 0))
    n, k = int(worst.get("images", 0)), int(worst.get("overlapping", 0))
    if k:
      by = ", ".join(f"{v} by {w.replace('_', ' ')}" for w, v in
                     (worst.get("found_by") or {}).items() if v)
      L.append(f"- `{name}`: {k} of its {n} images are the runs' own training or validation "
               f"images ({by}); they are left out, and the numbers below are on the other "
               f"{n - k}.")
    else:
      L.append(f"- `{name}`: none of its {n} images is a training or validation image of the "
               "runs (checked by image id, lesion id and pixels).")
  return L + [""] if L else []


def shift_lines(
  analysis: dict[str, SetAnalysis],
  arms: Sequence[str],
  pair: tuple[str, str] | None,
  title: str = "## In distribution vs shifted",
  withheld: str | None = None,
) -> list[str]:
  """The in-distribution vs shifted section; `pair`: the arms whose verdict is given per set;
  `withheld`: why no verdict is drawn at all (a smoke run). The test split's per-class
  recall and paired differences are printed once, in their own sections above."""
  L = [title, ""]
  L.append(
    "Each arm evaluated on the in-distribution test split and on outside (shifted) sets. Numbers "
    "are mean ± std over seeds from each run's metrics file; intervals are 95% bootstrap "
    "intervals over the set's images (metric averaged over seeds); differences are paired "
    "(same images for both arms; each set resampled independently of the others)."
    + (f" The verdict per set is `{pair[0]}` vs `{pair[1]}` on balanced accuracy." if pair else "")
  )
  L.append("")
  L += outside_check_lines(analysis)
  verdicts = {}
  for name, sa in analysis.items():
    L += [f"### {sa.label[0].upper() + sa.label[1:]}", ""]
    if not sa.labelled:
      L += [
        (
          f"No ground truth for this set ({sa.n_images or 'unknown number of'} images, "
          "predictions only): not scored."
        ),
        "",
      ]
      continue
    L.append(f"{sa.n_images:,} images. " if sa.n_images else "")
    L[-1] += _classes_covered(sa)
    L.append("")
    rows = []
    for a in arms:
      rs = sa.runs.get(a, [])
      if not rs:
        rows.append([f"`{a}`", "0", "not evaluated", "", "", ""])
        continue
      vals = {
        m: mean_std([num(ev.metrics.get(m)) for _, ev in rs])
        for m in ("accuracy", "balanced_accuracy", "macro_auc")
      }
      ci = sa.ci.get(a, {}).get("balanced_accuracy")
      rows.append(
        [
          f"`{a}`",
          str(len(rs)),
          fms(vals["accuracy"]),
          fms(vals["balanced_accuracy"]),
          fms(vals["macro_auc"]),
          fmt_ci(ci),
        ]
      )
    maj = {
      m: mean_std(
        [
          num((ev.metrics.get("majority_baseline") or {}).get(m))
          for rs in sa.runs.values()
          for _, ev in rs
        ]
      )
      for m in ("accuracy", "balanced_accuracy", "macro_auc")
    }
    rows.append(
      [
        "majority class (always predicted)",
        "—",
        fmt(maj["accuracy"][0]),
        fmt(maj["balanced_accuracy"][0]),
        fmt(maj["macro_auc"][0]),
        "—",
      ]
    )
    L += table(
      [
        "arm",
        "seeds",
        "accuracy",
        "balanced accuracy",
        "macro AUC (classes present)",
        "balanced acc. 95% interval",
      ],
      rows,
    )
    L.append("")
    if not sa.shifted:
      L.append(
        "Per-class recall and the paired differences on the test split are in their sections "
        "above."
      )
      L.append("")
    # per-class recall (the test split's is above)
    names = (sa.class_names or []) if sa.shifted else []
    if names:
      rows = []
      for i, c in enumerate(names):
        if sa.support and i < len(sa.support) and sa.support[i] == 0:
          continue
        row = [c, f"{sa.support[i]:,}" if sa.support and i < len(sa.support) else "—"]
        for a in arms:
          rec = [
            num((ev.metrics.get("per_class_recall") or [None] * (i + 1))[i])
            if i < len(ev.metrics.get("per_class_recall") or [])
            else None
            for _, ev in sa.runs.get(a, [])
          ]
          row.append(fms(mean_std(rec)))
        rows.append(row)
      L.append("Per-class recall (classes present in this set):")
      L.append("")
      L += table(["class", "images", *[f"`{a}`" for a in arms]], rows)
      L.append("")
    if not sa.shifted:
      pass
    elif sa.diffs:
      L += diff_lines(sa, legend=False)
    elif sa.notes or not sa.ci:
      L.append(
        "No paired differences: " + (" ".join(sa.notes) if sa.notes else "no predictions files.")
      )
      L.append("")
    if pair is not None:
      verdicts[name] = set_verdict(sa, pair, withheld)
      L.append(f"Verdict ({sa.label}, balanced accuracy): {verdicts[name]['text']}.")
      L.append("")

  L += shift_change_lines(analysis, arms, pair, verdicts)
  return L


def _change_word(ch: ShiftChange | None) -> str:
  if ch is None or ch.change.lo is None:
    return "cannot be tested (no interval)"
  if not ch.change.excludes_zero():
    return "no detectable change"
  return "**changes**: " + (
    "larger on the shifted set" if ch.change.lo > 0 else "smaller on the shifted set"
  )


def shift_change_lines(
  analysis: dict[str, SetAnalysis],
  arms: Sequence[str],
  pair: tuple[str, str] | None,
  verdicts: dict[str, dict[str, Any]],
) -> list[str]:
  """'Does the answer change under shift?': the per-set verdicts, then for each shifted set and
  each pair of arms (the headline pair, and every pair both of whose arms have the set) the
  change of the paired difference, tested with its own interval."""
  L = ["### Does the answer change under shift?", ""]
  base = analysis.get(TEST_SET)
  if pair is not None:
    L.append(f"Verdict per set, `{pair[0]}` vs `{pair[1]}`, balanced accuracy:")
    L.append("")
    L += [f"- {analysis[n].label}: {v['text']}." for n, v in verdicts.items()]
    L.append("")
  shifted = [sa for sa in analysis.values() if sa.shifted and sa.labelled]
  if base is None or not shifted:
    return L
  L.append(
    "The change is tested on itself: (A − B on the shifted set) − (A − B on the test split), "
    "each the mean over the seeds both arms have on both sets, with a 95% bootstrap interval "
    "that resamples the images of both sets, each set independently of the other. A "
    "difference changes under shift only when this interval excludes 0; one interval "
    "excluding 0 beside another containing it is no evidence of a change on its own."
  )
  L.append("")
  rows = []
  headline: dict[str, tuple[ShiftChange | None, str]] = {}
  for sa in shifted:
    for a, b in arm_pairs(arms):
      both = a in sa.runs and b in sa.runs
      if not both and (a, b) != pair:
        continue
      ch = shift_change(base, sa, a, b, "balanced_accuracy") if both else None
      auc = shift_change(base, sa, a, b, "macro_auc") if both else None
      if (a, b) == pair:
        headline[sa.name] = (ch, "" if both else "not both arms were scored on this set")
      if ch is None:
        why = "not both arms scored on this set" if not both else "no predictions for both arms"
        rows.append([f"`{a}` − `{b}`", f"`{sa.name}`", "—", "n/a", "n/a", "n/a", "n/a", why])
        continue
      rows.append(
        [
          f"`{a}` − `{b}`",
          f"`{sa.name}`",
          ", ".join(str(s) for s in ch.seeds),
          fmt_diff(ch.in_distribution),
          fmt_diff(ch.shifted),
          fmt_diff(ch.change),
          fmt_diff(auc.change) if auc is not None else "n/a",
          _change_word(ch),
        ]
      )
  L += table(
    [
      "A − B",
      "shifted set",
      "seeds",
      "balanced acc.: test split",
      "balanced acc.: shifted",
      "balanced acc.: shifted − test split",
      "macro AUC: shifted − test split",
      "does A − B change? (balanced acc.)",
    ],
    rows,
  )
  L.append("")
  if pair is not None:
    for sa in shifted:
      ch, why = headline.get(sa.name, (None, ""))
      a, b = (ch.first, ch.second) if ch is not None else pair
      if ch is None or ch.change.lo is None:
        L.append(
          f"- `{sa.name}`: whether `{a}` − `{b}` changes under shift cannot be tested"
          + (f" ({why})." if why else " without predictions files for both arms on both sets.")
        )
        continue
      change = f"shifted − test split = {fmt_diff(ch.change)}"
      if ch.change.excludes_zero():
        L.append(
          f"- `{sa.name}`: **the answer changes under shift**: `{a}` − `{b}` in balanced "
          f"accuracy is {'larger' if ch.change.lo > 0 else 'smaller'} on the shifted set "
          f"({change}; the interval excludes 0)."
        )
        continue
      text = (
        f"- `{sa.name}`: no detectable change of `{a}` − `{b}` under shift ({change}; the "
        "interval contains 0)"
      )
      v_in, v_out = verdicts.get(TEST_SET), verdicts.get(sa.name)
      answers = [(v["winner"], v["detectable"]) for v in (v_in, v_out) if v]
      if len(answers) == 2 and answers[0] != answers[1]:
        text += (
          ", although the two sets' verdicts differ: that alone does not show that the "
          "answer changes"
        )
      L.append(text + ".")
    L.append("")
  return L


def fraction_column(fraction: float) -> str:
  """'1%', '10%', '100%'."""
  return f"{format(100 * fraction, '.3g')}%"


def efficiency_lines(
  eff: dict[str, dict[str, dict[str, list[EfficiencyPoint]]]], metrics: Sequence[str]
) -> list[str]:
  """One table per metric: a row per arm and protocol, a column per label fraction; each cell
  the metric averaged over seeds [95% bootstrap interval over the test images]."""
  fractions = sorted(
    {
      p.fraction
      for by_arm in eff.values()
      for by_metric in by_arm.values()
      for points in by_metric.values()
      for p in points
    }
  )
  arms = sorted({a for by_arm in eff.values() for a in by_arm}, key=arm_sort_key)
  L = []
  for metric in metrics:
    rows = []
    for arm in arms:
      for protocol, by_arm in eff.items():
        points = {p.fraction: p for p in by_arm.get(arm, {}).get(metric, [])}
        if not points:
          continue
        cells = []
        for f in fractions:
          p = points.get(f)
          if p is None or p.estimate is None:
            cells.append("not run" if p is None else "n/a")
          elif p.interval is None or p.interval.lo is None:
            cells.append(f"{fmt(p.estimate)} (no interval)")
          else:
            cells.append(f"{fmt(p.estimate)} {fmt_ci(p.interval)}")
        seeds = [len(points[f].seeds) for f in fractions if f in points]
        rows.append([f"`{arm}`", PROTOCOL_LABELS[protocol], int_list(seeds), *cells])
    L.append(f"Test {METRIC_NAMES[metric]} by fraction of the training labels:")
    L.append("")
    L += table(["arm", "protocol", "seeds", *[fraction_column(f) for f in fractions]], rows)
    L.append("")
  return L


def config_differences(arms: dict[str, ArmRuns], limit: int = 40) -> list[list[str]]:
  flats = {a: flatten(arm.runs[0].config) for a, arm in arms.items()}
  if len(flats) < 2:
    return []
  keys = sorted(set().union(*flats.values()))
  rows = []
  for key in keys:
    if "seed" in key.split(".")[-1].lower():
      continue
    vals = [flats[a].get(key, "(absent)") for a in arms]
    if any(
      json.dumps(v, sort_keys=True, default=str) != json.dumps(vals[0], sort_keys=True, default=str)
      for v in vals[1:]
    ):
      rows.append([f"`{key}`", *[f"`{fmt_value(v)}`" for v in vals]])
  if len(rows) > limit:
    rows = rows[:limit] + [["…", *[f"({len(rows) - limit} more)"] + [""] * (len(arms) - 1)]]
  return rows
