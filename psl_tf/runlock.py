"""One process per work directory: a lock file that names the process holding it.

`hold(workdir, program)` takes an exclusive `fcntl.flock` on `<workdir>/run.lock` and writes
the holder (program, pid, host, start time) into it. A second train, evaluate or export on
the same directory is refused with one line naming the holder. The kernel drops the lock
when the holding process ends, however it ends (SIGKILL included), so a lock left by a killed
run never blocks a restart; the file itself stays, naming the last holder.

The lock is re-entrant inside one process (the command line takes it, then `pretrain.run`
again). Only the multi-worker chief writes into a work directory, so only the chief locks:
other workers never wait for it. Paths on remote file systems (`gs://...`) are not locked.
flock works on local disks; on NFS Linux emulates it with POSIX locks (NFSv4: server-side).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
from typing import Any, Iterator

LOCK_FILE = "run.lock"

_held: dict[str, list[Any]] = {}  # real path of the lock file -> [file object, depth]
_mutex = threading.Lock()


class WorkdirInUse(ValueError):
  """Another process holds the work directory's lock; the message names it."""


class WorkdirNotWritable(ValueError):
  """The work directory (or its lock file) cannot be written."""


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_FILE)


def _describe(path: str) -> str:
  """'psl_tf.train (pid 123 on host, since ...)' from a lock file, or a plain fallback."""
  try:
    with open(path, encoding="utf-8") as f:
      holder = json.load(f)
    return (f"{holder['program']} (pid {holder['pid']} on {holder['host']}, since "
            f"{holder['started']})")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


def acquire(workdir: str, program: str) -> str | None:
  """Takes the lock of `workdir` for this process (re-entrant); raises WorkdirInUse naming
  the holder, or OSError when the directory cannot be written."""
  if "://" in workdir:
    return None
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirNotWritable(f"cannot write the work directory {workdir}: cannot create it "
                             f"({e.strerror or e})") from None
  path = os.path.realpath(lock_path(workdir))
  with _mutex:
    if path in _held:
      _held[path][1] += 1
      return path
    try:
      f = open(path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    except OSError as e:
      raise WorkdirNotWritable(f"cannot write the work directory {workdir} ({path}: "
                               f"{e.strerror or e}); {program} writes there: make it "
                               "writable or copy the run somewhere writable") from None
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.close()
      raise WorkdirInUse(f"{workdir} is in use by {_describe(path)}; wait for it to end or "
                         "stop it, or pick another --workdir") from None
    except OSError:
      f.close()
      raise
    f.seek(0)
    f.truncate()
    json.dump({"program": program, "pid": os.getpid(), "host": socket.gethostname(),
               "started": datetime.datetime.now().isoformat(timespec="seconds")}, f)
    f.write("\n")
    f.flush()
    _held[path] = [f, 1]
    return path


def release(path: str | None) -> None:
  """Gives back one `acquire` of this process; the last one unlocks."""
  if path is None:
    return
  with _mutex:
    entry = _held.get(path)
    if entry is None:
      return
    entry[1] -= 1
    if entry[1] == 0:
      del _held[path]
      fcntl.flock(entry[0], fcntl.LOCK_UN)
      entry[0].close()


@contextlib.contextmanager
def hold(workdir: str, program: str, enabled: bool = True,
         required: bool = True) -> Iterator[None]:
  """Holds the lock of `workdir` inside the block (nothing when not `enabled`: a non-chief).

  With `required=False` (a reader that writes elsewhere) a work directory that cannot be
  written is read without the lock: nobody can be writing into it either."""
  path = None
  if enabled:
    try:
      path = acquire(workdir, program)
    except WorkdirNotWritable:
      if required:
        raise
  try:
    yield
  finally:
    release(path)
