"""Closed-form reward curves of the reduced-order (damped-oscillator) model, PAPERS.md §5.

The continuous model kept for fitting reward curves is

    m R'' + gamma R' + k (R - R*) = 0,   R(0) = R0,  R'(0) = 0,
    lam = gamma / (2 m),  D = lam**2 - k / m,  Omega = sqrt(|D|).

Every curve is ``R* - (R* - R0) * envelope(t)`` with ``envelope = e^{-lam t} (C + lam S)``,
``C = cosh(Omega t)`` / ``cos(Omega t)`` and ``S = sinh(Omega t)/Omega`` / ``sin(Omega t)/Omega``.
One routine evaluates the envelope for a *signed* ``D`` so the three regimes meet continuously:
near ``D t^2 = 0`` a Maclaurin series in ``u = D t^2`` replaces the ratio ``sinh(x)/Omega`` (which
would divide by zero at critical damping), and the overdamped branch is written in its two
decay rates so that neither ``cosh`` overflows nor ``lam - Omega`` cancels as ``m -> 0``.
All functions broadcast over their arguments and are differentiable (double-``where``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# |D t^2| below this uses the series; its truncation error is u^5/10! < 3e-7 there.
_SERIES_LIMIT = 1.0
_SERIES_TERMS = 6


def heavy_ball_coefficients(*, beta, eta_eff, kappa):
  """Mass, damping and stiffness of the continuous model (PAPERS.md §5).

  Args:
    beta: heavy-ball momentum in [0, 1).
    eta_eff: effective learning rate (``eta * s(R*, G)`` for GRPO).
    kappa: curvature scale.

  Returns:
    ``(m, gamma, k)`` with ``m = (1 + beta) / 2``, ``gamma = 1 - beta``, ``k = eta_eff * kappa``.
  """
  return (1.0 + beta) / 2.0, 1.0 - beta, eta_eff * kappa


def _series(u, t):
  """``C = sum u^n/(2n)!`` and ``S = t * sum u^n/(2n+1)!`` (exact cosh/sinh or cos/sin ratio)."""
  c = jnp.zeros_like(u)
  s = jnp.zeros_like(u)
  term = jnp.ones_like(u)
  for n in range(_SERIES_TERMS):
    c = c + term / math.factorial(2 * n)
    s = s + term / math.factorial(2 * n + 1)
    term = term * u
  return c, t * s


@jax.jit
def envelope(t, lam, d):
  """``e^{-lam t} (C(t) + lam S(t))`` for a signed discriminant ``d = lam^2 - k/m``.

  It is the fraction of the initial gap ``R* - R0`` still open at time ``t``; it equals 1 with
  zero slope at ``t = 0``.

  Args:
    t: times (>= 0).
    lam: damping rate ``gamma / (2 m)``.
    d: signed discriminant; > 0 overdamped, 0 critical, < 0 underdamped.

  Returns:
    The envelope, broadcast over the arguments.
  """
  dtype = jnp.result_type(t, lam, d, float)
  t, lam, d = jnp.broadcast_arrays(*(jnp.asarray(a, dtype) for a in (t, lam, d)))
  u = d * t * t
  near = jnp.abs(u) < _SERIES_LIMIT
  over = (~near) & (d > 0)
  under = (~near) & (d <= 0)

  # Series branch (any sign of d).
  u_s = jnp.where(near, u, 0.0)
  c_s, s_s = _series(u_s, t)
  series_val = jnp.exp(-lam * t) * (c_s + lam * s_s)

  # Overdamped branch in its rates r1 = lam - Omega (slow, computed without cancellation as
  # (k/m) / (lam + Omega)) and r2 = lam + Omega:
  # envelope = (r2 e^{-r1 t} - r1 e^{-r2 t}) / (r2 - r1).
  d_o = jnp.where(over, d, 1.0)
  om = jnp.sqrt(d_o)
  k_over_m = lam * lam - d_o
  r2 = lam + om
  r1 = jnp.where(over, k_over_m / jnp.where(over, r2, 1.0), 0.0)
  over_val = (r2 * jnp.exp(-r1 * t) - r1 * jnp.exp(-r2 * t)) / (2.0 * om)

  # Underdamped branch.
  d_u = jnp.where(under, -d, 1.0)
  w = jnp.sqrt(d_u)
  under_val = jnp.exp(-lam * t) * (jnp.cos(w * t) + lam * jnp.sin(w * t) / w)

  return jnp.where(near, series_val, jnp.where(over, over_val, under_val))


def oscillator(t, *, r0, r_star, m, gamma, k):
  """Reward curve of ``m R'' + gamma R' + k (R - R*) = 0`` from rest at ``R0`` (any regime).

  The regime follows from the sign of ``lam^2 - k/m``; the function is continuous across the
  regime boundaries and tends to :func:`single_exponential` with ``tau = gamma / k`` as
  ``m -> 0`` (the paper's claim (1), PAPERS.md §5).
  """
  lam = gamma / (2.0 * m)
  d = lam * lam - k / m
  return r_star - (r_star - r0) * envelope(t, lam, d)


def overdamped(t, *, r0, r_star, lam, omega):
  """Overdamped curve ``R* - (R* - R0) e^{-lam t} (cosh Omega t + lam/Omega sinh Omega t)``."""
  return r_star - (r_star - r0) * envelope(t, lam, jnp.square(omega))


def underdamped(t, *, r0, r_star, lam, omega):
  """Underdamped curve ``R* - (R* - R0) e^{-lam t} (cos Omega t + lam/Omega sin Omega t)``."""
  return r_star - (r_star - r0) * envelope(t, lam, -jnp.square(omega))


def critical(t, *, r0, r_star, lam):
  """Critically damped curve ``R* - (R* - R0) e^{-lam t} (1 + lam t)``."""
  t = jnp.asarray(t)
  return r_star - (r_star - r0) * jnp.exp(-lam * t) * (1.0 + lam * t)


def single_exponential(t, *, r0, r_star, tau):
  """Single-exponential saturation law ``R* - (R* - R0) e^{-t/tau}`` (the ``m -> 0`` limit)."""
  t = jnp.asarray(t)
  return r_star - (r_star - r0) * jnp.exp(-t / tau)


def overdamped_from_rates(t, *, r0, r_star, r1, r2):
  """Overdamped/critical curve written with its two decay rates (symmetric in ``r1, r2``).

  ``lam = (r1 + r2) / 2`` and ``Omega = |r2 - r1| / 2``; equal rates give critical damping.
  """
  lam = 0.5 * (r1 + r2)
  d = jnp.square(0.5 * (r2 - r1))
  return r_star - (r_star - r0) * envelope(t, lam, d)


__all__ = [
  'critical',
  'envelope',
  'heavy_ball_coefficients',
  'oscillator',
  'overdamped',
  'overdamped_from_rates',
  'single_exponential',
  'underdamped',
]
