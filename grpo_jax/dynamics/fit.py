"""Fit the closed-form oscillator curves (and the single exponential) to a reward curve.

PAPERS.md §5: the closed forms of ``rom.py`` are for *fitting*. ``fit_curve`` fits the
critical, overdamped and underdamped forms by bounded ``scipy.optimize.least_squares`` (jax
residual and Jacobian, float64) from several starts, chooses the regime by BIC, compares with
the single exponential by R^2/AIC/BIC, gives a residual-bootstrap interval, and rejects fits
whose R* lies above the attainable maximum (without an interior fixed point an "underdamped"
fit with R* above the maximum is an artefact, PAPERS.md §5).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import least_squares

from grpo_jax.dynamics import rom

MIN_POINTS = 8
REGIMES = ('critical', 'overdamped', 'underdamped')


def _model(kind, u, p):
  if kind == 'exponential':
    return rom.single_exponential(u, r0=p[0], r_star=p[1], tau=1.0 / p[2])
  if kind == 'critical':
    return rom.critical(u, r0=p[0], r_star=p[1], lam=p[2])
  if kind == 'overdamped':
    return rom.overdamped_from_rates(u, r0=p[0], r_star=p[1], r1=p[2], r2=p[3])
  return rom.underdamped(u, r0=p[0], r_star=p[1], lam=p[2], omega=p[3])


@functools.cache
def _compiled(kind):
  fun = jax.jit(lambda p, u: _model(kind, u, p))
  jac = jax.jit(jax.jacfwd(lambda p, u: _model(kind, u, p)))
  return fun, jac


def _bounds(kind, n, y):
  span = max(float(np.ptp(y)), 1e-3)
  lo_r, hi_r = float(np.min(y)) - 10 * span, float(np.max(y)) + 10 * span
  rate_hi = 4.0 * n  # decays within a quarter of a step: anything faster is not resolvable
  lo = [lo_r, lo_r]
  hi = [hi_r, hi_r]
  if kind in ('exponential', 'critical'):
    lo += [1e-3]
    hi += [rate_hi]
  elif kind == 'overdamped':
    lo += [-5.0, 1e-3]
    hi += [rate_hi, rate_hi]
  else:
    lo += [-5.0, 1e-3]
    hi += [rate_hi, math.pi * n]  # Nyquist: at most pi per step
  return np.array(lo), np.array(hi)


def _starts(kind, y, n_starts):
  tail = float(np.mean(y[-max(2, y.size // 10) :]))
  base = [float(y[0]), tail]
  rates = (0.7, 3.0, 10.0, 30.0)
  if kind in ('exponential', 'critical'):
    cands = [[r] for r in rates]
  elif kind == 'overdamped':
    cands = [[r, r * q] for r in rates for q in (2.0, 8.0)]
  else:
    cands = [[lam, om] for om in (2.0, 6.0, 15.0, 40.0) for lam in (0.5, 3.0, 10.0)]
  return [np.array(base + c) for c in cands[:n_starts]]


def _solve(kind, u, y, p0, lo, hi):
  fun, jac = _compiled(kind)
  u_j = jnp.asarray(u)
  p0 = np.clip(p0, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
  res = least_squares(
    lambda p: np.asarray(fun(jnp.asarray(p), u_j)) - y,
    p0,
    jac=lambda p: np.asarray(jac(jnp.asarray(p), u_j)),
    bounds=(lo, hi),
    method='trf',
    x_scale='jac',
    max_nfev=400,
  )
  sse = float(np.sum(res.fun**2)) if np.all(np.isfinite(res.fun)) else math.inf
  return res.x, sse


def _best(kind, u, y, n_starts):
  lo, hi = _bounds(kind, y.size, y)
  best = (None, math.inf)
  for p0 in _starts(kind, y, n_starts):
    p, sse = _solve(kind, u, y, p0, lo, hi)
    if sse < best[1]:
      best = (p, sse)
  return best


def _criteria(sse, n, n_params, sst):
  sse = max(sse, 1e-300)
  aic = n * math.log(sse / n) + 2 * n_params
  bic = n * math.log(sse / n) + n_params * math.log(n)
  return 1.0 - sse / sst if sst > 0 else float('nan'), aic, bic


def _physical(kind, p, scale):
  """Per-step parameters from the normalised-time fit (rates divide by the time scale)."""
  out = {'r0': float(p[0]), 'r_star': float(p[1])}
  if kind == 'exponential':
    out['tau'] = scale / float(p[2])
    return out
  if kind == 'critical':
    lam, om = float(p[2]), 0.0
  elif kind == 'overdamped':
    lam, om = 0.5 * float(p[2] + p[3]), 0.5 * abs(float(p[3] - p[2]))
  else:
    lam, om = float(p[2]), float(p[3])
  lam, om = lam / scale, om / scale
  d = om * om if kind == 'overdamped' else -om * om
  k_over_m = lam * lam - d
  out.update(lam=lam, omega=om, k_over_m=k_over_m)
  out['damping_ratio'] = lam / math.sqrt(k_over_m) if k_over_m > 0 else float('nan')
  # Slowest decay rate of the envelope (its inverse is the time constant).
  out['tau'] = (
    1.0 / (lam - om) if kind == 'overdamped' and lam > om else (1.0 / lam if lam else math.inf)
  )
  return out


@dataclasses.dataclass(frozen=True)
class CurveFit:
  """Result of :func:`fit_curve`; rates and times are per step of the input ``steps``."""

  regime: str
  params: dict
  r2: float
  aic: float
  bic: float
  n: int
  exponential: dict  # r0, r_star, tau, r2, aic, bic of the single exponential
  delta_aic: float  # oscillator minus exponential (negative favours the oscillator)
  delta_bic: float
  interval: dict  # name -> (low, high) bootstrap percentile interval
  rejected: bool
  reason: str
  candidates: dict  # regime -> {'sse', 'bic'}
  t0: float = 0.0
  raw: tuple = ()  # (kind, normalised params, time scale) to evaluate the curve

  def curve(self, steps):
    """The fitted oscillator curve at ``steps``."""
    kind, p, scale = self.raw
    with jax.enable_x64(True):
      u = (np.asarray(steps, float) - self.t0) / scale
      return np.asarray(_model(kind, jnp.asarray(u), jnp.asarray(p)))

  def exponential_curve(self, steps):
    """The fitted single exponential at ``steps``."""
    e = self.exponential
    t = np.asarray(steps, float) - self.t0
    return e['r_star'] - (e['r_star'] - e['r0']) * np.exp(-t / e['tau'])


def fit_curve(
  steps,
  rewards,
  *,
  r_max=1.0,
  n_starts=8,
  n_bootstrap=100,
  confidence=0.9,
  seed=0,
  regimes=REGIMES,
) -> CurveFit:
  """Fit the oscillator closed forms to a reward curve and compare with the single exponential.

  The curve is assumed to start at rest at ``steps[0]`` (``R'(0) = 0``, PAPERS.md §5).

  Args:
    steps: ``[T]`` strictly increasing step numbers.
    rewards: ``[T]`` reward (or accuracy) values, finite.
    r_max: attainable maximum of the reward; a fit with ``R* > r_max`` is rejected (reported
      in ``reason``), or None to skip the check.
    n_starts: starts per regime.
    n_bootstrap: residual-bootstrap refits for the interval (0 disables it).
    confidence: two-sided level of the percentile interval.
    seed: bootstrap seed.
    regimes: the oscillator regimes to consider.

  Returns:
    A :class:`CurveFit`.
  """
  t = np.asarray(steps, dtype=float)
  y = np.asarray(rewards, dtype=float)
  if t.ndim != 1 or y.ndim != 1 or t.shape != y.shape:
    raise ValueError(f'`steps` {t.shape} and `rewards` {y.shape} must be 1-D of equal length')
  if y.size < MIN_POINTS:
    raise ValueError(f'`rewards` is too short to fit: {y.size} points, need >= {MIN_POINTS}')
  for name, a in (('steps', t), ('rewards', y)):
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
      raise ValueError(f'`{name}` has non-finite values at indices {bad[:5].tolist()}')
  if np.any(np.diff(t) <= 0):
    raise ValueError('`steps` must be strictly increasing')
  if not set(regimes) <= set(REGIMES) or not regimes:
    raise ValueError(f'`regimes` must be a non-empty subset of {REGIMES}, got {regimes}')
  if not 0 < confidence < 1:
    raise ValueError(f'`confidence` must lie in (0, 1), got {confidence}')

  scale = float(t[-1] - t[0])
  u = (t - t[0]) / scale
  n = y.size
  sst = float(np.sum((y - y.mean()) ** 2))
  n_params = {'exponential': 3, 'critical': 3, 'overdamped': 4, 'underdamped': 4}
  with jax.enable_x64(True):
    fits = {kind: _best(kind, u, y, n_starts) for kind in ('exponential', *regimes)}
    cands = {}
    for kind in regimes:
      _, sse = fits[kind]
      cands[kind] = {'sse': sse, 'bic': _criteria(sse, n, n_params[kind], sst)[2]}
    regime = min(regimes, key=lambda kk: cands[kk]['bic'])
    p, sse = fits[regime]
    r2, aic, bic = _criteria(sse, n, n_params[regime], sst)
    pe, sse_e = fits['exponential']
    r2_e, aic_e, bic_e = _criteria(sse_e, n, 3, sst)
    exp_params = _physical('exponential', pe, scale) | {'r2': r2_e, 'aic': aic_e, 'bic': bic_e}
    params = _physical(regime, p, scale)

    interval = {}
    if n_bootstrap:
      fun, _ = _compiled(regime)
      fitted = np.asarray(fun(jnp.asarray(p), jnp.asarray(u)))
      resid = y - fitted
      rng = np.random.default_rng(seed)
      lo, hi = _bounds(regime, n, y)
      samples = []
      for _ in range(int(n_bootstrap)):
        yb = fitted + rng.choice(resid, size=n, replace=True)
        pb, _ = _solve(regime, u, yb, p, lo, hi)
        samples.append(_physical(regime, pb, scale))
      a = (1.0 - confidence) / 2.0
      for key in params:
        vals = np.array([s[key] for s in samples], float)
        vals = vals[np.isfinite(vals)]
        if vals.size:
          interval[key] = (float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a)))

  rejected, reason = False, ''
  if r_max is not None and params['r_star'] > r_max:
    rejected = True
    reason = (
      f'fitted R* = {params["r_star"]:.4g} exceeds the attainable maximum {r_max:.4g}: '
      'without an interior fixed point the oscillator fit is an artefact (PAPERS.md §5)'
    )
  return CurveFit(
    regime=regime,
    params=params,
    r2=r2,
    aic=aic,
    bic=bic,
    n=n,
    exponential=exp_params,
    delta_aic=aic - aic_e,
    delta_bic=bic - bic_e,
    interval=interval,
    rejected=rejected,
    reason=reason,
    candidates=cands,
    t0=float(t[0]),
    raw=(regime, np.asarray(p), scale),
  )


__all__ = ['MIN_POINTS', 'REGIMES', 'CurveFit', 'fit_curve']
