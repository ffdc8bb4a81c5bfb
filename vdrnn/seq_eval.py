"""Evaluation of the sequence models (``vdrnn.seq_task``: Pang & Lee regression, IMDB
classification): the dropout approximation and MC dropout, and their metrics.

* ``make_predict_fns``: the jitted deterministic pass and a chunk of MC samples; sample ``s`` of
  evaluation batch ``j`` uses the masks of ``fold_in(fold_in(key(eval.seed), j), s)``;
  ``eval.mc_chunk`` samples per call, to bound memory, run vectorised or one after another
  (``eval.mc_vectorise``, ``mc_vmap``; the same outputs);
* ``predict``: outputs for every row of a split, in batches of ``eval.batch_size``; given a
  ``partial`` file it saves its state as it goes and resumes from it (a long MC pass that a
  session's end kills goes on where it stopped, with the same outputs);
* a task's ``Head`` says what its outputs mean: ``REGRESSION`` (one output, squared error on
  standardised ratings; metrics in rating units: RMSE, the predictive log-likelihood with the
  released ``tau`` and with ``tau`` fitted on training examples, the MC predictive std and its
  epistemic and aleatoric parts) or ``CLASSIFICATION`` (K outputs, softmax cross-entropy;
  accuracy, NLL, ECE, predictive entropy and mutual information, ``vdrnn.uncertainty``);
* ``evaluate``: the head's ``summarize`` of one split, and a reliability diagram for
  classification.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vdrnn import checkpoint as ckpt_lib
from vdrnn import models, plots, sharding, uncertainty
from vdrnn.config import compute_dtype
from vdrnn.data import sentiment as sentiment_data


MC_VECTORISE = ("auto", "vmap", "map")  # eval.mc_vectorise


def mc_vmap(config) -> bool:
  """Whether a chunk's MC samples run vectorised (``jax.vmap``: one pass over ``[C, B, ...]``)
  rather than one after another (``jax.lax.map``): ``eval.mc_vectorise`` ``"vmap"``, or
  ``"auto"`` on an accelerator. On the CPU the samples in turn keep each step's working set in
  cache (IMDB's shape, B = 256, C = 5, Zen 4: 1.1-1.3x faster beside two runs, 1.4x for the
  variational LSTM on a core of its own; ``launch/results/bench/seq_mc_ab.md``); on a GPU the
  wide pass fills the device."""
  how = config.eval.get("mc_vectorise", "auto")
  return how == "vmap" or (how == "auto" and jax.default_backend() != "cpu")


def make_predict_fns(config):
  """``det(params, x) -> [B, K]`` and ``mc(params, x, key, ids [C]) -> [C, B, K]`` (jitted;
  the samples vectorised or in turn as ``mc_vmap`` says, each from its own key either way)."""
  m, t = config.model, config.train
  dtype = compute_dtype(config)
  vmap = mc_vmap(config)

  def det(params, x):
    return models.seq_apply(params, x, None, **models.seq_semantics(m), unroll=t.unroll,
                            compute_dtype=dtype)

  def mc(params, x, key, ids):
    def one(s):
      masks = models.seq_masks(jax.random.fold_in(key, s), m, x)
      return models.seq_apply(params, x, masks, **models.seq_semantics(m), unroll=t.unroll,
                              compute_dtype=dtype)
    return jax.vmap(one)(ids) if vmap else jax.lax.map(one, ids)

  return jax.jit(det), jax.jit(mc)


SAVE_SECONDS = 300.0  # a ``predict`` with a ``partial`` file writes its state this often


def _fingerprint(config, params, x: np.ndarray, samples: int) -> str:
  """What a ``predict`` pass's saved state is valid for: the evaluation settings, the model's
  config, the inputs and the parameters (checksums)."""
  e = config.eval
  return json.dumps({
      "samples": samples, "chunk": int(e.mc_chunk), "batch_size": int(e.batch_size),
      "vmap": mc_vmap(config),
      "seed": int(e.seed), "model": config.model.to_dict(),
      "dtype": str(config.train.compute_dtype), "unroll": int(config.train.unroll),
      "rows": list(x.shape), "x": int(np.asarray(x, np.int64).sum()),
      "params": ckpt_lib.params_checksum(params)}, sort_keys=True, default=str)


def _save_partial(path: str, fingerprint: str, batches: int, det: np.ndarray,
                  mc: Optional[np.ndarray]) -> None:
  """``predict``'s outputs of its first ``batches`` batches (``checkpoint.save_npz``)."""
  ckpt_lib.save_npz(path, fingerprint=np.asarray(fingerprint), batches=batches, det=det,
                    **({} if mc is None else {"mc": mc}))


def predict(config, fns, params, x: np.ndarray, mesh, *, samples: int = 0, progress: bool = False,
            partial: Optional[str] = None):
  """Outputs for every row of ``x [N, T]``: ``(det [N, K], mc [S, N, K] or None)``.

  Rows go in batches of ``eval.batch_size`` (the last padded and cut off again); MC samples
  in chunks of ``eval.mc_chunk`` (the last chunk padded with extra samples, dropped).

  ``partial``: a file (``.npz``) where the pass writes the outputs of the batches done every
  ``SAVE_SECONDS`` and once more when it ends, and which it resumes from when it holds the
  outputs of the same pass (settings, inputs and parameters): a pass killed half-way goes on
  where it stopped, and one that ended is not run again, with the outputs of one uninterrupted
  pass. The caller removes the file once it has used the outputs.
  """
  det_fn, mc_fn = fns
  e = config.eval
  B, C = e.batch_size, e.mc_chunk
  base = jax.random.key(e.seed)
  n = len(x)
  dets, mcs = [], []
  n_batches = -(-n // B)
  first = 0
  fingerprint = partial and _fingerprint(config, params, x, samples)
  saved = ckpt_lib.load_npz(partial) if partial else None
  if saved is not None and str(saved.get("fingerprint")) == fingerprint:
    first = int(saved["batches"])
    dets.append(saved["det"])
    if samples:
      mcs.append(saved["mc"])
  bar = tqdm(total=n_batches,
             initial=first,
             desc=f"MC x{samples}" if samples else "eval",
             disable=not progress,
             leave=False,
             dynamic_ncols=True,
             file=sys.stderr)
  saved_at = time.time()
  for j in range(first, n_batches):
    rows = x[j * B:(j + 1) * B]
    k = len(rows)
    xb = sharding.put_batch(np.concatenate([rows, np.zeros((B - k, x.shape[1]), np.int32)]), mesh)
    dets.append(sharding.to_host(det_fn(params, xb))[:k])
    if samples:
      key = jax.random.fold_in(base, j)
      outs = [
          sharding.to_host(mc_fn(params, xb, key, jnp.arange(s, s + C, dtype=jnp.uint32)))[:, :k]
          for s in range(0, samples, C)
      ]
      mcs.append(np.concatenate(outs)[:samples])
    bar.update(1)
    if partial and j + 1 < n_batches and time.time() - saved_at > SAVE_SECONDS:
      dets, mcs = [np.concatenate(dets)], ([np.concatenate(mcs, axis=1)] if samples else [])
      _save_partial(partial, fingerprint, j + 1, dets[0], mcs[0] if samples else None)
      saved_at = time.time()
  bar.close()
  det, mc = np.concatenate(dets), (np.concatenate(mcs, axis=1) if samples else None)
  if partial and first < n_batches:
    _save_partial(partial, fingerprint, n_batches, det, mc)
  return det, mc


def ratings(info: dict, out: np.ndarray) -> np.ndarray:
  """Regression outputs ``[..., 1]`` (standardised) in rating units ``[...]``, float64."""
  return out[..., 0].astype(np.float64) * info["y_std"] + info["y_mean"]


def fit_taus(info: dict, y: np.ndarray, det: np.ndarray, mc: Optional[np.ndarray]) -> dict:
  """Model precisions fitted on ``(y, predictions)`` (``uncertainty.fit_tau``): ``det`` for the
  dropout approximation and, given samples, ``mc`` for MC dropout."""
  taus = {"det": uncertainty.fit_tau(y, ratings(info, det)[None])}
  if mc is not None:
    taus["mc"] = uncertainty.fit_tau(y, ratings(info, mc))
  return taus


def _regression_summary(config, info: dict, y: np.ndarray, det: np.ndarray,
                        mc: Optional[np.ndarray], taus: Optional[dict] = None) -> dict:
  """Regression, in rating units: ``rmse``; ``ll`` with the config's ``eval.tau`` (the released
  scripts' 0.1); with ``taus`` (``fit_taus`` on training examples) also ``ll_fit`` and
  ``tau_fit``; MC dropout adds the predictive std and its parts, ``std_epistemic`` (the
  samples' spread) and ``std_aleatoric`` (``sqrt(1 / tau)``)."""
  e = config.eval

  def summary(pred, tau, suffix, keys):
    r = uncertainty.regression_summary(y, pred, tau)
    return {f"{k}{suffix}": r[k] for k in keys}

  out = summary(ratings(info, det)[None], e.tau, "", ("rmse", "ll"))
  if taus is not None:
    out.update(summary(ratings(info, det)[None], taus["det"], "_fit", ("ll",)))
    out["tau_fit"] = taus["det"]
  if mc is not None:
    out.update(summary(ratings(info, mc), e.tau, "_mc",
                       ("rmse", "ll", "pred_std", "std_epistemic", "std_aleatoric")))
    if taus is not None and "mc" in taus:
      out.update(summary(ratings(info, mc), taus["mc"], "_fit_mc", ("ll", "std_aleatoric")))
      out["tau_fit_mc"] = taus["mc"]
  return out


def predictions(det: np.ndarray, mc: Optional[np.ndarray], labels=None,
                temperature: Optional[float] = None,
                mc_temperature: Optional[float] = None) -> dict:
  """What ``predictions_<tag>.npz`` holds, from logits ``det [N, K]`` and ``mc [S, N, K]``:
  ``probs`` (the dropout approximation, ``[N, K]``); with MC samples, ``probs_mc`` (their mean
  probability, ``[N, K]``) and ``mi_mc`` (the mutual information, ``[N]``); with a
  ``temperature`` (``uncertainty.fit_temperature`` on the validation split), ``probs_ts``
  (``softmax(det / temperature)``, ``[N, K]``); with an ``mc_temperature`` (fitted on the
  validation split's MC passes), ``probs_mc_ts`` and ``mi_mc_ts`` (``uncertainty.
  scaled_predictive`` of ``mc``); ``labels [N]`` when given. Every classification metric is
  computed from these arrays."""
  out = {} if labels is None else {"labels": np.asarray(labels)}
  out["probs"] = uncertainty.softmax(det)
  if mc is not None:
    pred = uncertainty.predictive(uncertainty.softmax(mc))
    out["probs_mc"], out["mi_mc"] = pred["probs"], pred["mi"]
  if temperature is not None:
    out["probs_ts"] = uncertainty.softmax(np.asarray(det, np.float64) / temperature)
  if mc is not None and mc_temperature is not None:
    pred = uncertainty.scaled_predictive(mc, mc_temperature)
    out["probs_mc_ts"], out["mi_mc_ts"] = pred["probs"], pred["mi"]
  return out


ONE_PASS = ("", "_ts")  # the modes of one forward pass (``modes``): no mutual information


def modes(preds: dict) -> dict:
  """``{"": dropout approximation, "_mc": MC dropout, "_ts": the dropout approximation
  temperature-scaled, "_mc_ts": MC dropout temperature-scaled}`` (those ``preds`` has) as
  ``uncertainty.predictive`` dicts (one pass has mutual information 0)."""
  zero = np.zeros(len(preds["probs"]))
  out = {"": {"probs": preds["probs"], "mi": zero}}
  if "probs_mc" in preds:
    out["_mc"] = {"probs": preds["probs_mc"], "mi": preds["mi_mc"]}
  if "probs_ts" in preds:
    out["_ts"] = {"probs": preds["probs_ts"], "mi": zero}
  if "probs_mc_ts" in preds:
    out["_mc_ts"] = {"probs": preds["probs_mc_ts"], "mi": preds["mi_mc_ts"]}
  return out


def mode_metrics(pred: dict, labels, n_bins: int, one_pass: bool = False) -> dict:
  """``uncertainty.summary`` of one predictive distribution ``pred`` (``{"probs", "mi"}``)
  and the area under its risk-coverage curve with the inputs accepted by predictive entropy
  (``aurc``) and by mutual information (``aurc_mi``); ``one_pass`` (the dropout approximation,
  whose mutual information is 0) leaves the mutual-information metrics out."""
  out = uncertainty.summary(pred, labels, n_bins)
  correct = np.argmax(pred["probs"], -1) == np.asarray(labels)
  scores = uncertainty.ood_scores(pred)
  out["aurc"] = uncertainty.aurc(scores["entropy"], correct)
  out["aurc_mi"] = uncertainty.aurc(scores["mi"], correct)
  return {k: v for k, v in out.items() if not (one_pass and k.startswith(("mi", "aurc_mi")))}


def mode_ood(pred: dict, pred_ood: dict, one_pass: bool = False) -> dict:
  """AUROC and AUPR (OOD inputs positive) of the predictive entropy and, unless ``one_pass``,
  the mutual information: ``auroc_entropy``, ``aupr_entropy``, ``auroc_mi``, ``aupr_mi``."""
  keep = ("entropy",) if one_pass else ("entropy", "mi")
  return {k: v for k, v in uncertainty.ood_detection(pred, pred_ood).items()
          if k.split("_", 1)[1] in keep}


def prediction_metrics(preds: dict, n_bins: int) -> dict:
  """``mode_metrics`` of the dropout approximation and, suffixed ``_mc``, ``_ts`` and
  ``_mc_ts``, of MC dropout and of the two temperature-scaled (``modes``)."""
  out = {}
  for suffix, pred in modes(preds).items():
    out.update({k + suffix: v for k, v in
                mode_metrics(pred, preds["labels"], n_bins, suffix in ONE_PASS).items()})
  return out


def ood_metrics(preds: dict, preds_ood: dict) -> dict:
  """``mode_ood`` of each mode (``modes``): ``auroc_entropy``, ``aupr_entropy``,
  ``auroc_entropy_mc``, ``auroc_mi_mc``, ``auroc_entropy_ts``, ..."""
  ood = modes(preds_ood)
  out = {}
  for suffix, pred in modes(preds).items():
    out.update({k + suffix: v for k, v in mode_ood(pred, ood[suffix], suffix in ONE_PASS).items()})
  return out


def ensemble_metrics(dirs: list[str], n_bins: int, tag: str = "test") -> dict:
  """The deep ensemble of the members whose workdirs are ``dirs``, measured as one model from
  their saved ``predictions_<tag>.npz``: the mean of their dropout approximations
  (``uncertainty.ensemble``; keys ``<tag>_<metric>``) and, where every member has MC samples,
  of their MC predictives (members x samples; ``<tag>_<metric>_mc``), by ``mode_metrics``;
  OOD detection (``mode_ood``) against every OOD set all members saved
  (``predictions_ood_<name>_<tag>.npz``; keys ``<tag>_ood_<name>_<metric>[_mc]``)."""
  load = lambda d, f: dict(np.load(os.path.join(d, f)))  # noqa: E731
  saved = [load(d, f"predictions_{tag}.npz") for d in dirs]
  labels, members = saved[0]["labels"], [modes(p) for p in saved]
  suffix = f"_{tag}.npz"
  oods = sorted(set.intersection(*({f for f in os.listdir(d) if f.startswith("predictions_ood_")
                                    and f.endswith(suffix)} for d in dirs)))
  ood_members = {f[len("predictions_ood_"):-len(suffix)]: [modes(load(d, f)) for d in dirs]
                 for f in oods}
  out = {}
  for mode in set.intersection(*(set(m) for m in members)):  # the modes every member has
    ens = uncertainty.ensemble([m[mode] for m in members])
    out.update({f"{tag}_{k}{mode}": v for k, v in mode_metrics(ens, labels, n_bins).items()})
    for name, ms in ood_members.items():
      if all(mode in m for m in ms):
        ood = uncertainty.ensemble([m[mode] for m in ms])
        out.update({f"{tag}_ood_{name}_{k}{mode}": v for k, v in mode_ood(ens, ood).items()})
  return {k: float(v) for k, v in sorted(out.items())}


def _classification_summary(config, info: dict, y: np.ndarray, det: np.ndarray,
                            mc: Optional[np.ndarray], taus: Optional[dict] = None) -> dict:
  """Classification: ``prediction_metrics`` of the dropout approximation and MC dropout."""
  return prediction_metrics(predictions(det, mc, y), config.eval.ece_bins)


def _regression_targets(split: dict, info: dict) -> np.ndarray:
  return ((split["y"] - info["y_mean"]) / info["y_std"]).astype(np.float32)


def _regression_running(acc: dict, info: dict) -> dict:
  count = max(float(acc["count"]), 1.0)
  return {"train_running_rmse": float(np.sqrt(float(acc["loss_sum"]) / count)) * info["y_std"]}


def _classification_running(acc: dict, info: dict) -> dict:
  count = max(float(acc["count"]), 1.0)
  return {"train_running_nll": float(acc["loss_sum"]) / count,
          "train_running_acc": float(acc["correct"]) / count}


def _squared_error(out: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.square(out[:, 0] - y)


def _cross_entropy(out: jax.Array, y: jax.Array) -> jax.Array:
  return -jnp.take_along_axis(jax.nn.log_softmax(out, axis=-1), y[:, None], axis=-1)[:, 0]


class Head(NamedTuple):
  """What a sequence task's outputs ``[B, K]`` mean: everything in ``vdrnn.seq_task`` that
  differs between regression and classification."""

  metric: str       # the epoch records' headline metric (rmse | acc); the learning curve's
  select: str       # lower is better: ``valid_<select>`` (or ``train_<select>``) picks the best
  loss: Callable    # (out [B, K], y [B]) -> [B] per-example loss (jax)
  classes: bool     # outputs are class logits: accuracy is counted, a reliability diagram drawn
  targets: Callable   # (split, info) -> y the loss sees, [N]
  running: Callable   # (host acc, info) -> the running training metrics
  summarize: Callable  # (config, info, y, det [N, K], mc [S, N, K] | None, taus) -> metrics
  fits_tau: bool    # regression: the model precision is fitted on training examples


REGRESSION = Head(metric="rmse", select="rmse", loss=_squared_error, classes=False,
                  targets=_regression_targets, running=_regression_running,
                  summarize=_regression_summary, fits_tau=True)
CLASSIFICATION = Head(metric="acc", select="nll", loss=_cross_entropy, classes=True,
                      targets=lambda split, info: split["y"].astype(np.int32),
                      running=_classification_running, summarize=_classification_summary,
                      fits_tau=False)


def evaluate(config,
             head: Head,
             fns,
             params,
             split: dict,
             info: dict,
             mesh,
             *,
             samples: int = 0,
             progress: bool = False,
             taus: Optional[dict] = None,
             workdir: Optional[str] = None,
             tag: str = "test",
             ood: Sequence[str] = (),
             calibration: Optional[dict] = None) -> dict:
  """The head's ``summarize`` of ``split``'s predictions (``taus``: see ``fit_taus``).

  Classification with a ``workdir`` also writes there, named by ``tag``: the per-example
  predictions ``predictions_<tag>.npz`` (``predictions``: the arrays the metrics come from),
  ``reliability_<tag>.png`` and ``risk_coverage_<tag>.png``; and for each OOD set in ``ood``
  (``vdrnn.data.sentiment.OOD_SETS``, inputs prepared as the test set) its predictions
  ``predictions_ood_<name>_<tag>.npz`` and the metrics ``ood_<name>_<auroc|aupr>_...``. With a
  ``calibration`` split (the validation set), temperature scaling fitted on its dropout
  approximation is a further mode (``_ts``; the temperature is ``ts_temperature``), and with MC
  samples one fitted on its MC passes another (``_mc_ts``, ``mc_ts_temperature``; an MC pass
  over the calibration split, with the test's sample keys). With MC
  samples and a ``workdir`` (one process), each MC pass saves its state there as it goes
  (``predict_<tag>.partial.npz``, ``predict_ood_<name>_<tag>.partial.npz``): an evaluation
  killed half-way resumes where it stopped; the files are removed when it ends."""
  saved = []  # the MC passes' saved states (``predict``'s ``partial``), removed at the end

  def partial(name: str) -> Optional[str]:
    if not (workdir and samples and jax.process_count() == 1):
      return None
    saved.append(os.path.join(workdir, f"predict_{name}.partial.npz"))
    return saved[-1]

  det, mc = predict(config, fns, params, split["x"], mesh, samples=samples, progress=progress,
                    partial=partial(tag))
  if not (head.classes and workdir):
    _remove(saved)
    return head.summarize(config, info, split["y"], det, mc, taus)
  e = config.eval
  t = t_mc = None
  if calibration is not None and len(calibration["y"]):
    det_c, mc_c = predict(config, fns, params, calibration["x"], mesh, samples=samples,
                          progress=progress, partial=partial(f"calibration_{tag}"))
    t = uncertainty.fit_temperature(det_c, calibration["y"])
    t_mc = None if mc_c is None else uncertainty.fit_temperature(mc_c, calibration["y"])
  preds = predictions(det, mc, split["y"], t, t_mc)
  out = prediction_metrics(preds, e.ece_bins)
  if t is not None:
    out["ts_temperature"] = t
  if t_mc is not None:
    out["mc_ts_temperature"] = t_mc
  primary = sharding.is_primary()
  if primary:
    np.savez(os.path.join(workdir, f"predictions_{tag}.npz"), **preds)
    curves = {"dropout approx.": preds["probs"]}
    if mc is not None:
      curves[f"MC dropout ({samples})"] = preds["probs_mc"]
    if t is not None:
      curves[f"temperature-scaled (T = {t:.2f})"] = preds["probs_ts"]
    if t_mc is not None:
      curves[f"MC dropout temperature-scaled (T = {t_mc:.2f})"] = preds["probs_mc_ts"]
    plots.reliability_diagram(os.path.join(workdir, f"reliability_{tag}.png"), curves,
                              split["y"], e.ece_bins)
    plots.risk_coverage(os.path.join(workdir, f"risk_coverage_{tag}.png"), curves, split["y"])
  for name in ood:
    x = sentiment_data.ood_inputs(config, name)[0]["x"]
    det_o, mc_o = predict(config, fns, params, x, mesh, samples=samples, progress=progress,
                          partial=partial(f"ood_{name}_{tag}"))
    preds_o = predictions(det_o, mc_o, temperature=t, mc_temperature=t_mc)
    if primary:
      np.savez(os.path.join(workdir, f"predictions_ood_{name}_{tag}.npz"), **preds_o)
    out.update({f"ood_{name}_{k}": v for k, v in ood_metrics(preds, preds_o).items()})
  _remove(saved)
  return out


def _remove(paths: Sequence[str]) -> None:
  for path in paths:
    if os.path.exists(path):
      os.remove(path)
