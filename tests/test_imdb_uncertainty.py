"""The IMDB uncertainty benchmark end to end on the tiny corpora: per-example predictions saved
beside every test evaluation, the summary metrics recomputed from exactly those arrays by
direct formulas, OOD detection on text prepared as the test set, the deep-ensemble combination
against stacking every pass, the ensemble trained as a population against single runs, and
bad input as one line and exit 2."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import imdb_lstm
from tests.helpers import evaluate_cli
from vdrnn import checkpoint as ckpt_lib
from vdrnn import seq_eval, seq_task, tasks, uncertainty
from vdrnn.data import sentiment as data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "data")


def _config():
  c = imdb_lstm.get_config("tiny")
  c.data_dir, c.verify_checksums = TINY, False
  c.train.num_epochs = 1
  c.train.progress = False
  c.eval.mc_samples = 4
  c.eval.ood = "scaledata"
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  c = _config()
  workdir = str(tmp_path_factory.mktemp("imdb"))
  return c, workdir, tasks.train_and_evaluate(c, workdir)


def _ece_by_loop(p, labels, n_bins):
  """Expected calibration error by a loop over equal-width bins of the top-label confidence."""
  conf, pred = p.max(1), p.argmax(1)
  total = 0.0
  for b in range(n_bins):
    lo, hi = b / n_bins, (b + 1) / n_bins
    inside = [i for i in range(len(p)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
    if inside:
      acc = np.mean([pred[i] == labels[i] for i in inside])
      total += len(inside) / len(p) * abs(acc - np.mean(conf[inside]))
  return total


def _auroc_by_pairs(s_in, s_out):
  """P(score of an OOD input > score of an in-distribution one), ties counted half."""
  return np.mean([(o > i) + 0.5 * (o == i) for o in s_out for i in s_in])


def _entropy(p):
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)


def test_predictions_are_saved_and_the_metrics_come_from_them(run):
  c, workdir, r = run
  pred = np.load(os.path.join(workdir, "predictions_test.npz"))
  labels, probs, probs_mc, mi_mc = pred["labels"], pred["probs"], pred["probs_mc"], pred["mi_mc"]
  probs_ts, t = pred["probs_ts"], r["test_ts_temperature"]
  n = len(labels)
  assert probs.shape == probs_mc.shape == probs_ts.shape == (n, 2) and mi_mc.shape == (n,)
  np.testing.assert_allclose(probs.sum(1), 1, atol=1e-12)
  # temperature scaling: the approximation's logits (log probs up to a constant) over T
  np.testing.assert_allclose(probs_ts, uncertainty.softmax(np.log(probs) / t), rtol=1e-5)
  assert (probs_ts.argmax(1) == probs.argmax(1)).all() and 0.05 <= t <= 20
  probs_mc_ts = pred["probs_mc_ts"]
  assert probs_mc_ts.shape == (n, 2) and r["test_mc_ts_temperature"] > 0
  for suffix, p in (("", probs), ("_mc", probs_mc), ("_ts", probs_ts), ("_mc_ts", probs_mc_ts)):
    assert r[f"test_acc{suffix}"] == pytest.approx(np.mean(p.argmax(1) == labels))
    assert r[f"test_nll{suffix}"] == pytest.approx(-np.mean(np.log(p[np.arange(n), labels])))
    assert r[f"test_brier{suffix}"] == pytest.approx(
        np.mean(np.sum((p - np.eye(2)[labels]) ** 2, 1)))
    assert r[f"test_ece{suffix}"] == pytest.approx(_ece_by_loop(p, labels, c.eval.ece_bins))
    # AURC by sorting: the mean over k of the error on the k least uncertain inputs
    h = _entropy(p)
    wrong = (p.argmax(1) != labels)[np.argsort(h, kind="stable")]
    if len(np.unique(h)) == n:
      by_sorting = np.mean(np.cumsum(wrong) / np.arange(1, n + 1))
      assert r[f"test_aurc{suffix}"] == pytest.approx(by_sorting)
  assert r["test_mi_mc"] == pytest.approx(mi_mc.mean()) and (mi_mc >= -1e-12).all()
  for name in ("reliability_test.png", "risk_coverage_test.png"):
    assert os.path.exists(os.path.join(workdir, name)), name


def test_ood_inputs_are_the_scaledata_reviews_and_auroc_is_a_pairwise_count(run):
  c, workdir, r = run
  ood = np.load(os.path.join(workdir, "predictions_ood_scaledata_test.npz"))
  x, _ = data.ood_inputs(c, "scaledata")
  assert set(ood.files) == {"probs", "probs_mc", "mi_mc", "probs_ts", "probs_mc_ts", "mi_mc_ts"}
  assert len(ood["probs"]) == len(x["x"])
  ind = np.load(os.path.join(workdir, "predictions_test.npz"))
  for key, s_in, s_out in (("auroc_entropy", _entropy(ind["probs"]), _entropy(ood["probs"])),
                           ("auroc_entropy_mc", _entropy(ind["probs_mc"]),
                            _entropy(ood["probs_mc"])),
                           ("auroc_mi_mc", ind["mi_mc"], ood["mi_mc"])):
    assert r[f"test_ood_scaledata_{key}"] == pytest.approx(_auroc_by_pairs(s_in, s_out)), key
  assert 0 <= r["test_ood_scaledata_aupr_mi_mc"] <= 1


def test_evaluate_cli_rewrites_the_same_predictions(run, capsys):
  c, workdir, r = run
  evaluate_cli(["evaluate", f"--workdir={workdir}"])
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  first = np.load(os.path.join(workdir, "predictions_test.npz"))
  second = np.load(os.path.join(workdir, "predictions_best_test.npz"))  # eval.checkpoint=best
  for k in first.files:
    np.testing.assert_allclose(second[k], first[k], rtol=1e-6, atol=1e-9)
  assert again["test_ood_scaledata_auroc_mi_mc"] == pytest.approx(
      r["test_ood_scaledata_auroc_mi_mc"], abs=1e-6)
  assert os.path.exists(os.path.join(workdir, "predictions_ood_scaledata_best_test.npz"))


def test_an_mc_evaluation_killed_half_way_resumes_to_the_same_predictions(run, tmp_path,
                                                                          monkeypatch):
  """Each MC pass of an evaluation saves its outputs in the workdir as it goes (here after every
  batch) and once more when it ends. Killed half-way through its OOD pass, the evaluation
  resumes there without running the finished test pass again, ends with the predictions and
  metrics of one uninterrupted evaluation, bit for bit, and leaves no saved state behind. The
  state of another pass (another sample count) is not resumed."""
  c, src, _ = run
  wd = str(tmp_path / "wd")
  shutil.copytree(src, wd)
  c = c.copy_and_resolve_references()
  c.eval.batch_size = 8  # 16 test rows: 2 batches

  def evaluate(config=c):
    return tasks.evaluate_workdir(config, wd, checkpoint="best", split="test", progress=False)
  want = evaluate()
  names = ("predictions_best_test.npz", "predictions_ood_scaledata_best_test.npz")
  arrays = {n: dict(np.load(os.path.join(wd, n))) for n in names}
  test_part = "predict_best_test.partial.npz"
  cal_part = "predict_calibration_best_test.partial.npz"  # the validation split's MC pass
  n_cal = -(-len(seq_task.load_data(c)[0]["valid"]["y"]) // 8)
  ood_part = "predict_ood_scaledata_best_test.partial.npz"
  n_ood = -(-len(arrays[names[1]]["probs"]) // 8)
  assert n_ood >= 3

  class Killed(Exception):
    pass

  monkeypatch.setattr(seq_eval, "SAVE_SECONDS", -1.0)
  save, saves, kill = seq_eval._save_partial, [], [True]

  def killed_in_ood_batch_2(path, fingerprint, batches, det, mc):
    save(path, fingerprint, batches, det, mc)
    saves.append((os.path.basename(path), batches))
    if kill[0] and path.endswith(ood_part) and batches == 2:
      raise Killed
  monkeypatch.setattr(seq_eval, "_save_partial", killed_in_ood_batch_2)
  with pytest.raises(Killed):
    evaluate()
  assert saves == [(test_part, 1), (test_part, 2), *[(cal_part, b) for b in range(1, n_cal + 1)],
                   (ood_part, 1), (ood_part, 2)]
  saves.clear()
  got = evaluate()
  assert saves == [(ood_part, b) for b in range(3, n_ood + 1)]  # the test pass is not run again
  assert got == want
  for n in names:
    again = np.load(os.path.join(wd, n))
    assert sorted(again.files) == sorted(arrays[n])
    for k in again.files:
      np.testing.assert_array_equal(again[k], arrays[n][k], err_msg=f"{n}: {k}")
  assert not glob.glob(os.path.join(wd, "*.partial.npz"))

  saves.clear()  # a pass of 4 samples killed, then one of 2 samples: it starts afresh
  with pytest.raises(Killed):
    evaluate()
  saves.clear()
  kill[0] = False
  two = c.copy_and_resolve_references()
  two.eval.mc_samples = 2
  assert evaluate(two)["mc_samples"] == 2 and saves[0] == (test_part, 1)
  assert not glob.glob(os.path.join(wd, "*.partial.npz"))


@pytest.mark.parametrize("arg", ["variational", "naive", "none"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_mc_chunk_vectorised_or_in_turn_is_each_sample_on_its_own(arg, cell):
  """``eval.mc_vectorise``: a chunk of samples run as one vmapped pass and one after another
  (lax.map) both give, for each sample, the model applied alone with that sample's masks
  (``fold_in(key, s)``); padded rows included."""
  import jax  # noqa: PLC0415
  from vdrnn import models  # noqa: PLC0415
  c = _config() if arg == "variational" else imdb_lstm.get_config(f"{arg},tiny")
  c.model.cell = cell
  m = c.model
  params = models.init_seq(jax.random.key(3), m)
  x = np.random.RandomState(0).randint(3, m.vocab_size, (6, 9)).astype(np.int32)
  x[:2, :4] = 0  # left padding
  key, ids = jax.random.key(7), np.arange(2, 5, dtype=np.uint32)
  alone = np.stack([np.asarray(models.seq_apply(
      params, x, models.seq_masks(jax.random.fold_in(key, s), m, x), **models.seq_semantics(m)))
      for s in ids])
  for how in ("vmap", "map"):
    c.eval.mc_vectorise = how
    assert seq_eval.mc_vmap(c) == (how == "vmap")
    out = np.asarray(seq_eval.make_predict_fns(c)[1](params, x, key, ids))
    np.testing.assert_allclose(out, alone, rtol=1e-5, atol=1e-6, err_msg=how)
  if arg == "variational":  # the samples differ: masks are drawn per sample
    assert np.abs(alone[0] - alone[1]).max() > 1e-4
  c.eval.mc_vectorise = "auto"
  assert not seq_eval.mc_vmap(c)  # these tests run on the CPU: in turn


def test_ensemble_equals_stacking_every_member_pass():
  rng = np.random.default_rng(0)
  members = [uncertainty.softmax(rng.normal(size=(5, 7, 3)) * (m + 1)) for m in range(4)]
  stacked = uncertainty.predictive(np.concatenate(members))
  combined = uncertainty.ensemble([uncertainty.predictive(m) for m in members])
  np.testing.assert_allclose(combined["probs"], stacked["probs"], rtol=1e-12)
  np.testing.assert_allclose(combined["mi"], stacked["mi"], rtol=1e-10, atol=1e-12)
  single = uncertainty.ensemble([{"probs": m[0], "mi": np.zeros(7)} for m in members])
  np.testing.assert_allclose(single["mi"], uncertainty.mutual_information(
      np.stack([m[0] for m in members])), atol=1e-12)


def test_ensemble_population_members_are_the_single_runs_with_their_seeds(run, tmp_path, capsys):
  """A deep ensemble trained as one vmapped population (seeds 2 and 0; the config's own seed 7
  used by neither): member 1's saved test predictions (dropout approximation, MC dropout, OOD)
  equal the single run with seed 0, member 0's differ; the ensemble's metrics are those of the
  members' mean probabilities."""
  _, single0, _ = run
  c = _config()
  c.seed, c.population.seed = 7, (2, 0)
  pop = tasks.train_and_evaluate(c, str(tmp_path / "pop"))
  members = [str(tmp_path / "pop" / f"member_{k:02d}") for k in range(2)]
  for name in ("predictions_test.npz", "predictions_ood_scaledata_test.npz"):
    got, want = np.load(os.path.join(members[1], name)), np.load(os.path.join(single0, name))
    assert got.files == want.files
    for k in want.files:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    other = np.load(os.path.join(members[0], name))
    assert np.abs(other["probs"] - want["probs"]).max() > 1e-4  # another seed, another model
  preds = [np.load(os.path.join(m, "predictions_test.npz")) for m in members]
  labels, p = preds[0]["labels"], np.mean([q["probs"] for q in preds], 0)
  ens = pop["ensemble"]
  assert ens["test_acc"] == pytest.approx(np.mean(p.argmax(1) == labels))
  assert ens["test_nll"] == pytest.approx(-np.mean(np.log(p[np.arange(len(labels)), labels])))
  assert ens["test_ece"] == pytest.approx(_ece_by_loop(p, labels, c.eval.ece_bins))
  ood = np.mean([np.load(os.path.join(m, "predictions_ood_scaledata_test.npz"))["probs"]
                 for m in members], 0)
  assert ens["test_ood_scaledata_auroc_entropy"] == pytest.approx(
      _auroc_by_pairs(_entropy(p), _entropy(ood)))
  assert "test_acc_mc" in ens and "test_ood_scaledata_auroc_mi_mc" in ens  # members x samples
  assert [m["seed"] for m in pop["members"]] == [2, 0]
  said = capsys.readouterr().err.splitlines()  # a line per member and one for the ensemble
  def shown(start):  # "start: name value, name value (...)" as {name: value}
    line = next(l for l in said if l.startswith(start))
    return dict(kv.split(" ") for kv in line[len(start):].split(" (")[0].split(", "))
  assert shown("seed 0: ")["test_acc"] == f"{pop['members'][1]['test_acc']:.4g}", said
  assert shown("ensemble of 2: ")["test_nll_mc"] == f"{ens['test_nll_mc']:.4g}", said
  steps = ",".join(str(m["step"]) for m in pop["members"])  # the checkpoints it combines
  assert any(l.startswith("ensemble of 2: ") and l.endswith(
      f"checkpoint each member's {c.eval.checkpoint}, step {steps})") for l in said), said
  for m in members:  # each member's directory reads like a single run's workdir
    for name in ("config.json", "results.json", "learning_curve.png", "reliability_test.png"):
      assert os.path.exists(os.path.join(m, name)), name


@pytest.mark.parametrize("flag,message", [
    ("--config.eval.ood=wiki", "error: eval.ood: 'wiki' is not an OOD set of imdb"),
    ("--config.eval.mc_samples=-1", "error: eval."),
    ("--config.eval.mc_every_epochs=1", "error: eval.mc_every_epochs > 0 MC-evaluates the test"),
    ("--config.eval.checkpoint=middle", "error: eval.checkpoint must be 'last' or 'best'"),
    ("--config.eval.mc_vectorise=gpu", "error: eval.mc_vectorise must be one of auto, vmap, map"),
])
def test_bad_ood_set_or_sample_count_is_one_line_and_exit_2(tmp_path, flag, message):
  p = subprocess.run([sys.executable, "-m", "vdrnn.train", "--config",
                      "configs/imdb_lstm.py:tiny", f"--config.data_dir={TINY}",
                      "--config.verify_checksums=False", "--workdir", str(tmp_path / "w"), flag],
                     cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                     text=True, timeout=300)
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2, p.stderr[-2000:]
  assert "Traceback" not in p.stderr and lines[-1].startswith(message), p.stderr[-2000:]
  assert [l for l in lines if l.startswith("error:")] == lines[-1:]


def test_the_test_set_is_touched_once_at_the_end(run):
  """With a validation split (``eval.test_every_epoch=False``, the IMDB default) the epoch
  records hold training and validation metrics only; the test set is evaluated at the end.
  ``:keras`` (its validation data is the test set) reports test every epoch."""
  c, workdir, r = run
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    epochs = [json.loads(l) for l in f if '"epoch"' in l]
  epochs = [e for e in epochs if e.get("event") == "epoch"]
  assert not c.eval.test_every_epoch and epochs
  assert all("valid_acc" in e and not any(k.startswith("test_") for k in e) for e in epochs)
  assert "test_acc" in r and "test_acc_mc" in r
  assert imdb_lstm.get_config("keras").eval.test_every_epoch


def test_the_final_test_evaluates_the_best_epoch_of_a_run_and_of_each_member(tmp_path, capsys):
  """``eval.checkpoint=best`` (the IMDB default): a run that over-fits after its first epoch
  reports the test set of its best epoch by validation NLL, exactly what ``vdrnn.evaluate
  --checkpoint=best`` computes from that checkpoint; a population member, of its own best
  epoch, equal to the single run with its seed."""
  c = _config()
  c.model.p_emb = c.model.p_x = c.model.p_h = c.model.p_out = 0.0
  c.train.num_epochs, c.eval.mc_samples, c.eval.ood = 4, 0, ""
  single = str(tmp_path / "single")
  r = tasks.train_and_evaluate(c, single)
  assert c.eval.checkpoint == "best" and r["checkpoint"] == "best"
  _, last = ckpt_lib.find(single, "latest")  # the step after epoch 4
  assert r["best"]["epoch"] < 4 and r["step"] * 4 == last * r["best"]["epoch"]
  evaluate_cli(["evaluate", f"--workdir={single}"])  # by default, the checkpoint reported
  again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert again["step"] == r["step"] and again["test_nll"] == pytest.approx(r["test_nll"], 1e-6)
  first = np.load(os.path.join(single, "predictions_test.npz"))
  np.testing.assert_allclose(np.load(os.path.join(single, "predictions_best_test.npz"))["probs"],
                             first["probs"], rtol=1e-6, atol=1e-9)
  # Resumed == uninterrupted: stopped right after its best epoch and resumed (a new checkpoint
  # manager), the run still holds that epoch's checkpoint when two later ones have pushed it
  # out of the latest two, and reports the same test.
  assert r["best"]["epoch"] <= 2
  stopped = str(tmp_path / "stopped")
  c.train.num_epochs = r["best"]["epoch"]
  tasks.train_and_evaluate(c, stopped)
  c.train.num_epochs = 4
  resumed = tasks.train_and_evaluate(c, stopped)
  assert (resumed["step"], resumed["best"]) == (r["step"], r["best"])
  assert resumed["test_nll"] == pytest.approx(r["test_nll"], rel=1e-6)
  c.population.seed = (c.seed, c.seed + 5)
  pop = tasks.train_and_evaluate(c, str(tmp_path / "pop"))
  member = pop["members"][0]
  assert (member["checkpoint"], member["step"]) == ("best", r["step"])
  assert member["best"]["epoch"] == r["best"]["epoch"]
  assert member["best"]["value"] == pytest.approx(r["best"]["value"], rel=1e-6)
  got = np.load(os.path.join(tmp_path / "pop" / "member_00", "predictions_test.npz"))
  np.testing.assert_allclose(got["probs"], first["probs"], rtol=1e-5, atol=1e-6)


def test_check_predictions_recomputes_the_table_from_the_saved_arrays(run, tmp_path):
  """``python -m launch.check_predictions``: the report's accuracy, NLL and ECE of a row agree
  with those recomputed from its ``predictions_test.npz`` (exit 0); a table value moved by
  1e-5 is caught and named (exit 1)."""
  from launch import report
  _, workdir, _ = run
  root, out = tmp_path / "root", tmp_path / "results"
  root.mkdir()
  os.symlink(workdir, root / "imdb_lstm_variational_untied")
  report.report(str(root), str(out), [])
  cmd = [sys.executable, "-m", "launch.check_predictions", "--workdir_root", str(root),
         "--results_dir", str(out)]
  good = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert good.returncode == 0, good.stdout + good.stderr
  assert "4 row-modes checked, 0 beyond 1e-06" in good.stdout  # probs, _mc, _ts, _mc_ts
  doc = json.loads((out / "results.json").read_text())
  rec = next(r for r in doc["rows"] if r["row"] == "imdb_lstm_variational_untied")
  rec["results"]["test_ece_mc"] += 1e-5
  (out / "results.json").write_text(json.dumps(doc))
  bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1
  assert "1 beyond 1e-06: imdb_lstm_variational_untied probs_mc" in bad.stdout


def test_mc_temperature_is_fitted_on_the_validation_passes_and_a_reevaluation_adds_it(run,
                                                                                     tmp_path):
  """MC dropout temperature-scaled (``_mc_ts``): the temperature minimises the calibration
  split's NLL of the mean over MC passes of ``softmax(logits_s / T)`` (a grid over T, a loop
  over passes), and the saved test predictive is that mean at T. (The tiny run's two held-out
  reviews are both wrong, which puts T at the search's bound; here the calibration split is the
  training reviews, labelled by the model itself with every fourth flipped, and the weights
  are scaled by 3, so the minimum is inside.) A row that ran before the mode existed takes it
  from a re-evaluation of the same checkpoint (``vdrnn.evaluate``): the report shows it and
  ``check_predictions`` recomputes it; a re-evaluation of another step is ignored."""
  from launch import report
  c, workdir, r = run
  head = tasks.of(c).HEAD
  state, _, splits, info, fns, mesh = seq_task.restore_workdir(c, workdir, head, "best")
  params, n = jax.tree.map(lambda a: 3 * a, state["params"]), c.eval.mc_samples
  det_c, mc_c = seq_eval.predict(c, fns, params, splits["train"]["x"], mesh, samples=n)
  y_c = det_c.argmax(1)
  y_c[::4] = 1 - y_c[::4]
  _, mc_t = seq_eval.predict(c, fns, params, splits["test"]["x"], mesh, samples=n)
  y_t = np.asarray(splits["test"]["y"])
  got = seq_eval.evaluate(c, head, fns, params, splits["test"], info, mesh, samples=n,
                          workdir=str(tmp_path), tag="t",
                          calibration={"x": splits["train"]["x"], "y": y_c})

  def mean_probs(mc, t):
    return np.mean([np.exp(mc[s] / t) / np.exp(mc[s] / t).sum(1, keepdims=True)
                    for s in range(n)], 0)

  grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 2001))
  nlls = [-np.mean(np.log(mean_probs(mc_c, g)[np.arange(len(y_c)), y_c])) for g in grid]
  t = got["mc_ts_temperature"]
  assert 0.06 < t < 19 and t != pytest.approx(got["ts_temperature"], rel=0.1)
  assert abs(np.log(t) - np.log(grid[int(np.argmin(nlls))])) < 5e-3
  saved = np.load(tmp_path / "predictions_t.npz")
  np.testing.assert_allclose(saved["probs_mc_ts"], mean_probs(mc_t, t), rtol=1e-6, atol=1e-9)
  assert got["nll_mc_ts"] == pytest.approx(
      -np.mean(np.log(mean_probs(mc_t, t)[np.arange(len(y_t)), y_t])), rel=1e-6)

  root, out = tmp_path / "root", tmp_path / "results"
  old = root / "imdb_lstm_variational_untied"  # as a row that ran before ``_mc_ts`` existed
  shutil.copytree(workdir, old)
  res = json.loads((old / "results.json").read_text())
  (old / "results.json").write_text(json.dumps(
      {k: v for k, v in res.items() if "mc_ts" not in k}))
  saved = np.load(os.path.join(workdir, "predictions_test.npz"))
  np.savez(old / "predictions_test.npz",
           **{k: v for k, v in saved.items() if "mc_ts" not in k})
  for f in glob.glob(str(old / "eval_*")) + glob.glob(str(old / "predictions_best_*")):
    os.remove(f)

  def reported():
    report.report(str(root), str(out), [])
    doc = json.loads((out / "results.json").read_text())
    return next(x for x in doc["rows"] if x["row"] == old.name)["results"]
  assert "test_acc_mc_ts" not in reported()
  tasks.evaluate_workdir(c, str(old), checkpoint="best", split="test", progress=False)
  got = reported()
  for k in ("test_acc_mc_ts", "test_nll_mc_ts", "test_ece_mc_ts", "test_mc_ts_temperature"):
    assert got[k] == pytest.approx(r[k], rel=1e-6), k
  assert got["test_nll_mc"] == r["test_nll_mc"]  # the row's own results are kept
  assert "MC dropout temperature-scaled (T = " in (out / "README_table.md").read_text()
  cmd = [sys.executable, "-m", "launch.check_predictions", "--workdir_root", str(root),
         "--results_dir", str(out)]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and "4 row-modes checked, 0 beyond 1e-06" in done.stdout, done.stdout
  again = json.loads((old / "eval_best_test.json").read_text())
  (old / "eval_best_test.json").write_text(json.dumps({**again, "step": again["step"] + 1}))
  assert "test_acc_mc_ts" not in reported()


def test_mc_gap_passes_against_the_evaluation_and_a_loop_over_samples(run, tmp_path):
  """``python -m launch.mc_gap``: its dropout approximation and MC predictive on the validation
  split are the evaluation's own (``vdrnn.evaluate --split valid``); one MC sample's metrics are
  each sample's, averaged by a loop; the predictive's NLL is at most one sample's mean (Jensen);
  with one sample the two are the same; a sample count below 1 is one line and exit 2."""
  from launch import mc_gap
  c, workdir, _ = run
  copy = str(tmp_path / "w")
  shutil.copytree(workdir, copy)
  e = c.copy_and_resolve_references()
  e.eval.mc_samples = 3
  ref = tasks.evaluate_workdir(e, copy, checkpoint="best", split="valid", progress=False)
  got = mc_gap.gap(copy, samples=3, train_examples=8)
  assert list(got) == ["valid", "train[:8]"]
  v = got["valid"]
  for metric in ("acc", "nll", "ece"):
    assert v["dropout approx."][metric] == pytest.approx(ref[f"valid_{metric}"], abs=1e-9)
    assert v["MC predictive"][metric] == pytest.approx(ref[f"valid_{metric}_mc"], abs=1e-9)
  for split in got.values():
    assert split["MC predictive"]["nll"] <= split["one MC sample"]["nll"] + 1e-12

  rng = np.random.default_rng(0)
  det, mc = rng.normal(size=(7, 2)), 2 * rng.normal(size=(4, 7, 2))
  labels = rng.integers(0, 2, 7)
  p = np.exp(mc) / np.exp(mc).sum(-1, keepdims=True)
  loop = {"acc": np.mean([np.mean(p[s].argmax(1) == labels) for s in range(4)]),
          "nll": np.mean([-np.mean(np.log(p[s][np.arange(7), labels])) for s in range(4)]),
          "ece": np.mean([_ece_by_loop(p[s], labels, 5) for s in range(4)]),
          "conf": np.mean([p[s].max(1).mean() for s in range(4)])}
  one = mc_gap.passes(det, mc, labels, 5)["one MC sample"]
  assert one == pytest.approx(loop, abs=1e-12)
  single = mc_gap.passes(det, mc[:1], labels, 5)
  assert single["one MC sample"] == pytest.approx(single["MC predictive"], abs=1e-12)
  assert "| valid | one MC sample (mean of 3) |" in mc_gap.table(got, 3)

  bad = subprocess.run([sys.executable, "-m", "launch.mc_gap", "--workdir", copy,
                        "--samples", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert bad.returncode == 2 and bad.stderr.strip() == "error: --samples must be at least 1, got 0"
