"""vdrnn/checkpoint.py: the two latest checkpoints and the best one are kept, also across a
resume (a new manager, as in a new process), and ``find`` names them."""

import os

import numpy as np
import pytest

from vdrnn import checkpoint
from vdrnn.errors import UserError


def _meta(best_step):
  return {"history": [], "best": {"epoch": best_step, "step": best_step, "metric": "m",
                                  "value": 0.3}}


def test_the_best_checkpoint_survives_a_resume(tmp_path):
  """Epoch 1 is the best; the run stops after epoch 2 and resumes with a new manager, as a new
  process does: epochs 3 and 4 push epoch 1 out of the two latest, and it is kept because the
  metadata each save writes names it. When epoch 5 becomes the best, epoch 1 goes."""
  directory = str(tmp_path / "checkpoints")
  first = checkpoint.manager(directory)
  for step in (1, 2):
    checkpoint.save(first, step, {"w": np.full(3, float(step))}, _meta(1))
  resumed = checkpoint.manager(directory)  # the resume
  for step in (3, 3, 4):  # a mid-epoch save of step 3, then its epoch-end save
    checkpoint.save(resumed, step, {"w": np.full(3, float(step))}, _meta(1))
  assert resumed.all_steps() == [1, 3, 4]
  mngr, step = checkpoint.find(str(tmp_path), "best")
  restored, meta = checkpoint.restore(mngr, step, {"w": np.zeros(3)})
  assert step == 1 and meta["best"]["step"] == 1
  np.testing.assert_array_equal(restored["w"], np.ones(3))
  checkpoint.save(checkpoint.manager(directory), 5, {"w": np.zeros(3)}, _meta(5))
  assert checkpoint.manager(directory).all_steps() == [4, 5]


def test_a_best_checkpoint_that_is_gone_is_one_line(tmp_path):
  """A workdir whose metadata names a best step that no longer exists (resumed by a version
  that lost it) says so, instead of evaluating another checkpoint."""
  directory = str(tmp_path / "checkpoints")
  checkpoint.save(checkpoint.manager(directory), 9, {"w": np.zeros(2)}, _meta(7))
  with pytest.raises(UserError, match=r"best checkpoint \(epoch 7, step 7\) was deleted"):
    checkpoint.find(str(tmp_path), "best")
  assert os.listdir(directory) == ["9"]  # nothing else touched
