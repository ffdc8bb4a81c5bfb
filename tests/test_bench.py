"""The benchmark's structure (not its speed) at toy shapes, and the fast paths it measures:
the hand-written LSTM backward pass and the fused softmax NLL against plain autodiff."""

import builtins
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdrnn import models, rnn
from launch.bench import common, driver, peers


def test_tiny_benchmark_runs_and_reports(tmp_path):
  report = driver.run(["gemm", "train", "sentiment", "flax"], tiny=True, dtypes=["float32"],
                      log=lambda m: None)
  assert report["gemm"]["float32"] > 0
  rows = [r for r in report["results"] if r["section"] == "train"]
  assert {r["gates"] for r in rows} == {"tied", "untied"}
  sent = [r for r in report["results"] if r["section"] == "sentiment"]
  assert {(r["shape"], r["gates"]) for r in sent} == {("lstm", "var"), ("lstm", "naive")}
  assert all(r["tokens_per_s"] > 0 and 0 < r["gemm_fraction"] for r in sent)
  assert "sentiment_lstm_var_gemm_fraction" in report["summary"]
  assert all(0 < r["matmul_floor_s"] and 0 < r["matmul_floor_fraction"] for r in sent)
  for r in rows:
    assert r["tokens_per_s"] > 0 and 0 < r["gemm_fraction"]
    assert r["compilations"] in (None, 1)  # no recompilation between steps
  assert "untied_slowdown_float32" in report["summary"]
  flax = {(r["impl"], r["gates"]): r for r in report["results"] if r["section"] == "flax"}
  pairs = lambda impls: {(i, g) for i in impls for g in ("tied", "untied")}  # noqa: E731
  assert set(flax) == pairs(("core", "nnx", "flax"))
  assert all(len(r["rounds"]) == 2 and r["ratio_to_core"] > 0 for r in flax.values())
  assert flax[("core", "untied")]["ratio_to_core"] == 1.0
  cost = {(c["impl"], c["gates"]): c for c in report["xla_cost"]}
  assert set(cost) == pairs(("core", "nnx", "nnx_dense"))
  assert all(c["flops"] > 0 and c["bytes_accessed"] > 0 for c in cost.values())
  assert "flax_nnx_time_vs_core_tiny_untied_float32" in report["summary"]
  table = driver.format_table(report)
  assert "large-GEMM rate" in table and "tiny" in table and "%GEMM" in table
  assert "x core's time" in table and "xla cost, flax tiny untied float32 nnx_dense" in table
  json.dumps(report)  # JSON-able as written by --json


def test_table_with_peers_mc_population_and_skips():
  row = {
      "impl": "vdrnn",
      "shape": "medium",
      "dims": "2x650 B20 T35",
      "dtype": "float32",
      "load": 0.1
  }
  report = {
      "device":
          common.device_info(),
      "dtypes": ["float32"],
      "load_start":
          0.1,
      "load_end":
          0.2,
      "seconds":
          1.0,
      "gemm": {
          "float32": 100e9
      },
      "skipped": [{
          "section": "peers",
          "reason": "torch peer skipped: torch is "
                    "not installed"
      }],
      "results": [{
          **row, "section": "train",
          "gates": "tied",
          "tokens_per_s": 2000.0,
          "seconds_per_step": 0.35,
          "flops_per_s": 70e9
      }, {
          **row, "section": "train",
          "gates": "untied",
          "tokens_per_s": 1800.0,
          "seconds_per_step": 0.39,
          "flops_per_s": 63e9
      }, {
          **row, "section": "mc",
          "gates": "untied",
          "samples": 1000,
          "sample_tokens_per_s": 9e3,
          "seconds": 3.9,
          "flops_per_s": 80e9
      }, {
          **row, "section": "population",
          "gates": "untied",
          "K": 4,
          "tokens_per_s": 5000.0,
          "seconds_per_step": 0.56,
          "flops_per_s": 90e9
      }, {
          **row, "section": "side",
          "gates": "untied",
          "tokens_per_s": 1700.0,
          "seconds_per_step": 0.41,
          "flops_per_s": 60e9,
          "gemm_fraction": 0.55
      }, {
          **row, "section": "peer",
          "impl": "keras",
          "gates": "untied",
          "tokens_per_s": 600.0,
          "seconds_per_step": 1.2,
          "flops_per_s": 20e9,
          "gemm_fraction": 0.2,
          "vdrnn_speedup": 2.9
      }]
  }
  report["summary"] = driver.summarize(report, "medium")
  s = report["summary"]
  assert s["untied_slowdown_float32"] == pytest.approx(2000 / 1800)
  assert s["speedup_vs_keras_medium_float32"] == pytest.approx(
      2.9)  # the per-round median, not 1700 / 600
  assert s["side_by_side_medium_untied_float32_gemm_fraction"] == pytest.approx(
      0.55)  # kept, not recomputed
  assert s["mc_S1000_gemm_fraction"] == pytest.approx(0.8)
  table = driver.format_table(report)
  assert "2.90x keras" in table and "skipped: torch peer skipped" in table


def test_side_by_side_rounds_interleave_and_ratios_are_per_round(monkeypatch):
  """Every round times each contender once, in turn; the reported speed-up is the median of
  the per-round ratios (so a drift in machine speed between rounds cancels out)."""
  calls = []
  peer_times = {"keras": iter([0.4, 0.1, 0.3]), "torch": iter([0.2, 0.5, 0.6])}

  def fake_peer(name, shape, dtype, isolate=True):
    def run(n):
      calls.append(name)
      return next(peer_times[name])
    return run, {"gates": peers.PEER_GATES[name], "version": "fake"}

  monkeypatch.setattr(peers, "start_peer", fake_peer)
  monkeypatch.setattr(peers, "PEERS", {k: peers.PEERS[k] for k in ("keras", "torch")})
  rows, skipped = peers.side_by_side("tiny", "float32", rounds=3, steps=1, gemm_n=64, isolate=False)
  assert not skipped and [(r["impl"], r["gates"]) for r in rows] == [
      ("vdrnn", "tied"), ("vdrnn", "untied"), ("keras", "untied"), ("torch", "tied")]
  assert calls == ["keras", "torch"] * 3  # one call per peer per round, interleaved
  by = {(r["impl"], r["gates"]): r for r in rows}
  for peer, gates in (("keras", "untied"), ("torch", "tied")):
    ratios = np.array(by[(peer, gates)]["rounds"]) / np.array(by[("vdrnn", gates)]["rounds"])
    assert by[(peer, gates)]["vdrnn_speedup"] == pytest.approx(np.median(ratios))
  for r in rows:
    assert len(r["rounds"]) == 3 and len(r["gemm_rates"]) == 3 and r["gemm_fraction"] > 0


def test_missing_peer_is_skipped_with_a_message(monkeypatch):
  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name in ("torch", "keras"):
      raise ImportError(f"No module named {name!r}", name=name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  monkeypatch.setattr(peers, "PEERS", {k: peers.PEERS[k] for k in ("keras", "torch")})
  report = driver.run(["peers"],
                      tiny=True,
                      dtypes=["float32"],
                      log=lambda m: None,
                      isolate_peers=False)
  assert not report["results"]
  reasons = " ".join(s["reason"] for s in report["skipped"])
  assert "keras" in reasons and "torch" in reasons and "not installed" in reasons


def test_flop_count_of_medium():
  cfg = common.lm_config("medium", "tied")
  assert common.matmul_params(cfg) == 2 * 4 * 650 * 1300 + 650 * 10000


def test_cli_rejects_unknown_section():
  from absl import app, flags
  driver.define_flags()
  flags.FLAGS(["bench", "--only", "nope"])
  try:
    with pytest.raises(app.UsageError, match="unknown section"):
      driver.main(["bench"])
  finally:
    flags.FLAGS.unparse_flags()


def test_ab_times_an_imdb_mc_chunk_of_two_revisions_computing_the_same():
  """``launch.bench.ab --what seq_mc``: both revisions' workers build the MC chunk of the
  config and answer the rounds; HEAD against the working tree (in a fresh clone the same
  code) compute the same outputs, whether the samples run in turn or vectorised."""
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.run([sys.executable, "-m", "launch.bench.ab", "--base", "HEAD", "--what",
                      "seq_mc", "--config", "configs/imdb_lstm.py:tiny", "--rounds", "2",
                      "--override", "eval.mc_vectorise=map"], cwd=root, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  head = "seq_mc configs/imdb_lstm.py:tiny eval.mc_vectorise=map: max |new - base| of the results "
  line = next(l for l in p.stdout.splitlines() if l.startswith(head))
  assert float(line[len(head):]) < 1e-6, line
  assert "new / base, median of per-round ratios:" in p.stdout


# ----------------------------------------------------------------------------------------
# The fast paths give autodiff's gradients.

D, H, B, T = 5, 6, 3, 7


def _reference_lstm(params, carry, xs, mask_x=None, mask_h=None, *, valid=None,
                    mask_x_steps=None, mask_h_steps=None, gate_act="sigmoid"):
  """The LSTM written plainly, differentiated by ``lax.scan`` autodiff: each step applies
  gate k's masks to ``x_t`` and ``h`` (a tied or absent mask is the same for every gate) and
  runs four separate matmuls; no hoisting, no hand-written backward pass."""
  act = rnn.activation(gate_act)
  Hn = carry[0].shape[-1]
  w_x = [params["w_x"][:, k * Hn:(k + 1) * Hn] for k in range(4)]
  w_h = [params["w_h"][:, k * Hn:(k + 1) * Hn] for k in range(4)]
  b = [params["b"][k * Hn:(k + 1) * Hn] for k in range(4)]

  def gate(m, k):  # gate k's mask: None, [B, .] shared by the gates, or [4, B, .]
    return None if m is None else (m if m.ndim == 2 else m[k])

  def step(carry, inp):
    c, h = carry
    x_t, v_t, mx_t, mh_t = inp
    mx = mask_x if mx_t is None else mx_t
    mh = mask_h if mh_t is None else mh_t
    z = []
    for k in range(4):
      xk = x_t if gate(mx, k) is None else x_t * gate(mx, k)
      hk = h if gate(mh, k) is None else h * gate(mh, k)
      z.append(xk @ w_x[k] + hk @ w_h[k] + b[k])
    i, f, g, o = act(z[0]), act(z[1]), jnp.tanh(z[2]), act(z[3])
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    if v_t is not None:
      c_new = jnp.where(v_t[:, None], c_new, c)
      h_new = jnp.where(v_t[:, None], h_new, h)
    return (c_new, h_new), h_new

  return jax.lax.scan(step, carry, (xs, valid, mask_x_steps, mask_h_steps))


MASK_KINDS = ["none", "tied", "untied", "x tied h untied", "steps", "steps per gate",
              "x steps per gate, h tied"]


def _lstm_masks(kind):
  """``rnn.lstm``'s mask keyword arguments of ``kind``, 0 or 1.5 (as inverted p = 1/3)."""
  k = jax.random.split(jax.random.key(9), 2)
  m = lambda i, shape: 1.5 * (jax.random.uniform(k[i], shape) > 1 / 3)  # noqa: E731
  return {"none": {}, "tied": {"mask_x": m(0, (B, D)), "mask_h": m(1, (B, H))},
          "untied": {"mask_x": m(0, (4, B, D)), "mask_h": m(1, (4, B, H))},
          "x tied h untied": {"mask_x": m(0, (B, D)), "mask_h": m(1, (4, B, H))},
          "steps": {"mask_x_steps": m(0, (T, B, D)), "mask_h_steps": m(1, (T, B, H))},
          "steps per gate": {"mask_x_steps": m(0, (T, 4, B, D)),
                             "mask_h_steps": m(1, (T, 4, B, H))},
          "x steps per gate, h tied": {"mask_x_steps": m(0, (T, 4, B, D)),
                                       "mask_h": m(1, (B, H))}}[kind]


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("hoist_input", [True, False])
def test_lstm_backward_matches_autodiff(kind, padded, hoist_input):
  """Both hand-written backward passes (the hoisted input projection's and the per-step fused
  matmul's) against autodiff of the plain LSTM: gradients of the parameters, the inputs, the
  initial state and the masks, hard-sigmoid gates for the per-step masks (the released code)."""
  k = jax.random.split(jax.random.key(0), 7)
  p = {"w_x": jax.random.uniform(k[0], (D, 4 * H), minval=-0.5, maxval=0.5),
       "w_h": jax.random.uniform(k[1], (H, 4 * H), minval=-0.5, maxval=0.5),
       "b": jax.random.uniform(k[2], (4 * H,), minval=-0.5, maxval=0.5)}
  xs = jax.random.normal(k[3], (T, B, D))
  c0, h0 = 0.1 * jax.random.normal(k[4], (B, H)), 0.1 * jax.random.normal(k[5], (B, H))
  wy = jax.random.normal(k[6], (T, B, H))
  masks = _lstm_masks(kind)
  gate_act = "hard_sigmoid" if kind.startswith("steps") else "sigmoid"
  valid = jnp.asarray(np.random.RandomState(0).rand(T, B) > 0.3) if padded else None

  def loss(fn, p, c0, h0, xs, masks, **kw):
    (c, h), ys = fn(p, (c0, h0), xs, valid=valid, gate_act=gate_act, **masks, **kw)
    return (ys * wy).sum() + 0.3 * c.sum() + (h * h).sum()

  args = (p, c0, h0, xs, masks)
  grad = lambda fn, **kw: jax.jit(jax.value_and_grad(  # noqa: E731
      lambda *a: loss(fn, *a, **kw), argnums=(0, 1, 2, 3, 4)))(*args)
  ref, new = grad(_reference_lstm), grad(rnn.lstm, hoist_input=hoist_input)
  np.testing.assert_allclose(float(new[0]), float(ref[0]), rtol=1e-6)  # float op order differs
  assert jax.tree.structure(ref[1]) == jax.tree.structure(new[1])
  for a, b in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(new[1])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_fused_softmax_nll_matches_log_softmax():
  logits = 3.0 * jax.random.normal(jax.random.key(0), (4, 3, 11))
  targets = jax.random.randint(jax.random.key(1), (4, 3), 0, 11)
  g = jax.random.normal(jax.random.key(2), (4, 3))

  def ref(z):
    return -jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), targets[..., None], axis=-1)[..., 0]

  np.testing.assert_array_equal(models.softmax_nll(logits, targets), ref(logits))
  np.testing.assert_allclose(jax.grad(lambda z: (models.softmax_nll(z, targets) * g).sum())(logits),
                             jax.grad(lambda z: (ref(z) * g).sum())(logits), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_matmul_vjp_matches_autodiff(dtype):
  """``rnn.matmul``'s backward (``dw`` from a materialised ``x^T``) against autodiff of the
  plain product; bfloat16 against the same product of operands rounded to bfloat16."""
  k = jax.random.split(jax.random.key(0), 3)
  x, w, g = jax.random.normal(k[0], (7, 3, 16)), jax.random.normal(k[1],
                                                                   (16, 40)), jax.random.normal(
                                                                       k[2], (7, 3, 40))
  rnd = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype).astype(jnp.float32))
  ref = lambda x, w: (jnp.einsum("tbk,kn->tbn", rnd(x), rnd(w)) * g).sum()
  new = lambda x, w: (rnn.matmul(x, w, dtype) * g).sum()
  tol = 1e-5 if dtype is None else 2e-2
  np.testing.assert_allclose(new(x, w), ref(x, w), rtol=tol)
  for a, r in zip(jax.grad(new, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
    np.testing.assert_allclose(a, r, rtol=tol, atol=tol * float(jnp.abs(r).max()))


def test_transposed_is_a_transpose():
  x = jax.random.normal(jax.random.key(0), (7, 5))
  np.testing.assert_array_equal(jax.jit(rnn.transposed)(x), x.T)
