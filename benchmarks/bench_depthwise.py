"""Depthwise-convolution benchmark (not a test): the CPU custom VJP vs autodiff of the shifted sum;
in whole-step mode also the 1x1 convolutions as 2-D matmuls ('dot'), as dots over the last axis
of the 4-D feature map ('dot_nd') and as XLA convolutions ('conv').

  python benchmarks/bench_depthwise.py                      # per layer shape, fwd+bwd
  python benchmarks/bench_depthwise.py --impls=shifted_autodiff,shifted,grouped
  python benchmarks/bench_depthwise.py --whole_step         # EfficientNet-Lite0 train step
  python benchmarks/bench_depthwise.py --whole_step --image_size=224 --batch_size=32 \
      --impls=shifted_autodiff,shifted --pointwise_impls=dot,dot_nd,conv --dtype=float32

Per-shape mode times one jitted forward + backward (the vjp with respect to input and
kernel) of `layers.depthwise_conv` for each impl, on the (B, H=W, C, k, stride) shapes of
../shared/NOTES.md ("Depthwise convolution"), SAME padding. Whole-step mode times a full
EfficientNet-Lite0 train step (forward in train mode, cross-entropy on 7 classes, backward,
AdamW), the step of ../shared/perf/torch_ref.py --model effnet_lite0, once per (depthwise
impl, pointwise impl) pair, named "depthwise+pointwise" when several pointwise impls are given.
Impls are measured alternately (round robin), `--repeats` times; medians are printed, as a
table and one JSON line per mode. The machine is shared and noisy: compare runs only
within one invocation.
"""

import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from derm_jax.models import efficientnet_lite, layers

_IMPLS = flags.DEFINE_list("impls", ["shifted_autodiff", "shifted"],
                           "layers.depthwise_conv impls to compare.")
_POINTWISE = flags.DEFINE_list("pointwise_impls", ["auto"],
                               "Whole step: layers.pointwise_conv impls to compare.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per impl (per shape); median kept.")
_WHOLE_STEP = flags.DEFINE_bool("whole_step", False, "Time the Lite0 train step instead.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Whole step: image size.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Whole step: batch size.")
_STEPS = flags.DEFINE_integer("steps", 3, "Whole step: steps per timed call.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")

# (batch, height = width, channels, kernel, stride), from ../shared/NOTES.md.
SHAPES = ((32, 112, 96, 3, 1), (32, 56, 144, 5, 1), (16, 56, 96, 7, 1), (32, 112, 96, 3, 2))


def _layer_fn(impl: str, stride: int):
  def loss(x, kernel, ct):
    y = layers.depthwise_conv(x, kernel, (stride, stride), "SAME", impl=impl)
    return jnp.sum(y.astype(jnp.float32) * ct)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _median_ms(fns: dict, args: tuple, repeats: int) -> dict:
  for fn in fns.values():
    jax.block_until_ready(fn(*args))  # compile + warm up
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[k].append(time.perf_counter() - t0)
  return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def per_shape() -> None:
  dtype = jnp.dtype(_DTYPE.value)
  rows = []
  for b, h, c, k, s in SHAPES:
    kx, kk = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (b, h, h, c), jnp.float32).astype(dtype)
    kernel = (0.1 * jax.random.normal(kk, (k, k, 1, c), jnp.float32)).astype(dtype)
    ho = -(-h // s)
    ct = jax.random.normal(kk, (b, ho, ho, c), jnp.float32)
    ms = _median_ms({i: _layer_fn(i, s) for i in _IMPLS.value}, (x, kernel, ct), _REPEATS.value)
    rows.append(dict(shape=[b, h, h, c], kernel=k, stride=s, fwd_bwd_ms={
        i: round(t, 1) for i, t in ms.items()}))
    print(f"B={b:3d} H=W={h:3d} C={c:4d} k={k} s={s}: " +
          "  ".join(f"{i} {t:8.1f} ms" for i, t in ms.items()), flush=True)
  print("RESULT " + json.dumps(dict(mode="per_shape", dtype=_DTYPE.value,
                                    backend=jax.default_backend(), rows=rows)))


def _train_step(impl: str, pointwise: str, dtype):
  model = efficientnet_lite.create("efficientnet_lite0", num_classes=7, depthwise_impl=impl,
                                   pointwise_impl=pointwise, dtype=dtype)
  tx = optax.adamw(1e-3)

  def step(params, batch_stats, opt_state, x, y, rng):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                    mutable=["batch_stats"], rngs={"dropout": rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    upd, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, upd), new_stats, opt_state, loss

  return model, tx, jax.jit(step, donate_argnums=(0, 1, 2))


def whole_step() -> None:
  dtype = jnp.dtype(_DTYPE.value)
  n, size = _BATCH.value, _IMAGE_SIZE.value
  kx, ky, ki = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.uniform(kx, (n, size, size, 3), jnp.float32)
  y = jax.random.randint(ky, (n,), 0, 7)
  runs = {}
  for impl in _IMPLS.value:
    for pointwise in _POINTWISE.value:
      model, tx, step = _train_step(impl, pointwise, dtype)
      variables = model.init({"params": ki, "dropout": ki}, x[:1], train=False)
      params, stats = variables["params"], variables["batch_stats"]
      state = [params, stats, tx.init(params)]
      runs[impl if len(_POINTWISE.value) == 1 else f"{impl}+{pointwise}"] = (step, state)

  def call(impl):
    step, state = runs[impl]
    for i in range(_STEPS.value):
      p, s, o, loss = step(*state, x, y, jax.random.PRNGKey(i))
      state[:] = [p, s, o]
    jax.block_until_ready(loss)

  for impl in runs:
    call(impl)  # compile + warm up
  times = {k: [] for k in runs}
  for _ in range(_REPEATS.value):
    for impl in runs:
      t0 = time.perf_counter()
      call(impl)
      times[impl].append(n * _STEPS.value / (time.perf_counter() - t0))
  result = {}
  for impl, v in times.items():
    result[impl] = round(statistics.median(v), 2)
    print(f"efficientnet_lite0 {size}px batch {n} {_DTYPE.value} impl={impl}: "
          f"{statistics.median(v):6.2f} images/s (runs: {', '.join(f'{t:.2f}' for t in v)})")
  print("RESULT " + json.dumps(dict(mode="whole_step", model="efficientnet_lite0",
                                    image_size=size, batch_size=n, dtype=_DTYPE.value,
                                    backend=jax.default_backend(), img_s=result)))


def main(argv):
  del argv
  whole_step() if _WHOLE_STEP.value else per_shape()


if __name__ == "__main__":
  app.run(main)
