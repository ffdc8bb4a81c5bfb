"""Worked examples that run in CI (tests/test_nn.py runs them at tiny sizes)."""
