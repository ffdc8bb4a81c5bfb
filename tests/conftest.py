import atexit
import os
import shutil
import tempfile

# Tests run on the CPU, float32, with 8 simulated devices available for the sharding tests
# (a single-device computation still uses one of them).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Unoptimised XLA code generation (here and in the processes the CLI tests start): the tests'
# toy programs spend most of their time compiling, which this makes several times faster
# (tests/test_evaluate.py 201 -> 145 s, tests/test_bench.py 142 -> 86 s on a 2-core Zen 1 EPYC).
# The tests compare results, never speed; set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to run them on
# optimised code.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# One XLA compilation cache for this test session and the processes it starts: the CLI tests
# start many `python -m vdrnn.train` processes that compile the same tiny models. A fresh
# directory per session, removed at exit, so no executable outlives the code that built it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="vdrnn-test-xla-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
