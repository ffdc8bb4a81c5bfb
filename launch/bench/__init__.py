"""Throughput benchmark: ``python -m launch.bench [--quick] [--json P] [--table P] [--only S]``.

Measures, on the default JAX device (CPU or one accelerator):

* ``gemm``: the device's own large-GEMM rate (square ``jnp.dot``, float32 and bfloat16
  operands with float32 accumulation); every other result is reported as a fraction of it.
* ``train``: tokens/s of one complete training step (``vdrnn.lm.make_train_step``:
  masks, forward, backward, clipping, SGD update; jitted with buffer donation) at the PTB
  small, medium and large shapes, tied and untied gate masks, float32 and bfloat16 matmuls.
  "small" is Zaremba's 2 x 200 / 20-step shape with the medium recipe's variational dropout.
* ``mc``: MC-dropout evaluation, sample-tokens/s (``vdrnn.lm_eval.make_mc_chunk_fn``) at
  S = 100 and S = 1000 samples, medium shapes.
* ``population``: tokens/s of K = 1, 4, 16 members trained as one vmapped step
  (``vdrnn.population``), medium shapes.
* ``peers``: vdrnn side by side with the same training step in Keras 3
  (``LSTM(dropout, recurrent_dropout)`` on its JAX backend; untied gate masks) and in PyTorch
  (an ``LSTMCell`` loop with per-sequence masks; tied), at each precision: float32, and
  bfloat16 where supported (Keras ``mixed_bfloat16``, ``torch.autocast``). They run in
  interleaved rounds (each peer in its own worker process, waiting on a pipe between rounds),
  so drift in the machine's speed hits all alike; ratios are medians of per-round ratios.
  Peers are optional (``pip install -e .[bench]``) and skipped with a message when missing.
* ``flax``: the Flax front end against the core, medium shape, tied and untied, in
  interleaved rounds: the same training step built from the ``vdrnn.nn`` NNX layers
  (``VariationalLSTM``, ...) and with ``nnx.RNN(OptimizedLSTMCell)`` and recurrent dropout the
  documented Flax way, each as a ratio of the core's time per step; and XLA's cost analysis
  (FLOPs, bytes accessed) of the compiled core and NNX steps, which machine load cannot disturb.

FLOPs count 2 per multiply-add over the matmul parameters (LSTM input and recurrent
kernels, softmax matrix; not the embedding lookup): ``2 P`` per token forward, ``6 P`` per
token for a training step. Timings are medians over repetitions, compilation excluded.
Each %GEMM is the median over repetitions of (achieved FLOP/s) / (the rate of a GEMM timed
right after that repetition, at the size that ran fastest in the ``gemm`` section): the
machine's speed can drift between and within sections (a shared VM's does), and a
yardstick taken minutes earlier would misstate the fraction. The load average is printed
with the results.

A table goes to stdout (and, with ``--table PATH``, to a file: ``launch/results/bench/`` holds
the tables of the runs the README cites) and, with ``--json PATH``, everything to a JSON file.

Modules: ``common`` (configs, FLOP counts, timers, the GEMM yardstick, interleaved rounds),
``sections`` (gemm, train, mc, population, sentiment, flax), ``peers`` (the Keras and PyTorch
contenders, worker processes, the side-by-side rounds), ``flax_peer`` (the Flax contenders),
``driver`` (plan, run, table, command line); beside them ``ab`` (A/B timing of two git
revisions, interleaved). ``python -m launch.mc_memory`` measures MC evaluation's peak memory.
"""
