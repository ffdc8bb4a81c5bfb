"""Models as pure functions over explicit parameter pytrees (plain dicts of arrays).

* Language model (Zaremba et al. 2014; Gal & Ghahramani 2016, Sec. 5.1):
  embedding -> L LSTM layers -> output dropout -> softmax over the vocabulary.
* Sequence model (Gal & Ghahramani 2016, Sec. 5.2, sentiment):
  embedding -> one LSTM or GRU layer -> dropout on the last hidden state -> dense.

Applying a model takes the masks explicitly (from ``vdrnn.masks.sample_masks``); the
model never draws random numbers itself. Layouts: tokens are ``[B, T]`` (batch-major,
as data pipelines produce them); the recurrent scans run time-major ``[T, B, .]``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from vdrnn import masks as masks_lib
from vdrnn import rnn

Array = jax.Array
GATES = {"lstm": 4, "gru": 3}


def _uniform(key, shape, scale):
  return jax.random.uniform(key, shape, jnp.float32, -scale, scale)


# ----------------------------------------------------------------------------------------
# Language model.


def lm_layer_sizes(cfg) -> list[tuple[int, int]]:
  """``[(D_in, H), ...]`` for the LSTM stack of a model config.

  Args:
    cfg: model config with emb_dim (E), hidden (H) and num_layers (L).
  Returns:
    A list of L pairs ``(D_l, H)``: ``(E, H)`` for layer 0, ``(H, H)`` above it.
  """
  return [(cfg.emb_dim if l == 0 else cfg.hidden, cfg.hidden) for l in range(cfg.num_layers)]


def init_lm(key: Array, cfg) -> dict:
  """Language-model parameters, every entry ~ U(-init_scale, init_scale) (Zaremba; Gal).

  Args:
    key: PRNG key.
    cfg: model config. ``cfg`` fields: vocab_size (V), emb_dim (E), hidden (H), num_layers (L),
      init_scale, tie_embeddings (needs E == H, else ValueError); optionally lua_biases and
      concrete (default False; with concrete also p_emb, p_out, p_x, p_h).
  Returns:
    ``{"embed": [V, E], "lstm": [{"w_x", "w_h", "b"}] * L,
    "softmax": {"w": [H, V], "b": [V]}}``, layer l's ``w_x [D_l, 4H]`` (``D_0 = E``, else H),
    ``w_h [H, 4H]`` and ``b [4H]``, all float32
    (no ``softmax.w`` when ``tie_embeddings``, Press & Wolf 2016: logits use ``embed.T``).
    ``lua_biases``: each layer also has ``b_h [4H]``, the Lua code's second bias per gate
    (its ``i2h`` and ``h2h`` ``nn.Linear`` layers each carry one): the gates see ``b + b_h``,
    both are trained, so the summed bias starts wider and moves twice as far per SGD step.
    ``concrete``: also ``dropout_logit`` ``{"emb", "out": [], "x", "h": [[]] * L}``, the learned
    rates' logits (``concrete_rates``), starting at the config's p_emb, p_out, p_x, p_h.
  """
  if cfg.tie_embeddings and cfg.emb_dim != cfg.hidden:
    raise ValueError(f"tie_embeddings needs emb_dim == hidden, got {cfg.emb_dim} and {cfg.hidden}")
  keys = jax.random.split(key, 2 + cfg.num_layers)
  s = cfg.init_scale
  params = {"embed": _uniform(keys[0], (cfg.vocab_size, cfg.emb_dim), s), "lstm": []}
  for l, (d, h) in enumerate(lm_layer_sizes(cfg)):
    kx, kh, kb = jax.random.split(keys[2 + l], 3)
    params["lstm"].append({"w_x": _uniform(kx, (d, 4 * h), s), "w_h": _uniform(kh, (h, 4 * h), s),
                           "b": _uniform(kb, (4 * h,), s)})
  kw, kb = jax.random.split(keys[1])
  params["softmax"] = {"b": _uniform(kb, (cfg.vocab_size,), s)}
  if not cfg.tie_embeddings:
    params["softmax"]["w"] = _uniform(kw, (cfg.hidden, cfg.vocab_size), s)
  if cfg.get("concrete", False):  # learned rates, as logits: every site's initial rate from cfg
    logit = lambda p: jnp.log(jnp.float32(p)) - jnp.log1p(-jnp.float32(p))  # noqa: E731
    params["dropout_logit"] = {"emb": logit(cfg.p_emb), "out": logit(cfg.p_out),
                               "x": [logit(cfg.p_x) for _ in range(cfg.num_layers)],
                               "h": [logit(cfg.p_h) for _ in range(cfg.num_layers)]}
  if cfg.get("lua_biases", False):  # a key of its own: the other parameters stay as without
    kl = jax.random.split(jax.random.fold_in(key, 1), cfg.num_layers)
    for l, (_, h) in enumerate(lm_layer_sizes(cfg)):
      params["lstm"][l]["b_h"] = _uniform(kl[l], (4 * h,), s)
  return params


def concrete_rates(params: dict) -> dict:
  """The learned rates of a concrete-dropout model: ``sigmoid(dropout_logit)``, in the
  ``sample_masks`` layout (``x`` and ``h`` one per layer).

  Args:
    params: from ``init_lm`` with ``cfg.concrete`` (has ``params["dropout_logit"]``).
  Returns:
    ``{"emb": [], "out": [], "x": [[]] * L, "h": [[]] * L}``: scalar rates in (0, 1).
  """
  return jax.tree.map(jax.nn.sigmoid, params["dropout_logit"])


def concrete_regularizer(params: dict, cfg, n_tokens: int) -> Array:
  """Concrete dropout's regulariser per training token: ``KL / N`` of the objective

    L = -(1/M) sum_i log p(y_i | x_i) + (1/N) KL(q || p)

  (Gal, Hron & Kendall 2017, Eq. 1; ``N`` the training tokens), with the KL of each dropout
  site as their Sec. 3 approximates it for a weight ``M`` after dropout of rate ``p`` on its
  ``K``-dimensional input, written for the trained ``W = (1 - p) M`` (inverted dropout):

    KL ~= l^2 / 2 * ||W||^2 / (1 - p)  -  K * H(p),    H(p) = -p log p - (1 - p) log(1 - p)

  (the form of the authors' released ``ConcreteDropout`` layers). Sites and their weights:
  word types (``K = V``, the embedding), each layer's input (``K = D_l``, ``W_x``) and
  recurrent state (``K = H``, ``W_h``), and the softmax input (``K = H``, the softmax matrix, or
  the embedding when tied). ``l`` is ``cfg.concrete_length_scale``. A scalar.

  Args:
    params: from ``init_lm`` with ``cfg.concrete`` (weights and ``dropout_logit``).
    cfg: model config: vocab_size (V), emb_dim, hidden (H), num_layers and optionally
      concrete_length_scale (``l``, default 0.1).
    n_tokens: N, the number of training tokens.
  Returns:
    ``[]``: ``KL / N``, to add to the per-token training loss.
  """
  rates = concrete_rates(params)
  l2 = float(cfg.get("concrete_length_scale", 0.1)) ** 2

  def site(p, w, K):
    entropy = -p * jnp.log(p) - (1.0 - p) * jnp.log1p(-p)
    return 0.5 * l2 * jnp.sum(jnp.square(w)) / (1.0 - p) - K * entropy

  soft = params["softmax"]["w"] if "w" in params["softmax"] else params["embed"].T
  kl = site(rates["emb"], params["embed"], cfg.vocab_size) + site(rates["out"], soft, cfg.hidden)
  for l, (d, h) in enumerate(lm_layer_sizes(cfg)):
    kl += site(rates["x"][l], params["lstm"][l]["w_x"], d)
    kl += site(rates["h"][l], params["lstm"][l]["w_h"], h)
  return kl / n_tokens


def lm_zero_carry(cfg, batch: int) -> list:
  """Zero LSTM state: a list over layers of ``(c, h)``, each ``[B, H]``.

  Args:
    cfg: model config with hidden (H) and num_layers (L).
    batch: B, the number of rows.
  Returns:
    A list of L pairs ``(c, h)``, each ``[B, H]`` float32 zeros.
  """
  shape = (batch, cfg.hidden)
  return [
      (jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)) for _ in range(cfg.num_layers)
  ]


def lm_masks(key: Array, cfg, tokens: Array, rates: Optional[dict] = None,
             concrete: Optional[float] = None) -> dict:
  """All masks of one LM window, per sequence row, from one key (see ``sample_masks``).

  ``rates`` defaults to the config's (``lm_rates``); pass traced rates to vmap over a
  population, or a concrete-dropout model's learned ones (``concrete_rates``) with
  ``concrete`` (the relaxation's temperature) for its relaxed training masks.

  Args:
    key: PRNG key; one key gives the window's complete set of masks.
    cfg: model config: scheme, tied_gates, emb_dim, hidden, num_layers, the rate fields
      (``masks.RATE_FIELDS``) and optionally emb_shared_across_batch.
    tokens: ``[B, T]`` token ids of the window (for the word-type masks).
    rates: ``sample_masks``' rates; the keys given replace the config's (``lm_rates``).
    concrete: None, or a temperature: relaxed (concrete-dropout) masks.
  Returns:
    ``sample_masks``' dict for the layers ``lm_layer_sizes(cfg)`` and 4 gates, e.g.
    variational: ``emb`` [B, T], ``x[l]`` [B, D_l] or [4, B, D_l], ``h[l]`` [B, H] or
    [4, B, H], ``out`` [B, H]; naive: ``x_steps[l]`` [T, B, D_l], ``out`` [T, B, H]; absent
    masks ``None``.
  """
  rates = lm_rates(cfg) if rates is None else {**lm_rates(cfg), **rates}
  return masks_lib.sample_masks(key, rates, tokens, scheme=cfg.scheme, tied=cfg.tied_gates,
                                layers=lm_layer_sizes(cfg), n_gates=4,
                                emb_shared_across_batch=cfg.get("emb_shared_across_batch", False),
                                concrete=concrete)


def lm_rates(cfg) -> dict:
  """The model config's rates as ``sample_masks`` takes them (``masks.config_rates``).

  Args:
    cfg: model config (its p_emb, p_x, p_h, p_out, p_weight_drop, zoneout_c, zoneout_h).
  Returns:
    ``{"emb", "x", "h", "out", "weight", "zone_c", "zone_h"}`` rates (0.0 for absent fields).
  """
  return masks_lib.config_rates(cfg)


def lm_zoneout(cfg) -> tuple[float, float]:
  """``(zoneout_c, zoneout_h)`` of a model config: the expectation the deterministic pass uses.

  Args:
    cfg: model config (zoneout_c and zoneout_h optional, default 0).
  Returns:
    ``(z_c, z_h)``, two Python floats (``lm_hidden``'s ``zoneout``).
  """
  return float(cfg.get("zoneout_c", 0.0)), float(cfg.get("zoneout_h", 0.0))


def lm_hidden(params: dict, carry: list, tokens: Array, masks: Optional[dict] = None, *,
              unroll: int = 1, compute_dtype=None, hoist_input: bool = True,
              embedded: Optional[Array] = None, impl: str = "scan",
              zoneout: tuple[float, float] = (0.0, 0.0)) -> tuple[Array, list]:
  """Runs embedding + LSTM stack + output dropout.

  Args:
    params: from ``init_lm``.
    carry: list over layers of ``(c, h)``, each ``[B, H]``.
    tokens: ``[B, T]`` int token ids.
    masks: from ``lm_masks`` (None = deterministic, the dropout approximation).
    unroll, compute_dtype, hoist_input, impl: passed to ``rnn.lstm`` (impl ``"pallas"``: the
      fused recurrent kernel of ``vdrnn.pallas_lstm``).
    embedded: optional ``[T, B, E]`` rows ``params["embed"][tokens.T]`` gathered by the
      caller (a training step differentiates with respect to these rows only); default:
      gathered here.
    zoneout: ``(z_c, z_h)`` rates used where ``masks`` has no zoneout masks (the deterministic
      pass: the expectation ``z c_{t-1} + (1 - z) c_new``; ``lm_zoneout(cfg)``).
  Returns:
    ``(ys, carry)``: ys ``[T, B, H]`` are the (output-dropped) top-layer states that
    feed the softmax; carry is the new state.
  """
  masks = masks or {}
  xs = jnp.take(params["embed"], tokens.T, axis=0) if embedded is None else embedded  # [T, B, E]
  if masks.get("emb") is not None:
    xs = xs * masks["emb"].T[..., None]  # word-type dropout, [B, T] -> [T, B, 1]
  new_carry = []
  L = len(params["lstm"])
  for l, p in enumerate(params["lstm"]):
    if "b_h" in p:  # the Lua code's two biases per gate (``init_lm``'s ``lua_biases``)
      p = {"w_x": p["w_x"], "w_h": p["w_h"], "b": p["b"] + p["b_h"]}
    m_steps = (masks.get("x_steps") or [None] * L)[l]
    if m_steps is not None and m_steps.ndim == 3:  # naive (Zaremba): fresh per step, [T, B, D]
      xs, m_steps = xs * m_steps, None
    m_x = (masks.get("x") or [None] * L)[l]
    m_h = (masks.get("h") or [None] * L)[l]
    h_steps = (masks.get("h_steps") or [None] * L)[l]
    zone = [(masks.get(k) or [None] * L)[l] for k in ("zone_c", "zone_h")]
    zone = [z if z is not None else (rate or None) for z, rate in zip(zone, zoneout)]
    c, xs = rnn.lstm(p, carry[l], xs, m_x, m_h, unroll=unroll, compute_dtype=compute_dtype,
                     hoist_input=hoist_input, mask_x_steps=m_steps, mask_h_steps=h_steps,
                     impl=impl, mask_w=(masks.get("w_h") or [None] * L)[l], zone_c=zone[0],
                     zone_h=zone[1])
    new_carry.append(c)
  if masks.get("out") is not None:
    xs = xs * masks["out"]  # [B, H] (variational) or [T, B, H] (naive); broadcasts over T
  return xs, new_carry


def lm_logits(params: dict, ys: Array, compute_dtype=None, temperature: float = 1.0) -> Array:
  """Softmax logits ``[..., V]`` from top-layer states ``[..., H]`` (divided by ``temperature``).

  Args:
    params: from ``init_lm``: ``softmax.w [H, V]`` (or, tied, ``embed [V, H]`` transposed) and
      ``softmax.b [V]``.
    ys: ``[..., H]`` top-layer states, e.g. ``[T, B, H]`` from ``lm_hidden``.
    compute_dtype: matmul operand dtype (``rnn.matmul``; None = the inputs' dtype).
    temperature: the logits are divided by it (1.0: unchanged).
  Returns:
    ``[..., V]`` logits, e.g. ``[T, B, V]``.
  """
  w = params["softmax"]["w"] if "w" in params["softmax"] else params["embed"].T
  logits = rnn.matmul(ys, w, compute_dtype) + params["softmax"]["b"]
  return logits if temperature == 1.0 else logits / temperature


def lm_nll(params: dict,
           carry: list,
           tokens: Array,
           targets: Array,
           masks: Optional[dict] = None,
           *,
           unroll: int = 1,
           compute_dtype=None,
           embedded: Optional[Array] = None,
           impl: str = "scan",
           zoneout: tuple[float, float] = (0.0, 0.0)) -> tuple[Array, list]:
  """Per-token negative log-likelihood ``[T, B]`` (natural log) and the new carry.

  The loss for the gradient (Zaremba's and Gal's code) is ``nll.mean(axis=1).sum()``:
  the sum over time steps of the batch-mean NLL. Arguments as ``lm_hidden``'s.

  Args:
    params: from ``init_lm``.
    carry: list over layers of ``(c, h)``, each ``[B, H]``.
    tokens: ``[B, T]`` int input token ids.
    targets: ``[B, T]`` int target ids (the next tokens).
    masks: from ``lm_masks`` (None = deterministic, the dropout approximation).
    unroll, compute_dtype, embedded, impl, zoneout: as in ``lm_hidden`` (``embedded``
      ``[T, B, E]``); ``hoist_input`` is ``lm_hidden``'s default (True).
  Returns:
    ``(nll, carry)``: nll ``[T, B]`` (time-major), carry the new list of ``(c, h)``, each
    ``[B, H]``.
  """
  ys, carry = lm_hidden(params, carry, tokens, masks, unroll=unroll, compute_dtype=compute_dtype,
                        embedded=embedded, impl=impl, zoneout=zoneout)
  return softmax_nll(lm_logits(params, ys, compute_dtype), targets.T), carry




def _softmax_nll_fwd(logits: Array, targets: Array):
  m = jnp.max(logits, axis=-1)
  log_z = jnp.log(jnp.sum(jnp.exp(logits - m[..., None]), axis=-1))
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - (picked - m), (logits, targets, m + log_z)


def _softmax_nll_bwd(res, g):
  logits, targets, lse = res
  onehot = jnp.arange(logits.shape[-1]) == targets[..., None]
  return (jnp.exp(logits - lse[..., None]) - onehot) * g[..., None], None


@jax.custom_vjp
def softmax_nll(logits: Array, targets: Array) -> Array:
  """``-log softmax(logits)[..., targets]`` (the same float ops as ``jax.nn.log_softmax``).

  Its backward pass is one fused elementwise pass, ``(softmax - onehot) * g``, instead of
  autodiff's scatter into a zero ``[..., V]`` array followed by the log-softmax transpose.

  Args:
    logits: ``[..., V]``, e.g. ``[T, B, V]``.
    targets: ``[...]`` int ids in [0, V), e.g. ``[T, B]`` (no gradient).
  Returns:
    ``[...]`` negative log-likelihoods (natural log), e.g. ``[T, B]``.
  """
  return _softmax_nll_fwd(logits, targets)[0]


softmax_nll.defvjp(_softmax_nll_fwd, _softmax_nll_bwd)


# ----------------------------------------------------------------------------------------
# Sequence regressor / classifier (sentiment).


SEQ_INITS = ("fused", "per_gate")  # ``model.init`` of the sequence model


def init_seq(key: Array, cfg) -> dict:
  """Sentiment-model parameters.

  Args:
    key: PRNG key.
    cfg: model config. ``cfg`` fields: vocab_size (V), emb_dim (E), hidden (H), cell ("lstm" |
      "gru"; G = 4 or 3 gates), out_dim (K), and optionally init (default "fused", one of
      ``SEQ_INITS``, else ValueError) and ortho_scale (default 1.0).

  Embedding U(-0.05, 0.05); dense Glorot-uniform; biases 0 except the LSTM forget gate, 1.
  The recurrent layer's kernels by ``init``:

  * ``"fused"`` (Keras 2 and later, Flax's ``OptimizedLSTMCell``): Glorot-uniform over the whole
    ``[E, G*H]`` input kernel and an orthogonal ``[H, G*H]`` recurrent kernel;
  * ``"per_gate"`` (the Keras 0.x fork of the released code): each gate's ``[E, H]`` block
    Glorot-uniform and each ``[H, H]`` block orthogonal, times ``ortho_scale`` (the fork's 1.1).
    Per gate, the input weights are ``sqrt((E + G*H) / (E + H))`` (1.6x for the LSTM at
    E = H) and the recurrent weights ``sqrt(G)`` (2x) larger than fused.

  Returns:
    ``{"embed": [V, E], "rnn": {"w_x", "w_h", "b"}, "dense": {"w": [H, K], "b": [K]}}`` with
    ``rnn`` ``w_x [E, G*H]``, ``w_h [H, G*H]``, ``b [G*H]``, all float32.
  """
  G = GATES[cfg.cell]
  H, E = cfg.hidden, cfg.emb_dim
  k_e, k_x, k_h, k_d = jax.random.split(key, 4)
  glorot = jax.nn.initializers.glorot_uniform()
  ortho = jax.nn.initializers.orthogonal(scale=cfg.get("ortho_scale", 1.0))
  init = cfg.get("init", "fused")
  if init == "per_gate":
    w_x = jnp.concatenate([glorot(k, (E, H)) for k in jax.random.split(k_x, G)], axis=1)
    w_h = jnp.concatenate([ortho(k, (H, H)) for k in jax.random.split(k_h, G)], axis=1)
  elif init == "fused":
    w_x, w_h = glorot(k_x, (E, G * H)), ortho(k_h, (H, G * H))
  else:
    raise ValueError(f"init must be one of {SEQ_INITS}, got {init!r}")
  b = jnp.zeros((G * H,), jnp.float32)
  if cfg.cell == "lstm":
    b = b.at[H:2 * H].set(1.0)
  return {
      "embed": _uniform(k_e, (cfg.vocab_size, E), 0.05),
      "rnn": {
          "w_x": w_x,
          "w_h": w_h,
          "b": b
      },
      "dense": {
          "w": glorot(k_d, (H, cfg.out_dim)),
          "b": jnp.zeros((cfg.out_dim,), jnp.float32)
      }
  }


def seq_masks(key: Array, cfg, tokens: Array, rates: Optional[dict] = None) -> dict:
  """Masks for one batch of the sequence model (same structure as ``lm_masks``, one layer).

  Optional ``cfg`` fields: ``naive_per_gate`` (naive: one mask per gate and step) and
  ``dropout_scaling`` (``inverted``, or ``keras0``: 0/1 masks), see ``vdrnn.seq_task.base_config``.

  Args:
    key: PRNG key; one key gives the batch's complete set of masks.
    cfg: model config: scheme, tied_gates, emb_dim (E), hidden (H), cell (G = 4 for "lstm",
      3 for "gru"), the rate fields (``masks.RATE_FIELDS``) and optionally
      emb_shared_across_batch, naive_per_gate, dropout_scaling.
    tokens: ``[B, T]`` token ids of the batch (for the word-type masks).
    rates: ``sample_masks``' rates, used as given instead of the config's (default
      ``masks.config_rates(cfg)``).
  Returns:
    ``sample_masks``' dict for the one layer ``(E, H)``: variational ``emb`` [B, T], ``x[0]``
    [B, E] or [G, B, E], ``h[0]`` [B, H] or [G, B, H], ``out`` [B, H]; naive ``x_steps[0]``
    [T, B, E] or [T, G, B, E], ``h_steps[0]`` [T, B, H] or [T, G, B, H], ``out`` [T, B, H];
    absent masks ``None``.
  """
  if rates is None:
    rates = masks_lib.config_rates(cfg)
  return masks_lib.sample_masks(key, rates, tokens, scheme=cfg.scheme, tied=cfg.tied_gates,
                                layers=[(cfg.emb_dim, cfg.hidden)], n_gates=GATES[cfg.cell],
                                emb_shared_across_batch=cfg.get("emb_shared_across_batch", False),
                                naive_per_gate=cfg.get("naive_per_gate", False),
                                inverted=cfg.get("dropout_scaling", "inverted") == "inverted")


def seq_semantics(cfg) -> dict:
  """``seq_apply``'s keyword arguments for the model config ``cfg``: ``cell``, ``gate_act``,
  ``candidate_act``, ``skip_padding`` and, with ``dropout_scaling = "keras0"``, ``eval_keep``
  (the keep probability of every dropout site, applied in the deterministic pass).

  Args:
    cfg: model config: cell, scheme, optionally gate_act (default "sigmoid"), candidate_act
      ("tanh"), skip_padding (True), dropout_scaling ("inverted"), and with "keras0" the
      rates p_emb, p_x, p_h, p_out.
  Returns:
    ``{"cell", "gate_act", "candidate_act", "skip_padding"}`` plus, for ``"keras0"`` and a
    scheme other than ``"none"``, ``"eval_keep": {"emb", "x", "h", "out"}`` (``1 - p``).
  """
  out = {"cell": cfg.cell, "gate_act": cfg.get("gate_act", "sigmoid"),
         "candidate_act": cfg.get("candidate_act", "tanh"),
         "skip_padding": cfg.get("skip_padding", True)}
  if cfg.get("dropout_scaling", "inverted") == "keras0" and cfg.scheme != "none":
    out["eval_keep"] = {masks_lib.RATE_FIELDS[f]: 1.0 - float(cfg[f])
                        for f in masks_lib.DROPOUT_FIELDS}
  return out


def keep_masks(eval_keep: dict, B: int, T: int, D: int, H: int) -> dict:
  """The deterministic pass of non-inverted (Keras 0.x) dropout as constant masks: every
  dropout site multiplied by its keep probability (``{"emb", "x", "h", "out"}``); a keep of 1
  gives no mask. A constant mask is the same for every gate and step, so one tied mask
  stands for the naive and the untied schemes too.

  Args:
    eval_keep: ``{"emb", "x", "h", "out"}`` keep probabilities (a missing key: 1).
    B: batch rows.
    T: time steps.
    D: input features of the recurrent layer (E).
    H: hidden units.
  Returns:
    ``{"emb": [B, T], "x": [[B, D]], "h": [[B, H]], "out": [B, H]}`` float32 masks filled with
    the keep probability, ``None`` (in place of the array) where it is 1.
  """
  def full(k, shape):
    return None if eval_keep.get(k, 1.0) == 1.0 else jnp.full(shape, eval_keep[k], jnp.float32)
  return {"emb": full("emb", (B, T)), "x": [full("x", (B, D))], "h": [full("h", (B, H))],
          "out": full("out", (B, H))}


def seq_apply(params: dict, tokens: Array, masks: Optional[dict] = None, *, cell: str = "lstm",
              unroll: int = 1, compute_dtype=None, gate_act: str = "sigmoid",
              candidate_act: str = "tanh", eval_keep: Optional[dict] = None,
              skip_padding: bool = True) -> Array:
  """Outputs ``[B, K]`` for padded token sequences ``[B, T]`` (id 0 = padding).

  Padding: with ``skip_padding`` a padded step leaves the recurrent state unchanged
  (``valid`` in the scans), so left- or right-padded sequences give exactly the output of
  the unpadded sequence; the last state is the one after the last real token. Without it the
  RNN runs over the padding like over any token, as the Keras 0.x fork of the released code
  did: a left-padded sequence starts from the state the trained (and dropped-out) embedding of
  id 0 leaves behind.

  ``gate_act`` / ``candidate_act``: see ``rnn.lstm`` / ``rnn.gru``. ``eval_keep``: non-inverted
  (Keras 0.x) dropout: with ``masks=None`` (the deterministic pass) every dropout site is
  multiplied by its keep probability (``keep_masks``). ``seq_semantics(cfg)`` gives all three.

  Args:
    params: from ``init_seq``: ``embed [V, E]``, ``rnn`` ``{"w_x": [E, G*H], "w_h": [H, G*H],
      "b": [G*H]}``, ``dense`` ``{"w": [H, K], "b": [K]}``.
    tokens: ``[B, T]`` int token ids, 0 = padding.
    masks: from ``seq_masks`` (None = deterministic, the dropout approximation).
    cell: ``"lstm"`` or ``"gru"``, as ``params`` were made for.
    unroll, compute_dtype: as in ``rnn.lstm`` (the LSTM runs with ``hoist_input=False``).
    gate_act: ``sigmoid`` or ``hard_sigmoid`` (Keras 0.x).
    candidate_act: the GRU's candidate activation, ``tanh`` or ``sigmoid``.
    eval_keep: None, or ``{"emb", "x", "h", "out"}`` keep probabilities (``keep_masks``), used
      only when ``masks`` is None.
    skip_padding: padded steps leave the state unchanged (see above).
  Returns:
    ``[B, K]`` outputs (the dense layer on the last hidden state ``[B, H]``).
  """
  B, T = tokens.shape
  H = params["rnn"]["w_h"].shape[0]
  if masks is None and eval_keep is not None:
    masks = keep_masks(eval_keep, B, T, params["embed"].shape[1], H)
  masks = masks or {}
  valid = (tokens != 0).T if skip_padding else None  # [T, B]
  xs = jnp.take(params["embed"], tokens.T, axis=0)
  if masks.get("emb") is not None:
    xs = xs * masks["emb"].T[..., None]
  x_steps = (masks.get("x_steps") or [None])[0]
  if x_steps is not None and x_steps.ndim == 3:  # [T, B, D]: on the input, shared by the gates
    xs, x_steps = xs * x_steps, None
  h_steps = (masks.get("h_steps") or [None])[0]
  m_x, m_h = (masks.get("x") or [None])[0], (masks.get("h") or [None])[0]
  z = jnp.zeros((B, H), jnp.float32)
  steps = {"mask_x_steps": x_steps, "mask_h_steps": h_steps}
  if cell == "lstm":
    # The per-step fused matmul (hoist_input=False): at sentiment shapes (B = 128, D = H = 128,
    # T = 200) its loop-only backward ran the training step 1.3x faster than the hoisted input
    # projection with its [T, 4, B, .] intermediates (python -m launch.bench --only sentiment).
    (_, h), _ = rnn.lstm(params["rnn"], (z, z), xs, m_x, m_h, valid=valid, unroll=unroll,
                         compute_dtype=compute_dtype, gate_act=gate_act, hoist_input=False,
                         **steps)
  else:
    h, _ = rnn.gru(params["rnn"], z, xs, m_x, m_h, valid=valid, unroll=unroll,
                   compute_dtype=compute_dtype, gate_act=gate_act, candidate_act=candidate_act,
                   **steps)
  out = masks.get("out")
  if out is not None:
    h = h * (out if out.ndim == 2 else out[-1])  # naive masks are [T, B, H]: use the last step's
  return h @ params["dense"]["w"] + params["dense"]["b"]
