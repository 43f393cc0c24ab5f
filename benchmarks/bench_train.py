"""Training throughput benchmark (not a test): the loop's own train program, fed two ways.

  python benchmarks/bench_train.py --config=configs/vae.py
  python benchmarks/bench_train.py --config=configs/vae.py:paper --config.batch_size=8
  python benchmarks/bench_train.py --config=configs/classify.py --config.freeze_backbone=False \
      --config.init.source=scratch --config.image_size=224 --config.batch_size=32
      (the same train step as ../shared/perf/torch_ref.py --model effnet_lite0)
  python benchmarks/bench_train.py --config=configs/classify.py --config.init.source=scratch \
      --config.freeze_backbone=False --members=6     # a study's population of 6
For the config's model and batch it prints, as a table and one JSON line:
  (a) images/s of the train program (`--scan` steps per dispatch, `--members` members side
      by side, as the loop runs them) with the training split in device memory: each step
      gathers its batch on the device (derm_jax/data/device_data.py);
  (b) the same program fed through the Grain pipeline (the path of splits that do not fit
      `input.device_data_mb`), (b)/(a) shows whether the host keeps up;
  (c) achieved GFLOP/s: XLA's cost-analysis FLOPs of one member's step (its lowered HLO,
      the same on every backend) x members / step time;
  (d) the host input pipeline alone: images/s of one member's Grain iterator with no step
      (`--config.input.cache_mb=0` shows it without the in-memory training split).
Rates count the images of every member (steps/s per member = img/s / batch / members).
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

from derm_jax import console
from derm_jax.data import device_data
from derm_jax.train import feed as feed_lib
from derm_jax.train import loop, population
from derm_jax.train.population import Member

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement (whole dispatches).")
_SCAN = flags.DEFINE_integer("scan", 0, "Steps per dispatch; 0: 10 on an accelerator (the "
                             "loop: up to the next log, eval or checkpoint point), 1 on a CPU "
                             "(as the loop: a scanned step is slower there).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed dispatches (compilation) first.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Measurements of each kind; the median is kept.")
_MEMBERS = flags.DEFINE_integer("members", 1, "Members trained side by side (a population).")


def _build(config):
  if config.task == "vae":
    from derm_jax.tasks import vae as vae_task
    return vae_task.build(config)
  if config.task == "classify":
    from derm_jax.tasks import classifier as classifier_task
    return classifier_task.build(config)
  raise ValueError(f"Benchmark needs a 'vae' or 'classify' config, got {config.task!r}.")


class _Path:
  """One way of feeding the train program: its compiled program, state and feed."""

  def __init__(self, task, members, source, split, scan):
    states, keys = population.initial_states(task, members)
    self.states = population.replicate(states, task.mesh)
    self.keys = population.replicate(keys, task.mesh)
    self.programs = population.Programs(task, len(members), scan, split)
    self.feed = feed_lib.Feed(task, members, source, split, scan, 0)
    self.arrays = split.arrays if split is not None else {}
    self.scan, self.step = scan, 0

  def run(self, dispatches: int) -> float:
    t0 = time.perf_counter()
    for _ in range(dispatches):
      xs = self.feed.xs(self.step, self.scan)
      self.states, out = self.programs.train_chunk(self.states, self.keys, self.arrays, xs)
      self.step += self.scan
    jax.block_until_ready((self.states, out))
    return time.perf_counter() - t0


def main(argv):
  del argv
  config = _CONFIG.value
  task = _build(config)
  m, scan = _MEMBERS.value, _SCAN.value or loop.dispatch_limit(config) or 10
  with tempfile.TemporaryDirectory(prefix="derm_jax_bench_") as tmp:
    members = []
    for i in range(m):
      c = config.copy_and_resolve_references()
      with c.unlocked():
        c.seed = int(config.seed) + i
      members.append(Member(f"member {i}", f"{tmp}/{i}", c))
    source, split = feed_lib.training_split(task)
    paths = {"grain": _Path(task, members, source, None, scan)}
    if split is not None:
      paths["device"] = _Path(task, members, source, split, scan)
  dispatches = max(1, _STEPS.value // scan)
  images = dispatches * scan * config.batch_size * m
  host = feed_lib.train_iterator(task, feed_lib.train_dataset(task, source))
  next(host)  # threads started, first batch read
  t0 = time.perf_counter()
  for _ in range(_STEPS.value * _REPEATS.value):
    next(host)
  host_rate = _STEPS.value * _REPEATS.value * config.batch_size / (time.perf_counter() - t0)
  del host
  one = population.member(jax.tree.map(jax.device_get, paths["grain"].states), 0)
  flops = loop.step_flops(task, one, source[0]["image"].shape) or float("nan")
  compile_s = {}
  for name, path in paths.items():
    compile_s[name] = path.run(_WARMUP.value)
  rates = {name: [] for name in paths}
  for _ in range(_REPEATS.value):  # interleaved, so drift of the machine hits both alike
    for name, path in paths.items():
      rates[name].append(images / path.run(dispatches))
  med = {name: statistics.median(r) for name, r in rates.items()}
  a = med.get("device", float("nan"))
  b = med["grain"]
  gflops = flops * (a if a == a else b) / config.batch_size / 1e9
  name = (config.model.backbone if config.task == "classify" else
          f"vae[{config.model.backbone}]")
  result = dict(task=config.task, model=name, dtype=config.get("dtype", "float32"),
                image_size=config.image_size, batch_size=config.batch_size, members=m,
                steps_per_dispatch=scan, devices=jax.device_count(),
                backend=jax.default_backend(), step_gflop=flops / 1e9,
                device_data=device_data.describe(split).get("train_data"),
                resident_img_s=round(a, 2), end_to_end_img_s=round(b, 2),
                pipeline_ratio=round(b / a, 3) if a == a else None,
                steps_per_s_per_member=round((a if a == a else b) / config.batch_size / m, 2),
                achieved_gflop_s=round(gflops, 1), host_pipeline_img_s=round(host_rate, 1),
                first_dispatch_s={k: round(v, 1) for k, v in compile_s.items()})
  print(f"\n{name} @ {config.image_size}px, batch {config.batch_size} x {m} member(s), "
        f"{scan} steps per dispatch, {config.get('dtype', 'float32')}, "
        f"{jax.device_count()} {jax.default_backend()} device(s)")
  if "device" in rates:
    print(f"  (a) data on the device         : {a:8.1f} images/s  (runs: "
          f"{', '.join(f'{x:.1f}' for x in rates['device'])})")
  else:
    print("  (a) data on the device         : the split does not fit input.device_data_mb")
  print(f"  (b) fed through Grain          : {b:8.1f} images/s  (runs: "
        f"{', '.join(f'{x:.1f}' for x in rates['grain'])})"
        + (f"  = {100 * b / a:.1f}% of (a)" if a == a else ""))
  print(f"  (c) XLA cost analysis          : {flops / 1e9:8.2f} GFLOP/step/member -> "
        f"{gflops:.1f} GFLOP/s achieved")
  print(f"  (d) host input pipeline alone  : {host_rate:8.1f} images/s")
  print(f"  first dispatch (compile)       : {compile_s}")
  print("RESULT " + json.dumps(result))
  sys.stdout.flush()


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=console.parse_flags)
