"""One training run per model_dir: the lock (holder named, stale lock taken over) and the
refusal to resume a model_dir that holds another model; nothing in the folder changes."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from iseg.errors import ConfigError
from iseg.errors import ModelDirInUseError
from iseg.training.lock import ModelDirLock, lock_name

sys.path.insert(0, os.path.dirname(__file__))
from files_testutil import checksums  # noqa: E402
from test_train_support import run_toy  # noqa: E402

def _hold(model_dir):
    """A running process recorded as the lock's holder."""
    proc = subprocess.Popen(["sleep", "600"])
    (model_dir / ".lock").write_text(json.dumps(dict(
        pid=proc.pid, host=socket.gethostname(), since="2026-01-02 03:04:05")))
    return proc


def test_a_second_run_fails_at_once_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    run_toy(tmp_path, steps=2)  # a model_dir with a run in it
    holder = _hold(tmp_path)
    before = checksums(tmp_path)
    try:
        with pytest.raises(ModelDirInUseError) as e:
            run_toy(tmp_path, steps=4)
        assert str(e.value) == (
            f"--model_dir={tmp_path} is in use by another training run (PID {holder.pid} "
            f"on host {socket.gethostname()}, since 2026-01-02 03:04:05); wait for it to end or "
            f"choose another --model_dir (if no run uses it, delete {tmp_path}/.lock)"
        )
        assert checksums(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: a stale lock
        holder.wait()
    assert os.path.isfile(tmp_path / ".lock")
    with caplog.at_level("WARNING"):
        r = run_toy(tmp_path, steps=4)
    assert r["step"] == 4 and len(r["losses"]) == 2
    assert (f"Taking over the stale lock {tmp_path}/.lock of PID {holder.pid} on "
            f"{socket.gethostname()}") in caplog.text
    assert not os.path.exists(tmp_path / ".lock")  # released at the end


def test_lock_is_released_on_errors_and_not_reentrant(tmp_path):
    lock = ModelDirLock(str(tmp_path)).acquire()
    with pytest.raises(ModelDirInUseError, match=f"PID {os.getpid()} on host"):
        ModelDirLock(str(tmp_path)).acquire()
    lock.release()
    with pytest.raises(ZeroDivisionError):
        with ModelDirLock(str(tmp_path)):
            raise ZeroDivisionError
    assert not os.path.exists(tmp_path / ".lock")
    (tmp_path / ".lock").write_text("")  # being written by another run, or damaged
    with pytest.raises(ModelDirInUseError, match=f"unreadable lock file {tmp_path}/.lock"):
        ModelDirLock(str(tmp_path)).acquire()


def test_lock_names_of_cluster_tasks():
    cluster = {"worker": ["a:1", "b:1"]}
    assert lock_name(None) == ".lock"
    assert lock_name({"cluster": cluster, "task": {"type": "worker", "index": 0}}) == ".lock"
    assert lock_name({"cluster": cluster, "task": {"type": "worker", "index": 1}}) == \
        ".lock-worker1"
    with_chief = dict(cluster, chief=["c:1"])
    assert lock_name({"cluster": with_chief, "task": {"type": "chief", "index": 0}}) == \
        ".lock"
    assert lock_name({"cluster": with_chief, "task": {"type": "worker", "index": 0}}) == \
        ".lock-worker0"


def test_resuming_with_another_model_is_refused(tmp_path):
    run_toy(tmp_path, steps=2, width=8)
    before = checksums(tmp_path)
    with pytest.raises(ConfigError) as e:
        run_toy(tmp_path, steps=4, width=4)
    assert str(e.value) == (
        f"--model_dir={tmp_path} holds checkpoints of another model (width: 8 "
        "recorded, 4 now); resume it with the flags it was trained with (see its "
        "run_config.json) or choose another --model_dir")
    assert checksums(tmp_path) == before
    assert run_toy(tmp_path, steps=3, width=8)["step"] == 3  # the same model resumes
