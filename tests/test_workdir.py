"""One training run per workdir (``vdrnn.workdir``): a second run stops with one line naming
the first, a lock left by a killed run is taken over, the lock goes when the run ends."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.test_multihost import free_port, launch
from tests.test_train import _epoch_records, _final_params, run_cli
from vdrnn import workdir as workdir_lib
from vdrnn.errors import UserError


def _dead_pid() -> int:
  """The pid of a process that has exited (and been reaped)."""
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def _write_lock(w, pid, host=None):
  os.makedirs(w, exist_ok=True)
  info = {"pid": pid, "host": host or socket.gethostname(), "started": "2020-01-01 00:00:00"}
  with open(os.path.join(w, ".lock"), "w") as f:
    json.dump(info, f)


def test_a_second_lock_on_a_held_workdir_names_the_holder(tmp_path):
  w = str(tmp_path / "w")
  with workdir_lib.lock(w):
    held = json.loads(open(os.path.join(w, ".lock")).read())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(UserError) as e:
      with workdir_lib.lock(w):
        pass
    msg = str(e.value)
    assert f"workdir {w} is in use by pid {os.getpid()} on host {socket.gethostname()}" in msg
    assert "wait for it or use another --workdir" in msg and "\n" not in msg
  assert not os.path.exists(os.path.join(w, ".lock"))  # released at exit


@pytest.mark.parametrize("ending", [ValueError, KeyboardInterrupt])
def test_the_lock_is_released_however_the_run_ends(tmp_path, ending):
  w = str(tmp_path / "w")
  with pytest.raises(ending):
    with workdir_lib.lock(w):
      raise ending()
  assert not os.path.exists(os.path.join(w, ".lock"))
  with workdir_lib.lock(w):  # free again
    pass


@pytest.mark.parametrize("flock", [True, False])
def test_a_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, capsys, monkeypatch, flock):
  """A killed run leaves its lock file (unlocked): the next run takes it over and says so
  in one line. ``flock=False``: a filesystem without flock, where the pid decides."""
  if not flock:
    monkeypatch.setattr(workdir_lib, "_flock", lambda fd: None)
  w = str(tmp_path / "w")
  dead = _dead_pid()
  _write_lock(w, dead)
  with workdir_lib.lock(w):
    assert json.loads(open(os.path.join(w, ".lock")).read())["pid"] == os.getpid()
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"taking over the lock of {w} from pid {dead}" in err[0], err
  assert "is gone" in err[0]


def test_without_flock_a_live_pid_or_another_host_holds_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib, "_flock", lambda fd: None)
  w = str(tmp_path / "w")
  _write_lock(w, os.getppid())  # alive, on this host
  with pytest.raises(UserError, match=f"in use by pid {os.getppid()} on host"):
    with workdir_lib.lock(w):
      pass
  _write_lock(w, _dead_pid(), host="another-host.example")  # cannot tell: held
  with pytest.raises(UserError, match="on host another-host.example"):
    with workdir_lib.lock(w):
      pass


def test_a_process_other_than_0_takes_no_lock(tmp_path, monkeypatch):
  from vdrnn import sharding
  monkeypatch.setattr(sharding, "is_primary", lambda: False)
  w = str(tmp_path / "w")
  _write_lock(w, os.getppid())
  with workdir_lib.lock(w):  # process 0 holds it; this process writes nothing
    pass
  assert json.loads(open(os.path.join(w, ".lock")).read())["pid"] == os.getppid()


def test_a_second_run_on_a_workdir_in_use_stops_with_one_line(tmp_path):
  """Two ``python -m vdrnn.train`` on one workdir once collided in orbax (``OSError:
  Directory not empty`` or ``FileNotFoundError`` tracebacks). The first run is paused
  (SIGSTOP) while it holds the lock, so the second surely meets it; the second stops with one
  line, the first finishes, and re-running the command on the workdir gives what a fresh
  run gives."""
  w, fresh = tmp_path / "w", tmp_path / "fresh"
  args = ["--config", "configs/ptb_tiny.py", "--config.train.num_epochs=1",
          "--config.data_limit=2000"]
  first = run_cli(*args, "--workdir", str(w))
  lock_file, deadline = w / ".lock", time.time() + 240
  while time.time() < deadline and first.poll() is None:
    try:
      if json.loads(lock_file.read_text())["pid"] == first.pid:
        break
    except (OSError, ValueError, KeyError):
      pass
    time.sleep(0.01)
  assert first.poll() is None, "the first run ended before it was seen holding the lock"
  first.send_signal(signal.SIGSTOP)
  try:
    second = run_cli(*args, "--workdir", str(w))
    out, err = second.communicate(timeout=240)
  finally:
    first.send_signal(signal.SIGCONT)
  lines = err.strip().splitlines()
  assert second.returncode == 2 and len(lines) == 1, err[-2000:]
  assert lines[0].startswith(f"error: workdir {w} is in use by pid {first.pid} on host "
                             f"{socket.gethostname()} (started "), lines
  assert "Traceback" not in err and out == ""

  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-2000:]
  assert not lock_file.exists()  # released at exit
  again = run_cli(*args, "--workdir", str(w))
  out, err = again.communicate(timeout=300)
  assert again.returncode == 0 and "resuming from step" in err, err[-2000:]
  reference = run_cli(*args, "--workdir", str(fresh))
  err = reference.communicate(timeout=300)[1]
  assert reference.returncode == 0, err[-2000:]
  assert json.loads((w / "results.json").read_text()) == json.loads(
      (fresh / "results.json").read_text())
  epochs = lambda d: [r for r in _epoch_records(d) if r["event"] == "epoch"]  # noqa: E731
  assert epochs(w) == epochs(fresh)
  for a, b in zip(jax.tree.leaves(_final_params(w)), jax.tree.leaves(_final_params(fresh))):
    np.testing.assert_array_equal(a, b)


def test_under_jax_distributed_every_process_stops_when_process_0_cannot_lock(tmp_path):
  """Only process 0 takes the lock; it tells the others, so none goes on alone (and hangs in
  a collective waiting for it)."""
  w = tmp_path / "w"
  port = free_port()
  with workdir_lib.lock(str(w)):
    procs = [launch(w, 1, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                    f"--process_id={i}") for i in range(2)]
    try:
      outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
  assert [p.returncode for p in procs] == [2, 2], outs
  last = [o.strip().splitlines()[-1] for o in outs]
  assert last[0].startswith(f"error: workdir {w} is in use by pid {os.getpid()} on host"), outs
  assert last[1] == f"error: process 0 could not lock workdir {w}; see its error", outs
  assert "Traceback" not in outs[0] + outs[1]
