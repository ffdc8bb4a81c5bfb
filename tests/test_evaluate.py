"""MC-dropout evaluation: against the dropout approximation at rate 0, against a slow loop
over samples, chunking invariance, and the workdir / command-line paths."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import evaluate_cli
from vdrnn import lm, lm_eval, models, tasks
from vdrnn.errors import UserError

REPO = Path(__file__).resolve().parents[1]
S = 8  # samples in the unit tests; chunk 8 is sharded over conftest's 8 devices, chunk 3 is not


def tiny_config(arg="variational_untied"):
  spec = importlib.util.spec_from_file_location("ptb_tiny", REPO / "configs" / "ptb_tiny.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  c.model.vocab_size = 40
  c.model.init_scale = 1.0  # sharp predictions, so dropout changes them a lot
  c.eval.seq_length = 5
  return c


def tiny_stream(n=23, vocab=40):
  """23 tokens: 22 predictions in 5 windows of 5, the last one padded."""
  return np.random.RandomState(0).randint(0, vocab, n).astype(np.int32)


def loop_reference(cfg, params, ids, samples, rates, temperature):
  """Slow and obvious: for each sample its own masks from fold_in(key(eval.seed), s) (those
  fresh per step, naive and zoneout, from fold_in(k_s, window) in each window), the
  stream run window by window at batch 1 with the state carried, log p(y_t) recorded per
  token. The last window is filled up with an arbitrary token (7) whose outputs are dropped:
  the model is causal, and one window shape means one compilation. Returns mean_t log pbar_t
  after k = 1..S samples, pbar = the mean of the samples' probabilities (float64), and the
  mean of the log-probabilities instead (the wrong estimate), for comparison."""
  m, T = cfg.model, cfg.eval.seq_length

  @jax.jit
  def window(carry, x, y, key, key_window):
    masks = models.lm_masks(key, m, x, rates)
    zone = models.lm_masks(key_window, m, x, rates)  # zoneout: fresh in every window
    masks["zone_c"], masks["zone_h"] = zone["zone_c"], zone["zone_h"]
    hs, carry = models.lm_hidden(params, carry, x, masks)
    logp = jax.nn.log_softmax(models.lm_logits(params, hs, None, temperature), axis=-1)  # [T, 1, V]
    return carry, logp[jnp.arange(x.shape[1]), 0, y[0]]

  logps = []
  for s in range(samples):
    k_s = jax.random.fold_in(jax.random.key(cfg.eval.seed), s)
    carry, row = models.lm_zero_carry(m, 1), []
    for i, start in enumerate(range(0, len(ids) - 1, T)):
      y = ids[start + 1:start + T + 1]
      n = len(y)
      x, y = (np.concatenate([a, np.full(T - n, 7, a.dtype)]) for a in (ids[start:start + n], y))
      key = jax.random.fold_in(k_s, i) if m.scheme == "naive" else k_s
      carry, lp = window(carry, x[None], y[None], key, jax.random.fold_in(k_s, i))
      row.append(np.asarray(lp, np.float64)[:n])
    logps.append(np.concatenate(row))
  logps = np.stack(logps)  # [S, N - 1]
  assert logps.shape == (samples, len(ids) - 1)
  k = np.arange(1, samples + 1)[:, None]
  return (np.logaddexp.accumulate(logps, axis=0) - np.log(k)).mean(1), (np.cumsum(logps, 0) /
                                                                        k).mean(1)


CASES = {
    # untied variational masks, word-type embedding dropout on, both Melis et al. knobs
    "variational_untied":
        dict(arg="variational_untied",
             emb=True,
             mult=1.2,
             temp=0.8,
             rates={
                 "emb": 0.36,
                 "x": 0.6,
                 "h": 0.36,
                 "out": 0.6
             }),
    # naive (Zaremba) masks: fresh at every step, per window from fold_in(k_s, window)
    "naive":
        dict(arg="naive",
             emb=False,
             mult=1.0,
             temp=1.0,
             rates={
                 "emb": 0.0,
                 "x": 0.5,
                 "h": 0.0,
                 "out": 0.5
             }),
    # weight drop (a recurrent matrix per sample: the model vmapped over one-row samples) and
    # zoneout (fresh per step, per window from fold_in(k_s, window)) on variational masks
    "weight_drop_zoneout":
        dict(arg="variational_tied",
             emb=False,
             mult=1.0,
             temp=1.0,
             model=dict(p_weight_drop=0.4, zoneout_c=0.5, zoneout_h=0.2),
             rates={
                 "emb": 0.0,
                 "x": 0.5,
                 "h": 0.3,
                 "out": 0.5,
                 "weight": 0.4,
                 "zone_c": 0.5,
                 "zone_h": 0.2
             }),
}


def case_setup(name):
  c = CASES[name]
  cfg = tiny_config(c["arg"])
  cfg.eval.mc_emb_dropout, cfg.eval.rate_multiplier, cfg.eval.temperature = c["emb"], c["mult"], c[
      "temp"]
  cfg.model.update(c.get("model", {}))
  return cfg, models.init_lm(jax.random.key(0), cfg.model), tiny_stream()


@functools.lru_cache(maxsize=None)
def vectorised(name, chunk):
  cfg, params, ids = case_setup(name)
  rates = lm_eval.mc_rates(cfg)
  for k, v in CASES[name]["rates"].items():
    assert rates[k] == pytest.approx(v)
  return lm_eval.mc_log_pbar(cfg, params, ids, samples=S, chunk=chunk, rates=rates,
                              temperature=cfg.eval.temperature)["log_pbar"]


@pytest.mark.parametrize("name", list(CASES))
def test_vectorised_matches_loop_over_samples(name):
  cfg, params, ids = case_setup(name)
  ref, ref_mean_logp = loop_reference(cfg, params, ids, S, CASES[name]["rates"],
                                      cfg.eval.temperature)
  got = vectorised(name, 3)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  # The test can tell the mean of probabilities from the mean of log-probabilities.
  assert np.abs(ref - ref_mean_logp)[1:].min() > 1e-2


@pytest.mark.parametrize("name", list(CASES))
def test_chunking_does_not_change_the_result(name):
  np.testing.assert_allclose(vectorised(name, 3), vectorised(name, S), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["naive", "variational_untied"])
def test_segments_of_windows_do_not_change_the_result(name, monkeypatch):
  """A chunk walks the stream in segments sized from the first call's time (so progress
  shows); one window per call and the whole stream per call give the same result."""
  cfg, params, ids = case_setup(name)
  rates = lm_eval.mc_rates(cfg)
  got = {}
  for seconds in (0.0, 1e9):  # one window per call after the first; all windows in one call
    monkeypatch.setattr(lm_eval, "PROGRESS_SECONDS", seconds)
    got[seconds] = lm_eval.mc_log_pbar(cfg, params, ids, samples=4, chunk=2,
                                       rates=rates)["log_pbar"]
  assert len(lm_eval.stream_windows(ids, cfg.eval.seq_length)[0]) >= 3
  np.testing.assert_allclose(got[0.0], got[1e9], rtol=1e-6, atol=1e-6)


def full_log_probs(cfg, params, ids, samples, rates):
  """Every sample's log-probabilities of every word at every position, ``[S, N - 1, V]``, by the
  same slow loop as ``loop_reference`` (batch 1, window by window, state carried)."""
  m, T = cfg.model, cfg.eval.seq_length

  @jax.jit
  def window(carry, x, key):
    hs, carry = models.lm_hidden(params, carry, x, models.lm_masks(key, m, x, rates))
    return carry, jax.nn.log_softmax(models.lm_logits(params, hs), axis=-1)[:, 0]  # [T, V]

  out = []
  for s in range(samples):
    k_s = jax.random.fold_in(jax.random.key(cfg.eval.seed), s)
    carry, row = models.lm_zero_carry(m, 1), []
    for i, start in enumerate(range(0, len(ids) - 1, T)):
      n = len(ids[start + 1:start + T + 1])
      x = np.concatenate([ids[start:start + n], np.full(T - n, 7, ids.dtype)])
      key = jax.random.fold_in(k_s, i) if m.scheme == "naive" else k_s
      carry, lp = window(carry, x[None], key)
      row.append(np.asarray(lp, np.float64)[:n])
    out.append(np.concatenate(row))
  return np.stack(out)


@pytest.mark.parametrize("name", ["variational_untied"])
def test_geometric_and_power_means_match_a_direct_computation(name):
  """The MC pass's geometric and power means (each renormalised over the vocabulary) against
  the samples' full distributions computed one by one; exponent 1 gives the arithmetic mean."""
  cfg, params, ids = case_setup(name)
  cfg.eval.temperature = 1.0
  rates = lm_eval.mc_rates(cfg)
  lp = full_log_probs(cfg, params, ids, S, rates)  # [S, N, V]
  y = ids[1:]
  pick = lambda a: a[np.arange(len(y)), y]  # noqa: E731
  geo = lp.mean(0)
  want_geo = np.mean(pick(geo) - np.log(np.exp(geo).sum(-1)))
  rho = 0.7
  pw = np.log(np.mean(np.exp(rho * lp), 0)) / rho
  want_pow = np.mean(pick(pw) - np.log(np.exp(pw).sum(-1)))
  want_arith = np.mean(np.log(np.mean(np.exp(lp[:, np.arange(len(y)), y]), 0)))
  got = lm_eval.mc_log_pbar(cfg, params, ids, samples=S, chunk=3, rates=rates, power=rho)
  np.testing.assert_allclose(got["log_pbar_geometric"], want_geo, rtol=1e-5)
  np.testing.assert_allclose(got["log_pbar_power"], want_pow, rtol=1e-5)
  np.testing.assert_allclose(got["log_pbar"][-1], want_arith, rtol=1e-5)
  assert abs(want_geo - want_arith) > 1e-3 and abs(want_pow - want_arith) > 1e-4
  one = lm_eval.mc_log_pbar(cfg, params, ids, samples=S, chunk=3, rates=rates, power=1.0)
  np.testing.assert_allclose(one["log_pbar_power"], one["log_pbar"][-1], rtol=1e-5)


def test_mc_mean_picks_the_reported_perplexity():
  cfg = tiny_config("variational_untied")
  cfg.eval.mc_samples, cfg.eval.mc_chunk = 4, 2
  params = models.init_lm(jax.random.key(1), cfg.model)
  got = {}
  for mean in lm_eval.MC_MEANS:
    cfg.eval.mc_mean = mean
    got[mean] = lm_eval.mc_lm(cfg, params, tiny_stream(), progress=False)
    assert got[mean]["ppl"] == got[mean][f"ppl_{mean}"]
  for k in ("ppl_arithmetic", "ppl_geometric", "ppl_power"):  # one set of samples
    assert len({r[k] for r in got.values()}) == 1
  cfg.eval.mc_mean = "median"
  with pytest.raises(UserError, match="eval.mc_mean"):
    lm_eval.mc_lm(cfg, params, tiny_stream(), progress=False)


@pytest.mark.parametrize("how", ["rates_zero", "multiplier_zero", "scheme_none"])
def test_mc_with_zero_rates_equals_deterministic(how):
  cfg = tiny_config("none" if how == "scheme_none" else "variational_untied")
  if how == "rates_zero":
    cfg.model.p_emb = cfg.model.p_x = cfg.model.p_h = cfg.model.p_out = 0.0
    cfg.eval.mc_emb_dropout = True
  if how == "multiplier_zero":
    cfg.eval.rate_multiplier = 0.0
  cfg.eval.mc_samples, cfg.eval.mc_chunk = 5, 2
  params = models.init_lm(jax.random.key(1), cfg.model)
  r = lm_eval.mc_lm(cfg, params, tiny_stream(), progress=False)
  assert r["tokens"] == 22 and r["samples"] == 5
  assert r["det_ppl"] > 5  # not trivially certain
  np.testing.assert_allclose(r["curve"]["ppl"], r["det_ppl"], rtol=2e-6)
  assert r["curve"]["samples"] == [1, 2, 5]


def test_temperature_reports_deterministic_at_that_temperature():
  cfg = tiny_config("none")
  cfg.eval.mc_samples, cfg.eval.mc_chunk, cfg.eval.temperature = 2, 2, 2.0
  params = models.init_lm(jax.random.key(1), cfg.model)
  r = lm_eval.mc_lm(cfg, params, tiny_stream(), progress=False)
  np.testing.assert_allclose(r["ppl"], r["det_ppl_temperature"], rtol=2e-6)
  assert abs(r["ppl"] - r["det_ppl"]) > 1.0


def test_curve_points_and_rates():
  assert lm_eval.curve_points(1) == [1]
  assert lm_eval.curve_points(7) == [1, 2, 5, 7]
  assert lm_eval.curve_points(1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
  cfg = tiny_config()
  cfg.eval.rate_multiplier = 3.0
  assert lm_eval.mc_rates(cfg) == pytest.approx({"emb": 0.0, "x": lm_eval.MAX_RATE, "h": 0.9,
                                                  "out": lm_eval.MAX_RATE, "weight": 0.0,
                                                  "zone_c": 0.0, "zone_h": 0.0})
  cfg.eval.rate_multiplier = -1.0
  with pytest.raises(UserError):
    lm_eval.mc_rates(cfg)


# ----------------------------------------------------------------------------------------
# Workdir and command line, from a tiny model trained for one short epoch on real PTB.


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  cfg = tiny_config()
  cfg.model.vocab_size, cfg.model.init_scale = 10000, 0.1
  cfg.data_limit, cfg.train.num_epochs = 300, 1
  cfg.eval.mc_samples, cfg.eval.mc_chunk = 3, 3
  try:
    lm.load_data(cfg)
  except UserError as e:
    pytest.skip(f"PTB data not available: {e}")
  wd = str(tmp_path_factory.mktemp("run"))
  results = lm.train_and_evaluate(cfg, wd)
  return wd, results


def test_training_runs_mc_at_the_end(workdir):
  wd, results = workdir
  with open(os.path.join(wd, "mc_test.json")) as f:
    mc = json.load(f)
  assert results["mc_test_ppl"] == mc["ppl"] and mc["samples"] == 3 and len(
      mc["ppl_by_samples"]) == 3
  assert mc["det_ppl"] == pytest.approx(results["test_ppl"], rel=1e-6)
  assert os.path.getsize(os.path.join(wd, "mc_test.png")) > 1000


def evaluate_workdir(wd: str, **kwargs) -> dict:
  """What ``python -m vdrnn.evaluate --workdir wd`` computes, without overrides."""
  return tasks.evaluate_workdir(tasks.load_run_config(wd), wd, **kwargs)


def test_evaluate_workdir_reproduces_training(workdir):
  wd, results = workdir
  r = evaluate_workdir(wd, checkpoint="latest")
  assert r["step"] == results["step"]
  assert r["ppl"] == pytest.approx(results["mc_test_ppl"], rel=1e-6)
  assert r["det_ppl"] == pytest.approx(results["test_ppl"], rel=1e-6)


def test_cli_overrides(workdir, capsys):
  wd, results = workdir
  evaluate_cli([
      "evaluate", f"--workdir={wd}", "--config.eval.mc_samples=4", "--config.eval.mc_chunk=4",
      "--checkpoint", "best", "--split=valid"
  ])
  out, err = capsys.readouterr()
  r = json.loads(out)
  assert r["samples"] == 4 and r["split"] == "valid" and r["checkpoint"] == "best"
  assert "MC dropout" in err
  assert os.path.exists(os.path.join(wd, "mc_valid.json")) and os.path.exists(
      os.path.join(wd, "mc_valid.png"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(checkpoint="newest"), "latest, best or a step"),
    (dict(checkpoint="999"), "no checkpoint at step 999"),
    (dict(split="train"), "--split must be one of"),
])
def test_evaluate_workdir_errors(workdir, kwargs, match):
  with pytest.raises(UserError, match=match):
    evaluate_workdir(workdir[0], **kwargs)


def test_cli_bad_override_is_one_line(workdir, capsys):
  with pytest.raises(SystemExit) as e:
    evaluate_cli(["evaluate", f"--workdir={workdir[0]}", "--config.eval.mc_samples=many"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_missing_workdir_is_one_line(tmp_path):
  missing = tmp_path / "nope"
  p = subprocess.run([sys.executable, "-m", "vdrnn.evaluate", f"--workdir={missing}"],
                     capture_output=True, text=True, cwd=REPO, timeout=120)
  assert p.returncode != 0
  assert p.stderr.strip().splitlines() == [f"error: workdir {missing} does not exist"]
  assert p.stdout == ""


def test_imdb_workdirs_go_to_the_imdb_task(tmp_path, monkeypatch):
  from vdrnn import imdb
  calls = []
  monkeypatch.setattr(imdb, "evaluate_workdir", lambda *a, **k: calls.append(
      (a, k)) or {"ok": 1})
  (tmp_path / "config.json").write_text(json.dumps({"task": "imdb", "eval": {"mc_samples": 3}}))
  assert evaluate_workdir(str(tmp_path), checkpoint="best", split="train") == {
      "ok": 1
  }
  (config, wd), kwargs = calls[0]
  assert config.task == "imdb" and wd == str(tmp_path) and kwargs == {
      "checkpoint": "best",
      "split": "train",
  }


def test_an_interrupted_mc_pass_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch,
                                                                    capsys):
  """The MC pass writes its state to ``partial`` (here after every window) and a pass killed
  half-way resumes from it: same result as one uninterrupted pass, the file removed at the end;
  the state of another pass (other sample count) is not resumed, and a damaged state file is
  one line and a pass from the start."""
  cfg, params, ids = case_setup("variational_untied")
  rates = lm_eval.mc_rates(cfg)
  run = lambda samples=4, **kw: lm_eval.mc_log_pbar(  # noqa: E731
      cfg, params, ids, samples=samples, chunk=2, rates=rates, power=0.5, **kw)
  want = run()
  monkeypatch.setattr(lm_eval, "PROGRESS_SECONDS", 0.0)  # one window a segment
  monkeypatch.setattr(lm_eval, "SAVE_SECONDS", -1.0)     # a save after every segment
  path = str(tmp_path / "mc_test.partial.npz")
  save, saves = lm_eval._save_partial, []

  def killed_after_two(*args):
    save(*args)
    saves.append(args[2])  # windows done
    if len(saves) == 2:
      raise KeyboardInterrupt
  monkeypatch.setattr(lm_eval, "_save_partial", killed_after_two)
  with pytest.raises(KeyboardInterrupt):
    run(partial=path)
  assert os.path.exists(path) and saves == [1, 2]
  monkeypatch.setattr(lm_eval, "_save_partial", save)
  with np.load(path) as z:
    assert int(z["first"]) == 2
  other = run(samples=3, partial=path)  # another pass: starts afresh, and ends
  np.testing.assert_allclose(other["log_pbar"], run(samples=3)["log_pbar"], rtol=1e-6, atol=1e-6)
  with pytest.raises(KeyboardInterrupt):
    monkeypatch.setattr(lm_eval, "_save_partial", killed_after_two)
    saves.clear()
    run(partial=path)
  monkeypatch.setattr(lm_eval, "_save_partial", save)
  got = run(partial=path)
  assert not os.path.exists(path)
  np.testing.assert_allclose(got["log_pbar"], want["log_pbar"], rtol=1e-6, atol=1e-6)
  with open(path, "wb") as f:  # a damaged state file: one line, and the pass starts afresh
    f.write(b"PK\x03\x04 not a whole file")
  damaged = run(partial=path)
  assert "cannot be read" in capsys.readouterr().err and not os.path.exists(path)
  np.testing.assert_allclose(damaged["log_pbar"], want["log_pbar"], rtol=1e-6, atol=1e-6)
  for k in ("log_pbar_geometric", "log_pbar_power"):
    assert got[k] == pytest.approx(want[k], rel=1e-6)
