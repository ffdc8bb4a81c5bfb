"""``python -m launch.run_row ARGS``: runs ``python -m vdrnn.train ARGS`` in this process and
records in ``<workdir>/run_info.json`` the device it ran on and the wall time of every session
(a resumed run adds a session). ``launch/reproduce.py`` starts its rows through this wrapper
so that its report can name the device of every number.
"""

from __future__ import annotations

import json
import os
import platform
import runpy
import shlex
import signal
import socket
import sys
import time

import jax

INFO = "run_info.json"


def cpu_name() -> str:
  """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``) and the cores this
  process may use, e.g. "AMD EPYC, 2 cores"."""
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  except OSError:
    pass
  model = model or platform.processor() or platform.machine() or "unknown CPU"
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{model}, {cores} core{'s' if cores != 1 else ''}"


def device_name() -> str:
  """``jax.devices()[0].device_kind`` (e.g. "NVIDIA H100 80GB HBM3") with the platform, and the
  device count when there are several; on the CPU its model and cores (``cpu_name``)."""
  devs = jax.devices()
  kind = getattr(devs[0], "device_kind", "") or devs[0].platform
  if devs[0].platform == "cpu":
    kind = cpu_name()
  name = f"{kind} ({devs[0].platform})" if kind.lower() != devs[0].platform else devs[0].platform
  return f"{len(devs)} x {name}" if len(devs) > 1 else name


def read_info(workdir: str) -> dict:
  path = os.path.join(workdir, INFO)
  if not os.path.exists(path):
    return {"sessions": []}
  with open(path) as f:
    return json.load(f)


def write_info(workdir: str, info: dict) -> None:
  tmp = os.path.join(workdir, INFO + ".tmp")
  with open(tmp, "w") as f:
    json.dump(info, f, indent=2)
  os.replace(tmp, os.path.join(workdir, INFO))


def main() -> None:
  args = sys.argv[1:]
  if "--workdir" not in args:
    raise SystemExit("launch.run_row: --workdir is required")
  workdir = args[args.index("--workdir") + 1]
  os.makedirs(workdir, exist_ok=True)
  info = read_info(workdir)
  session = {"command": shlex.join(["python", "-m", "vdrnn.train", *args]), "device": device_name(),
             "host": socket.gethostname(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "start": time.time(), "end": None, "exit": None}
  info["sessions"].append(session)
  write_info(workdir, info)
  code = 0
  sys.argv = ["vdrnn.train", *args]
  # SIGTERM (the sweep queue stopping its runs) ends the session through ``finally`` below, so
  # its end time is recorded too.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  try:
    runpy.run_module("vdrnn.train", run_name="__main__", alter_sys=True)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    raise
  except BaseException:
    code = 1
    raise
  finally:
    session["end"], session["exit"] = time.time(), code
    write_info(workdir, info)


if __name__ == "__main__":
  main()
