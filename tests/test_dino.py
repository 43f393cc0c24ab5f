"""Tests of DINO self-distillation (derm_jax/tasks/dino.py): the loss and the centre equal a
NumPy reference, the teacher gets no gradient and is the scheduled EMA of the student (one
real train step on a toy BatchNorm backbone), and a tiny run on the shared loop is finite,
writes a checkpoint whose teacher backbone starts a classifier, and resumes exactly."""

from __future__ import annotations

import functools
import importlib.util
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO

from derm_jax import config_lib
from derm_jax.data import device_augment
from derm_jax.errors import ConfigError
from derm_jax.models import registry as model_registry
from derm_jax.tasks import dino

STEPS = 6


def _config_module(name: str):
  spec = importlib.util.spec_from_file_location(f"{name}_config",
                                                os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(data_dir):
  """configs/dino.py made small: a tiny ConvNeXt at 64 px, batch 16, a small head, no local
  views, STEPS steps, one evaluation (at the end)."""
  c = _config_module("dino").get_config()
  c.data.data_dir = data_dir
  c.model.backbone = "convnext_nano_cpu"
  c.model.backbone_kwargs.dims = (16, 32, 48, 64)
  c.model.backbone_kwargs.depths = (1, 1, 1, 1)
  c.head.hidden = 64
  c.head.bottleneck = 16
  c.head.out_dim = 64
  # The two global views only: local views double the compile time of the loop's program
  # (a second backbone graph). The multi-crop step is run by the toy-backbone test and
  # traced with this backbone by test_multi_crop_shapes.
  c.dino.local_crops = 0
  c.batch_size = 16
  c.eval_batch_size = 125
  c.total_steps = STEPS
  c.optimizer.warmup_steps = 2
  c.log_every_steps = 3
  c.eval_every_epochs = 1000.0  # at the last step only
  c.knn.max_train = 200
  return c


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# ----------------------------------------------------------------------------- 1. the loss


def _np_softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_log_softmax(x):
  z = x - x.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_dino_loss(s, t, center, student_temp, teacher_temp, skip_same=True):
  """The official DINOLoss.forward, in NumPy float64, with loops over the pairs."""
  p_t = _np_softmax((t - center) / teacher_temp)
  log_p_s = _np_log_softmax(s / student_temp)
  total, n = 0.0, 0
  for i in range(2):
    for j in range(len(s)):
      if skip_same and j == i:
        continue
      total += np.mean(np.sum(-p_t[i] * log_p_s[j], axis=-1))
      n += 1
  return total / n


def test_dino_loss_and_centre_match_numpy():
  rng = np.random.default_rng(0)
  v, b, k = 5, 6, 11  # 2 global + 3 local student views
  t = rng.normal(size=(2, b, k)) * 0.5
  center = rng.normal(size=(k,)) * 0.3
  s = rng.normal(size=(v, b, k)) * 0.5
  # Plant student views 0 and 1 near the teacher's own (centred) views: pairs (0, 0) and
  # (1, 1), which DINO skips, would then have a much lower cross entropy than the others.
  s[:2] = (t - center) * 0.1 / 0.07 * 3
  want = _np_dino_loss(s, t, center, 0.1, 0.07)
  loss, aux = dino.dino_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                             jnp.asarray(center, jnp.float32), 0.1, 0.07)
  np.testing.assert_allclose(float(loss), want, rtol=2e-5)
  # The pairing matters: every pair, or the pairs (i, 1 - i) left out instead, differ.
  assert abs(want - _np_dino_loss(s, t, center, 0.1, 0.07, skip_same=False)) > 0.05
  swapped = s.copy()
  swapped[[0, 1]] = s[[1, 0]]
  assert abs(want - _np_dino_loss(swapped, t, center, 0.1, 0.07)) > 0.05
  # A list of views is the same as the stacked array; temperatures may be arrays.
  loss_list, _ = dino.dino_loss([jnp.asarray(x, jnp.float32) for x in s],
                                list(jnp.asarray(t, jnp.float32)), center, jnp.float32(0.1),
                                jnp.float32(0.07))
  np.testing.assert_allclose(float(loss_list), float(loss), rtol=1e-6)
  # Without centring or with another teacher temperature the value changes as the
  # reference does.
  for c_, tt in ((np.zeros(k), 0.07), (center, 0.04)):
    got, _ = dino.dino_loss(s.astype(np.float32), t.astype(np.float32), c_, 0.1, tt)
    np.testing.assert_allclose(float(got), _np_dino_loss(s, t, c_, 0.1, tt), rtol=2e-5)
  # Monitors: the teacher's mean entropy and the entropy of its batch-mean distribution.
  p_t = _np_softmax((t - center) / 0.07)
  np.testing.assert_allclose(float(aux["teacher_entropy"]),
                             np.mean(-(p_t * np.log(p_t)).sum(-1)), rtol=1e-4)
  marginal = p_t.mean(axis=(0, 1))
  np.testing.assert_allclose(float(aux["teacher_marginal_entropy"]),
                             -(marginal * np.log(marginal)).sum(), rtol=1e-4)
  # Only the student is differentiated: the teacher's logits and the centre get no gradient.
  g_t, g_c = jax.grad(lambda tt, cc: dino.dino_loss(s, tt, cc, 0.1, 0.07)[0], (0, 1))(
      jnp.asarray(t, jnp.float32), jnp.asarray(center, jnp.float32))
  assert not np.any(np.asarray(g_t)) and not np.any(np.asarray(g_c))
  with pytest.raises(ValueError, match="teacher logits"):
    dino.dino_loss(s, s, center, 0.1, 0.07)

  new = dino.update_center(center, t, 0.9)
  np.testing.assert_allclose(np.asarray(new), center * 0.9 + 0.1 * t.mean(axis=(0, 1)),
                             rtol=1e-5, atol=1e-7)


def test_schedules():
  assert float(dino.teacher_momentum(0, 0.996, 100)) == pytest.approx(0.996)
  assert float(dino.teacher_momentum(50, 0.996, 100)) == pytest.approx(0.998)
  assert float(dino.teacher_momentum(100, 0.996, 100)) == pytest.approx(1.0)
  temps = [float(dino.teacher_temperature(s, 0.04, 0.07, 10)) for s in (0, 5, 10, 30)]
  np.testing.assert_allclose(temps, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)
  assert float(dino.teacher_temperature(0, 0.04, 0.07, 0)) == pytest.approx(0.07)
  opt = config_lib.optimizer(lr=1e-3, weight_decay=0.04)
  opt.weight_decay_end = 0.4
  wd = dino.weight_decay_schedule(opt, 10)
  np.testing.assert_allclose([float(wd(s)) for s in (0, 5, 10)], [0.04, 0.22, 0.4], rtol=1e-6)


def test_head_outputs_cosines_to_weight_normalised_prototypes():
  head = dino.DinoHead(hidden=16, bottleneck=8, out_dim=32, batch_norm=True)
  feats = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2, 2, 12)), jnp.float32)
  params = head.init(jax.random.key(0), feats)["params"]
  apply = jax.jit(lambda p: head.apply({"params": p}, feats))
  logits = np.asarray(apply(params))
  assert logits.shape == (6, 32) and np.abs(logits).max() <= 1 + 1e-5
  # A prototype's norm is not a parameter: scaling the kernel changes nothing.
  scaled = {**params, dino.LAST_LAYER: params[dino.LAST_LAYER] * 3.0}
  np.testing.assert_allclose(np.asarray(apply(scaled)), logits, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- 2. the teacher, one real step


class ToyBackbone(nn.Module):
  """Conv -> BatchNorm -> ReLU -> dropout: a backbone with running statistics and a drop
  rate, small enough to compile in a second."""
  drop_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3), strides=(2, 2))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return nn.Dropout(self.drop_rate, deterministic=not train)(x)


def _numpy_init(module, *args, **kwargs) -> dict:
  """A module's variables drawn with NumPy (a jitted init compiles its random number
  generation, seconds on a CPU): kernels normal / sqrt(fan in), BatchNorm scale and
  variance 1, the rest 0."""
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name or dino.LAST_LAYER in name:
      return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(s.dtype)
    return (np.ones if ("scale" in name or "var" in name) else np.zeros)(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def test_teacher_gets_no_gradient_and_is_the_scheduled_ema_of_the_student():
  # The teacher's clone of a backbone has no drop rates (and so draws nothing in train mode).
  assert dino.teacher_module(ToyBackbone(drop_rate=0.2)).drop_rate == 0.0
  convnext = model_registry.get_backbone("convnext_nano_cpu", drop_path_rate=0.1)
  assert dino.teacher_module(convnext).drop_path_rate == 0.0 and convnext.drop_path_rate == 0.1
  backbone = ToyBackbone()  # (dropout's random bits would add seconds of compiling here)
  teacher_bb = dino.teacher_module(backbone)
  head = dino.DinoHead(hidden=16, bottleneck=8, out_dim=32, batch_norm=True)
  variables = _numpy_init(backbone, jnp.zeros((1, 16, 16, 3)), train=False)
  head_params = _numpy_init(head, jnp.zeros((1, 8, 8, 8)))["params"]
  assert {"bn_0_scale", "bn_1_bias", dino.LAST_LAYER} <= set(head_params)
  opt = config_lib.optimizer(lr=1e-2, weight_decay=0.04)
  opt.weight_decay_end = 0.4
  opt.grad_clip = 3.0
  total = 10
  tx = dino.make_optimizer(opt, total, 0)
  state0 = dino.create_train_state(variables, head_params, 32, tx)
  assert set(state0.params) == {"backbone", "head"}
  for a, b in zip(jax.tree.leaves(state0.params), jax.tree.leaves(state0.teacher), strict=True):
    np.testing.assert_array_equal(a, b)  # the teacher starts as the student
  # Crops only (flips, rotations and colour jitter triple the compile time of a view; the
  # loop test below runs them): two global views at 16 px, one local view at 8 px.
  aug = config_lib.augmentation()
  aug.random_resized_crop, aug.crop_scale = True, (0.4, 1.0)
  aug.flip = aug.rot90 = False
  aug.color_jitter = 0.0
  views = {"image_size": 16, "aug": aug, "local_crops": 1, "local_size": 8,
           "local_aug": dino.local_augmentation(aug, (0.05, 0.4)), "grayscale": 0.2}
  step = jax.jit(functools.partial(
      dino.train_step, backbone=backbone, teacher_backbone=teacher_bb, head=head, tx=tx,
      **views, student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
      warmup_teacher_temp_steps=4, momentum_teacher=0.9, center_momentum=0.9,
      total_steps=total, freeze_last_layer_steps=1))
  images = np.random.default_rng(0).integers(0, 256, (4, 20, 20, 3), dtype=np.uint8)
  batch = {"image": images, "label": np.zeros((4,), np.int32)}
  key = jax.random.key(3)

  kw = {"backbone": backbone, "teacher_backbone": teacher_bb, "head": head,
        "student_temp": 0.1, "teacher_temp": 0.04}

  # The views and the teacher's logits of step 0, as the step computes them.
  rng = jax.random.fold_in(key, 0)
  g_views, l_views = jax.jit(functools.partial(dino.multi_crop_views, **views))(
      images, jax.random.fold_in(rng, dino.VIEWS_STREAM))
  assert g_views.shape == (8, 16, 16, 3) and l_views.shape == (4, 8, 8, 3)

  @jax.jit
  def step0(state, g_views, l_views):
    """The objective of step 0, and its gradient w.r.t. the teacher's parameters."""
    def loss(teacher):
      return dino.objective(state.params, teacher, state.batch_stats,
                            state.teacher_batch_stats, state.center, g_views, l_views,
                            jax.random.fold_in(rng, dino.DROPOUT_STREAM), **kw)
    return jax.value_and_grad(loss, has_aux=True)(state.teacher)

  (loss0, (_, _, _, t_logits)), g_teacher = step0(state0, g_views, l_views)
  # jax.grad of the loss w.r.t. the teacher's parameters is zero (the student's moves, below).
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(g_teacher))

  state1, out1 = step(state0, batch, key)
  assert bool(out1["finite"]) and np.isfinite(float(out1["loss"]))
  np.testing.assert_allclose(float(out1["loss"]), float(loss0), rtol=1e-5)
  state2, out2 = step(state1, batch, key)
  assert int(state2.step) == 2 and float(out2["teacher_temp"]) == pytest.approx(0.0475)
  for before, after, s in ((state0, state1, 0), (state1, state2, 1)):
    m = float(dino.teacher_momentum(s, 0.9, total))
    assert float((out1 if s == 0 else out2)["momentum"]) == pytest.approx(m)
    changed = 0
    for k, t_old in _flat(before.teacher).items():
      t_new, s_new = _flat(after.teacher)[k], _flat(after.params)[k]
      want = m * t_old.astype(np.float64) + (1 - m) * s_new.astype(np.float64)
      np.testing.assert_allclose(t_new, want, rtol=1e-6, atol=1e-7, err_msg=k)
      changed += not np.array_equal(t_new, t_old)
    assert changed > 0
  assert dino.teacher_momentum(1, 0.9, total) > 0.9  # the second step's m is scheduled
  np.testing.assert_allclose(np.asarray(state1.center), 0.1 * np.asarray(t_logits).mean((0, 1)),
                             rtol=1e-5, atol=1e-7)

  # The last layer is frozen during step 0 only; the rest of the student moves at once.
  last = lambda st: np.asarray(st.params["head"][dino.LAST_LAYER])  # noqa: E731
  np.testing.assert_array_equal(last(state1), last(state0))
  assert not np.array_equal(last(state2), last(state1))
  assert not np.array_equal(_flat(state1.params["backbone"])["['Conv_0']['kernel']"],
                            _flat(state0.params["backbone"])["['Conv_0']['kernel']"])
  # The optimiser holds the student's parameters only.
  adam = [s for s in jax.tree.leaves(state1.opt_state,
                                     is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert len(adam) == 1
  assert jax.tree.structure(adam[0].mu) == jax.tree.structure(state1.params)
  n_opt = sum(np.size(x) for x in jax.tree.leaves(state1.opt_state))
  n_params = sum(np.size(x) for x in jax.tree.leaves(state1.params))
  assert n_opt < 2 * n_params + 8
  # Teacher and student keep their own BatchNorm statistics, each moved by its own passes.
  t_mean = _flat(state1.teacher_batch_stats)["['backbone']['BatchNorm_0']['mean']"]
  s_mean = _flat(state1.batch_stats)["['backbone']['BatchNorm_0']['mean']"]
  assert np.any(t_mean) and not np.allclose(t_mean, s_mean)

  # Evaluation uses the teacher (eval mode), not the student.
  @jax.jit
  def features(state):
    imgs = device_augment.eval_images(images, 16)

    def pooled(params, stats):
      return backbone.apply({"params": params["backbone"], "batch_stats": stats["backbone"]},
                            imgs, train=False).mean(axis=(1, 2))

    got = dino.eval_step(state, batch, None, teacher_backbone=teacher_bb,
                         image_size=16)["features"]
    return (got, pooled(state.teacher, state.teacher_batch_stats),
            pooled(state.params, state.batch_stats))

  got, teacher, student = (np.asarray(x) for x in features(state2))
  np.testing.assert_allclose(got, teacher, rtol=1e-5, atol=1e-6)
  assert not np.allclose(got, student)


def test_backbone_variables_are_the_teachers():
  tree = {"step": np.int32(5),
          "params": {"backbone": {"w": np.zeros(2)}, "head": {"p": np.zeros(3)}},
          "teacher": {"backbone": {"w": np.ones(2)}, "head": {"p": np.ones(3)}},
          "batch_stats": {"backbone": {"m": np.zeros(2)}},
          "teacher_batch_stats": {"backbone": {"m": np.full(2, 7.0)}},
          "center": np.zeros(3)}
  out = dino.backbone_variables(tree)
  assert set(out) == {"params", "batch_stats"}
  np.testing.assert_array_equal(out["params"]["w"], np.ones(2))
  np.testing.assert_array_equal(out["batch_stats"]["m"], np.full(2, 7.0))
  tree["batch_stats"] = tree["teacher_batch_stats"] = {}
  assert set(dino.backbone_variables(tree)) == {"params"}
  with pytest.raises(ConfigError, match="Not a DINO checkpoint"):
    dino.backbone_variables({"params": tree["params"]})


def test_bad_settings_are_one_clear_error(data_dir):
  from derm_jax import validate
  c = tiny_config(data_dir)
  assert validate.config_problems(c) == []
  c.dino.teacher_temp = 0.0
  c.dino.local_crops = 2
  c.dino.local_size = 20
  c.dino.center_momentum = 1.0
  c.init.source = "vae"
  with pytest.raises(ConfigError) as e:
    validate.validate_config(c)  # what main does first: the task's checks, through the registry
  msg = str(e.value)
  assert msg.startswith("4 invalid config settings"), msg
  for field in ("config.dino.teacher_temp=0.0", "config.dino.local_size=20",
                "config.dino.center_momentum=1.0", "config.init.source='vae'"):
    assert field in msg, msg
  with pytest.raises(ConfigError, match="4 invalid DINO settings"):
    dino.build(c)  # built directly, the same checks
  c = tiny_config(data_dir)
  assert c.dino.local_crops == 0
  c.dino.local_size = 20  # unused without local views
  assert validate.config_problems(c) == []


def test_multi_crop_shapes(data_dir):
  """The tiny ConvNeXt takes the default multi-crop (2 global views at 64 px, 2 local at
  32 px) through the student and the global views through the teacher (traced only)."""
  c = tiny_config(data_dir)
  c.dino.local_crops = 2
  assert not dino.config_problems(c)
  backbone, teacher_bb, head = dino.create_models(c)
  from derm_jax.tasks import backbone_init
  bb = backbone_init.backbone_variable_shapes(backbone, c.image_size)
  feats = jax.eval_shape(lambda v: backbone.apply(v, jnp.zeros((1, 64, 64, 3)), train=False),
                         bb)
  hp = jax.eval_shape(lambda: head.init(jax.random.key(0), jnp.zeros(feats.shape)))["params"]
  params = {"backbone": bb["params"], "head": hp}
  b, k = c.batch_size, c.head.out_dim
  images = jax.ShapeDtypeStruct((b, 28, 28, 3), jnp.uint8)
  views = jax.eval_shape(functools.partial(
      dino.multi_crop_views, image_size=c.image_size, aug=c.aug, local_crops=2,
      local_size=c.dino.local_size, local_aug=dino.local_augmentation(
          c.aug, c.dino.local_crop_scale), grayscale=c.dino.grayscale),
      images, jax.random.key(0))
  assert views[0].shape == (2 * b, 64, 64, 3) and views[1].shape == (2 * b, 32, 32, 3)
  loss, (aux, _, _, t) = jax.eval_shape(functools.partial(
      dino.objective, backbone=backbone, teacher_backbone=teacher_bb, head=head,
      student_temp=0.1, teacher_temp=0.04), params, params, {}, {},
      jax.ShapeDtypeStruct((k,), jnp.float32), *views, jax.random.key(0))
  assert loss.shape == () and t.shape == (2, b, k) and aux["teacher_entropy"].shape == ()


# ------------------------------------------------------------- 3. the shared loop


@pytest.fixture(scope="module")
def dino_runs(data_dir, tmp_path_factory):
  """A tiny DINO run of STEPS steps, and the same run stopped after step 3 and resumed:
  (config, whole workdir, resumed workdir)."""
  from derm_jax.train import compile_cache, loop
  from derm_jax.train.population import Member
  c = tiny_config(data_dir)
  root = tmp_path_factory.mktemp("dino")
  whole, resumed = str(root / "whole"), str(root / "resumed")
  with compile_cache.default():  # the resumed run loads the programs the first compiled
    dino.train_and_evaluate(c, whole)
    stop = c.copy_and_resolve_references()
    stop.stop_after_step = 3
    task = dino.build(stop)
    with pytest.raises(loop.StoppedAfterStep):
      dino.train_members([Member("dino", resumed, stop)], task)
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints")))[0] == "3"
    run = dino.train_members([Member("dino", resumed, stop)], task)
  assert run.step == STEPS
  return c, whole, resumed


def test_tiny_run_is_finite_and_its_teacher_starts_a_classifier(dino_runs):
  from derm_jax.tasks import backbone_init
  from derm_jax.train import checkpoint
  c, workdir, _ = dino_runs
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [STEPS]
  r = rows[0]
  for k in ("loss", "teacher_entropy", "teacher_marginal_entropy", "grad_norm"):
    assert np.isfinite(r[f"train/{k}"]), k
  assert 0 <= r["train/teacher_entropy"] <= np.log(c.head.out_dim) + 1e-4
  assert 0 <= r["val/knn_accuracy"] <= 1 and 0 <= r["val/knn_balanced_accuracy"] <= 1
  assert json.load(open(os.path.join(workdir, "config.json")))["task"] == "dino"
  ckpts = os.path.join(workdir, "checkpoints")
  assert checkpoint.check_step(ckpts, STEPS).status == checkpoint.INTACT
  step, tree = checkpoint.restore_state_tree(ckpts, without=("opt_state",))
  assert step == STEPS and set(tree["params"]) == set(tree["teacher"]) == {"backbone", "head"}
  assert tree["center"].shape == (c.head.out_dim,) and np.any(tree["center"])
  variables = dino.backbone_variables(tree)
  backbone, _, _ = dino.create_models(c)
  shapes = backbone_init.backbone_variable_shapes(backbone, c.image_size)
  got = backbone_init.merge_loaded(variables, shapes, "the DINO checkpoint")
  assert jax.tree.structure(got) == jax.tree.structure(jax.tree.map(np.asarray, shapes))
  # The teacher's backbone, which lags the student's.
  teacher, student = _flat(tree["teacher"]["backbone"]), _flat(tree["params"]["backbone"])
  flat = _flat(variables["params"])
  assert all(np.array_equal(flat[k], teacher[k]) for k in flat)
  assert any(not np.array_equal(teacher[k], student[k]) for k in teacher)


def test_a_stopped_and_resumed_run_ends_where_the_whole_run_ends(dino_runs):
  from derm_jax.train import checkpoint
  _, whole, resumed = dino_runs
  trees = [checkpoint.restore_state_tree(os.path.join(w, "checkpoints"),
                                         without=("opt_state",))[1] for w in (whole, resumed)]
  a, b = _flat(trees[0]), _flat(trees[1])
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  rows = [[json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
          for w in (whole, resumed)]
  assert rows[0] == rows[1]


def test_eval_mode_reproduces_the_last_knn_row(dino_runs):
  """`evaluate` (--mode=eval) restores the checkpoint and scores the teacher's features:
  the validation k-NN accuracy of the run's last row."""
  from derm_jax.train import compile_cache
  c, workdir, _ = dino_runs
  last = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))][-1]
  with compile_cache.default():
    results = dino.evaluate(c, workdir, splits=("val",))
  assert results["step"] == STEPS
  assert results["val/knn_accuracy"] == last["val/knn_accuracy"]
  assert results["val/knn_balanced_accuracy"] == last["val/knn_balanced_accuracy"]
  assert os.path.exists(os.path.join(workdir, f"eval_step{STEPS}.json"))
