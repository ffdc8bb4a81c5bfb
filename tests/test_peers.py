"""The PyTorch peers of the benchmark (launch/bench/peers.py): build at a toy shape on the CPU,
run 2 steps. Skipped when PyTorch is not installed."""

import json
import math

import pytest

from configs import ptb_tiny

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e .[bench])")
from launch.bench import peers  # noqa: E402 - after the skip


def toy():
  c = ptb_tiny.get_config("variational_untied")
  c.model.vocab_size = 50
  return c


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["cudnn", "awd"])
def test_peer_builds_and_runs_two_steps(name, dtype):
  run, info = peers.PEERS[name](toy(), dtype)
  s = run(2)
  assert math.isfinite(s) and s > 0
  assert info["gates"] == peers.PEER_GATES[name] == "untied"
  json.dumps(info)  # the bench's peer worker sends it as one JSON line


def test_functional_call_replaces_the_recurrent_weight_in_the_lstm_call():
  """What the AWD peer relies on: ``functional_call`` with ``weight_hh_l0`` reaches the fused
  LSTM call (``_flat_weights``), and the gradient reaches the substituted tensor."""
  lstm = torch.nn.LSTM(3, 4, batch_first=True)
  x = torch.randn(2, 5, 3)
  w = torch.zeros_like(lstm.weight_hh_l0, requires_grad=True)
  ys, _ = torch.func.functional_call(lstm, {"weight_hh_l0": w}, (x,))
  ref, _ = lstm(x)
  assert (ys - ref).abs().max() > 1e-4
  # With W_hh = 0 each step's gates depend on x_t only: check against a manual cell.
  w_ih, b = lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0
  c = torch.zeros(2, 4)
  for t in range(5):
    i, f, g, o = (x[:, t] @ w_ih.T + b).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    torch.testing.assert_close(ys[:, t], torch.sigmoid(o) * torch.tanh(c))
  ys.sum().backward()
  assert w.grad is not None and w.grad.abs().max() > 0
  assert lstm.weight_hh_l0.grad is None
