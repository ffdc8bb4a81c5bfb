"""One training run per workdir: ``lock(workdir)`` and the ``locked`` decorator of ``loop.run``.

Two runs on one workdir would interleave their checkpoints (orbax's temporary directories,
its garbage collection of old steps), ``metrics.jsonl`` and ``results.json``. The first run
holds ``workdir/.lock``; a second one stops with one line naming the holder (pid, host,
start time) and exit status 2 (``vdrnn.errors.UserError``).

Why ``fcntl.flock`` on the file, not only ``O_CREAT | O_EXCL``: the kernel drops a flock when
its process ends however it ends (SIGKILL, OOM killer, a crash), so a lock is never held by a
dead process, the check needs no pid guessing (a pid reused by an unrelated process, a holder
on another host of a shared filesystem) and two opens of the file conflict even within one
process. The file's JSON ``{pid, host, started}`` is only what the messages say: a killed run
leaves it behind unlocked, and the next run takes it over and says so. On a filesystem
without flock (``ENOLCK``, ``EOPNOTSUPP``: some NFS or FUSE mounts) the file's pid decides
instead (a best effort, not atomic): a live pid on this host, or any pid on another host,
holds it.

The holder unlinks the file before it releases the flock, and a run that locked a file
checks that the path still names it (else it retries), so a run that opened the file just
before the holder removed it cannot hold a lock nobody else sees.

Under ``jax.distributed`` only process 0 (``sharding.is_primary``) takes the lock, and it
tells the other processes whether it got it, so they all stop together.

``vdrnn.evaluate`` takes no lock: it writes no checkpoints, only its own result files
(``mc_<split>.*``, ``eval_<checkpoint>_<split>.json``), it is meant to run beside a training
run (e.g. on its best checkpoint so far), and with ``eval.mc_samples=0`` it writes nothing, so
it works on a read-only workdir, where a lock file could not be created.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import time
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from vdrnn import sharding
from vdrnn.errors import UserError

LOCK = ".lock"  # the lock file's name in the workdir


def _holder(fd: int) -> Optional[dict]:
  """The ``{pid, host, started}`` the lock file holds, or None (empty or unreadable)."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 65536).decode() or "null")
  except (OSError, ValueError):
    return None
  return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def _who(info: dict) -> str:
  return (f"pid {info.get('pid')} on host {info.get('host', '?')} "
          f"(started {info.get('started', '?')})")


def _busy(workdir: str, info: Optional[dict], hint: str = "") -> UserError:
  who = _who(info) if info else "another process"
  return UserError(f"workdir {workdir} is in use by {who}; wait for it or use another "
                   f"--workdir{hint}")


def _alive(pid: int) -> bool:
  """Whether process ``pid`` exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, owned by someone else
    return True
  return True


def _flock(fd: int) -> Optional[bool]:
  """Locks ``fd`` exclusively without waiting: True if locked, False if another open file
  holds it, None when the filesystem has no flock."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
      return False
    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      return None
    raise


class _Held:
  """A held lock: its open file, released by ``release``."""

  def __init__(self, path: str, fd: int):
    self.path, self.fd = path, fd

  def release(self) -> None:
    with contextlib.suppress(OSError):  # unless the path names another file by now
      if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
        os.unlink(self.path)  # before the flock goes: see the module docstring
    os.close(self.fd)


def _acquire(workdir: str) -> _Held:
  """Takes ``workdir/.lock`` or raises the ``UserError`` naming its holder."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  host = socket.gethostname()
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      got = _flock(fd)
      info = _holder(fd)
      if got is False:
        raise _busy(workdir, info)
      if got is None and info and (info.get("host") != host or _alive(info["pid"])):
        # no flock here: a live pid (or another host's, which cannot be checked) holds it
        raise _busy(workdir, info, f" (if that process is gone, remove {path})")
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
      except FileNotFoundError:
        same = False
    except BaseException:
      os.close(fd)
      raise
    if same:
      break
    os.close(fd)  # the holder removed the file as we opened it: lock the path's new file
  if info:
    print(f"taking over the lock of {workdir} from {_who(info)}: that process is gone",
          file=sys.stderr, flush=True)
  mine = {"pid": os.getpid(), "host": host, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, (json.dumps(mine) + "\n").encode())
  return _Held(path, fd)


@contextlib.contextmanager
def lock(workdir: str):
  """Holds ``workdir/.lock`` for the ``with`` body (see the module docstring); a workdir in
  use is a ``UserError`` naming the process that holds it. Released however the body ends
  (return, exception, KeyboardInterrupt)."""
  held, error = None, None
  if sharding.is_primary():
    try:
      held = _acquire(workdir)
    except Exception as e:  # noqa: BLE001 - raised below, once the other processes know
      error = e
  if jax.process_count() > 1:  # every process stops if process 0 could not lock
    failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      error = UserError(f"process 0 could not lock workdir {workdir}; see its error")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if held is not None:
      held.release()


def locked(fn):
  """Decorates a function with a ``workdir`` argument (``loop.run``): each call holds
  ``lock(workdir)`` while it runs."""
  signature = inspect.signature(fn)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with lock(signature.bind(*args, **kwargs).arguments["workdir"]):
      return fn(*args, **kwargs)

  return wrapper
