"""One run per workdir: an exclusive lock file `<workdir>/.lock` held for the whole run.

The lock is an `fcntl.flock` on the file, so the kernel releases it when the holder exits
in any way, `kill -9` included; the file also records the holder's host, pid and start
time (one JSON line) for the message a second run gets:

    with WorkdirLock(workdir, is_main=jax.process_index() == 0):
      ...  # train

A second run into a workdir whose lock is held fails at once with `WorkdirBusyError`
naming the holder. A lock file left by a run that died (its flock is free) is taken over
with a warning naming the dead holder. A clean release empties the file (it is not
deleted, so that two runs never lock two different files of the same name). In
multi-process runs only process 0 takes the lock (`is_main`); the other processes do
nothing. On a filesystem without flock support the recorded pid decides instead: a live
pid on this host, or any pid on another host, holds the workdir. Re-entrant within one
process: acquiring a workdir this process already holds just counts.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading

from absl import logging

from derm_jax.errors import WorkdirBusyError

LOCK_NAME = ".lock"

_held: dict[str, tuple[int, int]] = {}  # realpath of lock file -> (fd, count)
_held_guard = threading.Lock()


def _holder_record() -> dict:
  now = datetime.datetime.now(datetime.timezone.utc)
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "since": now.strftime("%Y-%m-%d %H:%M:%S UTC"), "argv": sys.argv[:4]}


def _read_record(fd: int) -> dict | None:
  """The holder record in the lock file; None if empty; {'raw': text} if not JSON."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode("utf-8", "replace").strip()
  except OSError:
    return None
  if not text:
    return None
  try:
    record = json.loads(text)
    return record if isinstance(record, dict) else {"raw": text}
  except ValueError:
    return {"raw": text}


def describe_holder(record: dict | None) -> str:
  if not record:
    return "an unknown process"
  if "raw" in record:
    return f"an unknown process ({record['raw'][:100]!r})"
  return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, "
          f"since {record.get('since', '?')}")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """Exclusive lock on a workdir for one run (context manager, or acquire()/release())."""

  def __init__(self, workdir: str, is_main: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.is_main = bool(is_main)
    self._key: str | None = None

  @property
  def held(self) -> bool:
    return self._key is not None

  def acquire(self) -> WorkdirLock:
    """Takes the lock or raises WorkdirBusyError naming the live holder. Returns self."""
    if not self.is_main or self._key is not None:
      return self
    os.makedirs(self.workdir, exist_ok=True)
    key = os.path.realpath(self.path)
    with _held_guard:
      if key in _held:  # this process holds it already
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        self._key = key
        return self
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
      try:
        self._lock_fd(fd)
        previous = _read_record(fd)
        if previous is not None:
          logging.warning("Workdir %s: taking over the lock left by a run that is gone "
                          "(%s).", self.workdir, describe_holder(previous))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(_holder_record()) + "\n").encode())
        os.fsync(fd)
      except BaseException:
        os.close(fd)
        raise
      _held[key] = (fd, 1)
      self._key = key
    return self

  def _lock_fd(self, fd: int) -> None:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return
    except BlockingIOError:
      self._raise_busy(_read_record(fd))
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise
    # No flock on this filesystem: the recorded holder decides.
    record = _read_record(fd)
    if record and "raw" not in record:
      same_host = record.get("host") == socket.gethostname()
      pid = record.get("pid")
      if not same_host or (isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid)):
        self._raise_busy(record, no_flock=True)

  def _raise_busy(self, record: dict | None, no_flock: bool = False) -> None:
    hint = (f" If that run is gone, delete {self.path}." if no_flock else "")
    raise WorkdirBusyError(
        f"workdir {self.workdir} is in use by another run ({describe_holder(record)}; lock "
        f"file {self.path}). Wait for it to finish, stop it, or choose another "
        f"--workdir.{hint}")

  def release(self) -> None:
    """Releases the lock (empties the lock file); a no-op if not held."""
    key, self._key = self._key, None
    if key is None:
      return
    with _held_guard:
      fd, count = _held[key]
      if count > 1:
        _held[key] = (fd, count - 1)
        return
      del _held[key]
      try:
        os.ftruncate(fd, 0)
      except OSError:
        pass
      try:
        fcntl.flock(fd, fcntl.LOCK_UN)
      except OSError:
        pass
      os.close(fd)

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
