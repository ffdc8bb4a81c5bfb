"""The benchmark's structure (not its speed) at toy shapes, and the fast paths it measures:
the hand-written LSTM backward pass and the fused softmax NLL against plain autodiff."""

import builtins
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_rnn import make_masks
from vdrnn import models, rnn
from vdrnn.bench import common, driver, peers


def test_tiny_benchmark_runs_and_reports(tmp_path):
  report = driver.run(["gemm", "train"], tiny=True, dtypes=["float32"], log=lambda m: None)
  assert report["gemm"]["float32"] > 0
  rows = [r for r in report["results"] if r["section"] == "train"]
  assert {r["gates"] for r in rows} == {"tied", "untied"}
  for r in rows:
    assert r["tokens_per_s"] > 0 and 0 < r["gemm_fraction"]
    assert r["compilations"] in (None, 1)  # no recompilation between steps
  assert "untied_slowdown_float32" in report["summary"]
  table = driver.format_table(report)
  assert "large-GEMM rate" in table and "tiny" in table and "%GEMM" in table
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


# ----------------------------------------------------------------------------------------
# The fast paths give autodiff's gradients.

D, H, B, T = 5, 6, 3, 7


def _reference_lstm():
  """The scan before the hand-written backward pass: plain ``lax.scan`` autodiff."""

  def lstm(params, carry, xs, mask_x=None, mask_h=None, *, valid=None, compute_dtype=None):
    gx = rnn.input_projection(xs, params["w_x"], params["b"], mask_x, 4, compute_dtype)
    w_h = params["w_h"] if mask_h is None or mask_h.ndim == 2 else rnn._per_gate(params["w_h"], 4)
    w_h = rnn._cast(w_h, compute_dtype)

    def step(carry, inp):
      c, h = carry
      gx_t, v_t = inp
      z = gx_t + rnn._recurrent(h, w_h, mask_h, 4, compute_dtype)
      i, f, g, o = jnp.split(z, 4, axis=-1)
      c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
      if v_t is not None:
        c_new = jnp.where(v_t[:, None], c_new, c)
        h_new = jnp.where(v_t[:, None], h_new, h)
      return (c_new, h_new), h_new

    return jax.lax.scan(step, carry, (gx, valid))

  return lstm


@pytest.mark.parametrize("kind", ["none", "tied", "untied"])
@pytest.mark.parametrize("padded", [False, True])
def test_lstm_backward_matches_autodiff(kind, padded):
  k = jax.random.split(jax.random.key(0), 7)
  p = {"w_x": jax.random.uniform(k[0], (D, 4 * H), minval=-0.5, maxval=0.5),
       "w_h": jax.random.uniform(k[1], (H, 4 * H), minval=-0.5, maxval=0.5),
       "b": jax.random.uniform(k[2], (4 * H,), minval=-0.5, maxval=0.5)}
  xs = jax.random.normal(k[3], (T, B, D))
  c0, h0 = 0.1 * jax.random.normal(k[4], (B, H)), 0.1 * jax.random.normal(k[5], (B, H))
  wy = jax.random.normal(k[6], (T, B, H))
  mx, mh = make_masks(kind, 4, B, D, H, seed=1)[:2]
  valid = jnp.asarray(np.random.RandomState(0).rand(T, B) > 0.3) if padded else None

  def loss(fn, p, c0, h0, xs, mx, mh):
    (c, h), ys = fn(p, (c0, h0), xs, mx, mh, valid=valid)
    return (ys * wy).sum() + 0.3 * c.sum() + (h * h).sum()

  argnums = (0, 1, 2, 3) if mx is None else (0, 1, 2, 3, 4, 5)
  args = (p, c0, h0, xs, mx, mh)
  ref = jax.jit(jax.value_and_grad(lambda *a: loss(_reference_lstm(), *a), argnums))(*args)
  new = jax.jit(jax.value_and_grad(lambda *a: loss(rnn.lstm, *a), argnums))(*args)
  np.testing.assert_allclose(float(new[0]), float(ref[0]),
                             rtol=1e-6)  # same function, float op order may differ
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
