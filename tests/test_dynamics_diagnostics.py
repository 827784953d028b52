"""Predictions from hyper-parameters and diagnostics from metric rows (PAPERS.md §5)."""

import math

import numpy as np
import pytest

from grpo_jax.dynamics import diagnose, discrete, metric_series, predict


def test_prediction_uses_exact_map_and_reports_ode_beside_it():
  p = predict(beta=0.9, eta=0.1, kappa=0.5)
  roots = discrete.heavy_ball_roots(beta=0.9, k=0.05)
  assert p.k == pytest.approx(0.05)
  assert p.regime == 'oscillatory' and p.ode_regime == 'oscillatory'
  assert p.decay == pytest.approx(float(roots.decay))
  assert p.time_constant == pytest.approx(1 / float(roots.decay))
  # For k << 1 the ODE's time constant is within ~1 % of the map's ...
  assert p.ode_time_constant == pytest.approx(p.time_constant, rel=0.01)
  # ... but not for a stiff step: at beta = 0, k = 0.5 the map decays as 0.5^t (tau = 1/ln 2)
  # while the ODE (m = 1/2, gamma = 1, k = 1/2) is critically damped with tau = 1.
  q = predict(beta=0.0, eta=1.0, kappa=0.5)
  assert q.regime == 'overdamped' and q.ode_regime == 'critical'
  assert q.time_constant == pytest.approx(1 / math.log(2))
  assert q.ode_time_constant == pytest.approx(1.0)


def test_prediction_with_group_size_scales_k_by_s():
  p = predict(beta=0.5, eta=0.1, kappa=1.0, group_size=2, r_star=0.6, ddof=1)
  assert p.s == pytest.approx(1 / math.sqrt(2), rel=1e-5)
  assert p.k == pytest.approx(0.1 / math.sqrt(2), rel=1e-5)


def test_prediction_thresholds_stale_vs_ratio():
  stale = predict(beta=0.0, eta=1.0, kappa=0.07, stale=True, refresh=40, d_max=200)
  assert stale.refresh_threshold == 29 == discrete.stale_threshold_beta0(k=0.07)
  assert not stale.refresh_stable
  assert stale.mean_lag_threshold == pytest.approx(1 + 2 / 0.07)
  assert stale.paper_threshold == pytest.approx(1 / 0.07)
  ratio = predict(beta=0.0, eta=1.0, kappa=0.07, refresh=40, d_max=200)
  assert ratio.refresh_threshold is None and ratio.refresh_stable


def test_prediction_curve_map_vs_ode():
  p = predict(beta=0.9, eta=0.1, kappa=0.5)
  exact, ode = p.curve(np.arange(200), r0=0.2, r_star=0.7)
  x = discrete.heavy_ball_map(-0.5, beta=0.9, k=0.05, steps=199)
  np.testing.assert_allclose(exact, 0.7 + x)
  assert np.max(np.abs(exact - ode)) < 0.05


def test_prediction_rejects_bad_beta():
  with pytest.raises(ValueError, match='beta'):
    predict(beta=1.0, eta=0.1, kappa=1.0)


def _rows(n=120, *, reward=None, zero_std=0.1, entropy=None, reward_std=None, evals=None):
  steps = np.arange(n)
  reward = 0.8 - 0.6 * np.exp(-steps / 20) if reward is None else reward
  entropy = np.full(n, 1.0) if entropy is None else entropy
  reward_std = np.sqrt(reward * (1 - reward)) if reward_std is None else reward_std
  rows = [
    {
      'step': int(s),
      'train/reward_mean': float(reward[s]),
      'train/reward_std': float(reward_std[s]),
      'train/zero_std_frac': float(zero_std if np.isscalar(zero_std) else zero_std[s]),
      'train/entropy': float(entropy[s]),
    }
    for s in steps
  ]
  for s, acc in evals or []:
    rows.append({'step': s, 'eval/greedy_acc': acc})
  return rows


def test_healthy_run_flags_nothing():
  d = diagnose(_rows(evals=[(s, 0.5 + 0.002 * s) for s in range(0, 120, 10)]))
  assert d.flagged() == []


def test_advantage_degeneracy_flagged():
  d = diagnose(_rows(zero_std=np.linspace(0.1, 0.9, 120)))
  assert d.flagged() == ['advantage_degeneracy']
  assert d.advantage_degeneracy.evidence['zero_std_frac_late'] > 0.8


def test_policy_concentration_flagged():
  n = 120
  d = diagnose(_rows(entropy=np.linspace(1.0, 0.1, n), reward_std=np.linspace(0.4, 0.05, n)))
  assert 'policy_concentration' in d.flagged()
  # Windows of 24 rows: early mean 1 - 0.9 * 11.5/119, late mean 0.1 + 0.9 * 11.5/119.
  assert d.policy_concentration.evidence['entropy_drop'] == pytest.approx(
    1 - (0.1 + 0.9 * 11.5 / 119) / (1 - 0.9 * 11.5 / 119)
  )


def test_dynamical_instability_flagged_for_growing_oscillation_and_refresh():
  t = np.arange(120.0)
  growing = 0.5 + 0.02 * np.exp(0.02 * t) * np.cos(0.3 * t)
  d = diagnose(_rows(reward=growing))
  assert 'dynamical_instability' in d.flagged()
  assert d.dynamical_instability.evidence['fitted_lam'] <= 0
  d2 = diagnose(_rows(), refresh=8, d_star=5)
  assert d2.flagged() == ['dynamical_instability']


def test_reward_hacking_flagged():
  t = np.arange(120.0)
  reward = 0.8 - 0.6 * np.exp(-t / 20)
  reward[90:] += 0.004 * (t[90:] - 90)  # keeps rising above its saturating trend
  evals = [(s, 0.6 - 0.004 * max(0, s - 60)) for s in range(0, 120, 5)]
  d = diagnose(_rows(reward=reward, evals=evals))
  assert 'reward_hacking' in d.flagged()


def test_metric_series_keeps_last_row_per_step_and_rejects_nan():
  rows = [{'step': 1, 'x': 1.0}, {'step': 2, 'x': 2.0}, {'step': 1, 'x': 5.0}, {'step': 3}]
  steps, vals = metric_series(rows, 'x')
  np.testing.assert_array_equal(steps, [1, 2])
  np.testing.assert_array_equal(vals, [5.0, 2.0])
  with pytest.raises(ValueError, match=r'row 1 \(step 2\).*non-finite `x`'):
    metric_series([{'step': 1, 'x': 1.0}, {'step': 2, 'x': float('nan')}], 'x')


def test_diagnose_rejects_too_short_run():
  with pytest.raises(ValueError, match='too short'):
    diagnose(_rows(5, reward=np.linspace(0, 1, 5)))
