"""Closed-form oscillator curves (PAPERS.md §5): ODE, limits, regime boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.dynamics import rom


def _ode_residual(curve, t, *, m, gamma, k, r_star, h=1e-3):
  """m R'' + gamma R' + k (R - R*) by central finite differences."""
  r = np.asarray(curve(t))
  rp = (np.asarray(curve(t + h)) - np.asarray(curve(t - h))) / (2 * h)
  rpp = (np.asarray(curve(t + h)) - 2 * r + np.asarray(curve(t - h))) / h**2
  return m * rpp + gamma * rp + k * (r - r_star)


@pytest.mark.parametrize(
  'm,gamma,k',
  [(0.95, 0.1, 0.05), (0.6, 0.8, 0.05), (0.5, 1.0, 0.5)],  # under-, over-, critically damped
)
def test_oscillator_solves_its_ode_from_rest(m, gamma, k):
  with jax.enable_x64(True):
    kw = dict(r0=0.1, r_star=0.8, m=m, gamma=gamma, k=k)
    curve = jax.jit(lambda t: rom.oscillator(t, **kw))
    t = jnp.linspace(0.5, 60.0, 40)
    res = _ode_residual(curve, t, m=m, gamma=gamma, k=k, r_star=0.8)
    np.testing.assert_allclose(res, 0.0, atol=1e-6)
    np.testing.assert_allclose(float(curve(0.0)), 0.1, atol=1e-15)
    slope0 = jax.grad(lambda t: rom.oscillator(t, **kw))(0.0)
    np.testing.assert_allclose(float(slope0), 0.0, atol=1e-12)


@pytest.mark.parametrize('regime', ['overdamped', 'underdamped', 'critical'])
def test_each_named_form_solves_its_ode(regime):
  with jax.enable_x64(True):
    lam, om = 0.2, 0.15
    d = {'overdamped': om**2, 'underdamped': -(om**2), 'critical': 0.0}[regime]
    m = 0.5
    gamma, k = 2 * m * lam, m * (lam**2 - d)  # lam = gamma/(2m), d = lam^2 - k/m
    fns = {
      'overdamped': lambda t: rom.overdamped(t, r0=0.0, r_star=1.0, lam=lam, omega=om),
      'underdamped': lambda t: rom.underdamped(t, r0=0.0, r_star=1.0, lam=lam, omega=om),
      'critical': lambda t: rom.critical(t, r0=0.0, r_star=1.0, lam=lam),
    }
    t = jnp.linspace(0.3, 40.0, 30)
    res = _ode_residual(fns[regime], t, m=m, gamma=gamma, k=k, r_star=1.0)
    np.testing.assert_allclose(res, 0.0, atol=1e-6)


def test_single_exponential_solves_first_order_ode_and_pinned_value():
  with jax.enable_x64(True):
    f = lambda t: rom.single_exponential(t, r0=0.2, r_star=0.9, tau=7.0)  # noqa: E731
    t = jnp.linspace(0.0, 30.0, 7)
    h = 1e-5
    slope = (f(t + h) - f(t - h)) / (2 * h)
    np.testing.assert_allclose(7.0 * slope + (f(t) - 0.9), 0.0, atol=1e-8)
    np.testing.assert_allclose(float(f(7.0)), 0.9 - 0.7 * np.exp(-1.0), rtol=1e-14)


def test_critical_pinned_value():
  # R(1) = R* - (R* - R0) e^{-1} (1 + 1) for lam = 1.
  with jax.enable_x64(True):
    val = rom.critical(1.0, r0=0.0, r_star=1.0, lam=1.0)
    np.testing.assert_allclose(float(val), 1.0 - 2.0 * np.exp(-1.0), rtol=1e-14)


def test_small_mass_limit_is_single_exponential():
  with jax.enable_x64(True):
    t = jnp.linspace(0.0, 50.0, 26)
    gamma, k = 0.5, 0.05
    exp = rom.single_exponential(t, r0=0.1, r_star=0.9, tau=gamma / k)
    errs = []
    for m in (1e-2, 1e-4, 1e-6):
      osc = rom.oscillator(t, r0=0.1, r_star=0.9, m=m, gamma=gamma, k=k)
      assert np.all(np.isfinite(np.asarray(osc)))
      errs.append(float(jnp.max(jnp.abs(osc - exp))))
    # The deviation shrinks linearly with m (the inertial slow start).
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-6


def test_continuous_across_regime_boundary_with_finite_gradients():
  with jax.enable_x64(True):
    t = jnp.linspace(0.0, 100.0, 51)
    crit = rom.critical(t, r0=0.0, r_star=1.0, lam=0.1)
    for om in (1e-9, 1e-6, 1e-4):
      for fn in (rom.overdamped, rom.underdamped):
        val = fn(t, r0=0.0, r_star=1.0, lam=0.1, omega=om)
        np.testing.assert_allclose(val, crit, atol=1e-6 * (om / 1e-4) + 1e-12)
    for fn in (rom.overdamped, rom.underdamped):
      g = jax.grad(lambda om, fn=fn: jnp.sum(fn(t, r0=0.0, r_star=1.0, lam=0.1, omega=om)))
      assert np.isfinite(float(g(0.0))) and np.isfinite(float(g(1e-5)))
    # Exactly at the boundary the signed-discriminant form equals the critical curve.
    np.testing.assert_allclose(rom.envelope(t, 0.1, 0.0), (crit - 1.0) / -1.0, atol=1e-14)


def test_vectorised_over_parameters_matches_loop():
  with jax.enable_x64(True):
    t = jnp.linspace(0.0, 20.0, 11)
    lams = jnp.array([0.05, 0.2, 0.5])
    batched = jax.jit(jax.vmap(lambda l: rom.underdamped(t, r0=0.0, r_star=1.0, lam=l, omega=0.3)))
    out = batched(lams)
    assert out.shape == (3, 11)
    for i, l in enumerate(lams):
      np.testing.assert_allclose(out[i], rom.underdamped(t, r0=0.0, r_star=1.0, lam=l, omega=0.3))


def test_large_time_overdamped_does_not_overflow():
  with jax.enable_x64(False):
    t = jnp.array([0.0, 1e3, 1e4])
    val = rom.overdamped(t, r0=0.0, r_star=1.0, lam=0.5, omega=0.49)
    assert np.all(np.isfinite(np.asarray(val)))
    np.testing.assert_allclose(float(val[-1]), 1.0, atol=1e-6)
