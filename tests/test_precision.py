"""Mixed precision (config.dtype='bfloat16'): float32 parameters and outputs, bf16 logits of
the converted ImageNet weights close to fp32, a bf16 run that learns, and checkpoints that
move between dtypes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_vae_config


def _tree_signature(tree):
  return [(jax.tree_util.keystr(p), x.shape, x.dtype)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)]


@pytest.mark.parametrize("name,size", [("efficientnet_lite0", 64), ("convnext_nano_cpu", 32)])
def test_parameters_are_float32_and_identical_for_both_dtypes(name, size):
  from derm_jax.models import registry
  x = jnp.asarray(np.random.default_rng(0).random((2, size, size, 3)), jnp.float32)
  trees, outs = {}, {}
  for dt in ("float32", "bfloat16"):
    m = registry.get_backbone(name, dtype=jnp.dtype(dt))
    v = jax.jit(lambda x, m=m: m.init(jax.random.key(0), x, train=False))(x)
    trees[dt] = v
    outs[dt] = jax.jit(lambda v, x, m=m: m.apply(v, x, train=False))(v, x)
  assert _tree_signature(trees["float32"]) == _tree_signature(trees["bfloat16"])
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(trees["bfloat16"]))
  assert outs["bfloat16"].dtype == jnp.bfloat16  # the feature map runs in bf16
  a, b = (np.asarray(outs[d], np.float32) for d in ("float32", "bfloat16"))
  # bf16 has an 8-bit mantissa (relative step 2**-8 = 0.4%); a few layers compound it.
  assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()


def test_vae_and_head_outputs_are_float32_in_bfloat16():
  from derm_jax.models import classifier, vae
  c = tiny_vae_config("")
  x = jnp.asarray(np.random.default_rng(0).random((2, 32, 32, 3)), jnp.float32)
  models = {dt: vae.create_vae(c.model, 32, dt) for dt in ("float32", "bfloat16")}
  init = {dt: jax.jit(lambda x, m=m: m.init(jax.random.key(0), x, jax.random.key(1),
                                              train=False)) for dt, m in models.items()}
  apply = {dt: jax.jit(lambda v, x, m=m: m.apply(v, x, jax.random.key(1), train=False))
           for dt, m in models.items()}
  v, v16 = init["float32"](x), init["bfloat16"](x)
  assert _tree_signature(v) == _tree_signature(v16)
  out32 = apply["float32"](v, x)
  out16 = apply["bfloat16"](v, x)  # fp32 parameters into the bf16 model
  for a, b in zip(out32, out16, strict=True):  # reconstruction, posterior mean, log-variance
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=0.1)
  head = classifier.ClassifierHead(num_classes=7)
  feats = jnp.ones((2, 2, 2, 16), jnp.bfloat16)
  hv = head.init(jax.random.key(0), feats, train=False)
  assert head.apply(hv, feats, train=False).dtype == jnp.float32


@pytest.mark.imagenet
def test_bfloat16_logits_of_converted_imagenet_weights_match_float32(tmp_path):
  """EfficientNet-Lite0's ImageNet weights: bf16 and fp32 logits agree to 2% of the logit
  range and give the same top-3 classes on two real photographs."""
  import skimage.data
  from PIL import Image

  from derm_jax import convert
  from derm_jax.convert import store
  from derm_jax.models import registry
  convert.convert("efficientnet_lite0", None, tmp_path / "w")
  _, variables = store.load_pretrained(tmp_path / "w")
  images = np.stack([np.asarray(Image.fromarray(im).resize((224, 224)), np.float32) / 255.0
                     for im in (skimage.data.chelsea(), skimage.data.coffee())])
  logits = {}
  for dt in ("float32", "bfloat16"):
    m = registry.get_backbone("efficientnet_lite0", dtype=jnp.dtype(dt), num_classes=1000)
    logits[dt] = np.asarray(jax.jit(lambda v, x, m=m: m.apply(v, x, train=False))(
        variables, images), np.float32)
  a, b = logits["float32"], logits["bfloat16"]
  assert np.abs(a - b).max() <= 0.02 * (a.max() - a.min())
  np.testing.assert_array_equal(np.argsort(-a, axis=1)[:, :3], np.argsort(-b, axis=1)[:, :3])


def test_bfloat16_vae_learns_and_its_checkpoint_evaluates_in_float32(data_dir, tmp_path):
  from derm_jax.tasks import vae as vae_task
  from derm_jax.train import restore
  from derm_jax.train.population import Member
  c = tiny_vae_config(data_dir)
  c.dtype = "bfloat16"
  c.total_steps = 40
  c.log_every_steps = 10
  c.eval_every_epochs = 0.2  # 21 steps: two evaluation rows
  workdir = str(tmp_path / "bf16")
  last = vae_task.train_and_evaluate(c, workdir)
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert len(rows) == 2 and np.isfinite(last["val/elbo"])
  # It learns: the second window's training loss and the validation ELBO both improve.
  assert rows[1]["train/loss"] < rows[0]["train/loss"] - 100, rows
  assert rows[1]["val/elbo"] > rows[0]["val/elbo"], rows
  # The checkpoint has float32 parameters: a float32 build restores it and scores it alike.
  c32 = tiny_vae_config(data_dir)
  c32.total_steps = 40
  task32 = vae_task.build(c32)
  run = restore.restore(task32, [Member("vae", workdir, c32)])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(run.states.params))
  val32 = task32.make_evaluator(task32.dataset.source("val")).run(run.predict)[0]
  np.testing.assert_allclose(val32["elbo"], last["val/elbo"], rtol=0.02)
