"""The report says only what its numbers carry: verdicts ('is higher', 'overfits less',
'generalised better', 'reproduced') on planted numbers: an interval including 0, an arm at
the majority-class baseline, a negative overfitting gap, one seed, a small validation split,
a smoke run; the own-data split counts and unlabelled pool; each table printed once."""

from __future__ import annotations

import json
import pathlib

import numpy as np
from test_report import (
  CLASSES,
  N_BOOT,
  _cells,
  _make_new_workdir,
  _mask,
  _planted_run,
  _section,
)

from derm_jax import plots
from derm_jax.report import write_report

# The verdicts as the report states them ('**`vae`** overfits less', '**`vae`** is higher').
VERDICT_WORDS = ("generalised better", "`** overfits less", "`** is higher",
                 "direction is reproduced", "direction is not reproduced", "**beats**:",
                 "**loses**:")


def _rows(epochs, gap, val_acc=0.6, steps_per_epoch=10, val_gap_loss=None):
  """metrics.jsonl rows whose final train − val accuracy gap is `gap` (val − train loss gap
  `val_gap_loss`, default `gap`)."""
  gl = gap if val_gap_loss is None else val_gap_loss
  rows = []
  for e in range(1, epochs + 1):
    rows.append({
      "epoch": e, "step": steps_per_epoch * e,
      "train/loss": 0.8 - gl, "val/loss": 0.8,
      "train/accuracy": val_acc + gap, "val/accuracy": val_acc,
    })
  return rows


def _study(root, right, gaps, top=None, rows=None, data=None):
  """arms/<arm>/seed_<s>/ with test predictions right exactly where right[arm][s] is true
  (3 classes cycling) and final gaps gaps[arm][s]; `rows(arm, s)` overrides the history;
  `data`: the dataset description written into test_metrics.json."""
  root.mkdir(parents=True, exist_ok=True)
  if top is not None:
    (root / "config.json").write_text(json.dumps(top))
  for arm, masks in right.items():
    for s, mask in enumerate(masks):
      d = root / "arms" / arm / f"seed_{s}"
      labels = np.arange(len(mask)) % 3
      _planted_run(d, [str(i) for i in range(len(mask))], labels, mask, CLASSES,
                   "test_metrics.json", "test_predictions.csv")
      if data is not None:
        p = d / "test_metrics.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "data": data}))
      config = {"seed": s, "data": {"name": (data or {}).get("name", "dermamnist")},
                "init": {"source": arm}}
      (d / "config.json").write_text(json.dumps(config))
      hist = rows(arm, s) if rows else _rows(4, gaps[arm][s])
      (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hist))
  return root


def _conclusion(text):
  return text.split("## Conclusion", 1)[1]


def test_interval_including_zero_gives_no_verdict(tmp_path):
  """vae is right on 2 more of 90 images than imagenet: the paired interval contains 0. The
  gaps are equal: their difference is 0 in every seed. Nothing may be called better."""
  n = 90
  right = {"vae": [_mask(n, (0, 62))] * 3, "imagenet": [_mask(n, (0, 60))] * 3}
  gaps = {"vae": [0.05, 0.06, 0.07], "imagenet": [0.05, 0.06, 0.07]}
  text = pathlib.Path(
    write_report(str(_study(tmp_path / "s", right, gaps)), n_boot=N_BOOT, figures=False)
  ).read_text()
  concl = _conclusion(text)
  assert "- Test balanced accuracy (higher is better): no difference detectable: `vae` − " in concl
  assert "the interval contains 0 (more test images or seeds would be needed" in concl
  assert "not distinguishable from seed noise; more seeds would be needed" in concl
  assert "**Overall: no difference detectable on the test set.**" in concl
  assert "the paper's direction is not decided by these runs" in concl
  for word in VERDICT_WORDS:
    assert word not in concl, word


def test_arm_at_majority_baseline_gets_no_verdict(tmp_path):
  """imagenet always predicts nv (the majority class): vae's lead has an interval far above 0,
  but no verdict is drawn, in the conclusion, the board or the per-set verdict."""
  wd = _make_new_workdir(
    tmp_path / "m", {"vae": "good", "imagenet": "nv", "simclr": "good"},
    {"vae": False, "imagenet": False, "simclr": False}, external=True,
  )
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  concl = _conclusion(text)
  row = _cells(text, "| `vae` − `imagenet` |")
  lo = float(row[3].split("[")[1].split(",")[0])
  assert lo > 0  # the interval of balanced accuracy excludes 0 ...
  # ... but imagenet is at the majority-class baseline: no verdict anywhere.
  assert (
    "the interval excludes 0, but no verdict: `imagenet` is not above the majority-class "
    "baseline (seeds 0, 1 of 2; see Warnings)." in concl
  )
  assert "**Overall: no verdict.** `imagenet` is not above the majority-class baseline" in concl
  assert "Verdict (test split (in distribution), balanced accuracy): **no verdict**:" in text
  assert _cells(concl, "| `vae` |")[1].startswith("no verdict: balanced accuracy +")
  assert "No verdict (an interval excludes 0, but an arm is not above the majority-class " in concl
  for word in VERDICT_WORDS:
    assert word not in concl, word
  assert "generalised better" not in text


def test_negative_gap_is_no_sign_of_overfitting_never_overfits_less(tmp_path):
  """vae's validation is above its training accuracy (gap −0.10, e.g. under augmentation),
  imagenet's gap is +0.05: by |gap| imagenet would 'overfit less'; by the definition
  (overfitting = train above validation) vae shows no sign of overfitting and imagenet
  overfits. Then both gaps negative: nothing to rank."""
  n = 90
  right = {"vae": [_mask(n, (0, 70))] * 3, "imagenet": [_mask(n, (0, 40))] * 3}
  gaps = {"vae": [-0.10, -0.11, -0.09], "imagenet": [0.05, 0.06, 0.055]}
  text = pathlib.Path(
    write_report(str(_study(tmp_path / "neg", right, gaps)), n_boot=N_BOOT, figures=False)
  ).read_text()
  concl = _conclusion(text)
  assert "`vae` -0.100 ± 0.010 (no sign of overfitting) vs `imagenet` +0.055 ± 0.005" in concl
  assert "**`imagenet`** overfits and **`vae`** shows no sign of overfitting" in concl
  assert "`** overfits less" not in concl
  assert (
    "**Overall: `vae` generalised better on these data**: it shows no sign of overfitting by "
    "either gap definition while the other arm overfits" in concl
  )
  assert "the paper's direction is reproduced" in concl

  gaps = {"vae": [-0.10, -0.11, -0.09], "imagenet": [-0.02, -0.03, -0.01]}
  text = pathlib.Path(
    write_report(str(_study(tmp_path / "both", right, gaps)), n_boot=N_BOOT, figures=False)
  ).read_text()
  concl = _conclusion(text)
  assert "neither arm shows a sign of overfitting" in concl and "`** overfits less" not in concl
  assert "**`vae`** overfits" not in concl and "**`imagenet`** overfits" not in concl


def test_gap_verdict_needs_seeds_and_validation_images(tmp_path):
  """Both arms overfit, vae less: with one seed there is no interval (more seeds are needed);
  with three seeds but 4 validation images the gap decides nothing either."""
  n = 90
  right = {"vae": [_mask(n, (0, 70))], "imagenet": [_mask(n, (0, 40))]}
  gaps = {"vae": [0.01], "imagenet": [0.20]}
  text = pathlib.Path(
    write_report(str(_study(tmp_path / "one", right, gaps)), n_boot=N_BOOT, figures=False)
  ).read_text()
  concl = _conclusion(text)
  assert "one paired seed: no seed spread available, so no interval; run more seeds" in concl
  assert "`** overfits less" not in concl and "direction is reproduced" not in concl

  right = {a: m * 3 for a, m in right.items()}
  gaps = {"vae": [0.01, 0.02, 0.015], "imagenet": [0.20, 0.21, 0.19]}
  data = {"name": "dermamnist", "splits": {"train": 40, "val": 4, "test": 90}}
  wd = _study(tmp_path / "three", right, gaps, data=data)
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert "⚠ **Small split: the validation split has 4 images** (under 100)" in text
  assert "⚠ **Small split: the test split has 90 images** (under 100)" in text
  concl = _conclusion(text)
  assert "the validation split has 4 images (under 100)" in concl
  assert "more validation images are needed" in concl
  assert "`** overfits less" not in concl and "generalised better" not in concl
  # Enough validation images: now the same gaps decide.
  data["splits"]["val"] = 500
  wd = _study(tmp_path / "big_val", right, gaps, data=data)
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert "**`vae`** overfits less" in _conclusion(text)
  assert "Small split: the validation split" not in text


def test_smoke_run_banner_and_no_conclusions(tmp_path, monkeypatch):
  """A study with smoke_steps = 5: every run stopped after 5 steps (0.031 of an epoch), one
  point per curve. The report and every figure carry the banner; no conclusion is drawn."""
  n = 90
  right = {"vae": [_mask(n, (0, 80))] * 2, "imagenet": [_mask(n, (0, 30))] * 2}

  def rows(arm, s):
    gap = 0.01 if arm == "vae" else 0.3
    return [{"epoch": 0.031, "step": 5, "train/accuracy": 0.6 + gap, "val/accuracy": 0.6,
             "train/loss": 0.8 - gap, "val/loss": 0.8}]

  wd = _study(tmp_path / "smoke", right, None, top={"smoke_steps": 5}, rows=rows)
  saved = []
  original = plots._savefig

  def spy(fig, path, **kwargs):
    original(fig, path, **kwargs)
    saved.append((pathlib.Path(path).name, [t.get_text() for t in fig.texts]))

  monkeypatch.setattr(plots, "_savefig", spy)
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT)).read_text()
  head = text.split("## ", 1)[0]
  assert "> **⚠ SMOKE RUN (the study config sets `smoke_steps` = 5: every stage stops" in head
  assert (
    "4 of 4 runs trained for less than one epoch (e.g. `arms/vae/seed_0` stopped after 5 steps, "
    "0.031 of an epoch)" in head
  )
  assert "no conclusions are drawn.**" in head
  assert "| 0.031 | 0, 1 |" in text  # epochs (recorded): not rounded down to 0
  concl = _conclusion(text)
  assert "**No conclusions are drawn: this is a smoke run**" in concl
  for word in VERDICT_WORDS:
    assert word not in concl, word
  assert "### " not in concl and "Self-supervised arms vs ImageNet" not in concl
  names = {name for name, _ in saved}
  assert {"loss.png", "accuracy.png", "gap.png", "confusion_vae.png"} <= names
  for name, texts in saved:
    assert any(t.startswith("⚠ SMOKE RUN") for t in texts), name

  # Without the study config: runs cut below one epoch are a smoke run too.
  (wd / "config.json").unlink()
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert text.split("## ", 1)[0].count("⚠ SMOKE RUN (4 of 4 runs trained for less than") == 1
  assert "**No conclusions are drawn: this is a smoke run**" in text
  # A full-length study carries no banner.
  wd = _study(tmp_path / "full", right, {"vae": [0.01, 0.02], "imagenet": [0.3, 0.31]})
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert "SMOKE" not in text and "No conclusions are drawn" not in text


def test_own_data_report_gives_every_split_and_the_unlabelled_pool(tmp_path):
  n = 90
  right = {"vae": [_mask(n, (0, 70))] * 2, "imagenet": [_mask(n, (0, 60))] * 2}
  gaps = {"vae": [0.01, 0.02], "imagenet": [0.05, 0.06]}
  data = {
    "name": "folder", "source": "path", "path": "/data/mine", "split": "test",
    "splits": {"train": 600, "val": 150, "test": 90},
    "class_names": CLASSES,
    "per_class": {"train": [100, 100, 400], "val": [25, 25, 100], "test": [30, 30, 30]},
    "unlabeled": {"folders": ["/data/unlabelled"], "found": 1200, "used": 1187,
                  "dropped_near_duplicates": 13, "dropped": []},
  }
  wd = _study(tmp_path / "own", right, gaps, data=data)
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  setup = _section(text, "## Setup")
  assert "images per split: train 600, val 150, test 90." in setup
  assert _cells(setup, "| class | train | val | test |") == ["class", "train", "val", "test"]
  assert _cells(setup, "| nv ") == ["nv (melanocytic nevi)", "400", "100", "30"]
  assert _cells(setup, "| all classes |") == ["all classes", "600", "150", "90"]
  assert (
    "Unlabelled pool (`config.data.unlabeled` = `/data/unlabelled`): 1,200 images found; 13 "
    "dropped as near-duplicates of validation or test images; **1,187 used for "
    "self-supervised pretraining**" in setup
  )
  # Without a pool, the report says so.
  del data["unlabeled"]
  wd = _study(tmp_path / "own2", right, gaps, data=data)
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert "No unlabelled pool (`config.data.unlabeled` is empty)" in text


def test_each_test_split_table_is_printed_once(tmp_path):
  """With an outside set, the in-distribution vs shifted section used to print the test
  split's per-class recall and paired differences again."""
  wd = _make_new_workdir(
    tmp_path / "once", {"vae": "good", "imagenet": 1.5}, {"vae": False, "imagenet": False},
    external=True,
  )
  text = pathlib.Path(write_report(str(wd), n_boot=N_BOOT, figures=False)).read_text()
  assert text.count("| `vae` − `imagenet` | 0, 1 |") == 2  # the test split's, the outside set's
  assert text.count("| `vae` − `imagenet` | 0, 1 | ") == 2
  shift = _section(text, "## In distribution vs shifted")
  test_part = _section(shift, "### Test split (in distribution)")
  assert "| `vae` − `imagenet` |" not in test_part and "| class | images |" not in test_part
  assert "are in their sections above" in test_part
  assert "| `vae` − `imagenet` | 0, 1 |" in _section(shift, "### `isic_subset` (shifted)")
