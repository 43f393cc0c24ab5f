"""Tests of the launch scripts (launch/*.sh), run with bash against stub executables.

Stub `gcloud`, `sbatch`, `srun`, `nvidia-smi`, `python`, `python3` and `sudo` come first on
PATH and log their argv to calls.jsonl. The gcloud stub also plays the TPU: it keeps the
node / queued-resource state in files, copies `tpu-vm scp` files into one home folder per
worker, and runs `tpu-vm ssh --command` there with bash, so the install guard and the code
shipping are exercised for real. Each script is run with DRY_RUN=1 (printed commands; no
stub may be called) and for real (recorded calls). No cluster, network or GPU is needed.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"

STUB = """#!{python}
import json, os, pathlib, shutil, subprocess, sys

name, args = os.path.basename(sys.argv[0]), sys.argv[1:]
d = pathlib.Path(os.environ["STUB_DIR"])
with open(d / "calls.jsonl", "a") as f:
  f.write(json.dumps({{"name": name, "exe": sys.argv[0], "args": args,
                       "worker": os.environ.get("STUB_WORKER"),
                       "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                       "mem": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}}) + "\\n")
workers = [d / f"worker{{i}}" for i in range(int(os.environ.get("STUB_WORKERS", "1")))]
state = lambda n: (d / n).read_text().strip() if (d / n).exists() else None

if name == "nvidia-smi" and args == ["-L"]:
  for i in range(int(os.environ.get("STUB_GPUS", "8"))):
    print(f"GPU {{i}}: NVIDIA H100 80GB HBM3 (UUID: GPU-{{i:08d}})")
elif name == "python3" and args[:2] == ["-m", "venv"]:  # a venv whose python is this stub
  bin_dir = pathlib.Path(args[2]) / "bin"
  bin_dir.mkdir(parents=True, exist_ok=True)
  if not (bin_dir / "python").exists():
    (bin_dir / "python").symlink_to(sys.argv[0])
elif name == "python" and "derm_jax.main" in args:
  sys.exit(int(os.environ.get("STUB_TRAIN_RC", "0")))
elif name == "gcloud":
  verb = args[2:4]  # e.g. ['tpu-vm', 'ssh'] after 'compute tpus'
  if verb == ["tpu-vm", "describe"] or verb == ["queued-resources", "describe"]:
    s = state("node_state" if verb[0] == "tpu-vm" else "qr_state")
    if s is None:
      sys.exit("ERROR: NOT_FOUND")
    print(s)
  elif verb == ["tpu-vm", "create"]:
    (d / "node_state").write_text("READY")
  elif verb == ["queued-resources", "create"]:
    (d / "qr_state").write_text("ACTIVE")
    (d / "node_state").write_text("READY")
  elif verb[1:] == ["delete"]:  # the VMs go away: fresh disks next time
    for n in ("node_state", "qr_state"):
      (d / n).unlink(missing_ok=True)
    for w in workers:
      shutil.rmtree(w, ignore_errors=True)
  elif verb == ["tpu-vm", "scp"]:
    src, dest = args[4], args[5].split(":", 1)[1]
    for w in workers:
      w.mkdir(exist_ok=True)
      shutil.copy(src, w / dest)
  elif verb == ["tpu-vm", "ssh"]:
    assert "--worker=all" in args, args
    cmd = [a for a in args if a.startswith("--command=")][0][len("--command="):]
    preempt = int(state("preempt") or 0)
    if preempt and "derm_jax.main" in cmd:  # the slice is preempted during training
      (d / "preempt").write_text(str(preempt - 1))
      (d / "node_state").write_text("PREEMPTED")
      (d / "qr_state").write_text("SUSPENDED")
      sys.exit(255)
    for i, w in enumerate(workers):
      w.mkdir(exist_ok=True)
      env = dict(os.environ, HOME=str(w), STUB_WORKER=str(i))
      rc = subprocess.run(["bash", "-c", cmd], env=env).returncode
      if rc:
        sys.exit(rc)
"""

STUB_NAMES = ("gcloud", "sbatch", "srun", "nvidia-smi", "python", "python3", "sudo")


class Stubs:
  """A stub bin/ folder first on PATH, and the calls the stubs recorded."""

  def __init__(self, root: pathlib.Path):
    self.dir = root / "stubs"
    bin_dir = self.dir / "bin"
    bin_dir.mkdir(parents=True)
    src = bin_dir / "_stub.py"
    src.write_text(STUB.format(python=sys.executable))
    src.chmod(0o755)
    for n in STUB_NAMES:
      (bin_dir / n).symlink_to(src)
    self.env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_DIR": str(self.dir),
                "HOME": str(root / "home"), "TMPDIR": str(root)}

  def calls(self, name: str | None = None) -> list[dict]:
    log = self.dir / "calls.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [r for r in rows if name is None or r["name"] == name]

  def gcloud(self, *verb: str) -> list[list[str]]:
    """Argvs of the gcloud calls `gcloud compute tpus VERB...`."""
    n = len(verb)
    return [c["args"] for c in self.calls("gcloud") if c["args"][2:2 + n] == list(verb)]

  def worker(self, i: int) -> pathlib.Path:
    return self.dir / f"worker{i}"

  def set(self, name: str, value: str):
    (self.dir / name).write_text(value)


def run(script: pathlib.Path, env: dict, *args: str, check: bool = True):
  """Runs `bash script args...` with a clean environment plus `env`."""
  base = {k: v for k, v in os.environ.items()
          if not k.startswith(("SLURM_", "CUDA_", "XLA_", "TPU_", "DRY_RUN"))}
  for k in ("CONFIG", "WORKDIR", "EXTRA_ARGS", "ZONE", "PROJECT", "SPOT", "NODES", "PYTHON"):
    base.pop(k, None)
  p = subprocess.run(["bash", str(script), *args], env={**base, **env}, capture_output=True,
                     text=True, timeout=60)
  if check and p.returncode != 0:
    raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
  return p


def printed(stdout: str) -> list[list[str]]:
  """The commands a dry run printed, each split back into its words."""
  lines = stdout.strip().splitlines()
  assert lines and all(x.startswith("+ ") for x in lines), stdout
  return [shlex.split(x[2:]) for x in lines]


def remote_command(argv: list[str]) -> str:
  return [a for a in argv if a.startswith("--command=")][0][len("--command="):]


@pytest.fixture
def stubs(tmp_path):
  return Stubs(tmp_path)


@pytest.fixture
def repo(tmp_path):
  """A small git checkout holding the launch scripts, with run folders and a .venv that are
  not tracked, and a tracked file with uncommitted edits."""
  r = tmp_path / "repo"
  shutil.copytree(LAUNCH, r / "launch", ignore=shutil.ignore_patterns("*.log"))
  (r / "derm_jax").mkdir()
  (r / "derm_jax" / "main.py").write_text("# entry point\n")
  (r / "configs").mkdir()
  (r / "configs" / "vae.py").write_text("# config\n")
  (r / "pyproject.toml").write_text("[project]\nname = 'derm_jax'\n")
  (r / ".gitignore").write_text("runs/\n.venv/\n*.whl\n")
  git = ["git", "-C", str(r), "-c", "user.name=t", "-c", "user.email=t@t"]
  subprocess.run(git + ["init", "-q"], check=True)
  subprocess.run(git + ["add", "."], check=True)
  subprocess.run(git + ["commit", "-qm", "init"], check=True)
  for p in ("runs/old/checkpoints/1/state", ".venv/bin/python", "big.whl", "notes_untracked.txt"):
    (r / p).parent.mkdir(parents=True, exist_ok=True)
    (r / p).write_text("x")
  return r


TPU_ENV = {"TPU_NAME": "derm-v5e", "ZONE": "us-west4-a", "PROJECT": "my-proj",
           "CONFIG": "configs/vae.py:paper", "WORKDIR": "/mnt/shared/runs/vae", "STUB_WORKERS": "2"}


# --- Cloud TPU VM ---------------------------------------------------------------------------

def test_tpu_dry_run_prints_every_command_and_runs_none(repo, stubs):
  p = run(repo / "launch" / "tpu_vm.sh", {**stubs.env, **TPU_ENV, "DRY_RUN": "1"},
          "--config.data.npz_path=/mnt/d ata.npz")
  assert stubs.calls() == []
  cmds = printed(p.stdout)
  create = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]]
  assert create == [["gcloud", "compute", "tpus", "tpu-vm", "create", "derm-v5e",
                     "--zone=us-west4-a", "--project=my-proj", "--accelerator-type=v5litepod-16",
                     "--version=v2-alpha-tpuv5-lite"]]
  archive = [c for c in cmds if "archive" in c]
  assert len(archive) == 1 and "HEAD" in archive[0] and ":(exclude)runs" in archive[0]
  ssh = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"]]
  assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
  setup, train = map(remote_command, ssh)
  assert "test -f ~/derm_jax_venv/.installed-" in setup
  assert setup.index("test -f") < setup.index("pip install")
  train_words = shlex.split(train)
  i = train_words.index("derm_jax.main")
  assert train_words[i + 1:] == ["--jax_distributed", "--config=configs/vae.py:paper",
                                 "--workdir=/mnt/shared/runs/vae",
                                 "--config.data.npz_path=/mnt/d ata.npz"]
  assert "uncommitted" not in p.stderr


def test_tpu_spot_dry_run_creates_a_spot_queued_resource(repo, stubs):
  env = {**stubs.env, **TPU_ENV, "DRY_RUN": "1", "SPOT": "1", "ACCELERATOR_TYPE": "v4-32"}
  cmds = printed(run(repo / "launch" / "tpu_vm.sh", env).stdout)
  create = [c for c in cmds if c[3:5] == ["queued-resources", "create"]]
  assert len(create) == 1 and "--spot" in create[0]
  assert {"derm-v5e-qr", "--node-id=derm-v5e", "--accelerator-type=v4-32",
          "--runtime-version=tpu-ubuntu2204-base"} <= set(create[0])
  assert not [c for c in cmds if c[3:5] == ["tpu-vm", "create"]]
  assert stubs.calls() == []


def test_tpu_ships_tracked_code_and_installs_once(repo, stubs):
  script, env = repo / "launch" / "tpu_vm.sh", {**stubs.env, **TPU_ENV}
  p = run(script, env, "--config.seed=1")
  assert len(stubs.gcloud("tpu-vm", "create")) == 1
  head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=True).stdout.strip()
  for w in (0, 1):  # both workers got exactly the committed, tracked files
    code = stubs.worker(w) / "derm_jax"
    shipped = sorted(str(f.relative_to(code)) for f in code.rglob("*") if f.is_file())
    assert shipped == sorted([".gitignore", "COMMIT", "configs/vae.py", "derm_jax/main.py",
                              "launch/common.sh", "launch/gpu_local.sh", "launch/slurm_multinode.sh",
                              "launch/tpu_vm.sh", "pyproject.toml"])
    assert (code / "COMMIT").read_text().strip() == head
  pip = [c for c in stubs.calls("python") if "pip" in c["args"] and "-e" in c["args"]]
  assert sorted(c["worker"] for c in pip) == ["0", "1"]
  train = [c for c in stubs.calls("python") if "derm_jax.main" in c["args"]]
  assert sorted(c["worker"] for c in train) == ["0", "1"]
  assert all(c["args"][c["args"].index("derm_jax.main") + 1:] ==
             ["--jax_distributed", "--config=configs/vae.py:paper",
              "--workdir=/mnt/shared/runs/vae", "--config.seed=1"] for c in train)
  assert "training finished" in p.stderr

  # Second call: TPU reused, environment not reinstalled, training rerun (= resumed).
  before = len(stubs.calls())
  p = run(script, env, "--config.seed=1")
  again = stubs.calls()[before:]
  assert not [c for c in again if c["name"] == "gcloud" and "create" in c["args"]]
  assert not [c for c in again if c["name"] in ("sudo", "python3") or "pip" in c["args"]]
  assert len([c for c in again if "derm_jax.main" in c["args"]]) == 2
  assert p.stdout.count("derm_jax: environment up to date") == 2
  assert "reusing TPU derm-v5e" in p.stderr

  # New dependencies (pyproject.toml) -> installed again.
  (repo / "pyproject.toml").write_text("[project]\nname = 'derm_jax'\nversion = '2'\n")
  subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                  "commit", "-qam", "deps"], check=True)
  before = len(stubs.calls())
  run(script, env)
  assert len([c for c in stubs.calls()[before:] if "pip" in c["args"] and "-e" in c["args"]]) == 2


def test_tpu_spot_slice_is_recreated_and_resumed_after_preemption(repo, stubs):
  stubs.set("preempt", "1")
  env = {**stubs.env, **TPU_ENV, "SPOT": "1", "POLL_SECONDS": "0"}
  p = run(repo / "launch" / "tpu_vm.sh", env)
  assert len(stubs.gcloud("queued-resources", "create")) == 2
  assert all("--spot" in c for c in stubs.gcloud("queued-resources", "create"))
  assert len(stubs.gcloud("queued-resources", "delete")) == 1
  train_ssh = [c for c in stubs.gcloud("tpu-vm", "ssh") if "derm_jax.main" in remote_command(c)]
  assert len(train_ssh) == 2 and train_ssh[0] == train_ssh[1]  # same command, same workdir
  trained = [c for c in stubs.calls("python") if "derm_jax.main" in c["args"]]
  assert sorted(c["worker"] for c in trained) == ["0", "1"]
  assert "restart 1/10" in p.stderr


def test_tpu_code_failure_is_not_retried(repo, stubs):
  env = {**stubs.env, **TPU_ENV, "SPOT": "1", "POLL_SECONDS": "0", "STUB_TRAIN_RC": "3"}
  p = run(repo / "launch" / "tpu_vm.sh", env, check=False)
  assert p.returncode == 3
  assert len(stubs.gcloud("queued-resources", "create")) == 1
  assert "training failed (exit 3)" in p.stderr


@pytest.mark.parametrize("drop,extra,message", [
    ("TPU_NAME", {}, "TPU_NAME"),
    ("ZONE", {}, "ZONE"),
    ("CONFIG", {}, "CONFIG"),
    ("WORKDIR", {}, "WORKDIR"),
    (None, {"WORKDIR": "gs://"}, "gs:// URL or an absolute path"),
    (None, {"WORKDIR": "runs/vae"}, "absolute"),
    (None, {"WORKDIR": "/home/me/derm_jax/runs/vae"}, "replaces"),
    (None, {"SPOT": "yes"}, "SPOT"),
])
def test_tpu_rejects_bad_settings(repo, stubs, drop, extra, message):
  env = {**stubs.env, **TPU_ENV, **extra, "DRY_RUN": "1"}
  env.pop(drop, None)
  p = run(repo / "launch" / "tpu_vm.sh", env, check=False)
  assert p.returncode != 0 and message in p.stderr and p.stdout == ""
  assert stubs.calls() == []


def test_tpu_passes_a_gs_workdir_through(repo, stubs):
  """A gs:// workdir is accepted and reaches derm_jax.main verbatim (no local path made of
  it); the workers get the [gcs] extra that etils.epath and tensorboardX need for it."""
  env = {**stubs.env, **TPU_ENV, "WORKDIR": "gs://bucket/runs/vae", "DRY_RUN": "1"}
  p = run(repo / "launch" / "tpu_vm.sh", env)
  assert stubs.calls() == []
  ssh = [c for c in printed(p.stdout) if c[3:5] == ["tpu-vm", "ssh"]]
  setup, train = map(remote_command, ssh)
  assert "'.[tpu,gcs]'" in setup
  assert "--workdir=gs://bucket/runs/vae" in shlex.split(train)


# --- SLURM ----------------------------------------------------------------------------------

SLURM = LAUNCH / "slurm_multinode.sh"
SLURM_ENV = {"CONFIG": "configs/compare.py:paper", "WORKDIR": "/shared/runs/compare"}


def sbatch_header(script: pathlib.Path) -> dict:
  lines = [x.split(None, 1)[1] for x in script.read_text().splitlines()
           if x.startswith("#SBATCH ")]
  return dict(x.lstrip("-").split("=", 1) if "=" in x else (x.lstrip("-"), "") for x in lines)


def test_slurm_header_asks_one_task_per_gpu():
  h = sbatch_header(SLURM)
  assert h["nodes"] == "2" and h["ntasks-per-node"] == h["gpus-per-node"] == "8"
  assert "gpus-per-task" not in h  # every task sees its node's GPUs; JAX picks SLURM_LOCALID


def test_slurm_submit_dry_run_and_real(stubs):
  env = {**stubs.env, **SLURM_ENV, "NODES": "2", "GPUS_PER_NODE": "8", "PARTITION": "gpu",
         "TIME": "12:00:00"}
  cmds = printed(run(SLURM, {**env, "DRY_RUN": "1"}, "--config.seed=3").stdout)
  assert stubs.calls() == []
  assert len(cmds) == 1 and cmds[0][0] == "sbatch"
  sb = cmds[0]
  assert {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
          "--time=12:00:00", f"--chdir={REPO}"} <= set(sb)
  i = sb.index(str(SLURM))
  assert sb[i + 1:] == ["--config=configs/compare.py:paper", "--workdir=/shared/runs/compare",
                        "--config.seed=3"]

  run(SLURM, env, "--config.seed=3")
  assert [c["args"] for c in stubs.calls("sbatch")] == [sb[1:]]
  assert stubs.calls("srun") == []


def test_slurm_job_runs_one_process_per_gpu(stubs, tmp_path):
  # As sbatch runs it: a copy of the script in a spool folder, the SLURM_* variables set.
  spool = tmp_path / "spool" / "slurm_script"
  spool.parent.mkdir()
  shutil.copy(SLURM, spool)
  env = {**stubs.env, **SLURM_ENV, "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2",
         "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "8", "SLURM_CPUS_ON_NODE": "96",
         "SLURM_SUBMIT_DIR": str(REPO)}
  cmds = printed(run(spool, {**env, "DRY_RUN": "1"}).stdout)
  assert stubs.calls() == []
  p = run(spool, env)
  [srun] = stubs.calls("srun")
  assert [srun["args"]] == [c[1:] for c in cmds]
  args = srun["args"]
  assert {"--nodes=2", "--ntasks=16", "--ntasks-per-node=8", "--cpus-per-task=12"} <= set(args)
  assert not [a for a in args if a.startswith(("--gpus-per-task", "--gpu-bind"))]
  i = args.index("derm_jax.main")
  assert args[i - 2:i] == ["python", "-m"]
  assert args[i + 1:] == ["--jax_distributed", "--config=configs/compare.py:paper",
                          "--workdir=/shared/runs/compare"]
  assert "16 processes" in p.stderr and "warning" not in p.stderr


def test_slurm_job_copy_finds_common_sh_or_says_so(stubs, tmp_path):
  # The spool copy has no common.sh beside it: it is found through DERM_JAX_REPO (recorded at
  # submission), and without that or SLURM_SUBMIT_DIR the job stops with a clear error.
  spool = tmp_path / "spool" / "slurm_script"
  spool.parent.mkdir()
  shutil.copy(SLURM, spool)
  env = {**stubs.env, **SLURM_ENV, "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "1",
         "SLURM_CPUS_ON_NODE": "8", "GPUS_PER_NODE": "8", "DRY_RUN": "1"}
  cmds = printed(run(spool, {**env, "DERM_JAX_REPO": str(REPO)}).stdout)
  assert cmds[0][0] == "srun" and "--ntasks=8" in cmds[0]
  p = run(spool, {**env, "SLURM_SUBMIT_DIR": str(tmp_path)}, check=False)
  assert p.returncode == 2 and "launch/common.sh not found" in p.stderr and p.stdout == ""
  assert stubs.calls() == []


def test_launch_messages_and_quoting(stubs):
  # Shared helpers: messages keep each script's name; dry-run quoting round-trips.
  p = run(GPU, {**stubs.env, "CONFIG": "c", "WORKDIR": "/w", "DRY_RUN": "1"}, "--config",
          check=False)
  assert p.returncode == 2 and p.stderr.startswith("gpu_local.sh: error: write --config=VALUE")
  p = run(SLURM, {**stubs.env, "CONFIG": "c", "DRY_RUN": "1"}, check=False)
  assert p.stderr == ("slurm_multinode.sh: error: set WORKDIR (a directory on a filesystem all "
                      "nodes share) or pass --workdir=...\n")
  p = run(GPU, {**stubs.env, "CONFIG": "c", "DRY_RUN": "1"}, check=False)
  assert p.stderr == "gpu_local.sh: error: set WORKDIR (the run directory) or pass --workdir=...\n"
  odd = "--config.note=it's a \"b\" $x"
  p = run(GPU, {**stubs.env, "CONFIG": "c", "WORKDIR": "/w", "DRY_RUN": "1",
                "EXTRA_ARGS": "--a=1  --b=2"}, odd)
  assert printed(p.stdout)[0][5:] == ["--config=c", "--workdir=/w", "--a=1", "--b=2", odd]


def test_slurm_rejects_missing_settings(stubs):
  p = run(SLURM, {**stubs.env, "WORKDIR": "/w", "DRY_RUN": "1"}, check=False)
  assert p.returncode != 0 and "CONFIG" in p.stderr
  p = run(SLURM, {**stubs.env, "CONFIG": "c", "WORKDIR": "/w", "GPUS_PER_NODE": "0"},
          check=False)
  assert p.returncode != 0 and "GPUS_PER_NODE" in p.stderr
  assert stubs.calls() == []


def test_slurm_layout_gives_every_gpu_to_jax(monkeypatch):
  """JAX's own SLURM detection on the layout the script asks for (2 nodes x 8 tasks): each
  process gets a different GPU of its node. With one task per node it got only GPU 0."""
  clusters = pytest.importorskip("jax._src.clusters")
  detect = getattr(clusters.ClusterEnv, "auto_detect_unset_distributed_params", None)
  if detect is None:
    pytest.skip("this JAX has no auto_detect_unset_distributed_params")

  def used_gpus(nodes, tasks_per_node):
    used = set()
    for node in range(nodes):
      for local in range(tasks_per_node):
        for k, v in {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[001-002]",
                     "SLURM_NTASKS": str(nodes * tasks_per_node),
                     "SLURM_PROCID": str(node * tasks_per_node + local),
                     "SLURM_LOCALID": str(local), "SLURM_STEP_NUM_NODES": str(nodes)}.items():
          monkeypatch.setenv(k, v)
        _, n, pid, ids = detect(None, None, None, None, "slurm", 300)
        assert n == nodes * tasks_per_node and pid == node * tasks_per_node + local
        used |= {(node, i) for i in ids}
    return used

  assert used_gpus(2, 8) == {(n, g) for n in range(2) for g in range(8)}
  assert used_gpus(2, 1) == {(0, 0), (1, 0)}  # the old layout: 7 of 8 GPUs idle


# --- one machine, all GPUs ------------------------------------------------------------------

GPU = LAUNCH / "gpu_local.sh"


def test_gpu_local_one_process_all_gpus(stubs):
  env = {**stubs.env, "CONFIG": "configs/vae.py:paper", "WORKDIR": "/data/runs/vae"}
  p = run(GPU, {**env, "DRY_RUN": "1"}, "--config.data.npz_path=/data/d.npz")
  assert "1 process using 8 GPU(s)" in p.stderr
  cmds = printed(p.stdout)
  assert cmds == [["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "python", "-m",
                   "derm_jax.main", "--config=configs/vae.py:paper", "--workdir=/data/runs/vae",
                   "--config.data.npz_path=/data/d.npz"]]
  assert [c["name"] for c in stubs.calls()] == ["nvidia-smi"]  # only the read-only query

  run(GPU, env, "--config.data.npz_path=/data/d.npz")
  [train] = stubs.calls("python")
  assert train["args"] == cmds[0][3:]
  assert "--jax_distributed" not in train["args"]
  assert train["cuda"] is None and train["mem"] == "0.9"  # CUDA_VISIBLE_DEVICES untouched


def test_gpu_local_respects_cuda_visible_devices(stubs):
  env = {**stubs.env, "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
  p = run(GPU, env, "--config=c", "--workdir=/w")
  assert "1 process using 4 GPU(s) (CUDA_VISIBLE_DEVICES=0,1,2,3)" in p.stderr
  [train] = stubs.calls("python")
  assert train["cuda"] == "0,1,2,3"


def test_gpu_local_rejects_no_gpu_and_missing_settings(stubs):
  p = run(GPU, {**stubs.env, "STUB_GPUS": "0"}, "--config=c", "--workdir=/w", check=False)
  assert p.returncode != 0 and "no GPU found" in p.stderr
  p = run(GPU, {**stubs.env, "CONFIG": "c"}, check=False)
  assert p.returncode != 0 and "WORKDIR" in p.stderr
  p = run(GPU, {**stubs.env, "CONFIG": "a"}, "--config=b", "--workdir=/w", check=False)
  assert p.returncode != 0 and "CONFIG=a but --config=b" in p.stderr
  assert stubs.calls("python") == []


# --- settings are validated before anything runs -------------------------------------------

def refused(p, name: str, stubs) -> None:
  """`p` stopped on a bad NAME: one error line naming it, non-zero exit, no stub called."""
  assert p.returncode != 0, (p.returncode, p.stderr)
  err = p.stderr.strip()
  assert "\n" not in err and ": error: " in err and name in err, err
  assert "unbound variable" not in err and p.stdout == "", (p.stdout, err)
  assert stubs.calls() == [], stubs.calls()


GPU_ENV = {"CONFIG": "configs/vae.py:paper", "WORKDIR": "/data/runs/vae"}
SCRIPTS = {"gpu": (GPU, GPU_ENV), "slurm": (SLURM, SLURM_ENV),
           "tpu": (LAUNCH / "tpu_vm.sh", TPU_ENV)}


def script_env(kind, repo, stubs):
  script, env = SCRIPTS[kind]
  if kind == "tpu":
    script = repo / "launch" / "tpu_vm.sh"
  return script, {**stubs.env, **env}


@pytest.mark.parametrize("kind", ["gpu", "slurm", "tpu"])
@pytest.mark.parametrize("value", ["true", "yes", "on", "TRUE", "Yes", "1"])
def test_every_spelling_of_dry_run_runs_nothing(repo, stubs, kind, value):
  script, env = script_env(kind, repo, stubs)
  p = run(script, {**env, "DRY_RUN": value})
  assert printed(p.stdout)
  assert [c["name"] for c in stubs.calls()] == (["nvidia-smi"] if kind == "gpu" else [])


@pytest.mark.parametrize("kind", ["gpu", "slurm", "tpu"])
@pytest.mark.parametrize("value", ["2", "maybe", "y", " 1", "-1"])
def test_unknown_dry_run_value_is_refused_before_anything(repo, stubs, kind, value):
  script, env = script_env(kind, repo, stubs)
  refused(run(script, {**env, "DRY_RUN": value}, check=False), "DRY_RUN", stubs)


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF", ""])
def test_dry_run_off_spellings_run_for_real(stubs, value):
  run(SLURM, {**stubs.env, **SLURM_ENV, "DRY_RUN": value})
  assert len(stubs.calls("sbatch")) == 1


@pytest.mark.parametrize("name, value", [
    ("GPUS_PER_NODE", "99999999999999999999999"),  # used to overflow and still submit
    ("GPUS_PER_NODE", "4611686018427387904"),
    ("GPUS_PER_NODE", "65"),
    ("GPUS_PER_NODE", "8x"),
    ("GPUS_PER_NODE", "-8"),
    ("NODES", "0"),
    ("NODES", "1e3"),
    ("NODES", "99999999999999999999"),
    ("CPUS_PER_TASK", "two"),
    ("CPUS_PER_TASK", "0"),
])
def test_slurm_submit_refuses_bad_numbers(stubs, name, value):
  for dry in ("0", "1"):
    p = run(SLURM, {**stubs.env, **SLURM_ENV, name: value, "DRY_RUN": dry}, check=False)
    refused(p, name, stubs)


@pytest.mark.parametrize("name, value", [
    ("SLURM_CPUS_ON_NODE", "abc"),  # used to end in "abc: unbound variable"
    ("SLURM_CPUS_ON_NODE", "0"),
    ("SLURM_CPUS_ON_NODE", "1" * 30),
    ("SLURM_JOB_NUM_NODES", "99999999999999999999"),
    ("SLURM_JOB_NUM_NODES", "two"),
])
def test_slurm_job_refuses_bad_slurm_variables(stubs, name, value):
  env = {**stubs.env, **SLURM_ENV, "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2",
         "SLURM_CPUS_ON_NODE": "96", "SLURM_SUBMIT_DIR": str(REPO), name: value}
  refused(run(SLURM, env, check=False), name, stubs)
  # "64(x2)" is SLURM's own format and still accepted.
  p = run(SLURM, {**env, name: "64(x2)" if name == "SLURM_CPUS_ON_NODE" else "2",
                  "DRY_RUN": "1"})
  assert "--cpus-per-task=" in printed(p.stdout)[0][4]


@pytest.mark.parametrize("value", ["banana", "0", "0.0", "1.5", "2", "-0.5", "", ".", "1e-1",
                                   "0.9 "])
def test_gpu_local_refuses_a_bad_memory_fraction(stubs, value):
  env = {**stubs.env, **GPU_ENV, "XLA_PYTHON_CLIENT_MEM_FRACTION": value}
  if value == "":  # empty = unset: the default 0.9
    run(GPU, env)
    assert stubs.calls("python")[0]["mem"] == "0.9"
    return
  refused(run(GPU, env, check=False), "XLA_PYTHON_CLIENT_MEM_FRACTION", stubs)


@pytest.mark.parametrize("value", ["0.5", "1", ".75", "1.0"])
def test_gpu_local_passes_a_good_memory_fraction(stubs, value):
  run(GPU, {**stubs.env, **GPU_ENV, "XLA_PYTHON_CLIENT_MEM_FRACTION": value})
  assert stubs.calls("python")[0]["mem"] == value


@pytest.mark.parametrize("name, value", [
    ("POLL_SECONDS", "soon"),  # used to fail only after the queued resource was requested
    ("POLL_SECONDS", "-5"),
    ("POLL_SECONDS", "99999999999999999999"),
    ("MAX_RESTARTS", "99999999999999999999"),
    ("MAX_RESTARTS", "lots"),
])
def test_tpu_refuses_bad_numbers_before_any_gcloud_call(repo, stubs, name, value):
  for dry in ("0", "1"):
    env = {**stubs.env, **TPU_ENV, "SPOT": "1", name: value, "DRY_RUN": dry}
    refused(run(repo / "launch" / "tpu_vm.sh", env, check=False), name, stubs)
  assert not stubs.gcloud("queued-resources", "create")
