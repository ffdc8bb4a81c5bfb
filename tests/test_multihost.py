"""Multi-host training: 2 processes on this machine (jax.distributed, gloo collectives on the
CPU), each feeding half of the global batch, match one process with the same 2 devices."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from configs import ptb_tiny
from vdrnn import checkpoint, lm

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--config", "configs/ptb_tiny.py", "--config.train.num_epochs=1", "--config.data_limit=1000",
    "--config.train.checkpoint_every_steps=0"
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(workdir, devices: int, *extra):
  # Unoptimised XLA code (both sides alike): compiled several times faster.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.Popen(
      [sys.executable, "-m", "vdrnn.train", *ARGS, "--workdir",
       str(workdir), *extra],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True)


def finish(procs, timeout=400):
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def final_params(workdir, step):
  target = lm.init_state(ptb_tiny.get_config(), 8)
  state, _ = checkpoint.restore(checkpoint.manager(os.path.join(workdir, "checkpoints")), step,
                                target)
  return state["params"]


def test_two_processes_match_one(tmp_path):
  port = free_port()
  multi = [
      launch(tmp_path / "multi", 1, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             f"--process_id={i}") for i in range(2)
  ]
  single = launch(tmp_path / "single", 2)
  out0, out1, _ = finish([*multi, single])
  assert "2 device(s), 2 process(es)" in out0
  assert '"test_ppl"' in out0 and '"test_ppl"' not in out1  # only process 0 reports

  got = json.loads((tmp_path / "multi" / "results.json").read_text())
  want = json.loads((tmp_path / "single" / "results.json").read_text())
  assert got["step"] == want["step"] == 12
  for k in ("valid_ppl", "test_ppl"):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)
  a, b = final_params(tmp_path / "multi", 12), final_params(tmp_path / "single", 12)
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  print("2 processes vs 1 process (2 devices): max abs param diff", diff, got, want)
  assert diff <= 1e-6
