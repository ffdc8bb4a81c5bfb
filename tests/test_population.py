"""Population training: K vmapped members equal K separate runs."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import ptb_tiny
from vdrnn import checkpoint, lm, population
from vdrnn.errors import UserError

# Rates and seeds chosen to cover: the config's rates, static zeros (the single run draws no
# mask where the member gets an all-ones one), other non-zero rates, and all zeros.
MEMBERS = [
    {"seed": 0, "p_emb": 0.3, "p_x": 0.5, "p_h": 0.3, "p_out": 0.5},
    {"seed": 1, "p_emb": 0.0, "p_x": 0.5, "p_h": 0.0, "p_out": 0.5},
    {"seed": 2, "p_emb": 0.1, "p_x": 0.2, "p_h": 0.1, "p_out": 0.2},
    {"seed": 3, "p_emb": 0.0, "p_x": 0.0, "p_h": 0.0, "p_out": 0.0},
]


@pytest.fixture(autouse=True)
def fast_compiles():
  """Unoptimised XLA code generation for these tests: several times faster to compile."""
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


def small_config():
  c = ptb_tiny.get_config()
  c.model.vocab_size, c.model.emb_dim, c.model.hidden = 50, 8, 8
  c.train.max_grad_norm = 0.5  # clip on some steps and members, not others
  return c


def population_config(c, members):
  for name in population.FIELDS:
    c.population[name] = tuple(m[name] for m in members)
  return c


def max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_parse_members():
  c = ptb_tiny.get_config()
  c.seed = 7
  c.population.p_h = (0, 0.25)
  c.population.p_emb = (0.1, 0.2)
  members = population.parse_members(c)
  assert members == [{"seed": 7, "p_emb": 0.1, "p_x": 0.5, "p_h": 0.0, "p_out": 0.5},
                     {"seed": 7, "p_emb": 0.2, "p_x": 0.5, "p_h": 0.25, "p_out": 0.5}]
  m = population.member_config(c, members[1])
  assert (m.seed, m.model.p_h, m.model.p_emb, m.population.p_h) == (7, 0.25, 0.2, ())
  legacy = json.loads(c.to_json())  # a config.json from before the fields were tuples
  legacy["population"].update(p_h="0, 0.25", p_emb="0.1,0.2")
  legacy = ml_collections.ConfigDict(legacy)
  assert population.parse_members(legacy) == members
  c.population.seed = (1, 2, 3)
  with pytest.raises(UserError,
                     match=r"population.p_emb has 2.*population.p_h has 2.*population.seed has 3"):
    population.parse_members(c)
  c.population.seed = (1, 2)
  c.population.p_h = (0, 1.0)
  with pytest.raises(UserError, match=r"population.p_h"):
    population.parse_members(c)
  legacy.population.p_h = "0,x"
  with pytest.raises(UserError, match=r"population.p_h: 'x'"):
    population.parse_members(legacy)
  c.population.seed = (1, 2.5)
  with pytest.raises(UserError, match=r"population.seed: 2.5 is not an integer"):
    population.parse_members(c)
  for name in population.FIELDS:
    c.population[name] = ()
  with pytest.raises(UserError, match="no population"):
    population.parse_members(c)


def test_population_of_4_equals_4_single_runs():
  c = population_config(small_config(), MEMBERS)
  B, T, lrs = 4, 5, [1.0, 1.0, 0.5]
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, c.model.vocab_size, (len(lrs), B, T + 1)).astype(np.int32)

  state = population.init_population_state(c, MEMBERS, B)
  step = jax.jit(population.make_population_train_step(c, MEMBERS))
  for (x, y), lr in zip(((w[:, :-1], w[:, 1:]) for w in tokens), lrs):
    state = step(state, x, y, lr)

  diffs = []
  for k, m in enumerate(MEMBERS):
    mc = population.member_config(c, m)
    single = lm.init_state(mc, B)
    single_step = jax.jit(lm.make_train_step(mc))
    for (x, y), lr in zip(((w[:, :-1], w[:, 1:]) for w in tokens), lrs):
      single = single_step(single, x, y, lr)
    got = population.member_state(state, k)
    assert int(got["step"]) == int(single["step"]) == len(lrs)
    assert int(got["acc"]["count"]) == int(single["acc"]["count"])
    diffs.append(max_diff(got, single))
  print("population vs single runs, max abs diff per member:", diffs)
  assert max(diffs) <= 1e-6, diffs
  # The members really differ (so the comparison above can fail).
  p = state["params"]["lstm"][0]["w_h"]
  assert float(jnp.min(jnp.abs(p[0] - p[1]).max())) > 1e-3


def test_train_population_resumes_and_members_match_single_runs(tmp_path):
  c = ptb_tiny.get_config()
  c.data_limit, c.train.checkpoint_every_steps, c.train.log_every_steps = 1000, 0, 100
  members = [MEMBERS[1], MEMBERS[2]]
  population_config(c, members)
  wd = str(tmp_path / "pop")
  c.train.num_epochs = 1
  population.train_and_evaluate(c, wd)  # "interrupted" after one epoch ...
  c.train.num_epochs = 2
  res = population.train_and_evaluate(c, wd)  # ... resumed for the second
  assert [r["seed"] for r in res["members"]] == [1, 2] and res["step"] == 2 * 12

  k = 1
  single_wd = str(tmp_path / "single")
  single = lm.train_and_evaluate(population.member_config(c, members[k]), single_wd)
  got = res["members"][k]
  for name in ("valid_ppl", "valid_ppl_lua", "test_ppl", "best_valid_ppl"):
    np.testing.assert_allclose(got[name], single[name], rtol=1e-5)
  # Member k's workdir reads like the single run's: results, metrics and checkpoint.
  mdir = os.path.join(wd, population.member_name(k))
  with open(os.path.join(mdir, "results.json")) as f:
    assert json.load(f)["test_ppl"] == got["test_ppl"]
  with open(os.path.join(mdir, "config.json")) as f:
    assert json.load(f)["model"]["p_h"] == members[k]["p_h"]
  events = [json.loads(l)["event"] for l in open(os.path.join(mdir, "metrics.jsonl"))]
  assert events.count("epoch") == 2 and events[-1] == "test"
  target = lm.init_state(population.member_config(c, members[k]), c.train.batch_size)
  mine, _ = checkpoint.restore(checkpoint.manager(os.path.join(mdir, "checkpoints")), 24, target)
  theirs, _ = checkpoint.restore(checkpoint.manager(os.path.join(single_wd, "checkpoints")), 24,
                                 target)
  d = max_diff(mine["params"], theirs["params"])
  print("population member vs single train_lm run after 2 epochs, max abs param diff:", d)
  assert d < 1e-4  # the single run is data parallel over 8 devices: other summation order
