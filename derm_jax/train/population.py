"""A population: the members of one task trained side by side as one compiled program.

  members = [Member("imagenet seed 0", DIR_A, cfg_a), Member("vae seed 0", DIR_B, cfg_b)]
  programs = Programs(task, len(members), scan_len, split)
  states, outs = programs.train_chunk(states, keys, arrays, xs)   # L steps, every member
  outs = programs.predict(states, keys, batch)                    # (B, M, ...) per example

Every member of a task has the same architecture, optimiser, schedule, batch size, data and
augmentation (`check_members` enforces it: their configs may differ only in the seed and
in where the backbone starts), so their states have one structure and stack along a
leading member axis M. The train step is `jax.vmap`ped over that axis (each member its own
parameters, optimiser state, key, data order and augmentation draws) and `lax.scan`ned over
L steps per dispatch; a step that a chunk does not need (its last steps, at a log, eval or
checkpoint point) is skipped by `lax.cond`, so one compiled program serves every chunk.
A plain run is a population of one. With L = 1 the program is the step itself, no loop:
XLA:CPU runs a convolution inside a loop body many times slower than outside one
(jax-ml/jax#12868; the tiny test VAE: 4 steps/s scanned, 40 plain), so on a CPU the loop
dispatches one step at a time unless `config.steps_per_dispatch` asks for more.

Members are vmapped, not looped: on an accelerator a small model's step is dispatch-bound,
and M members in one step cost little more than one. A population of one runs the plain
step (no vmap). The members' results equal those of the same member trained alone up to
floating-point reassociation (vmap batches a convolution's kernels, which changes the
order of sums): `tests/test_population.py` states the tolerance.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from derm_jax.errors import ConfigError
from derm_jax.train import mesh as mesh_lib
from derm_jax.train.task import Task

# Config fields in which the members of one population may differ (prefixes); a task adds
# its method's own (Task.member_fields, e.g. SimCLR's kind of positive pair).
MEMBER_FIELDS = ("seed", "init.", "label_fraction")


@dataclasses.dataclass(frozen=True)
class Member:
  """One member: its name in logs, its own workdir (config.json, metrics, checkpoints) and
  its full config (equal to every other member's but for MEMBER_FIELDS: its seed, where
  its backbone starts, the fraction of the training labels it sees, and the task's own
  member fields)."""

  name: str
  workdir: str
  config: Any


def _flat(config) -> dict[str, Any]:
  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from walk(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v
  return dict(walk(json.loads(config.to_json_best_effort()), ""))


def check_members(members: Sequence[Member], like=None, fields: Sequence[str] = ()) -> None:
  """Members must share everything but MEMBER_FIELDS and the task's `fields` (a
  population's members differ in these only), with each other and with the config `like`
  (the task's, when given), and have distinct workdirs."""
  if not members:
    raise ConfigError("A population needs at least one member.")
  dirs = [m.workdir for m in members]
  if len(set(dirs)) != len(dirs):
    raise ConfigError(f"Population members share a workdir: {dirs}")
  ref_name, ref = ((members[0].name, members[0].config) if like is None
                   else ("the task", like))
  first = _flat(ref)
  may_differ = (*MEMBER_FIELDS, *fields)
  for m in members:
    other = _flat(m.config)
    diff = sorted(k for k in first.keys() | other.keys()
                  if first.get(k) != other.get(k) and not k.startswith(may_differ))
    if diff:
      raise ConfigError(f"Member {m.name!r} and {ref_name!r} differ in {diff}: only "
                        f"{may_differ} may differ within one population.")


def stack(trees: Sequence[Any]) -> Any:
  """Host pytrees of one structure -> one pytree with a leading member axis."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def member(tree: Any, m: int) -> Any:
  """Member m's slice of a stacked pytree (device arrays stay on the device)."""
  return jax.tree.map(lambda x: x[m], tree)


def replicate(tree: Any, mesh) -> Any:
  """Host arrays -> global arrays replicated over the mesh (each process gives the same)."""
  repl = mesh_lib.replicated(mesh)
  return jax.tree.map(lambda a: jax.make_array_from_process_local_data(repl, np.asarray(a)),
                      tree)


def _per_example_sharding(mesh, batch_axis: int, batch_size: int):
  """Leaves whose `batch_axis` has the global batch size are split over 'data'; the rest
  (per-step scalars) are replicated."""
  def sharding(leaf):
    if leaf.ndim > batch_axis and leaf.shape[batch_axis] == batch_size:
      return NamedSharding(mesh, P(*([None] * batch_axis), "data"))
    return mesh_lib.replicated(mesh)
  return sharding


class Programs:
  """The jitted programs of a task for M members: the train chunk and the prediction.

  `precompile(...)` compiles both ahead, side by side in threads (XLA releases the GIL),
  so the evaluation program is ready when the first evaluation comes; a call then runs the
  compiled executable. Each is compiled once per shape: every chunk of a run, and every
  group of M members of a study stage (`Programs.of` keeps one per task), reuses it.
  """

  @classmethod
  def of(cls, task: Task, num_members: int, scan_len: int, split=None) -> Programs:
    """The task's programs for M members and L steps per dispatch, made once per task
    (`task.memo`) and reused by every later population of it."""
    return task.once(("programs", num_members, scan_len, id(split)),
                     lambda: cls(task, num_members, scan_len, split))

  def __init__(self, task: Task, num_members: int, scan_len: int, split=None):
    self.task, self.num_members, self.scan_len, self.split = task, num_members, scan_len, split
    mesh = task.mesh
    self._repl = mesh_lib.replicated(mesh)
    vstep = over_members(task.train_step, num_members)
    gather = split.gather if split is not None else None

    def chunk(states, keys, arrays, xs):
      keys = jax.random.wrap_key_data(keys)

      def run(carry, x):
        if gather is None:
          batch = x["batch"]
        else:
          batch = gather(arrays, x["indices"])
          for k in x:  # a task's extra inputs (Task.extra_inputs): other training images
            if k not in ("indices", "active"):
              batch[k] = gather(arrays, x[k])["image"]
        return vstep(carry, batch, keys)

      def body(carry, x):
        out_shape = jax.eval_shape(lambda c: run(c, x)[1], carry)

        def skip(c):
          return c, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

        return jax.lax.cond(x["active"], lambda c: run(c, x), skip, carry)

      if scan_len == 1:  # one step per dispatch: the plain step, no loop (see below)
        states, out = run(states, jax.tree.map(lambda a: a[0], xs))
        return states, jax.tree.map(lambda a: a[None], out)
      return jax.lax.scan(body, states, xs)

    vpredict = over_members(task.eval_step, num_members, in_axes=(0, None, 0), out_axes=1)

    def predict(states, keys, batch):
      return vpredict(states, batch, jax.random.wrap_key_data(keys))

    self._chunk_fn, self._predict_fn = chunk, predict
    self._train = self._predict = None
    self._signature = None  # of the arguments the programs were compiled for

  # -- building and compiling

  def _jit_train(self, states, keys, arrays, xs):
    shapes = jax.eval_shape(self._chunk_fn, states, keys, arrays, xs)
    outs = jax.tree.map(_per_example_sharding(self.task.mesh, 2, self.task.batch_size),
                        shapes[1])
    states_sh = jax.tree.map(lambda _: self._repl, shapes[0])
    return jax.jit(self._chunk_fn, donate_argnums=0, out_shardings=(states_sh, outs))

  def _jit_predict(self, states, keys, batch):
    shapes = jax.eval_shape(self._predict_fn, states, keys, batch)
    outs = jax.tree.map(_per_example_sharding(self.task.mesh, 0, batch["mask"].shape[0]),
                        shapes)
    return jax.jit(self._predict_fn, out_shardings=outs)

  def precompile(self, states, keys, arrays, xs, eval_batch) -> bool:
    """Starts compiling the train chunk and the prediction for these (abstract) arguments;
    False (nothing to do) when they are compiled for arguments of these shapes already."""
    abstract = lambda t: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        t)
    args = abstract((states, keys, arrays, xs))
    signature = _signature((args, abstract(eval_batch)))
    if signature == self._signature:
      return False
    self._signature = signature
    pargs = abstract((states, keys, eval_batch))
    # Two threads, ended once both compilations are done (shutdown does not wait for them).
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="compile")
    self._train = pool.submit(lambda: self._jit_train(*args).lower(*args).compile())
    self._predict = pool.submit(lambda: self._jit_predict(*pargs).lower(*pargs).compile())
    pool.shutdown(wait=False)
    return True

  def train_chunk(self, states, keys, arrays, xs):
    if self._train is None:
      self._train = _done(self._jit_train(states, keys, arrays, xs))
    return self._train.result()(states, keys, arrays, xs)

  def predict(self, states, keys, batch):
    if self._predict is None:
      self._predict = _done(self._jit_predict(states, keys, batch))
    return self._predict.result()(states, keys, batch)


def over_members(fn, num_members: int, in_axes=0, out_axes=0):
  """`fn` of one member applied to every member: `jax.vmap` over the member axis, or for a
  single member the function itself on the squeezed axis (the program of a plain run is
  the plain step, and compiles faster on a CPU)."""
  if num_members > 1:
    return jax.vmap(fn, in_axes=in_axes, out_axes=out_axes)
  axes = in_axes if isinstance(in_axes, tuple) else None

  def one(*args):
    args = [a if (axes is not None and axes[i] is None) else jax.tree.map(lambda x: x[0], a)
            for i, a in enumerate(args)]
    return jax.tree.map(lambda x: jnp.expand_dims(x, out_axes), fn(*args))

  return one


def _signature(tree) -> tuple:
  """The tree structure and every leaf's shape, dtype and sharding."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple((x.shape, x.dtype, x.sharding) for x in leaves)


def _done(value) -> concurrent.futures.Future:
  f = concurrent.futures.Future()
  f.set_result(value)
  return f


def abstract_eval_batch(task: Task, image_shape: Sequence[int]) -> dict[str, np.ndarray]:
  """A zero eval batch like the evaluators' padded batches: this process's share of the
  task's eval batch size."""
  b = int(task.config.eval_batch_size) // jax.process_count()
  return {"image": np.zeros((b, *image_shape), np.uint8), "label": np.zeros((b,), np.int32),
          "index": np.zeros((b,), np.int32), "id": np.zeros((b,), np.int32),
          "mask": np.zeros((b,), np.float32)}


def initial_states(task: Task, members: Sequence[Member]):
  """Every member's starting state and key, stacked (host arrays)."""
  inits = [task.init_member(m.config, m.workdir) for m in members]
  return stack([s for s, _ in inits]), np.stack([k for _, k in inits])


@dataclasses.dataclass
class Run:
  """A trained (or restored) population: what evaluation and a task's finish need."""

  task: Task
  members: list[Member]
  states: Any             # stacked over members, replicated on the mesh
  keys: Any               # (M, key data) uint32
  programs: Programs
  last_rows: list[dict[str, Any]]
  step: int = 0
  writers: list | None = None  # each member's MetricWriter, while training
  # The evaluator of the last validation pass and its step: whatever per-example results it
  # keeps (a VAE's latents, a classifier's predictions); None before one.
  val_evaluator: Any = None
  val_step: int = -1

  def predict(self, batch) -> dict:
    """The eval step of every member on one (sharded) batch: outputs (B, M, ...)."""
    return self.programs.predict(self.states, self.keys, batch)

  def member_state(self, m: int):
    return member(self.states, m)
