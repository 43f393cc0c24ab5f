"""Tests for the identical classifier head (derm_jax/models/classifier.py): hidden=0 is a linear
probe, hidden>0 keeps its parameters (saved checkpoints still load) and its outputs."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from derm_jax.models import classifier

FMAP = jax.random.normal(jax.random.key(0), (3, 2, 2, 6), jnp.float32)
POOLED = np.asarray(FMAP).mean(axis=(1, 2))


def _init_apply(head, feats, train=False):
  v = jax.jit(head.init, static_argnames="train")(jax.random.key(1), feats, train=False)
  apply = jax.jit(lambda v, x, r: head.apply(v, x, train=train, rngs={"dropout": r}))
  return v["params"], np.asarray(apply(v, feats, jax.random.key(2)))


def _shapes(params):
  return {"/".join(k): x.shape for k, x in flax.traverse_util.flatten_dict(params).items()}


def test_hidden_zero_is_a_linear_map_of_the_pooled_features():
  head = classifier.ClassifierHead(num_classes=4, hidden=0, dropout=0.5)
  params, out = _init_apply(head, FMAP)
  assert _shapes(params) == {"logits/kernel": (6, 4), "logits/bias": (4,)}
  manual = POOLED @ np.asarray(params["logits"]["kernel"]) + np.asarray(params["logits"]["bias"])
  np.testing.assert_allclose(out, manual, rtol=1e-5, atol=1e-6)
  # No dropout even in training, and pooled (B, C) input gives the same map.
  _, out_train = _init_apply(head, FMAP, train=True)
  np.testing.assert_allclose(out_train, manual, rtol=1e-5, atol=1e-6)
  _, out_pooled = _init_apply(head, jnp.asarray(POOLED))
  np.testing.assert_allclose(out_pooled, manual, rtol=1e-5, atol=1e-6)


def test_hidden_head_keeps_its_parameter_names_and_outputs():
  head = classifier.ClassifierHead(num_classes=4, hidden=8, dropout=0.3)
  params, out = _init_apply(head, FMAP)
  assert _shapes(params) == {"hidden/kernel": (6, 8), "hidden/bias": (8,),
                             "logits/kernel": (8, 4), "logits/bias": (4,)}
  p = jax.tree.map(np.asarray, params)
  h = jax.nn.gelu(POOLED @ p["hidden"]["kernel"] + p["hidden"]["bias"], approximate=True)
  manual = np.asarray(h) @ p["logits"]["kernel"] + p["logits"]["bias"]
  np.testing.assert_allclose(out, manual, rtol=1e-5, atol=1e-5)
  _, out_train = _init_apply(head, FMAP, train=True)
  assert not np.allclose(out_train, manual)  # dropout is active in training
  # The default head (what saved checkpoints hold) has the same two parameter names.
  default = classifier.ClassifierHead(num_classes=7)
  v = jax.eval_shape(lambda k: default.init(k, FMAP, train=False), jax.random.key(0))
  assert _shapes(v["params"]) == {"hidden/kernel": (6, 256), "hidden/bias": (256,),
                                  "logits/kernel": (256, 7), "logits/bias": (7,)}


def test_negative_hidden_is_refused():
  with pytest.raises(ValueError, match="hidden=-1"):
    head = classifier.ClassifierHead(num_classes=2, hidden=-1)
    jax.eval_shape(lambda k: head.init(k, FMAP, train=False), jax.random.key(0))
