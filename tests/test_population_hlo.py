"""How the vmapped population and MC chunking compile: one batched matmul per recurrent step
for all K members (or all C samples), not K matmuls or a loop over members.

These read the compiled program of the default backend. On the CPU they compile with
``jax_disable_most_optimizations`` (3x faster to compile; the loops and their matmuls come
out the same as fully optimised, checked by hand for K = 1 / 4, tied and untied, at the
tiny config's 2 layers); on a GPU (launch/gpu_check.sh) fully optimised, where the
matmuls are cuBLAS custom-calls or Triton GEMM fusions."""

import re

import jax
import jax.numpy as jnp
import pytest

from configs import ptb_tiny
from tests import hlo
from vdrnn import lm_eval, models, population



@pytest.fixture(autouse=True)
def fast_compiles_on_cpu():
  if jax.default_backend() != "cpu":
    yield
    return
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


B, T = 4, 6  # batch rows, window length (6: not the 5 rounds of threefry loops)


def tiny(arg):
  c = ptb_tiny.get_config(arg)
  c.model.vocab_size, c.model.num_layers = 50, 1
  c.model.emb_dim = c.model.hidden = 8
  c.train.seq_length = T
  return c


def population_program(c, K):
  members = [{"seed": k, "p_emb": 0.3, "p_x": 0.5, "p_h": 0.3, "p_out": 0.5} for k in range(K)]
  for name in population.FIELDS:
    c.population[name] = tuple(m[name] for m in members)
  state = population.init_population_state(c, members, B)
  x = jnp.zeros((B, T), jnp.int32)
  step = jax.jit(population.make_population_train_step(c, members))
  return step.lower(state, x, x, 1.0).compile().as_text()


def time_loops(text):
  """The loops over the T steps of a window that run matmuls (forward and backward scans)."""
  return [l for l in hlo.loops(text) if l["trip_count"] == T and l["matmuls"]]


def dims(shape):
  return [int(d) for d in re.search(r"\[([\d,]*)\]", shape).group(1).split(",") if d]


def size(shape):
  n = 1
  for d in dims(shape):
    n *= d
  return n


def test_hlo_reader_finds_a_scan_matmul():
  """Guards the checks below: a scan with one matmul per step is found as such."""
  w = jnp.ones((8, 8))
  f = jax.jit(lambda h: jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), h, None, length=T)[0])
  text = f.lower(jnp.ones((4, 8))).compile().as_text()
  loops = time_loops(text)
  assert len(loops) == 1 and len(loops[0]["matmuls"]) == 1, loops
  assert dims(loops[0]["matmuls"][0]) == [4, 8]
  # Four weight matrices: vmap batches the product, lax.map adds a loop over them.
  ws = jnp.ones((4, 8, 8))

  def run(w, h):
    return jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), h, None, length=T)[0]

  h = jnp.ones((4, 8))
  vmapped = jax.jit(jax.vmap(run, (0, None))).lower(ws, h).compile().as_text()
  mapped = jax.jit(lambda ws, h: jax.lax.map(lambda w: run(w, h), ws))
  mapped = mapped.lower(ws, h).compile().as_text()
  assert [dims(s) for s in time_loops(vmapped)[0]["matmuls"]] == [[4, 4, 8]]
  assert len(hlo.loops(mapped)) > len(hlo.loops(vmapped))


@pytest.mark.parametrize("arg", ["variational_untied", "variational_tied"])
def test_population_recurrent_products_are_batched_over_members(arg):
  """K = 4 compiles to the same loops with the same number of matmuls as K = 1, each 4x as
  large (a member batch dimension), and the same number of scatters (embedding update)."""
  one, four = population_program(tiny(arg), 1), population_program(tiny(arg), 4)
  loops1, loops4 = time_loops(one), time_loops(four)
  print(arg, "K=1:", [l["matmuls"] for l in loops1], "K=4:", [l["matmuls"] for l in loops4])
  assert len(loops1) >= 2  # forward and backward scan
  assert [len(l["matmuls"]) for l in loops4] == [len(l["matmuls"]) for l in loops1]
  for l1, l4 in zip(loops1, loops4):
    for s1, s4 in zip(l1["matmuls"], l4["matmuls"]):
      assert size(s4) == 4 * size(s1) and 4 in dims(s4), (s1, s4)
  assert len(hlo.all_matmuls(four)) == len(hlo.all_matmuls(one))
  # No loop over the members anywhere: the K=4 program has no more loops than K=1's.
  assert len(hlo.loops(four)) == len(hlo.loops(one))
  # The sparse embedding update: one scatter-add for all members, [K, V, E].
  assert hlo.count(four, "scatter") == hlo.count(one, "scatter") >= 1
  comps, entry = hlo.computations(four)
  scatters = [hlo.result_shape(line) for c in hlo.reachable(comps, entry) for line in comps[c]
              if " scatter(" in line]
  assert any(dims(s)[:2] == [4, 50] for s in scatters), scatters


def test_mc_chunk_folds_samples_into_the_batch():
  """An MC chunk of C samples runs each step as one matmul over C rows: the program for
  C = 8 has the same matmuls as for C = 2, 4x as large."""
  c = tiny("variational_untied")
  params = models.init_lm(jax.random.key(0), c.model)
  xs = jnp.zeros((2, T), jnp.int32)
  acc = jnp.zeros((2, T), jnp.float32)

  def program(C):
    fn = lm_eval.make_mc_chunk_fn(c, lm_eval.mc_rates(c))
    return fn.lower(params, acc, jnp.arange(C, dtype=jnp.uint32), xs, xs, acc).compile().as_text()

  two, eight = program(2), program(8)
  loops2, loops8 = time_loops(two), time_loops(eight)
  print("C=2:", [l["matmuls"] for l in loops2], "C=8:", [l["matmuls"] for l in loops8])
  assert loops2 and [len(l["matmuls"]) for l in loops8] == [len(l["matmuls"]) for l in loops2]
  for l2, l8 in zip(loops2, loops8):
    for s2, s8 in zip(l2["matmuls"], l8["matmuls"]):
      assert size(s8) == 4 * size(s2), (s2, s8)
  assert len(hlo.all_matmuls(eight)) == len(hlo.all_matmuls(two))
  assert len(hlo.loops(eight)) == len(hlo.loops(two))
