"""The README's commands run as written, cut to a few steps each.

Every fenced ```bash block of README.md is listed in BLOCKS, in order, with what its commands
start with: a block that disappears, moves or changes shape fails
`test_readme_blocks_are_the_expected_ones`. Blocks that run in minutes are executed in a
temporary folder that links the repository's `configs/`, `tools/` and `tests/` (so `runs/...`
and `EXAMPLE` land there, never in the repository), with overrides appended that cut every run
to 2 steps (`--config.total_steps=2` for a single run, `--config.smoke_steps=2` for a study)
and put the prepared data in the session's `data_dir`. Each must exit 0, and a block followed
in the README by a ```text block ("It ends with:") must end its log with a line of that shape.

Not run, and why (SKIPPED):
  install  creates a virtual environment and installs packages (network, minutes).
  honest   needs the full DermaMNIST npz (`/path/to/dermamnist.npz`), which is not in the
           repository, and trains for hours on a CPU.
  ssl      the same study with the DINO arms, then its closed-form probes (the same reason;
           the probes' command is tested in tests/test_closed_form.py).
  tests    is the test suite itself.
"""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, imagenet_weights_missing

README = os.path.join(REPO, "README.md")

# (name, the start of each command of the block), in README order.
BLOCKS = (
  ("install", ("python3 -m venv .venv", "pip install -e")),
  ("vae", ("python -m derm_jax.main --config=configs/vae.py --workdir=runs/vae",)),
  ("study", ("python -m derm_jax.main --config=configs/compare.py --workdir=runs/study",)),
  ("evaluate", ("python -m derm_jax.evaluate --workdir=runs/study/arms/imagenet/seed_0 "
                "--split=test",)),
  ("honest", ("python -m derm_jax.data.audit --config=configs/vae.py",
              "python -m derm_jax.main --config=configs/compare.py:honest",
              "python -m derm_jax.main --config=configs/compare.py:honest")),
  ("own_data", ("python tools/make_folder_example.py EXAMPLE",
                "python -m derm_jax.main --config=configs/compare.py --workdir=runs/own_study")),
  ("outside", ("python -m derm_jax.evaluate --workdir=runs/study/arms/imagenet/seed_0 "
               "--isic_images=tests/data/isic2018_test_dev/",)),
  ("ssl", ("python -m derm_jax.main --config=configs/compare.py:honest",
           "python -m derm_jax.probes --workdir=runs/honest_official")),
  ("tests", ("python -m pytest -q -n 2",)),
)
SKIPPED = {
  "install": "installs packages",
  "honest": "needs the full DermaMNIST npz, not in the repository; hours on a CPU",
  "ssl": "needs the full DermaMNIST npz, not in the repository; hours on a CPU",
  "tests": "the test suite itself",
}
# What the log of each block's last command ends with (the README shows one such line).
LAST_LINE = {
  "vae": (r"Done: validation ELBO -?[\d.]+ \(reconstruction .*, KL .*\)\. Outputs in \S*runs/vae "
          r"\(checkpoints/, metrics\.jsonl, tensorboard/\)\. Use it as a classifier's "
          r"backbone: python -m derm_jax\.main .* --config\.init\.pretrained_workdir=\S*runs/vae"),
  "study": (r"Done: the study's report is \S*runs/(own_)?study/report\.md\. Outputs in "
            r"\S*runs/(own_)?study \(.*\)\. Evaluate an arm on other images: .*"),
  "evaluate": r'\{"accuracy": [\d.]+, "balanced_accuracy": [\d.]+, .*"out": ".*test_step\d+"\}',
}
# Overrides appended to every `derm_jax.main` command, by its config.
CUT = {
  "configs/vae.py": ["--config.total_steps=2"],
  "configs/compare.py": ["--config.smoke_steps=2"],
}


def fenced(text, lang):
  """(start offset, body) of every ```lang block."""
  return [(m.start(), m.group(1))
          for m in re.finditer(rf"^```{lang}\n(.*?)^```$", text, re.S | re.M)]


def commands(block):
  """The block's commands: continuation lines joined, comments and blank lines dropped."""
  out = []
  for line in block.replace("\\\n", " ").splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
      out.append(re.sub(r"\s+", " ", line))
  return out


def readme_blocks():
  """{name: (commands, the README's stated last line or None)} for the bash blocks."""
  text = open(README, encoding="utf-8").read()
  bash = fenced(text, "bash")
  texts = fenced(text, "text")
  assert len(bash) == len(BLOCKS), (
      f"README.md has {len(bash)} bash blocks, the test knows {len(BLOCKS)}: update BLOCKS")
  out = {}
  for i, ((start, body), (name, starts)) in enumerate(zip(bash, BLOCKS, strict=True)):
    cmds = commands(body)
    assert len(cmds) == len(starts), (name, cmds)
    for cmd, prefix in zip(cmds, starts, strict=True):
      assert cmd.startswith(prefix), (name, cmd, prefix)
    end = bash[i + 1][0] if i + 1 < len(bash) else len(text)
    stated = [t for s, t in texts if start < s < end]
    out[name] = (cmds, stated[0].strip().splitlines()[-1] if stated else None)
  return out


def test_readme_blocks_are_the_expected_ones():
  blocks = readme_blocks()
  assert set(SKIPPED) | {"vae", "study", "evaluate", "own_data", "outside"} == set(blocks)
  for name, pattern in LAST_LINE.items():
    stated = blocks[name][1]
    assert stated is not None, f"README: no 'ends with' line after the {name} block"
    assert re.fullmatch(pattern, stated.split("] ", 1)[-1]), (name, stated)
  python = fenced(open(README, encoding="utf-8").read(), "python")
  assert len(python) == 1 and "derm_jax.load(" in python[0][1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  """A folder standing in for the repository root: its configs/, tools/ and tests/ linked."""
  root = tmp_path_factory.mktemp("readme")
  for name in ("configs", "tools", "tests"):
    os.symlink(os.path.join(REPO, name), root / name)
  return root


def run_block(name, workspace, data_dir):
  """Runs the README block `name` in `workspace`, cut to 2 steps; returns the last line its
  last command writes (stdout and stderr together)."""
  cmds, _ = readme_blocks()[name]
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
  env["PYTHONUNBUFFERED"] = "1"
  last = None
  for cmd in cmds:
    extra = []
    if cmd.startswith("python -m derm_jax.main"):
      config = re.search(r"--config=([^\s:]+)", cmd).group(1)
      extra = CUT[config] + [f"--config.data.data_dir={data_dir}"]
    cmd = cmd.replace("python ", f"{sys.executable} ", 1)
    # One stream, unbuffered: its lines in the order a terminal shows them.
    r = subprocess.run(" ".join([cmd, *extra]), shell=True, cwd=workspace, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=900)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-6000:]}"
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
  return last


def check_last_line(name, last):
  if name in LAST_LINE:
    assert re.fullmatch(LAST_LINE[name], last.split("] ", 1)[-1]), (name, last)


@pytest.mark.slow
def test_quickstart_vae(workspace, data_dir):
  last = run_block("vae", workspace, data_dir)
  check_last_line("vae", last)
  assert (workspace / "runs" / "vae" / "checkpoints").is_dir()


@pytest.mark.slow
def test_quickstart_study_evaluate_and_the_trained_model(workspace, data_dir):
  if imagenet_weights_missing():
    pytest.skip(imagenet_weights_missing())
  check_last_line("study", run_block("study", workspace, data_dir))
  assert (workspace / "runs" / "study" / "report.md").is_file()
  check_last_line("evaluate", run_block("evaluate", workspace, data_dir))
  run_block("outside", workspace, data_dir)
  assert list((workspace / "runs" / "study" / "arms" / "imagenet" / "seed_0" / "eval")
              .glob("*/submission.csv"))
  # The Python example of "Using a trained model", as written.
  code = fenced(open(README, encoding="utf-8").read(), "python")[0][1]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
  r = subprocess.run([sys.executable, "-c", code], cwd=workspace, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  assert re.search(r"\{'akiec': .*'vasc': .*\}", r.stdout), r.stdout


@pytest.mark.slow
def test_your_own_data(workspace, data_dir):
  if imagenet_weights_missing():
    pytest.skip(imagenet_weights_missing())
  check_last_line("study", run_block("own_data", workspace, data_dir))
  assert (workspace / "runs" / "own_study" / "report.md").is_file()
