"""notebooks/dynamics.ipynb (oscillator, fit, bandit sweeps, diagnostics) executes within 60 s."""

from _notebooks import execute


def test_dynamics_notebook_runs_and_its_checks_hold():
  text, _ = execute('dynamics.ipynb')
  assert text.count('measured d*=') == 6
  assert "['advantage_degeneracy']" in text
