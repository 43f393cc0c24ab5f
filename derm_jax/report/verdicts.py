"""Comparisons between the arms and the report's conclusion computed from them: per criterion
from the paired bootstrap interval where there is one, else from the means and seed spread.

The conclusion answers the paper's question first (`vae` vs `imagenet`, the headline pair),
then, per protocol and label fraction, which self-supervised arm beats ImageNet and where
self-supervision loses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from derm_jax import stats
from derm_jax.report.analysis import (
  EFFICIENCY_METRICS,
  METRIC_NAMES,
  PairDiff,
  SetAnalysis,
  mean_std,
)
from derm_jax.report.formatting import fms, fmt, fmt_diff, table
from derm_jax.report.runs import Condition, arm_sort_key, is_self_supervised, num, paper_arm

PAPER_PAIR = ("vae", "imagenet")


def headline_pair(arms: Sequence[str]) -> tuple[str, str] | None:
  """The pair the report's verdicts are about: the paper's (`vae`, `imagenet`) when both are
  present, else the first two arms (None with fewer than two)."""
  if all(a in arms for a in PAPER_PAIR):
    return PAPER_PAIR
  return (arms[0], arms[1]) if len(arms) >= 2 else None


def _compare(summary: dict[str, Any], key: str, mode: str) -> dict[str, Any]:
  """Ranks arms on one quantity. mode 'abs_lower' (smaller |mean| wins) or 'higher'."""
  cands = [(a, summary[a][key]) for a in summary if summary[a][key][0] is not None]
  if len(cands) < 2:
    return {"winner": None}
  score = (lambda ms: -abs(ms[0])) if mode == "abs_lower" else (lambda ms: ms[0])
  cands.sort(key=lambda t: score(t[1]), reverse=True)
  (win, wms), (run, rms) = cands[0], cands[1]
  diff = abs(score(wms) - score(rms))
  if diff == 0:
    return {"winner": None, "tie": True, "arms": (win, run)}
  stds = [s for s in (wms[1], rms[1]) if s is not None]
  max_std = max(stds) if len(stds) == 2 else None
  return {
    "winner": win,
    "runner_up": run,
    "win": wms,
    "run": rms,
    "diff": diff,
    "max_std": max_std,
    "exceeds": (diff > max_std) if max_std is not None else None,
  }


def _pair_diff(
  sa: SetAnalysis | None, a: str, b: str, metric: str
) -> tuple[str, str, PairDiff] | None:
  """The paired difference of arms a and b on `metric` as stored (first arm − second), or None."""
  if sa is None:
    return None
  if (a, b) in sa.diffs:
    return a, b, sa.diffs[(a, b)][metric]
  if (b, a) in sa.diffs:
    return b, a, sa.diffs[(b, a)][metric]
  return None


def _interval_verdict(sa: SetAnalysis | None, a: str, b: str, metric: str) -> dict[str, Any] | None:
  """{'winner': arm or None, 'text': '`a` − `b` = +x [lo, hi]', 'detectable': bool} from the pooled
  paired interval, or None when there is no interval."""
  got = _pair_diff(sa, a, b, metric)
  if got is None or got[2].pooled.lo is None or got[2].pooled.estimate is None:
    return None
  first, second, d = got
  iv = d.pooled
  detectable = iv.excludes_zero()
  winner = (first if iv.lo > 0 else second) if detectable else None
  k = len(d.per_seed)
  text = (
    f"`{first}` − `{second}` = {fmt_diff(iv)} (95% paired bootstrap over {sa.n_images:,} images"
    + (f", mean over {k} paired seeds" if k > 1 else "")
    + ")"
  )
  return {"winner": winner, "detectable": detectable, "text": text}


def _criterion_sentence(label: str, c: dict[str, Any], digits: int, sign: bool, what: str) -> str:
  if c.get("interval") is not None:
    iv = c["interval"]
    if iv["detectable"]:
      return f"- {label}: **`{iv['winner']}`** {what}: {iv['text']}; the interval excludes 0."
    return f"- {label}: no difference detectable: {iv['text']}; the interval contains 0."
  if c.get("winner") is None:
    if c.get("tie"):
      return f"- {label}: tie between `{c['arms'][0]}` and `{c['arms'][1]}`."
    return f"- {label}: not available for two arms."
  text = (
    f"- {label}: **`{c['winner']}`** {what} ({fms(c['win'], digits=digits, sign=sign)} vs "
    f"`{c['runner_up']}` {fms(c['run'], digits=digits, sign=sign)}); difference "
    f"{c['diff']:.{digits}f}"
  )
  if c["exceeds"] is None:
    text += ", no seed spread available to judge it."
  elif c["exceeds"]:
    text += f", larger than the seed std (largest {c['max_std']:.{digits}f})."
  else:
    text += (
      f", within the seed std (largest {c['max_std']:.{digits}f}): "
      "not distinguishable from seed noise."
    )
  if c.get("no_interval"):
    text += " (No bootstrap interval: predictions files missing.)"
  return text


def _with_interval(c: dict[str, Any], sa: SetAnalysis | None, metric: str) -> dict[str, Any]:
  """The criterion decided by the paired bootstrap interval of its two best arms, when available."""
  c = dict(c)
  pair = (c["winner"], c["runner_up"]) if c.get("winner") else c.get("arms")
  if pair is None:
    return c
  iv = _interval_verdict(sa, pair[0], pair[1], metric)
  if iv is None:
    c["no_interval"] = True
    return c
  c["interval"] = iv
  c["winner"] = iv["winner"]
  return c


def conclusion(
  summary: dict[str, Any],
  n_seeds: dict[str, int],
  sa: SetAnalysis | None = None,
  tests: dict[Condition, SetAnalysis] | None = None,
) -> list[str]:
  """The conclusion: the headline pair (the paper's `vae` vs `imagenet`) on the identical
  classifier's test split (`sa`), then each self-supervised arm against ImageNet under every
  protocol and label fraction of `tests` (the test-split analysis per condition)."""
  lines = ["## Conclusion (computed from the numbers above)", ""]
  arms = list(summary)
  pair = headline_pair(arms)
  if pair is None:
    return lines + ["Only one arm: nothing to compare.", ""]
  if pair == PAPER_PAIR:
    lines += [
      "### The paper's question: `vae` (self-supervised VAE) vs `imagenet` (ImageNet transfer)",
      "",
    ]
  else:
    lines += [f"### `{pair[0]}` vs `{pair[1]}`", ""]
    if len(arms) > 2:
      lines += [
        "The study lacks the paper's pair (`vae` and `imagenet`); the first two arms are "
        "compared here (every pair is in the tables of differences above).",
        "",
      ]
  lines += _pair_conclusion({a: summary[a] for a in pair}, {a: n_seeds[a] for a in pair}, sa)
  if tests:
    lines += versus_imagenet_lines(tests)
  return lines


def _pair_conclusion(
  summary: dict[str, Any], n_seeds: dict[str, int], sa: SetAnalysis | None
) -> list[str]:
  """The criteria, overall verdict, caution, spread check and the paper's direction of one pair
  (`summary` and `n_seeds` hold exactly its two arms)."""
  raw = {
    "gap_acc": _compare(summary, "gap_acc_final", "abs_lower"),
    "gap_loss": _compare(summary, "gap_loss_final", "abs_lower"),
    "ba": _compare(summary, "test_balanced_accuracy", "higher"),
    "auc": _compare(summary, "test_macro_auc", "higher"),
  }
  crit = dict(raw)
  crit["ba"] = _with_interval(raw["ba"], sa, "balanced_accuracy")
  crit["auc"] = _with_interval(raw["auc"], sa, "macro_auc")
  lines = []
  lines.append(
    _criterion_sentence(
      "Final overfitting gap, train − val accuracy (smaller |gap| = less overfitting)",
      crit["gap_acc"],
      3,
      True,
      "overfits less",
    )
  )
  lines.append(
    _criterion_sentence(
      "Final overfitting gap, val − train loss (smaller |gap| = less overfitting)",
      crit["gap_loss"],
      3,
      True,
      "overfits less",
    )
  )
  lines.append(
    _criterion_sentence(
      "Test balanced accuracy (higher is better)", crit["ba"], 3, False, "is higher"
    )
  )
  lines.append(
    _criterion_sentence("Test macro AUC (higher is better)", crit["auc"], 3, False, "is higher")
  )
  lines.append("")

  def common(a: str, b: str) -> str | None:
    wa, wb = crit[a].get("winner"), crit[b].get("winner")
    return wa if wa is not None and wa == wb else None

  gap_w, test_w = common("gap_acc", "gap_loss"), common("ba", "auc")
  undetectable = all(
    crit[c].get("interval") is not None and not crit[c]["interval"]["detectable"]
    for c in ("ba", "auc")
  )
  if gap_w is not None and gap_w == test_w:
    verdict = (
      f"**Overall: `{gap_w}` generalised better on these data**: it has the smaller final "
      "train-validation gap by both definitions and the higher test balanced accuracy and macro "
      "AUC" + (" (both paired intervals exclude 0)." if crit["ba"].get("interval") else ".")
    )
  elif gap_w is not None and test_w is not None:
    verdict = (
      f"**Overall: mixed.** `{gap_w}` overfits less (smaller final gap by both definitions), "
      f"but `{test_w}` scores higher test balanced accuracy and macro AUC."
    )
  elif undetectable:
    verdict = (
      "**Overall: no difference detectable on the test set.** The 95% intervals of the differences "
      "in test balanced accuracy and macro AUC both contain 0; "
      + (
        f"`{gap_w}` overfits less by both gap definitions (a training-curve measure without an "
        "interval)."
        if gap_w
        else "the two gap definitions do not agree on which arm overfits less."
      )
    )
  else:
    parts = []
    parts.append(
      f"`{gap_w}` overfits less by both gap definitions"
      if gap_w
      else "the two gap definitions do not agree on which arm overfits less"
    )
    parts.append(
      f"`{test_w}` is better on the test set by both balanced accuracy and AUC"
      if test_w
      else "test balanced accuracy and AUC do not agree on a better arm (or a difference is not "
      "detectable)"
    )
    text = "; ".join(parts)
    verdict = "**Overall: inconclusive.** " + text[:1].upper() + text[1:] + "."
  lines.append(verdict)
  lines.append("")
  flagged = [
    a
    for a, checks in (sa.majority_checks if sa else {}).items()
    if a in summary and any(c.indistinguishable for _, c in checks)
  ]
  if flagged:
    lines.append(
      "Caution: "
      + ", ".join(f"`{a}`" for a in flagged)
      + (" is" if len(flagged) == 1 else " are")
      + " statistically indistinguishable from (or worse than) always predicting the majority "
      "class on the test "
      "split for at least one seed (see Warnings): such an arm has learnt little, whatever its "
      "accuracy or overfitting gap."
    )
    lines.append("")

  if min(n_seeds.values()) < 2:
    lines.append(
      "With one seed per arm (for at least one arm) no seed-to-seed spread can be estimated, so it "
      "cannot be said whether these differences exceed run-to-run noise; run more seeds."
    )
  else:
    decided = [c for c in raw.values() if c.get("winner") is not None]
    n_exc = sum(bool(c["exceeds"]) for c in decided)
    n = ", ".join(f"{a}: {k}" for a, k in n_seeds.items())
    lines.append(
      f"{n_exc} of {len(decided)} of these differences exceed the larger of the two arms' seed "
      f"standard deviations (seeds per arm: {n}). This is a rough spread check, not a significance "
      "test."
    )
  lines.append("")

  # The paper's direction, where the arm names map onto the paper's arms.
  paper_arms = {paper_arm(a): a for a in summary}
  ssl, inet = paper_arms.get("self_supervised"), paper_arms.get("imagenet")
  if ssl and inet:
    ga, gi = summary[ssl]["gap_acc_final"][0], summary[inet]["gap_acc_final"][0]
    if ga is not None and gi is not None:
      agree = abs(ga) < abs(gi)
      lines.append(
        f"The paper reports that the self-supervised arm overfits less (gap ≈ 0 vs +0.060 for "
        f"ImageNet). Here, by the accuracy gap, `{ssl}` {fmt(ga, sign=True)} vs `{inet}` "
        f"{fmt(gi, sign=True)}: the paper's direction is "
        f"{'reproduced' if agree else 'not reproduced'}."
      )
      lines.append("")
    aa, ai = summary[ssl]["val_acc_final"][0], summary[inet]["val_acc_final"][0]
    if aa is not None and ai is not None:
      direction = "same direction" if ai > aa else ("equal" if ai == aa else "opposite direction")
      lines.append(
        f"The paper's ImageNet arm ends with the higher validation accuracy (75% vs 65%). Here "
        f"`{inet}` {fmt(ai, scale=100, digits=1, suffix='%')} vs `{ssl}` "
        f"{fmt(aa, scale=100, digits=1, suffix='%')}: {direction}."
      )
    lines.append("")
  return lines


def set_verdict(sa: SetAnalysis, arms: Sequence[str]) -> dict[str, Any]:
  """Which arm is better on balanced accuracy on this set: from the interval, else from the "
  "means."""
  if len(arms) < 2:
    return {"winner": None, "text": "only one arm", "detectable": False}
  a, b = arms[0], arms[1]
  iv = _interval_verdict(sa, a, b, "balanced_accuracy")
  if iv is not None:
    if iv["detectable"]:
      return {
        "winner": iv["winner"],
        "detectable": True,
        "text": f"**`{iv['winner']}` generalised better**: {iv['text']}; the interval excludes 0",
      }
    return {
      "winner": None,
      "detectable": False,
      "text": f"**no difference detectable**: {iv['text']}; the interval contains 0",
    }
  means = {
    x: mean_std([num(ev.metrics.get("balanced_accuracy")) for _, ev in sa.runs.get(x, [])])
    for x in (a, b)
  }
  if means[a][0] is None or means[b][0] is None:
    return {"winner": None, "detectable": None, "text": "not available for both arms"}
  w = a if means[a][0] > means[b][0] else b
  return {
    "winner": None,
    "detectable": None,
    "text": f"no interval (predictions missing); mean balanced accuracy is higher for `{w}` "
    f"({fms(means[a])} vs {fms(means[b])})",
  }


# ----------------------------------------------------------------------------- versus ImageNet


def _oriented(sa: SetAnalysis, a: str, b: str, metric: str) -> stats.Interval | None:
  """The pooled paired interval of metric(a) − metric(b), whichever way the pair is stored."""
  if metric not in sa.metrics:
    return None
  got = _pair_diff(sa, a, b, metric)
  if got is None:
    return None
  first, _, d = got
  iv = d.pooled
  if iv.estimate is None or iv.lo is None or iv.hi is None:
    return None
  return iv if first == a else stats.Interval(-iv.estimate, -iv.hi, -iv.lo)


def versus(
  sa: SetAnalysis | None, a: str, b: str, metrics: Sequence[str] = EFFICIENCY_METRICS
) -> tuple[str, str]:
  """(outcome, detail) of arm a against arm b from the paired intervals of `metrics`.

  outcome: 'beats' (some interval above 0, none below), 'loses' (some below 0, none above),
  'mixed' (one above, one below), 'no detectable difference' (all contain 0) or 'n/a' (no
  interval); detail: 'balanced accuracy +0.050 [+0.010, +0.090]; macro AUC ...'.
  """
  ivs = {m: (_oriented(sa, a, b, m) if sa is not None else None) for m in metrics}
  known = {m: iv for m, iv in ivs.items() if iv is not None}
  if not known:
    return "n/a", "no paired interval (predictions missing, or an arm not run)"
  up = any(iv.lo > 0 for iv in known.values())
  down = any(iv.hi < 0 for iv in known.values())
  outcome = (
    "mixed" if up and down else "beats" if up else "loses" if down else "no detectable difference"
  )
  detail = "; ".join(
    f"{METRIC_NAMES[m]} " + (fmt_diff(iv) if iv is not None else "n/a") for m, iv in ivs.items()
  )
  return outcome, detail


def _join(items: Sequence[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def versus_imagenet_lines(tests: dict[Condition, SetAnalysis]) -> list[str]:
  """Each self-supervised arm against `imagenet`, per protocol and label fraction, and plain
  sentences naming the arms that beat ImageNet and those that lose to it. Empty when there is
  no ImageNet arm, or when it would only repeat the headline pair on one condition."""
  present = {a for sa in tests.values() for a in sa.runs}
  ssl = sorted((a for a in present if is_self_supervised(a)), key=arm_sort_key)
  if "imagenet" not in present or not ssl:
    return []
  if ssl == ["vae"] and len(tests) == 1:
    return []
  conds = list(tests)
  lines = ["### Self-supervised arms vs ImageNet", ""]
  lines.append(
    "Each self-supervised arm A against `imagenet` under each protocol and fraction of the "
    "training labels, from the paired bootstrap intervals of A − `imagenet` in test balanced "
    "accuracy and macro AUC (mean over paired seeds): **beats** = at least one interval above 0 "
    "and none below; **loses** = at least one below 0 and none above; **mixed** = one above "
    "and one below; otherwise no detectable difference."
  )
  lines.append("")
  outcomes: dict[str, dict[Condition, str]] = {}
  rows = []
  for a in ssl:
    row = [f"`{a}`"]
    for c in conds:
      sa = tests[c]
      if a not in sa.runs or "imagenet" not in sa.runs:
        row.append("not run")
        continue
      outcome, detail = versus(sa, a, "imagenet")
      outcomes.setdefault(a, {})[c] = outcome
      word = f"**{outcome}**" if outcome in ("beats", "loses", "mixed") else outcome
      row.append(word if outcome == "n/a" else f"{word}: {detail}")
    rows.append(row)
  lines += table(["A (vs `imagenet`)", *[c.label for c in conds]], rows)
  lines.append("")

  def where(outcome: str) -> list[str]:
    return [
      f"`{a}` ({'; '.join(c.label for c, o in by.items() if o == outcome)})"
      for a, by in outcomes.items()
      if outcome in by.values()
    ]

  beats, loses, mixed = where("beats"), where("loses"), where("mixed")
  if beats:
    lines.append(f"**Self-supervised arms that beat ImageNet:** {_join(beats)}.")
  else:
    lines.append(
      "**No self-supervised arm beats ImageNet** under any protocol or label fraction evaluated."
    )
  lines.append("")
  if loses:
    lines.append(f"**Where self-supervision loses to ImageNet:** {_join(loses)}.")
  else:
    lines.append("No self-supervised arm is detectably worse than ImageNet anywhere.")
  lines.append("")
  if mixed:
    lines.append(f"Mixed (better on one metric, worse on the other): {_join(mixed)}.")
    lines.append("")
  missing = [a for a, by in outcomes.items() if "n/a" in by.values()]
  if missing:
    lines.append(
      "Without intervals (no predictions files) for some conditions: "
      + ", ".join(f"`{a}`" for a in missing)
      + "."
    )
    lines.append("")
  flagged = sorted(
    {
      a
      for sa in tests.values()
      for a, checks in sa.majority_checks.items()
      if (a in ssl or a == "imagenet") and any(c.indistinguishable for _, c in checks)
    },
    key=arm_sort_key,
  )
  if flagged:
    lines.append(
      "Caution: "
      + ", ".join(f"`{a}`" for a in flagged)
      + " cannot be told apart from always predicting the majority class for at least one "
      "protocol, fraction and seed (see Warnings)."
    )
    lines.append("")
  return lines
