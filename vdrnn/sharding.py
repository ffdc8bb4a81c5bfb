"""Data parallelism with a 1-D device mesh and ``NamedSharding`` (no ``pmap``).

Batches are split over the mesh axis ``"data"`` along their batch dimension; parameters
are replicated. Under ``jax.distributed`` each process supplies its own rows of the
global batch (``jax.make_array_from_process_local_data``). Masks are drawn inside the
jitted step for the *global* batch, row by row from ``fold_in(key, row)``, so results do
not depend on the number of devices or processes.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vdrnn.errors import UserError

AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Shards the leading (batch) dimension over the mesh."""
  return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch(batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(
        f"{name}={batch_size} is not divisible by the {n} devices; choose a multiple of {n} "
        f"or limit the devices (e.g. CUDA_VISIBLE_DEVICES)")
  if batch_size % jax.process_count():
    raise UserError(f"{name}={batch_size} is not divisible by the {jax.process_count()} processes")


def jit_train_step(step, state_shardings, batch_shardings: tuple):
  """``step(state, *batch) -> state`` jitted the one way every task's training step is: the
  state laid out by ``state_shardings`` in and out, and donated (updated in place); the batch
  arguments by ``batch_shardings`` (``batch_sharding`` for arrays split over the rows, ``None``
  for host scalars such as the learning rate)."""
  return jax.jit(step, in_shardings=(state_shardings, *batch_shardings),
                 out_shardings=state_shardings, donate_argnums=0)


def is_primary() -> bool:
  """True on the process that writes files (process 0; every process under a single host)."""
  return jax.process_index() == 0


def process_rows(batch_size: int) -> slice:
  """The rows of a global batch that this process feeds."""
  n = batch_size // jax.process_count()
  return slice(jax.process_index() * n, (jax.process_index() + 1) * n)


def put_batch(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """A global ``[B, ...]`` array, sharded on B, built from this process's rows of ``x``
  (``x`` is the full global batch; each process slices its own share)."""
  sharding = batch_sharding(mesh)
  local = x[process_rows(x.shape[0])]
  return jax.make_array_from_process_local_data(sharding, local, x.shape)


def put_replicated(tree, mesh: Mesh):
  return jax.device_put(tree, replicated(mesh))


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly batch-sharded, multi-process) array as a NumPy array on every
  process."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
