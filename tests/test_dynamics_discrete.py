"""Exact discrete theory (PAPERS.md §5): map roots, kappa routes, s(R, G), variance, Floquet."""

import jax
import numpy as np
import pytest
from scipy.linalg import solve_discrete_lyapunov

from grpo_jax.dynamics import discrete


def test_roots_match_numpy_and_conditions():
  for beta in (0.0, 0.3, 0.6, 0.9):
    for k in (0.01, 0.1, 0.5, 1.5, 3.0):
      roots = discrete.heavy_ball_roots(beta=beta, k=k)
      ref = np.roots([1.0, -(1 + beta - k), beta])
      assert np.isclose(abs(roots.z_dominant), np.max(np.abs(ref)))
      osc = (1 - np.sqrt(k)) ** 2 < beta < (1 + np.sqrt(k)) ** 2
      assert bool(roots.oscillatory) == osc
      assert bool(roots.stable) == (k < 2 * (1 + beta))
      np.testing.assert_allclose(roots.decay, -np.log(np.max(np.abs(ref))))
      np.testing.assert_allclose(roots.frequency, np.max(np.abs(np.angle(ref))), atol=1e-12)


def test_onset_pinned_and_ode_agrees_only_for_small_k():
  np.testing.assert_allclose(discrete.oscillation_onset(k=0.04), 0.64)
  # ODE onset: (1 - beta)^2 = 2k(1 + beta); at k = 0.04: beta^2 - 2.08 beta + 0.92 = 0.
  np.testing.assert_allclose(discrete.ode_oscillation_onset(k=0.04), 1.04 - np.sqrt(1.04**2 - 0.92))
  small = discrete.ode_oscillation_onset(k=1e-4) - discrete.oscillation_onset(k=1e-4)
  big = discrete.ode_oscillation_onset(k=0.2) - discrete.oscillation_onset(k=0.2)
  assert abs(small) < 1e-3 < abs(big)


def test_map_is_oscillatory_exactly_above_onset():
  k = 0.09
  beta_c = float(discrete.oscillation_onset(k=k))  # 0.49
  for beta, expect in ((beta_c - 0.02, False), (beta_c + 0.02, True)):
    x = discrete.heavy_ball_map(1.0, beta=beta, k=k, steps=400)
    crossed = np.any(np.sign(x[np.abs(x) > 1e-300]) < 0)
    assert crossed == expect


def test_ar2_recovers_k_on_exact_linear_map():
  beta, k, eta = 0.6, 0.05, 0.1
  x = 0.7 + discrete.heavy_ball_map(-0.4, beta=beta, k=k, steps=120)
  fit = discrete.kappa_from_ar2(x, eta=eta, beta=beta, r_star=0.7)
  np.testing.assert_allclose(fit.k, k, rtol=1e-8)
  np.testing.assert_allclose(fit.kappa, k / eta, rtol=1e-8)
  np.testing.assert_allclose(fit.beta_implied, beta, rtol=1e-8)
  free = discrete.kappa_from_ar2(x, eta=eta)  # R* and beta fitted too
  np.testing.assert_allclose([free.k, free.r_star], [k, 0.7], rtol=1e-6)


def test_log_decay_recovers_kappa_at_beta_zero():
  eta, kappa = 0.5, 0.3
  x = 0.8 + discrete.heavy_ball_map(-0.5, beta=0.0, k=eta * kappa, steps=40)
  np.testing.assert_allclose(discrete.kappa_from_log_decay(x, eta=eta, r_star=0.8), kappa)


@pytest.mark.parametrize('beta, k', [(0.0, 0.05), (0.5, 0.3), (0.9, 0.02), (0.9, 1.5)])
def test_trajectory_fit_recovers_k_r_star_and_r0_on_the_exact_map(beta, k):
  x = 0.7 + discrete.heavy_ball_map(-0.5, beta=beta, k=k, steps=99)
  fit = discrete.kappa_from_trajectory(x, eta=0.1, beta=beta)
  np.testing.assert_allclose([fit.k, fit.r_star, fit.r0], [k, 0.7, 0.2], rtol=1e-7)
  np.testing.assert_allclose(fit.kappa, k / 0.1, rtol=1e-7)
  assert fit.rmse < 1e-7


def test_trajectory_fit_is_unbiased_where_ar2_measures_the_noise():
  """Measurement noise of the size of the rise: AR(2)'s k is biased far upwards (errors in
  variables), the output-error fit stays near the truth (5 noise draws, each checked)."""
  beta, k = 0.9, 0.02
  x = 0.7 + discrete.heavy_ball_map(-0.5, beta=beta, k=k, steps=99)
  rng = np.random.default_rng(0)
  for _ in range(5):
    y = x + 0.02 * rng.normal(size=x.size)
    assert discrete.kappa_from_ar2(y, eta=0.1, beta=beta).k > 10 * k
    np.testing.assert_allclose(discrete.kappa_from_trajectory(y, eta=0.1, beta=beta).k, k, rtol=0.2)
  with pytest.raises(ValueError, match='too short'):
    discrete.kappa_from_trajectory(np.ones(3), eta=0.1, beta=0.5)
  with pytest.raises(ValueError, match='beta'):
    discrete.kappa_from_trajectory(x, eta=0.1, beta=1.0)


def test_trajectory_and_log_decay_read_sampled_update_counts():
  t = np.arange(0, 201, 10)  # an evaluation every 10 updates
  x = 0.7 + discrete.heavy_ball_map(-0.5, beta=0.9, k=0.02, steps=200)
  fit = discrete.kappa_from_trajectory(x[t], eta=0.1, beta=0.9, t=t)
  np.testing.assert_allclose([fit.k, fit.r_star, fit.r0], [0.02, 0.7, 0.2], rtol=1e-7)
  x0 = 0.7 + discrete.heavy_ball_map(-0.5, beta=0.0, k=0.03, steps=200)
  np.testing.assert_allclose(
    discrete.kappa_from_log_decay(x0[t], eta=0.1, r_star=0.7, t=t), 0.3, rtol=1e-12
  )
  with pytest.raises(ValueError, match='shape'):
    discrete.kappa_from_trajectory(x[t], eta=0.1, beta=0.9, t=t[:-1])
  with pytest.raises(ValueError, match='strictly increasing'):
    discrete.kappa_from_trajectory(x[t], eta=0.1, beta=0.9, t=t[::-1])
  with pytest.raises(ValueError, match='strictly increasing'):
    discrete.kappa_from_trajectory(x[t], eta=0.1, beta=0.9, t=np.r_[t[:-1], np.inf])


def test_trajectory_fit_refuses_curves_that_do_not_identify_k():
  with pytest.raises(ValueError, match='flat'):
    discrete.kappa_from_trajectory(np.full(50, 0.3), eta=0.1, beta=0.5)
  # An undamped period-2 alternation: only the edge of stability, k -> 2 (1 + beta), comes
  # near it, so the best k is the search range's ceiling.
  with pytest.raises(ValueError, match='above end'):
    discrete.kappa_from_trajectory(0.5 + 0.1 * (-1.0) ** np.arange(50), eta=0.1, beta=0.5)
  with pytest.raises(ValueError, match='`grid`'):
    discrete.kappa_from_trajectory(np.linspace(0, 1, 20), eta=0.1, beta=0.5, grid=2)


@pytest.mark.parametrize('bad', [1.0, -0.1, float('nan')])
def test_beta_outside_unit_interval_raises(bad):
  with pytest.raises(ValueError, match='beta'):
    discrete.heavy_ball_roots(beta=bad, k=0.1)
  with pytest.raises(ValueError, match='beta'):
    discrete.kappa_from_ar2(np.linspace(0, 1, 20), eta=0.1, beta=bad)


def test_short_or_nan_curves_raise():
  with pytest.raises(ValueError, match='too short'):
    discrete.kappa_from_ar2(np.ones(5), eta=0.1)
  with pytest.raises(ValueError, match='non-finite'):
    discrete.kappa_from_ar2(np.r_[np.linspace(0, 1, 10), np.nan], eta=0.1)


def test_advantage_scale_pinned_values():
  s = jax.jit(discrete.advantage_scale, static_argnames=('group_size', 'normalize', 'ddof'))
  with jax.enable_x64(True):
    np.testing.assert_allclose(s(0.3, group_size=2, ddof=1), 1 / np.sqrt(2), rtol=1e-12)
    np.testing.assert_allclose(s(0.3, group_size=2, ddof=0), 1.0, rtol=1e-12)
    for g in (2, 5, 16):
      np.testing.assert_allclose(s(0.37, group_size=g, normalize='mean'), 1 - 1 / g, rtol=1e-12)
    # G = 4, R = 0: only r_i = 1 with three zeros: A = 0.75 / std_ddof1 = 0.75 / 0.5.
    np.testing.assert_allclose(s(0.0, group_size=4, ddof=1), 1.5, rtol=1e-12)
    np.testing.assert_allclose(s(0.3, group_size=4000, ddof=1), 1 / np.sqrt(0.21), rtol=2e-3)
  # float32 keeps single precision.
  np.testing.assert_allclose(s(0.37, group_size=16, normalize='mean'), 1 - 1 / 16, rtol=1e-5)


@pytest.mark.parametrize('normalize,ddof', [('std', 1), ('std', 0), ('mean', 1)])
def test_advantage_scale_matches_monte_carlo(normalize, ddof):
  rng = np.random.default_rng(0)
  r, g, n = 0.35, 5, 400_000
  rewards = (rng.random((n, g)) < r).astype(float)
  adv = rewards - rewards.mean(1, keepdims=True)
  if normalize == 'std':
    std = rewards.std(1, ddof=ddof, keepdims=True)
    adv = np.where(std > 0, adv / np.where(std > 0, std, 1), 0.0)
  a0, r0 = adv[:, 0], rewards[:, 0]
  mc = a0[r0 == 1].mean() - a0[r0 == 0].mean()
  exact = float(discrete.advantage_scale(r, g, normalize=normalize, ddof=ddof))
  np.testing.assert_allclose(exact, mc, rtol=1e-2)


def test_advantage_scale_with_traced_group_size_matches_static():
  traced = jax.jit(lambda g: discrete.advantage_scale(0.4, g, ddof=1, g_max=32))
  static = jax.jit(discrete.advantage_scale, static_argnames=('group_size',))
  for g in (2, 7, 32):
    np.testing.assert_allclose(traced(float(g)), static(0.4, group_size=g), rtol=1e-5)


def test_stationary_variance_matches_lyapunov_and_simulation():
  beta, k, eta, sigma2 = 0.8, 0.05, 0.3, 2.0
  var = discrete.stationary_variance(beta=beta, k=k, eta_eff=eta, sigma2=sigma2)
  a = np.array([[1 + beta - k, -beta], [1.0, 0.0]])
  q = np.array([[eta**2 * sigma2, 0.0], [0.0, 0.0]])
  np.testing.assert_allclose(var, solve_discrete_lyapunov(a, q)[0, 0], rtol=1e-10)
  rng = np.random.default_rng(1)
  noise = eta * np.sqrt(sigma2) * rng.normal(size=(4000, 64))
  x = discrete.heavy_ball_map(np.zeros(64), beta=beta, k=k, steps=4000, noise=noise)
  np.testing.assert_allclose(x[1000:].var(), var, rtol=0.1)


def _brute_force_unstable(j_cur, j_old, *, beta, eta, d, periods=60):
  """Iterate the sample-and-hold linear map; unstable iff the deviation grows."""
  n = j_cur.shape[0]
  rng = np.random.default_rng(0)
  x = x_prev = rng.normal(size=n)
  norms = []
  for t in range(periods * d):
    if t % d == 0:
      x_held = x
    x, x_prev = x + beta * (x - x_prev) + eta * (j_cur @ x + j_old @ x_held), x
    if (t + 1) % d == 0:
      norms.append(np.linalg.norm(np.r_[x, x_prev]))
  return norms[-1] > norms[periods // 2]


def test_floquet_threshold_matches_brute_force_linear_map():
  rng = np.random.default_rng(3)
  q1, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  q2, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  j_cur = q1 @ np.diag([-0.3, -0.1, -0.02]) @ q1.T
  j_old = q2 @ np.diag([-0.2, -0.1, -0.03]) @ q2.T  # not commuting with j_cur
  for beta, first in ((0.0, 16), (0.5, 8)):
    radii = discrete.floquet_radii(j_cur, j_old, beta=beta, eta=1.0, d_max=25)
    brute = [_brute_force_unstable(j_cur, j_old, beta=beta, eta=1.0, d=d) for d in range(1, 26)]
    assert np.all(np.abs(radii - 1) > 1e-2)  # no marginal case a finite run could not decide
    np.testing.assert_array_equal(radii > 1, brute)
    assert discrete.floquet_threshold(j_cur, j_old, beta=beta, eta=1.0, d_max=25) == first


def test_floquet_stale_scalar_gives_floor_two_over_k_plus_one():
  k = 0.07
  d = discrete.floquet_threshold(np.zeros((1, 1)), np.array([[-k]]), beta=0.0, eta=1.0, d_max=100)
  assert d == discrete.stale_threshold_beta0(k=k) == int(np.floor(2 / k)) + 1 == 29
  np.testing.assert_allclose(discrete.mean_lag_threshold(beta=0.0, k=k), 1 + 2 / k)
  np.testing.assert_allclose(discrete.paper_threshold(beta=0.5, k=k), 0.5 / k)


def test_floquet_rejects_bad_jacobians():
  with pytest.raises(ValueError, match='j_cur'):
    discrete.floquet_radii(np.zeros((2, 3)), np.zeros((2, 3)), beta=0.0, eta=1.0, d_max=3)
  with pytest.raises(ValueError, match='differ'):
    discrete.floquet_radii(np.zeros((2, 2)), np.zeros((3, 3)), beta=0.0, eta=1.0, d_max=3)


def test_fixed_delay_root_test_matches_simulation():
  np.testing.assert_allclose(
    discrete.delay_polynomial(beta=0.3, k=0.08, delay=2), [1.0, -1.3, 0.3, 0.08]
  )
  beta, k = 0.3, 0.2
  for delay in range(0, 10):
    x = [1.0] * (delay + 2)
    for _ in range(3000):
      x.append((1 + beta) * x[-1] - beta * x[-2] - k * x[-1 - delay])
    grows = abs(x[-1]) + abs(x[-2]) > abs(x[1500]) + abs(x[1501])
    assert discrete.delay_stable(beta=beta, k=k, delay=delay) == (not grows)
  # Largest root modulus 0.981 at D = 4 and 1.007 at D = 5.
  assert discrete.delay_threshold(beta=beta, k=k, d_max=9) == 5


def test_floquet_radii_stay_defined_for_a_strongly_unstable_map():
  # x_{t+1} = 6 x_t: the monodromy over d steps is 6^d, beyond float64 past d = 396. The
  # radii follow it exactly while representable and then read inf, never an error.
  radii = discrete.floquet_radii([[5.0]], [[0.0]], beta=0.0, eta=1.0, d_max=450)
  d = np.arange(1, 451)
  finite = np.isfinite(radii)
  np.testing.assert_allclose(np.log(radii[finite]), d[finite] * np.log(6.0), rtol=1e-12)
  assert finite[:396].all() and np.isinf(radii[400:]).all()
  assert discrete.floquet_threshold([[5.0]], [[0.0]], beta=0.0, eta=1.0, d_max=450) == 1
