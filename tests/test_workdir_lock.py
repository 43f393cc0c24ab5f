"""One run per workdir: a second live holder is refused, a killed holder's lock is taken over."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from derm_jax.errors import ConfigError, DermJaxError, WorkdirBusyError
from derm_jax.train.workdir_lock import LOCK_NAME, WorkdirLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = """
import sys, time
from derm_jax.train.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def start_holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


@pytest.mark.slow
def test_second_run_refused_while_first_lives_then_taken_over_after_kill9(tmp_path, caplog):
  proc = start_holder(tmp_path)
  try:
    t0 = time.monotonic()
    with pytest.raises(WorkdirBusyError) as err:
      WorkdirLock(str(tmp_path)).acquire()
    assert time.monotonic() - t0 < 2
    msg = str(err.value)
    assert f"pid {proc.pid}" in msg and str(tmp_path) in msg and "since" in msg
    assert isinstance(err.value, DermJaxError)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with caplog.at_level(logging.WARNING), WorkdirLock(str(tmp_path)) as lock:
    assert lock.held
    record = json.loads((tmp_path / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid()
  assert f"pid {proc.pid}" in caplog.text
  assert (tmp_path / LOCK_NAME).read_text() == ""  # clean release empties the file


def test_clean_release_and_reacquire_without_warning(tmp_path, caplog):
  lock = WorkdirLock(str(tmp_path / "new"))
  lock.acquire()
  with WorkdirLock(str(tmp_path / "new")):  # re-entrant within one process
    pass
  assert lock.held
  lock.release()
  with caplog.at_level(logging.WARNING), WorkdirLock(str(tmp_path / "new")):
    pass
  assert "taking over" not in caplog.text
  proc = start_holder(tmp_path / "new")  # and another process can take it now
  proc.kill()
  proc.wait()


def test_only_main_process_locks(tmp_path):
  proc = start_holder(tmp_path)
  try:
    with WorkdirLock(str(tmp_path), is_main=False) as lock:
      assert not lock.held
  finally:
    proc.kill()
    proc.wait()
  assert not os.path.exists(tmp_path / "sub" / LOCK_NAME)
  WorkdirLock(str(tmp_path / "sub"), is_main=False).acquire()
  assert not os.path.exists(tmp_path / "sub")


def test_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
  target = tmp_path / "precious.txt"
  target.write_text("keep me\n")
  workdir = tmp_path / "run"
  workdir.mkdir()
  os.symlink(target, workdir / LOCK_NAME)
  with pytest.raises(ConfigError) as err:
    with WorkdirLock(str(workdir)):
      pass
  msg = str(err.value)
  assert "\n" not in msg and str(workdir / LOCK_NAME) in msg
  assert "symbolic link" in msg and "Remove" in msg
  assert target.read_text() == "keep me\n"  # not truncated, not overwritten
  assert os.path.islink(workdir / LOCK_NAME)
  dangling = tmp_path / "dangling"
  dangling.mkdir()
  os.symlink(tmp_path / "nowhere", dangling / LOCK_NAME)
  with pytest.raises(ConfigError, match="symbolic link"):
    WorkdirLock(str(dangling)).acquire()
  assert not os.path.exists(tmp_path / "nowhere")  # not created through the link


def test_lock_file_that_is_a_directory_or_fifo_is_refused(tmp_path):
  (tmp_path / "a" / LOCK_NAME).mkdir(parents=True)
  with pytest.raises(ConfigError) as err:
    WorkdirLock(str(tmp_path / "a")).acquire()
  msg = str(err.value)
  assert "\n" not in msg and str(tmp_path / "a" / LOCK_NAME) in msg and "a directory" in msg
  (tmp_path / "b").mkdir()
  os.mkfifo(tmp_path / "b" / LOCK_NAME)
  with pytest.raises(ConfigError, match=r"special file"):
    WorkdirLock(str(tmp_path / "b")).acquire()
  # Neither failure leaves anything held: a clean workdir still locks.
  with WorkdirLock(str(tmp_path / "c")) as lock:
    assert lock.held


def test_nested_locks_of_one_workdir_in_one_process(tmp_path, monkeypatch):
  """Re-entrant: same resolved workdir however spelt; only the outermost release frees it."""
  workdir = tmp_path / "run"
  os.symlink(workdir, tmp_path / "alias", target_is_directory=True)
  monkeypatch.chdir(tmp_path)
  lock_file = workdir / LOCK_NAME
  with WorkdirLock(str(workdir)) as outer:
    record = lock_file.read_text()
    t0 = time.monotonic()
    with WorkdirLock("run/") as inner, WorkdirLock(str(tmp_path / "alias")) as third:
      assert inner.held and third.held
      with WorkdirLock(str(workdir)):
        pass
    assert time.monotonic() - t0 < 2  # no waiting on our own flock
    assert outer.held and lock_file.read_text() == record  # inner releases kept it
    other = subprocess.run(  # still held against other processes
        [sys.executable, "-c", "import sys\nfrom derm_jax.train.workdir_lock import "
         "WorkdirLock\nWorkdirLock(sys.argv[1]).acquire()", str(workdir)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and "WorkdirBusyError" in other.stderr, other.stderr
  assert lock_file.read_text() == ""  # the outermost release frees it
  proc = start_holder(workdir)
  proc.kill()
  proc.wait()
