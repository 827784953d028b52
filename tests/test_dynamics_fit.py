"""Fitting reward curves with the closed forms (PAPERS.md §5)."""

import jax
import numpy as np
import pytest

from grpo_jax.dynamics import fit_curve, rom

T = np.arange(0.0, 200.0)


def _curve(fn, **kw):
  with jax.enable_x64(True):
    return np.asarray(fn(T, r0=0.2, r_star=0.7, **kw))


@pytest.mark.parametrize(
  'regime,fn,kw',
  [
    ('underdamped', rom.underdamped, dict(lam=0.03, omega=0.08)),
    ('overdamped', rom.overdamped, dict(lam=0.05, omega=0.03)),
    ('critical', rom.critical, dict(lam=0.04)),
  ],
)
def test_fit_recovers_parameters_from_noisy_curve(regime, fn, kw):
  rng = np.random.default_rng(0)
  y = _curve(fn, **kw) + 0.01 * rng.normal(size=T.size)
  f = fit_curve(T, y, n_bootstrap=0)
  assert f.regime == regime
  np.testing.assert_allclose(f.params['r_star'], 0.7, atol=0.01)
  np.testing.assert_allclose(f.params['r0'], 0.2, atol=0.01)
  np.testing.assert_allclose(f.params['lam'], kw['lam'], rtol=0.1)
  np.testing.assert_allclose(f.params['omega'], kw.get('omega', 0.0), rtol=0.1, atol=1e-12)
  assert f.r2 > 0.99 and not f.rejected


def test_bootstrap_interval_covers_truth_and_curve_method():
  rng = np.random.default_rng(1)
  truth = _curve(rom.underdamped, lam=0.03, omega=0.08)
  f = fit_curve(T, truth + 0.01 * rng.normal(size=T.size), n_bootstrap=20, seed=0)
  lo, hi = f.interval['omega']
  assert lo < 0.08 < hi and hi - lo < 0.01
  np.testing.assert_allclose(f.curve(T), truth, atol=0.01)


def test_exponential_data_prefers_single_exponential_and_oscillator_beats_it_on_inertia():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    y_exp = np.asarray(rom.single_exponential(T, r0=0.2, r_star=0.7, tau=30.0))
  f = fit_curve(T, y_exp + 0.01 * rng.normal(size=T.size), n_bootstrap=0)
  np.testing.assert_allclose(f.exponential['tau'], 30.0, rtol=0.05)
  assert f.delta_bic > -10  # no decisive evidence for the extra parameter
  y_osc = _curve(rom.underdamped, lam=0.03, omega=0.08) + 0.01 * rng.normal(size=T.size)
  g = fit_curve(T, y_osc, n_bootstrap=0)
  assert g.delta_aic < -100 and g.r2 > g.exponential['r2']


def test_fit_with_r_star_above_attainable_maximum_is_rejected_and_reported():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    y = np.asarray(rom.underdamped(T, r0=0.2, r_star=1.05, lam=0.01, omega=0.01))
  f = fit_curve(T, y + 0.002 * rng.normal(size=T.size), r_max=1.0, n_bootstrap=0)
  assert f.rejected and 'exceeds the attainable maximum' in f.reason
  assert f.params['r_star'] > 1.0


def test_too_short_curve_raises():
  with pytest.raises(ValueError, match='too short'):
    fit_curve(np.arange(5.0), np.linspace(0, 1, 5))


def test_nan_rewards_raise_naming_the_index():
  y = np.linspace(0, 1, 20)
  y[7] = np.nan
  with pytest.raises(ValueError, match=r'`rewards` has non-finite values at indices \[7\]'):
    fit_curve(np.arange(20.0), y)


def test_non_increasing_steps_raise():
  with pytest.raises(ValueError, match='strictly increasing'):
    fit_curve(np.r_[np.arange(10.0), 5.0], np.linspace(0, 1, 11))
