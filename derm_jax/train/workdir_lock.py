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
pid on this host, or any pid on another host, holds the workdir.

Re-entrant within one process: a module-level registry counts, per resolved lock path (the
workdir's real path + `.lock`, so `runs/a`, `./runs/a/` and a symlink to it are one
workdir), how often this process holds it. Acquiring a workdir this process already holds
(nested `with WorkdirLock(d): with WorkdirLock(d): ...`) just counts, without blocking or
raising; only the outermost release empties the file and drops the flock.

The lock file is never followed or replaced: a `.lock` that is a symbolic link (which a
run would otherwise write through, truncating its target), a directory or anything else
but a regular file is refused with a `ConfigError` naming it and saying to remove it.

A workdir on cloud storage (`gs://...`, through `derm_jax.fileio`) has no flock and no
atomic create-if-absent through etils.epath, so there the lock is advisory and NOT atomic:
the recorded holder decides, as on a local filesystem without flock (a live pid on this
host, or any holder on another host, keeps the workdir busy; a dead pid on this host is
taken over with a warning). To take it, a run writes its record (with a random token),
waits `REMOTE_SETTLE_S` seconds and reads it back: if another run wrote in between, the
later writer keeps the lock and the other one fails with `WorkdirBusyError`. Two runs can
still both believe they hold the lock if one of them stalls for longer than that between
reading the free lock and writing its record. A run killed with `kill -9` leaves its
record behind; from another host, delete the lock object (the error message names it). A
clean release empties the object, as locally.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import stat
import sys
import threading
import time
import uuid
from typing import NoReturn

from absl import logging

from derm_jax import fileio
from derm_jax.errors import ConfigError, WorkdirBusyError

LOCK_NAME = ".lock"
REMOTE_SETTLE_S = 2.0  # cloud workdirs: wait between writing the record and reading it back

_held: dict[str, tuple[int, int]] = {}  # resolved lock path -> (fd, count); URL -> (-1, n)
_remote_tokens: dict[str, str] = {}  # URL of a lock object this process holds -> its token
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
  return _parse_record(text)


def _read_remote_record(path: str) -> dict | None:
  """The holder record in a lock object on cloud storage (None: missing or empty)."""
  try:
    text = fileio.read_bytes(path)[:65536].decode("utf-8", "replace").strip()
  except FileNotFoundError:
    return None
  return _parse_record(text)


def _parse_record(text: str) -> dict | None:
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


def _recorded_holder_alive(record: dict | None) -> bool:
  """Without flock: whether a holder record stands for a run that may still be alive (a
  live pid of another process on this host, or any pid on another host)."""
  if not record or "raw" in record:
    return False
  same_host = record.get("host") == socket.gethostname()
  pid = record.get("pid")
  return not same_host or (isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid))


class WorkdirLock:
  """Exclusive lock on a workdir for one run (context manager, or acquire()/release())."""

  def __init__(self, workdir: str, is_main: bool = True):
    self.workdir = fileio.abspath(workdir)
    self.path = fileio.join(self.workdir, LOCK_NAME)
    self.is_main = bool(is_main)
    self.remote = fileio.is_remote(self.workdir)
    self._key: str | None = None

  @property
  def held(self) -> bool:
    return self._key is not None

  def acquire(self) -> WorkdirLock:
    """Takes the lock or raises WorkdirBusyError naming the live holder. Returns self."""
    if not self.is_main or self._key is not None:
      return self
    if self.remote:
      return self._acquire_remote()
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except OSError as e:
      raise ConfigError(f"workdir {self.workdir} cannot be created or is not a folder "
                        f"({e.strerror or e}); choose another --workdir.") from e
    # The workdir resolved, the lock file itself not: a symlinked `.lock` is refused below.
    key = os.path.join(os.path.realpath(self.workdir), LOCK_NAME)
    with _held_guard:
      if key in _held:  # this process holds it already
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        self._key = key
        return self
      fd = self._open_lock_file(self.path)
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

  def _refuse_lock_file(self, path: str, what: str) -> NoReturn:
    raise ConfigError(f"workdir {self.workdir}: its lock file {path} is {what}, not a regular "
                      f"file; a run never writes through it. Remove {path} (after checking "
                      "what it is) and run again.")

  def _check_lock_file(self, path: str, st: os.stat_result) -> None:
    """ConfigError unless `st` (an lstat of `path`) is a regular file."""
    if stat.S_ISREG(st.st_mode):
      return
    if stat.S_ISLNK(st.st_mode):
      try:
        target = os.readlink(path)
      except OSError:
        target = "?"
      self._refuse_lock_file(path, f"a symbolic link (to {target})")
    if stat.S_ISDIR(st.st_mode):
      self._refuse_lock_file(path, "a directory")
    self._refuse_lock_file(path, "a special file (FIFO, socket or device)")

  def _open_lock_file(self, path: str) -> int:
    """An fd on the regular lock file `path` (created if absent), never through a symlink."""
    try:
      self._check_lock_file(path, os.lstat(path))
    except FileNotFoundError:
      pass
    flags = (os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
             | getattr(os, "O_CLOEXEC", 0))
    try:
      fd = os.open(path, flags, 0o644)
    except OSError as e:  # swapped for a link / folder since the lstat, or no permission
      try:
        self._check_lock_file(path, os.lstat(path))
      except FileNotFoundError:
        pass
      raise ConfigError(f"workdir {self.workdir}: cannot open its lock file {path} "
                        f"({e.strerror or e}).") from e
    try:
      self._check_lock_file(path, os.fstat(fd))
    except BaseException:
      os.close(fd)
      raise
    return fd

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
    if _recorded_holder_alive(record):
      self._raise_busy(record, no_flock=True)

  def _acquire_remote(self) -> WorkdirLock:
    """Cloud storage: the advisory, non-atomic protocol of the module docstring."""
    key = self.path
    with _held_guard:
      if key in _held:
        fd, count = _held[key]
        _held[key] = (fd, count + 1)
        self._key = key
        return self
      previous = _read_remote_record(self.path)
      if _recorded_holder_alive(previous):
        self._raise_busy(previous, no_flock=True)
      if previous is not None:
        logging.warning("Workdir %s: taking over the lock left by a run that is gone "
                        "(%s).", self.workdir, describe_holder(previous))
      token = uuid.uuid4().hex
      fileio.makedirs(self.workdir)
      fileio.atomic_write_text(self.path, json.dumps({**_holder_record(), "token": token})
                               + "\n")
      time.sleep(REMOTE_SETTLE_S)
      now = _read_remote_record(self.path)
      if not now or now.get("token") != token:
        self._raise_busy(now, no_flock=True)
      _held[key] = (-1, 1)
      _remote_tokens[key] = token
      self._key = key
    return self

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
      if fd < 0:  # cloud storage: empty the object if the record is still ours
        token = _remote_tokens.pop(key, None)
        try:
          if (_read_remote_record(self.path) or {}).get("token") == token:
            fileio.atomic_write_text(self.path, "")
        except OSError as e:
          logging.warning("Workdir %s: could not release the lock %s (%s).", self.workdir,
                          self.path, e)
        return
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
