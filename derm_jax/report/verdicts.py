"""Comparisons between the arms and the report's conclusion computed from them: per criterion
from the paired bootstrap interval where there is one, else from the means and seed spread.

The conclusion answers the paper's question first (`vae` vs `imagenet`, the headline pair),
then, per protocol and label fraction, which self-supervised arm beats ImageNet and where
self-supervision loses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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


# ----------------------------------------------------------------------------- gates


# Two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond the table).
_T975 = {
  1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
  10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042,
}
SMALL_SPLIT = 100  # a validation or test split under this many images gets a warning


def _t975(df: int) -> float:
  return next((_T975[k] for k in sorted(_T975) if k >= df), 1.96)


def seed_interval(values: Sequence[float]) -> stats.Interval | None:
  """Mean with its 95% t-interval over seeds (seed-to-seed noise only), or None with fewer
  than two values."""
  v = [float(x) for x in values if x is not None]
  if len(v) < 2:
    return None
  m, sd = float(np.mean(v)), float(np.std(v, ddof=1))
  half = _t975(len(v) - 1) * sd / np.sqrt(len(v))
  return stats.Interval(m, m - half, m + half)


def baseline_blockers(sa: SetAnalysis | None, arms: Sequence[str]) -> list[str]:
  """Why a verdict about `arms` on this set cannot be drawn from the majority-class check:
  an arm whose predictions are indistinguishable from always predicting the majority class
  (any seed), or one without a check. Empty when every arm is above the baseline."""
  out = []
  for a in arms:
    checks = sa.majority_checks.get(a) if sa is not None else None
    if not checks:
      out.append(f"whether `{a}` is above the majority-class baseline is not known")
      continue
    bad = [s for s, c in checks if c.indistinguishable]
    if bad:
      out.append(
        f"`{a}` is not above the majority-class baseline (seed{'s' if len(bad) > 1 else ''} "
        f"{', '.join(map(str, bad))} of {len(checks)}; see Warnings)"
      )
  return out


def _no_verdict(blockers: Sequence[str]) -> str:
  return "no verdict: " + "; ".join(blockers)


# ----------------------------------------------------------------------------- conclusion


def conclusion(
  summary: dict[str, Any],
  n_seeds: dict[str, int],
  sa: SetAnalysis | None = None,
  tests: dict[Condition, SetAnalysis] | None = None,
  per_seed: dict[str, dict[int, dict[str, Any]]] | None = None,
  smoke: Sequence[str] = (),
  val_images: int | None = None,
) -> list[str]:
  """The conclusion: the headline pair (the paper's `vae` vs `imagenet`) on the identical
  classifier's test split (`sa`), then each self-supervised arm against ImageNet under every
  protocol and label fraction of `tests` (the test-split analysis per condition).

  per_seed: arm -> seed -> `seed_summary` (the overfitting gaps and test metrics of each run;
  without it only the paired bootstrap intervals decide); smoke: why the study is a smoke
  run (then no conclusion is drawn); val_images: the validation split's size, where known
  (a gap on under `SMALL_SPLIT` validation images decides nothing).

  A verdict ('is higher', 'overfits less', 'generalised better', 'reproduced') is stated
  only when the interval of the difference excludes 0 and each arm is above the
  majority-class baseline; otherwise the line says what would be needed.
  """
  lines = ["## Conclusion (computed from the numbers above)", ""]
  if smoke:
    return lines + [
      "**No conclusions are drawn: this is a smoke run** ("
      + "; ".join(smoke)
      + "). Its numbers only show that the pipeline runs end to end; train the stages for "
      "their configured epochs to compare the arms.",
      "",
    ]
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
  lines += _pair_conclusion(
    {a: summary[a] for a in pair},
    {a: n_seeds[a] for a in pair},
    sa,
    {a: (per_seed or {}).get(a, {}) for a in pair},
    val_images,
  )
  if tests:
    lines += versus_imagenet_lines(tests)
  return lines


def _values(per_seed: dict[str, dict[int, dict[str, Any]]], arm: str, key: str) -> dict[int, float]:
  return {s: v[key] for s, v in per_seed.get(arm, {}).items() if v.get(key) is not None}


def _gap_criterion(
  label: str,
  key: str,
  a: str,
  b: str,
  per_seed: dict[str, dict[int, dict[str, Any]]],
  blockers: Sequence[str],
  val_images: int | None,
) -> dict[str, Any]:
  """Which arm overfits less by one final gap (train above validation = gap > 0).

  Overfitting is max(gap, 0): a gap <= 0 (validation at or above training) is 'no sign of
  overfitting', never 'overfits less'. `X` overfits less than `Y` only when, over the seeds
  both arms ran (at least two), the 95% t-interval of max(gap X, 0) − max(gap Y, 0) lies
  below 0, `Y`'s own gap interval lies above 0 (it does overfit), the validation split has
  at least `SMALL_SPLIT` images, and both arms are above the majority-class baseline.
  Returns {'winner', 'text', 'need', 'no_sign': arms with mean gap <= 0}."""
  g = {x: _values(per_seed, x, key) for x in (a, b)}
  if not g[a] or not g[b]:
    return {"winner": None, "need": "the gap is not recorded", "no_sign": [],
            "text": f"- {label}: not available for both arms."}
  ms = {x: mean_std(list(g[x].values())) for x in (a, b)}
  no_sign = [x for x in (a, b) if ms[x][0] <= 0]

  def show(x: str) -> str:
    return f"`{x}` {fms(ms[x], sign=True)}" + (" (no sign of overfitting)" if x in no_sign else "")

  shown = f"{show(a)} vs {show(b)}"
  if len(no_sign) == 2:
    return {"winner": None, "need": None, "no_sign": no_sign,
            "text": f"- {label}: {shown}: neither arm shows a sign of overfitting (validation at "
            "or above training for both), so there is nothing to rank."}
  over = {x: max(ms[x][0], 0.0) for x in (a, b)}
  less, more = (a, b) if over[a] < over[b] else (b, a)
  seeds = [s for s in g[less] if s in g[more]]
  diff = seed_interval([max(g[less][s], 0.0) - max(g[more][s], 0.0) for s in seeds])
  more_iv = seed_interval(list(g[more].values()))
  needs = []
  if diff is None:
    needs.append(
      f"{'one paired seed' if len(seeds) == 1 else 'no paired seeds'}: no seed spread "
      "available, so no interval; run more seeds (3 or more)"
    )
  elif not diff.hi < 0:
    needs.append(
      f"the difference in overfitting, max(gap, 0), `{less}` − `{more}` = "
      f"{fmt_diff(diff)} (95% t-interval over {len(seeds)} paired seeds), contains 0: not "
      "distinguishable from seed noise; more seeds would be needed"
    )
  elif more_iv is not None and not more_iv.lo > 0:
    needs.append(
      f"`{more}`'s own gap {fmt_diff(more_iv)} (95% t-interval over seeds) contains 0: it is "
      "not shown to overfit; more seeds would be needed"
    )
  if val_images is not None and val_images < SMALL_SPLIT:
    needs.append(
      f"the validation split has {val_images} images (under {SMALL_SPLIT}): one image moves "
      f"validation accuracy by {100 / val_images:.1f} points; more validation images are needed"
    )
  if needs or blockers:
    return {"winner": None, "need": "; ".join(needs or blockers), "no_sign": no_sign,
            "text": f"- {label}: {shown}: " + _no_verdict([*needs, *blockers]) + "."}
  if less in no_sign:
    claim = (
      f"**`{more}`** overfits and **`{less}`** shows no sign of overfitting: {shown}"
    )
  else:
    claim = f"**`{less}`** overfits less: {shown}"
  return {"winner": less, "need": None, "no_sign": no_sign,
          "text": f"- {label}: {claim}; max(gap, 0) `{less}` − `{more}` = {fmt_diff(diff)} "
          f"(95% t-interval over {len(seeds)} paired seeds) excludes 0."}


def _test_criterion(
  label: str,
  metric: str,
  a: str,
  b: str,
  sa: SetAnalysis | None,
  per_seed: dict[str, dict[int, dict[str, Any]]],
  blockers: Sequence[str],
) -> dict[str, Any]:
  """Which arm scores higher on a test metric: from the paired bootstrap interval over the
  test images, else (no predictions) from the t-interval of the per-seed differences in
  test_metrics.json. {'winner', 'text', 'undetectable': the interval contains 0}."""
  iv = _interval_verdict(sa, a, b, metric)
  if iv is not None:
    if not iv["detectable"]:
      return {"winner": None, "undetectable": True,
              "text": f"- {label}: no difference detectable: {iv['text']}; the interval "
              "contains 0 (more test images or seeds would be needed to tell the arms apart)."}
    if blockers:
      return {"winner": None, "undetectable": False,
              "text": f"- {label}: {iv['text']}; the interval excludes 0, but "
              + _no_verdict(blockers) + "."}
    return {"winner": iv["winner"], "undetectable": False,
            "text": f"- {label}: **`{iv['winner']}`** is higher: {iv['text']}; the interval "
            "excludes 0."}
  key = f"test_{metric}"
  va, vb = _values(per_seed, a, key), _values(per_seed, b, key)
  if not va or not vb:
    return {"winner": None, "text": f"- {label}: not available for both arms."}
  seeds = [s for s in va if s in vb]
  d = seed_interval([va[s] - vb[s] for s in seeds])
  means = f"`{a}` {fms(mean_std(list(va.values())))} vs `{b}` {fms(mean_std(list(vb.values())))}"
  tail = " (No bootstrap interval: predictions files missing.)"
  if d is None:
    return {"winner": None,
            "text": f"- {label}: {means}; one seed: no seed spread available, so no interval; "
            "run more seeds or keep the predictions files." + tail}
  text = f"`{a}` − `{b}` = {fmt_diff(d)} (95% t-interval over {len(seeds)} paired seeds)"
  if not d.excludes_zero():
    return {"winner": None, "undetectable": True,
            "text": f"- {label}: no difference detectable: {text}; the interval contains 0."
            + tail}
  if blockers:
    return {"winner": None,
            "text": f"- {label}: {text}; the interval excludes 0, but " + _no_verdict(blockers)
            + "." + tail}
  w = a if d.lo > 0 else b
  return {"winner": w,
          "text": f"- {label}: **`{w}`** is higher: {text}; the interval excludes 0." + tail}


def _pair_conclusion(
  summary: dict[str, Any],
  n_seeds: dict[str, int],
  sa: SetAnalysis | None,
  per_seed: dict[str, dict[int, dict[str, Any]]],
  val_images: int | None = None,
) -> list[str]:
  """The criteria, overall verdict and the paper's direction of one pair (`summary`,
  `n_seeds` and `per_seed` hold exactly its two arms)."""
  a, b = list(summary)
  blockers = baseline_blockers(sa, (a, b))
  crit = {
    "gap_acc": _gap_criterion(
      "Final overfitting gap, train − val accuracy (overfitting = gap above 0)",
      "gap_acc_final", a, b, per_seed, blockers, val_images,
    ),
    "gap_loss": _gap_criterion(
      "Final overfitting gap, val − train loss (overfitting = gap above 0)",
      "gap_loss_final", a, b, per_seed, blockers, val_images,
    ),
    "ba": _test_criterion(
      "Test balanced accuracy (higher is better)", "balanced_accuracy", a, b, sa, per_seed,
      blockers,
    ),
    "auc": _test_criterion(
      "Test macro AUC (higher is better)", "macro_auc", a, b, sa, per_seed, blockers
    ),
  }
  lines = [c["text"] for c in crit.values()] + [""]

  def common(x: str, y: str) -> str | None:
    wx, wy = crit[x].get("winner"), crit[y].get("winner")
    return wx if wx is not None and wx == wy else None

  gap_w, test_w = common("gap_acc", "gap_loss"), common("ba", "auc")
  no_sign = gap_w is not None and all(
    gap_w in crit[c]["no_sign"] for c in ("gap_acc", "gap_loss")
  )
  gap_claim = (
    f"`{gap_w}` shows no sign of overfitting by either gap definition while the other arm "
    "overfits"
    if no_sign
    else f"`{gap_w}` overfits less by both gap definitions"
  )
  undetectable = all(crit[c].get("undetectable") for c in ("ba", "auc"))
  if blockers:
    text = "; ".join(blockers)
    verdict = "**Overall: no verdict.** " + text[:1].upper() + text[1:] + "."
  elif gap_w is not None and gap_w == test_w:
    verdict = (
      f"**Overall: `{gap_w}` generalised better on these data**: it "
      + gap_claim.split(" ", 1)[1]
      + ", and has the higher test balanced accuracy and macro AUC (each interval excludes 0)."
    )
  elif gap_w is not None and test_w is not None:
    verdict = (
      f"**Overall: mixed.** {gap_claim}, but `{test_w}` scores higher test balanced accuracy "
      "and macro AUC."
    )
  elif undetectable:
    verdict = (
      "**Overall: no difference detectable on the test set.** The 95% intervals of the "
      "differences in test balanced accuracy and macro AUC both contain 0; "
      + (
        gap_claim + "."
        if gap_w
        else "the overfitting gaps decide nothing either (see above)."
      )
    )
  else:
    parts = [
      gap_claim if gap_w else "the gaps do not decide which arm overfits less (see above)",
      f"`{test_w}` is better on the test set by both balanced accuracy and AUC"
      if test_w
      else "test balanced accuracy and AUC do not agree on a better arm (or a difference is "
      "not detectable)",
    ]
    text = "; ".join(parts)
    verdict = "**Overall: inconclusive.** " + text[:1].upper() + text[1:] + "."
  lines += [verdict, ""]
  flagged = [
    x
    for x, checks in (sa.majority_checks if sa else {}).items()
    if x in summary and any(c.indistinguishable for _, c in checks)
  ]
  if flagged:
    lines += [
      "Caution: "
      + ", ".join(f"`{x}`" for x in flagged)
      + (" is" if len(flagged) == 1 else " are")
      + " statistically indistinguishable from (or worse than) always predicting the majority "
      "class on the test split for at least one seed (see Warnings): such an arm has learnt "
      "little, whatever its accuracy or overfitting gap, and no verdict is drawn about it.",
      "",
    ]
  if min(n_seeds.values()) < 2:
    lines += [
      "With one seed per arm (for at least one arm) no seed-to-seed spread can be estimated, so "
      "it cannot be said whether the differences in the overfitting gaps exceed run-to-run "
      "noise; run more seeds (3 or more).",
      "",
    ]

  # The paper's direction, where the arm names map onto the paper's arms.
  paper_arms = {paper_arm(x): x for x in summary}
  ssl, inet = paper_arms.get("self_supervised"), paper_arms.get("imagenet")
  if ssl and inet:
    ga, gi = summary[ssl]["gap_acc_final"][0], summary[inet]["gap_acc_final"][0]
    if ga is not None and gi is not None:
      c = crit["gap_acc"]
      if c["winner"] is not None:
        answer = "reproduced" if c["winner"] == ssl else "not reproduced"
      else:
        answer = "not decided by these runs (" + (c.get("need") or "no verdict above") + ")"
      lines += [
        "The paper reports that the self-supervised arm overfits less (gap ≈ 0 vs +0.060 for "
        f"ImageNet). Here, by the accuracy gap, `{ssl}` {fmt(ga, sign=True)} vs `{inet}` "
        f"{fmt(gi, sign=True)}: the paper's direction is {answer}.",
        "",
      ]
    vs, vi = _values(per_seed, ssl, "val_acc_final"), _values(per_seed, inet, "val_acc_final")
    if vs and vi:
      seeds = [s for s in vi if s in vs]
      d = seed_interval([vi[s] - vs[s] for s in seeds])
      aa, ai = float(np.mean(list(vs.values()))), float(np.mean(list(vi.values())))
      if d is None:
        direction = "one seed, no interval: not decided (run more seeds)"
      elif not d.excludes_zero() or blockers:
        direction = (
          f"`{inet}` − `{ssl}` = {fmt_diff(d)} over {len(seeds)} paired seeds: "
          + ("not decided (" + "; ".join(blockers) + ")" if blockers and d.excludes_zero()
             else "no detectable difference")
        )
      else:
        direction = (
          f"`{inet}` − `{ssl}` = {fmt_diff(d)} (95% t-interval over {len(seeds)} paired seeds): "
          + ("same direction" if d.lo > 0 else "opposite direction")
        )
      lines += [
        f"The paper's ImageNet arm ends with the higher validation accuracy (75% vs 65%). Here "
        f"`{inet}` {fmt(ai, scale=100, digits=1, suffix='%')} vs `{ssl}` "
        f"{fmt(aa, scale=100, digits=1, suffix='%')}: {direction}.",
        "",
      ]
  return lines


def set_verdict(
  sa: SetAnalysis, arms: Sequence[str], withheld: str | None = None
) -> dict[str, Any]:
  """Which arm is better on balanced accuracy on this set: from the paired interval (a
  winner only when it excludes 0 and both arms are above the majority-class baseline), else
  the means without a verdict. withheld: why no verdict is drawn at all (a smoke run)."""
  if len(arms) < 2:
    return {"winner": None, "text": "only one arm", "detectable": False}
  if withheld:
    return {"winner": None, "text": f"not drawn ({withheld})", "detectable": None}
  a, b = arms[0], arms[1]
  iv = _interval_verdict(sa, a, b, "balanced_accuracy")
  if iv is not None:
    blockers = baseline_blockers(sa, (a, b))
    if iv["detectable"] and blockers:
      return {
        "winner": None,
        "detectable": True,
        "text": f"**no verdict**: {iv['text']}; the interval excludes 0, but "
        + "; ".join(blockers),
      }
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
  'mixed' (one above, one below), 'no detectable difference' (all contain 0), 'no verdict'
  (an interval excludes 0 but an arm is not above the majority-class baseline) or 'n/a' (no
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
  blockers = baseline_blockers(sa, (a, b)) if up or down else []
  if blockers:
    return "no verdict", detail + " (" + "; ".join(blockers) + ")"
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
    "and one below; otherwise no detectable difference. Each of these needs both arms above "
    "the majority-class baseline in that condition; else **no verdict**."
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
  withheld = where("no verdict")
  if withheld:
    lines.append(
      f"No verdict (an interval excludes 0, but an arm is not above the majority-class "
      f"baseline): {_join(withheld)}."
    )
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
