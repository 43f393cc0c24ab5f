"""One run per workdir: a second live holder is refused, a killed holder's lock is taken over."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from derm_jax.errors import DermJaxError, WorkdirBusyError
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
