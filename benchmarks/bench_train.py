"""Training throughput benchmark (not a test): device-resident steps vs the real Grain pipeline.

  python benchmarks/bench_train.py --config=configs/vae.py
  python benchmarks/bench_train.py --config=configs/vae.py:paper --config.batch_size=8
  python benchmarks/bench_train.py --config=configs/classify.py --config.freeze_backbone=False \
      --config.init.source=scratch --config.image_size=224 --config.batch_size=32
      (the same train step as ../shared/perf/torch_ref.py --model effnet_lite0)
For the config's model and batch it prints, as a table and one JSON line:
  (a) train-step images/s with one batch already on the device,
  (b) end-to-end training images/s pulling every batch through the Grain pipeline,
      (b)/(a) shows whether the input pipeline keeps up,
  (c) achieved GFLOP/s: XLA's cost-analysis FLOPs of the step (its lowered, unoptimised
      HLO, the same on every backend) / step time,
  (d) the host input pipeline alone: images/s of the loop's Grain iterator with no step
      (`--config.input.cache_mb=0` shows it without the in-memory training split).
Data: the config's data source (the embedded subset by default; nothing is downloaded).
"""

import json
import statistics
import sys
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from derm_jax.train import loop
from derm_jax.train import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps (compilation) first.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Measurements of each kind; the median is kept.")


def _build(config, workdir: str):
  """The task's typed Experiment and its training stream (the loop's own)."""
  if config.task == "vae":
    from derm_jax.tasks import vae as vae_task
    exp = vae_task.build(config)
  elif config.task == "classify":
    from derm_jax.tasks import classifier as classifier_task
    exp = classifier_task.build(config, workdir)
  else:
    raise ValueError(f"Benchmark needs a 'vae' or 'classify' config, got {config.task!r}.")
  return exp, loop.train_dataset(exp)


def _time_steps(step_fn, state, get_batch, n):
  t0 = time.perf_counter()
  for _ in range(n):
    state, out = step_fn(state, get_batch())
  jax.block_until_ready((state, out))
  return state, time.perf_counter() - t0


def main(argv):
  del argv
  config = _CONFIG.value
  with tempfile.TemporaryDirectory(prefix="derm_jax_bench_") as workdir:
    exp, ds = _build(config, workdir)
  mesh, step_fn, state = exp.mesh, exp.train_step, exp.state
  host = loop.train_iterator(exp, ds)
  next(host)  # threads started, first batch read
  t0 = time.perf_counter()
  for _ in range(_STEPS.value * _REPEATS.value):
    next(host)
  host_rate = _STEPS.value * _REPEATS.value * config.batch_size / (time.perf_counter() - t0)
  del host
  batches = mesh_lib.prefetch_to_device(loop.train_iterator(exp, ds), mesh,
                                        config.input.get("device_prefetch", 2))
  batch = next(batches)
  # The step as written (its lowered HLO), like the loop's progress lines: the compiled
  # module's count is not comparable (on GPU convolutions become cuDNN calls counted as 0).
  flops = loop.step_flops(step_fn, state, batch) or float("nan")

  def fixed():
    return batch

  def fresh():  # the loop's path: Grain, then prefetched to the device
    return next(batches)

  state, _ = _time_steps(step_fn, state, fresh, _WARMUP.value)
  resident, e2e = [], []
  for _ in range(_REPEATS.value):  # interleaved, so drift of the machine hits both alike
    state, t = _time_steps(step_fn, state, fixed, _STEPS.value)
    resident.append(_STEPS.value * config.batch_size / t)
    state, t = _time_steps(step_fn, state, fresh, _STEPS.value)
    e2e.append(_STEPS.value * config.batch_size / t)
  a, e = statistics.median(resident), statistics.median(e2e)
  gflops = flops * a / config.batch_size / 1e9
  name = (config.model.backbone if config.task == "classify" else
          f"vae[{config.model.backbone}]")
  result = dict(task=config.task, model=name, dtype=config.get("dtype", "float32"),
                image_size=config.image_size,
                batch_size=config.batch_size, devices=jax.device_count(),
                backend=jax.default_backend(), step_gflop=flops / 1e9,
                resident_img_s=round(a, 2), end_to_end_img_s=round(e, 2),
                pipeline_ratio=round(e / a, 3), achieved_gflop_s=round(gflops, 1),
                host_pipeline_img_s=round(host_rate, 1))
  print(f"\n{name} @ {config.image_size}px, batch {config.batch_size}, "
        f"{config.get('dtype', 'float32')}, "
        f"{jax.device_count()} {jax.default_backend()} device(s)")
  print(f"  (a) device-resident train step : {a:8.1f} images/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in resident)})")
  print(f"  (b) end-to-end with Grain      : {e:8.1f} images/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in e2e)})  = {100 * e / a:.1f}% of (a)")
  print(f"  (c) XLA cost analysis          : {flops / 1e9:8.2f} GFLOP/step -> "
        f"{gflops:.1f} GFLOP/s achieved")
  print(f"  (d) host input pipeline alone  : {host_rate:8.1f} images/s")
  print("RESULT " + json.dumps(result))
  sys.stdout.flush()


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
