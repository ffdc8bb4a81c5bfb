import os

# Tests run on the CPU, float32, with 8 simulated devices available for the sharding tests
# (a single-device computation still uses one of them).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
