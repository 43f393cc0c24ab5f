"""DermaMNIST's lesion identity (derm_jax/data/dermamnist_lesions.py): the packaged table,
the seen/unseen-lesion figures of the official split, the lesion-grouped re-split, and the
metadata every DermaMNIST example then carries (packaged subset, both splits)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from derm_jax.data import dermamnist, dermamnist_lesions, registry
from derm_jax.data.registry import HAM10000_CLASSES


def table_labels() -> dict[str, np.ndarray]:
  """Each split's labels in the table's file order (the table's own `dx`)."""
  return {s: np.array([HAM10000_CLASSES.index(d) for d in dermamnist_lesions.table()[s]["dx"]])
          for s in dermamnist_lesions.SPLITS}


def test_official_split_leaks_693_test_images_from_641_lesions():
  md, why = dermamnist_lesions.match("npz", table_labels())
  assert md is not None, why
  seen = dermamnist_lesions.seen_lesions(md, "test", ("train",))
  assert seen.sum() == 693 and len(set(md["test"]["lesion_id"][seen])) == 641
  mel = md["test"]["dx"] == "mel"
  assert (seen & mel).sum() == 139 and mel.sum() == 223
  assert dermamnist_lesions.seen_lesions(md, "test", ("train", "val")).sum() == 773
  # The pairs MICLe can draw inside the official training split (LESIONS.md's counts).
  lesions, counts = np.unique(md["train"]["lesion_id"], return_counts=True)
  assert (counts >= 2).sum() == 1111 and counts[counts >= 2].sum() == 2439
  assert (counts * (counts - 1) // 2).sum() == 1572


def test_official_medmnist_layout_is_matched_by_official_index():
  """The published files have the two duplicates the table's file dropped: they get their
  own image id and their twin's lesion, and every later image keeps its identity."""
  labels = table_labels()
  official = {"train": np.insert(labels["train"], 6521, labels["train"][2815]),
              "val": np.insert(labels["val"], 542, labels["val"][696]),
              "test": labels["test"]}
  md, why = dermamnist_lesions.match("npz", official)
  assert md is not None, why
  own, _ = dermamnist_lesions.match("npz", labels)
  assert md["train"]["image_id"][6521] == "ISIC_0029861"
  assert md["train"]["lesion_id"][6521] == md["train"]["lesion_id"][2815] == "HAM_0002300"
  assert (md["train"]["image_id"][6522:] == own["train"]["image_id"][6521:]).all()
  assert md["val"]["image_id"][542] == "ISIC_0024777"
  assert (md["test"]["lesion_id"] == own["test"]["lesion_id"]).all()


def test_a_file_in_another_order_or_size_gets_no_identity():
  labels = table_labels()
  shuffled = dict(labels, train=np.random.default_rng(0).permutation(labels["train"]))
  md, why = dermamnist_lesions.match("npz", shuffled)
  assert md is None and "differ from the lesion table" in why
  md, why = dermamnist_lesions.match("npz", dict(labels, test=labels["test"][:100]))
  assert md is None and "split sizes" in why


@pytest.mark.parametrize("seed", [0, 1])
def test_lesion_split_keeps_lesions_whole_sizes_and_class_mix(seed):
  labels = table_labels()
  md, _ = dermamnist_lesions.match("npz", labels)
  members = dermamnist_lesions.lesion_split(md, labels, seed)
  lesion_sets = {}
  everything = []
  for s, rows in members.items():
    assert len(rows) == len(labels[s])  # the official split sizes, exactly
    les = [md[dermamnist_lesions.SPLITS[a]]["lesion_id"][b] for a, b in rows]
    y = np.array([labels[dermamnist_lesions.SPLITS[a]][b] for a, b in rows])
    lesion_sets[s] = set(les)
    share = np.bincount(y, minlength=7) / len(y)
    official = np.bincount(labels[s], minlength=7) / len(labels[s])
    assert np.abs(share - official).max() < 0.01, (s, share, official)
    everything += [tuple(r) for r in rows.tolist()]
  assert len(set(everything)) == len(everything) == sum(len(v) for v in labels.values())
  for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
    assert not lesion_sets[a] & lesion_sets[b]
  # Seeded: the same seed gives the same split, another seed another one.
  again = dermamnist_lesions.lesion_split(md, labels, seed)
  assert all((again[s] == members[s]).all() for s in members)
  other = dermamnist_lesions.lesion_split(md, labels, seed + 7)
  assert not (other["test"].shape == members["test"].shape
              and (other["test"] == members["test"]).all())


def data_config(data_dir, **kw):
  return SimpleNamespace(**{"name": "dermamnist", "source": "embedded", "npz_path": "",
                            "size": 28, "data_dir": str(data_dir), "split": "official",
                            "split_seed": 0, **kw})


def test_embedded_examples_carry_their_identity_on_both_splits(tmp_path):
  official = registry.get(data_config(tmp_path))
  lesion = registry.get(data_config(tmp_path, split="lesion"))
  assert official.describe()["split_kind"] == "official" and official.describe()["lesion_ids"]
  assert lesion.describe()["lesion_grouped"] and lesion.describe()["split_seed"] == 0
  for ds in (official, lesion):
    for s in ("train", "val", "test"):
      md = ds.metadata(s)
      source = ds.source(s)
      assert len(md["lesion_id"]) == len(source) == len(ds.labels(s))
      assert (np.array([HAM10000_CLASSES.index(d) for d in md["dx"]]) == ds.labels(s)).all()
      picks = range(0, len(source), 37)
      assert [int(source[i]["id"]) for i in picks] == md["id"][list(picks)].tolist()
      assert {"image_id", "dx_type", "sex", "localization", "age"} <= set(md)
  assert {s: len(lesion.labels(s)) for s in ("train", "val", "test")} == \
      {s: len(official.labels(s)) for s in ("train", "val", "test")}
  seen = set(official.metadata("train")["lesion_id"])
  assert sum(le in seen for le in official.metadata("test")["lesion_id"]) > 0
  lesions = {s: set(lesion.metadata(s)["lesion_id"]) for s in ("train", "val", "test")}
  assert not (lesions["train"] & lesions["test"] or lesions["train"] & lesions["val"]
              or lesions["val"] & lesions["test"])
  # The same images, re-split: every image id once.
  ids = np.concatenate([lesion.metadata(s)["image_id"] for s in ("train", "val", "test")])
  assert sorted(ids) == sorted(np.concatenate(
      [official.metadata(s)["image_id"] for s in ("train", "val", "test")]))


def test_unknown_split_kind_is_refused(tmp_path):
  with pytest.raises(dermamnist.DataError, match="unknown data.split='grouped'"):
    registry.get(data_config(tmp_path, split="grouped"))
