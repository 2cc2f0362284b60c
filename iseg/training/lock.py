"""A lock on a training model_dir, so that two runs never write into one folder at once.

The lock is a file `<model_dir>/.lock` holding the PID, host and start time of the run that
holds it, created with O_EXCL (atomic on local and NFS file systems) and removed when the run
ends. A lock left by a process that no longer runs on this host (killed with `kill -9`, a
crash of the machine) is taken over with a warning. In multi-worker training each worker
other than the chief locks its own file (`.lock-worker1`, ...).
"""

import json
import os
import socket
import time

from absl import logging

from iseg.errors import ModelDirInUseError

LOCK_FILE = ".lock"


def lock_name(tf_config=None):
    """`.lock` for a single process or a cluster's chief, `.lock-<type><index>` for the
    other tasks of a TF_CONFIG cluster (a dict)."""
    task = (tf_config or {}).get("task") or {}
    kind, index = task.get("type"), int(task.get("index", 0))
    has_chief = "chief" in ((tf_config or {}).get("cluster") or {})
    if not kind or kind == "chief" or (kind == "worker" and index == 0 and not has_chief):
        return LOCK_FILE
    return f"{LOCK_FILE}-{kind}{index}"


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class ModelDirLock:
    """`with ModelDirLock(model_dir):` holds the model_dir for the block; a second holder
    gets a one-line ModelDirInUseError naming the holder's PID and host."""

    def __init__(self, model_dir, name=LOCK_FILE):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, name)
        self.held = False

    def _holder(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            return dict(pid=int(holder["pid"]), host=str(holder["host"]),
                        since=str(holder.get("since", "?")))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError):
            return None  # being written, or damaged

    def _in_use(self, holder):
        who = (f"PID {holder['pid']} on host {holder['host']}, since {holder['since']}"
               if holder else f"unreadable lock file {self.path}")
        return ModelDirInUseError(
            f"--model_dir={self.model_dir} is in use by another training run ({who}); wait "
            f"for it to end or choose another --model_dir (if no run uses it, delete "
            f"{self.path})")

    def acquire(self):
        host = socket.gethostname()
        for _ in range(10):  # a takeover races with at most a few other takers
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder == {}:
                    continue  # released meanwhile
                if not holder or holder["host"] != host or _running(holder["pid"]):
                    raise self._in_use(holder) from None
                logging.warning("Taking over the stale lock %s of PID %d on %s (since %s), "
                                "which no longer runs", self.path, holder["pid"], host,
                                holder["since"])
                self._remove_stale(holder)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(dict(pid=os.getpid(), host=host,
                               since=time.strftime("%Y-%m-%d %H:%M:%S")), f)
            self.held = True
            return self
        raise self._in_use(self._holder())

    def _remove_stale(self, holder):
        """Remove the lock file if it still records `holder` (another taker may have
        replaced it since it was read: then put that one back)."""
        stale = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, stale)  # atomic: one taker wins
        except FileNotFoundError:
            return
        moved = ModelDirLock(self.model_dir, os.path.basename(stale))._holder()
        if moved != holder:
            try:
                os.link(stale, self.path)  # never replaces a lock created meanwhile
            except FileExistsError:
                pass
        os.remove(stale)

    def release(self):
        if self.held and (self._holder() or {}).get("pid") == os.getpid():
            os.remove(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
