"""Exact discrete theory of GRPO near a fixed point: heavy-ball map, kappa, s(R, G), thresholds.

PAPERS.md §5 ("Checked numerically"): near a fixed point the dynamics are the heavy-ball map
``x_{t+1} = (1 + beta - k) x_t - beta x_{t-1}`` with ``x = R - R*`` and ``k = eta * kappa``
(``k = eta s(R*, G) kappa0`` for GRPO), exact to 5-6 digits, whereas the ODE of ``rom.py`` is
only an approximation. Everything here is that exact map: its roots, the AR(2), log-decay
and trajectory (output-error) routes to kappa, the exact advantage scale ``s(R, G)``, the
stationary variance, the Floquet test of the sample-and-hold (refresh-interval) map and the
fixed-delay root test.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln


def _check_beta(beta, name='beta'):
  b = np.asarray(beta, dtype=float)
  if not np.all(np.isfinite(b)) or np.any(b < 0) or np.any(b >= 1):
    raise ValueError(f'`{name}` (heavy-ball momentum) must lie in [0, 1), got {beta}')


def _check_positive(x, name):
  v = np.asarray(x, dtype=float)
  if not np.all(np.isfinite(v)) or np.any(v <= 0):
    raise ValueError(f'`{name}` must be finite and > 0, got {x}')


class MapRoots(NamedTuple):
  """Roots of ``z^2 - (1 + beta - k) z + beta`` and what they imply (all arrays)."""

  z_dominant: np.ndarray  # complex, the root of largest modulus
  z_other: np.ndarray
  decay: np.ndarray  # lam = -ln|z_dominant| per step (<= 0 means not decaying)
  frequency: np.ndarray  # Omega = |arg z_dominant| per step
  oscillatory: np.ndarray  # complex pair: (1 - sqrt k)^2 < beta < (1 + sqrt k)^2
  stable: np.ndarray  # both roots strictly inside the unit circle: 0 < k < 2 (1 + beta)


def heavy_ball_roots(*, beta, k) -> MapRoots:
  """Roots of the heavy-ball map ``x_{t+1} = (1 + beta - k) x_t - beta x_{t-1}`` (PAPERS.md §5).

  Args:
    beta: momentum in [0, 1) (array-like, broadcast with ``k``).
    k: stiffness ``eta * kappa`` per step.

  Returns:
    A :class:`MapRoots` of numpy arrays.
  """
  _check_beta(beta)
  beta, k = np.broadcast_arrays(np.asarray(beta, float), np.asarray(k, float))
  b = 1.0 + beta - k
  disc = (b * b - 4.0 * beta).astype(complex)
  sq = np.sqrt(disc)
  z1, z2 = (b + sq) / 2.0, (b - sq) / 2.0
  swap = np.abs(z2) > np.abs(z1)
  zd, zo = np.where(swap, z2, z1), np.where(swap, z1, z2)
  with np.errstate(divide='ignore'):
    decay = -np.log(np.abs(zd))
  return MapRoots(
    z_dominant=zd,
    z_other=zo,
    decay=decay,
    frequency=np.abs(np.angle(zd)),
    oscillatory=(b * b - 4.0 * beta) < 0,
    stable=(np.maximum(np.abs(z1), np.abs(z2)) < 1.0),
  )


def oscillation_onset(*, k):
  """Momentum at which the map's roots turn complex, ``beta_c = (1 - sqrt k)^2``."""
  k = np.asarray(k, float)
  return np.where(k >= 0, (1.0 - np.sqrt(np.maximum(k, 0.0))) ** 2, np.nan)


def ode_oscillation_onset(*, k):
  """Onset of the continuous model (damping ratio 1): ``(1 - beta)^2 = 2 k (1 + beta)``.

  The root in [0, 1) of ``beta^2 - 2 (1 + k) beta + 1 - 2k = 0``; it matches
  :func:`oscillation_onset` only when ``k << 1`` (PAPERS.md §5).
  """
  k = np.asarray(k, float)
  disc = np.maximum((1.0 + k) ** 2 - (1.0 - 2.0 * k), 0.0)
  return np.where(k >= 0, (1.0 + k) - np.sqrt(disc), np.nan)


def heavy_ball_map(x0, *, beta, k, steps, x_prev=None, noise=None):
  """Iterate ``x_{t+1} = (1 + beta - k) x_t - beta x_{t-1} (+ noise_t)`` from rest.

  Args:
    x0: initial deviation (scalar or array, iterated elementwise).
    beta: momentum in [0, 1).
    k: stiffness per step.
    steps: number of steps; the result has ``steps + 1`` entries along axis 0.
    x_prev: ``x_{-1}``; defaults to ``x0`` (zero velocity).
    noise: optional ``[steps, ...]`` additive forcing.

  Returns:
    ``x_T`` for ``T = 0..steps`` as a numpy array.
  """
  _check_beta(beta)
  x = np.asarray(x0, float)
  xp = x if x_prev is None else np.asarray(x_prev, float)
  out = [x]
  for t in range(int(steps)):
    xn = (1.0 + beta - k) * x - beta * xp
    if noise is not None:
      xn = xn + noise[t]
    xp, x = x, xn
    out.append(x)
  return np.stack(out)


class AR2Fit(NamedTuple):
  """``x_{t+1} = a x_t + b x_{t-1} (+ c)`` fitted by least squares; ``k = 1 + beta - a``."""

  a: float
  b: float
  k: float
  kappa: float  # k / eta
  beta_implied: float  # -b; should match the momentum used (a self-check)
  r_star: float


def kappa_from_ar2(rewards, *, eta, beta=None, r_star=None) -> AR2Fit:
  """Measure the stiffness from an AR(2) fit near saturation (PAPERS.md §5, kappa route 1).

  Args:
    rewards: reward curve near its fixed point, ``[T]`` with ``T >= 8``.
    eta: learning rate (``eta * s(R*, G)`` for GRPO to get ``kappa0``).
    beta: the momentum used; ``k = 1 + beta - a``. Defaults to ``-b`` (the fitted value).
    r_star: the fixed point; if None an intercept is fitted and ``R* = c / (1 - a - b)``.

  Returns:
    An :class:`AR2Fit`.
  """
  r = _as_curve(rewards, 'rewards', min_len=8)
  _check_positive(eta, 'eta')
  if beta is not None:
    _check_beta(beta)
  y = r[2:]
  cols = [r[1:-1], r[:-2]]
  if r_star is None:
    cols.append(np.ones_like(y))
  else:
    y = y - r_star
    cols = [c - r_star for c in cols]
  coef, *_ = np.linalg.lstsq(np.stack(cols, axis=1), y, rcond=None)
  a, b = float(coef[0]), float(coef[1])
  if r_star is None:
    denom = 1.0 - a - b
    rs = float(coef[2] / denom) if denom != 0 else float('nan')
  else:
    rs = float(r_star)
  bt = -b if beta is None else float(beta)
  k = 1.0 + bt - a
  return AR2Fit(a=a, b=b, k=k, kappa=k / eta, beta_implied=-b, r_star=rs)


def kappa_from_log_decay(rewards, *, eta, r_star, t=None):
  """Stiffness at ``beta = 0`` from the per-step log-decay ``r``: ``kappa = (1 - e^{-r}) / eta``.

  At ``beta = 0`` the map is ``x_{t+1} = (1 - k) x_t``, so ``ln|x_t|`` falls by ``r = -ln(1-k)``
  per step (PAPERS.md §5, kappa route 2). Use a window near saturation, not the far tail.

  Args:
    rewards: ``[T]`` rewards (``T >= 4``) of a ``beta = 0`` run.
    eta: learning rate.
    r_star: the fixed point.
    t: ``[T]`` increasing integer update counts of the rewards; default ``0..T-1``.

  Returns:
    ``kappa``.
  """
  r = _as_curve(rewards, 'rewards', min_len=4)
  _check_positive(eta, 'eta')
  x = np.abs(r - r_star)
  if np.any(x <= 0):
    raise ValueError('`rewards` touches `r_star`; the log-decay needs |R - R*| > 0 throughout')
  slope = np.polyfit(_update_counts(t, r.size).astype(float), np.log(x), 1)[0]
  return (1.0 - math.exp(slope)) / eta


class TrajectoryFit(NamedTuple):
  """The exact map's deterministic trajectory fitted to a curve (output error)."""

  k: float
  kappa: float  # k / eta
  r_star: float
  r0: float
  rmse: float


def kappa_from_trajectory(rewards, *, eta, beta, t=None, grid=400) -> TrajectoryFit:
  """Stiffness from the whole curve by output-error least squares on the exact map.

  The AR(2) route regresses each reward on the two before it; measurement noise in those
  regressors biases ``a`` towards 0 and ``k = 1 + beta - a`` upwards (errors in variables),
  so on a batch-reward curve whose noise is comparable to its rise it measures the noise.
  Here the *deterministic* trajectory from rest, ``R_t = R* + (R0 - R*) h_t(k)`` with
  ``h = heavy_ball_map(1, beta, k)``, is fitted instead: for a fixed ``k`` the model is
  linear in ``(R*, R0)``, so ``k`` is profiled over a log grid on the stable range
  ``(0, 2 (1 + beta))`` and refined by a bounded scalar search. The momentum is known.
  Unlike AR(2), the curve may be sampled at any update counts (an evaluation every d
  updates), since the trajectory is simulated at every update and read at ``t``.

  Args:
    rewards: ``[T]`` rewards (``T >= 4``).
    eta: learning rate.
    beta: the momentum used.
    t: ``[T]`` strictly increasing non-negative integer update counts of the rewards, counted
      from the start of the run (``R0`` is the reward at ``t = 0``); default ``0..T-1``.
    grid: log-grid points of the profile search.

  Returns:
    A :class:`TrajectoryFit`.

  Raises:
    ValueError: when the curve does not identify ``k``: flat (every ``k`` fits alike) or
      best fitted at an end of the search range (a drift with no visible decay, or a decay
      faster than the stable map allows).
  """
  from scipy.optimize import minimize_scalar

  r = _as_curve(rewards, 'rewards', min_len=4)
  _check_positive(eta, 'eta')
  _check_beta(beta)
  if int(grid) < 3:
    raise ValueError(f'`grid` must be >= 3, got {grid}')
  ts = _update_counts(t, r.size)

  def solve(k):
    h = heavy_ball_map(1.0, beta=beta, k=k, steps=int(ts[-1]))[ts]
    design = np.stack([1.0 - h, h], axis=1)  # columns multiply R*, R0
    coef, *_ = np.linalg.lstsq(design, r, rcond=None)
    return coef, float(np.sum((design @ coef - r) ** 2))

  k_hi = 2.0 * (1.0 + beta) * (1.0 - 1e-6)
  ks = np.geomspace(1e-5, k_hi, int(grid))
  sse = np.array([solve(k)[1] for k in ks])
  i = int(np.argmin(sse))
  if not np.ptp(sse) > 1e-12 * float(np.sum(r**2)):
    raise ValueError('the trajectory does not identify k: every k fits the curve alike (flat)')
  if i in (0, ks.size - 1):
    where = 'below' if i == 0 else 'above'
    raise ValueError(
      f'the trajectory does not identify k: the best fit lies at k = {ks[i]:.3g}, the {where} '
      f'end of the searched range [{ks[0]:.3g}, {ks[-1]:.3g}] (no decay visible in the curve, '
      'or one faster than the stable map)'
    )
  lo, hi = ks[max(i - 1, 0)], ks[min(i + 1, ks.size - 1)]
  best = minimize_scalar(lambda lk: solve(math.exp(lk))[1], bounds=(math.log(lo), math.log(hi)),
                         method='bounded', options={'xatol': 1e-10})  # fmt: skip
  k = math.exp(best.x) if best.fun <= sse[i] else float(ks[i])
  (r_star, r0), sse_k = solve(k)
  return TrajectoryFit(
    k=k, kappa=k / eta, r_star=float(r_star), r0=float(r0), rmse=math.sqrt(sse_k / r.size)
  )


def _update_counts(t, size):
  if t is None:
    return np.arange(size)
  ts = np.asarray(t, dtype=float)
  if ts.shape != (size,):
    raise ValueError(f'`t` must have shape ({size},) like the rewards, got {ts.shape}')
  bad = ~np.isfinite(ts) | (ts < 0) | (ts != np.round(ts))
  if np.any(bad) or np.any(np.diff(ts) <= 0):
    raise ValueError(
      f'`t` must hold strictly increasing non-negative integer update counts, got {ts.tolist()}'
    )
  return ts.astype(int)


def _as_curve(values, name, *, min_len):
  a = np.asarray(values, dtype=float)
  if a.ndim != 1:
    raise ValueError(f'`{name}` must be 1-D, got shape {a.shape}')
  if a.size < min_len:
    raise ValueError(f'`{name}` is too short: {a.size} points, need at least {min_len}')
  bad = np.flatnonzero(~np.isfinite(a))
  if bad.size:
    raise ValueError(f'`{name}` has non-finite values at indices {bad[:5].tolist()}')
  return a


def _binomial_pmf(r, n, kk):
  """``P(K = kk)`` for ``K ~ Bin(n, r)``, stable at ``r in {0, 1}``."""
  valid = kk <= n
  kk = jnp.where(valid, kk, 0.0)  # double-where: no NaN gradient from the masked terms
  log_c = gammaln(n + 1.0) - gammaln(kk + 1.0) - gammaln(n - kk + 1.0)
  r = jnp.asarray(r)
  # xlogy-style terms so 0 * log 0 = 0 at the boundaries.
  lr = jnp.where(kk > 0, kk * jnp.log(jnp.where(kk > 0, r, 1.0)), 0.0)
  lq = jnp.where(n - kk > 0, (n - kk) * jnp.log(jnp.where(n - kk > 0, 1.0 - r, 1.0)), 0.0)
  p = jnp.exp(log_c + lr + lq)
  return jnp.where(valid, p, 0.0)


def advantage_moments(r, group_size, *, normalize='std', ddof=1, eps=0.0, g_max=None):
  """``E[A | r_i = 1]`` and ``-E[A | r_i = 0]`` for group advantages of Bernoulli(R) rewards.

  The other ``G - 1`` rewards of the group are i.i.d. Bernoulli(R); ``K`` of them succeed. The
  exact binomial sum over ``K`` gives both conditional means (PAPERS.md §5). Groups whose
  rewards are all equal have zero advantage.

  Args:
    r: success probability of the sampling policy (array).
    group_size: ``G >= 2`` (int, or an array if ``g_max`` bounds it).
    normalize: ``'std'`` (GRPO, ``A = (r - mean) / (std + eps)``) or ``'mean'`` (``A = r - mean``).
    ddof: degrees of freedom of the group std (1 gives ``s = 0.707`` at ``G = 2``, 0 gives 1).
    eps: added to the std, as in the advantage presets.
    g_max: static bound on ``group_size`` when it is traced (sweeps over G).

  Returns:
    ``(s_plus, s_minus)``, both >= 0; ``s = s_plus + s_minus``.
  """
  if normalize not in ('std', 'mean'):
    raise ValueError(f"`normalize` must be 'std' or 'mean', got {normalize!r}")
  if g_max is None:
    if int(group_size) != group_size or group_size < 2:
      raise ValueError(f'`group_size` must be an integer >= 2, got {group_size}')
    g_max = int(group_size)
  if normalize == 'std' and ddof not in (0, 1):
    raise ValueError(f'`ddof` must be 0 or 1, got {ddof}')
  return _moments(r, group_size, eps, normalize=normalize, ddof=int(ddof), g_max=int(g_max))


@functools.partial(jax.jit, static_argnames=('normalize', 'ddof', 'g_max'))
def _moments(r, group_size, eps, *, normalize, ddof, g_max):
  g = jnp.asarray(group_size, jnp.result_type(float))
  kk = jnp.arange(g_max, dtype=g.dtype)  # successes among the other G - 1
  r = jnp.asarray(r, g.dtype)[..., None]
  pmf = _binomial_pmf(r, g - 1.0, kk)
  p1 = (kk + 1.0) / g  # group mean when r_i = 1
  p0 = kk / g  # group mean when r_i = 0
  if normalize == 'mean':
    a1, a0 = 1.0 - p1, -p0
  else:
    corr = g / (g - ddof)

    def std(p):
      return jnp.sqrt(jnp.maximum(p * (1.0 - p) * corr, 0.0))

    s1, s0 = std(p1), std(p0)
    a1 = jnp.where(s1 > 0, (1.0 - p1) / jnp.where(s1 > 0, s1 + eps, 1.0), 0.0)
    a0 = jnp.where(s0 > 0, -p0 / jnp.where(s0 > 0, s0 + eps, 1.0), 0.0)
  return jnp.sum(pmf * a1, -1), -jnp.sum(pmf * a0, -1)


def advantage_scale(r, group_size, *, normalize='std', ddof=1, eps=0.0, g_max=None):
  """``s(R, G) = E[A | r = 1] - E[A | r = 0]``: the expected GRPO gradient is ``s grad R``.

  Exact binomial sum (PAPERS.md §5). ``s -> 1/sqrt(R (1 - R))`` as ``G -> inf`` for the std
  normalisation; ``s = 1 - 1/G`` for mean-only advantages; ``s(., 2) = 1/sqrt(2)`` with
  ``ddof=1`` and ``1`` with ``ddof=0``. Arguments as in :func:`advantage_moments`.
  """
  sp, sm = advantage_moments(r, group_size, normalize=normalize, ddof=ddof, eps=eps, g_max=g_max)
  return sp + sm


def stationary_variance(*, beta, k, eta_eff, sigma2):
  """Exact stationary variance of the noisy heavy-ball map (PAPERS.md §5).

  ``x_{t+1} = (1 + beta - k) x_t - beta x_{t-1} + eta_eff xi_t`` with ``Var xi = sigma2`` has
  ``Var x = eta_eff^2 sigma2 (1 + beta) / ((1 - beta) k (2 (1 + beta) - k))``; ``sigma2`` scales
  as ``1 / (B G)``.
  """
  _check_beta(beta)
  beta, k = np.asarray(beta, float), np.asarray(k, float)
  if np.any(k <= 0) or np.any(k >= 2 * (1 + beta)):
    raise ValueError(f'the map is not stable for k={k}, beta={beta}: need 0 < k < 2 (1 + beta)')
  return eta_eff**2 * sigma2 * (1 + beta) / ((1 - beta) * k * (2 * (1 + beta) - k))


def _as_square(j, name):
  j = np.atleast_2d(np.asarray(j, dtype=float))
  if j.ndim != 2 or j.shape[0] != j.shape[1]:
    raise ValueError(f'`{name}` must be a square Jacobian matrix, got shape {j.shape}')
  if not np.all(np.isfinite(j)):
    raise ValueError(f'`{name}` has non-finite entries')
  return j


def floquet_radii(j_cur, j_old, *, beta, eta, d_max):
  """Monodromy spectral radius of the sample-and-hold map for every refresh interval 1..d_max.

  Linearised map (PAPERS.md §5), ``t0 = d floor(t / d)`` the last refresh:
  ``x_{t+1} = x_t + beta (x_t - x_{t-1}) + eta (J_cur x_t + J_old x_{t0})`` with ``x`` the full
  parameter deviation and ``J_cur``, ``J_old`` the full Jacobians of the expected gradient with
  respect to the current and the sampling parameters. Over one period ``x_{t0}`` is held, so
  the period map is ``Q A^d P`` on ``(x_{t0}, x_{t0-1})`` with the augmented step ``A`` acting
  on ``(x_t, x_{t-1}, x_{t0})``.

  Args:
    j_cur: ``[n, n]`` Jacobian w.r.t. the current parameters (ascent direction).
    j_old: ``[n, n]`` Jacobian w.r.t. the sampling parameters.
    beta: momentum in [0, 1).
    eta: learning rate.
    d_max: largest refresh interval.

  Returns:
    ``[d_max]`` radii, entry ``d - 1`` for interval ``d``; unstable iff the radius exceeds 1.
  """
  _check_beta(beta)
  j_cur, j_old = _as_square(j_cur, 'j_cur'), _as_square(j_old, 'j_old')
  if j_cur.shape != j_old.shape:
    raise ValueError(f'`j_cur` {j_cur.shape} and `j_old` {j_old.shape} differ in shape')
  if int(d_max) < 1:
    raise ValueError(f'`d_max` must be >= 1, got {d_max}')
  n = j_cur.shape[0]
  eye, zero = np.eye(n), np.zeros((n, n))
  step = np.block(
    [
      [(1 + beta) * eye + eta * j_cur, -beta * eye, eta * j_old],
      [eye, zero, zero],
      [zero, zero, eye],
    ]
  )
  lift = np.concatenate([np.eye(2 * n), np.concatenate([eye, zero], 1)], 0)  # (x, x_prev) -> aug
  power, log_scale = lift, 0.0
  radii = np.empty(int(d_max))
  for d in range(1, int(d_max) + 1):
    power = step @ power
    # A strongly unstable map overflows A^d within a few hundred steps: carry the product
    # rescaled, since the spectral radius of c M is c times that of M.
    scale = np.max(np.abs(power))
    if scale > 0:
      power, log_scale = power / scale, log_scale + np.log(scale)
    radius = np.max(np.abs(np.linalg.eigvals(power[: 2 * n])))
    with np.errstate(over='ignore'):  # a radius beyond the float range is inf: unstable
      radii[d - 1] = np.exp(np.log(radius) + log_scale) if radius > 0 else 0.0
  return radii


def floquet_threshold(j_cur, j_old, *, beta, eta, d_max, tol=1e-9):
  """First refresh interval ``d <= d_max`` whose monodromy radius exceeds ``1 + tol``, else None.

  Note the instability set in ``d`` need not be an interval; :func:`floquet_radii` gives all.
  """
  radii = floquet_radii(j_cur, j_old, beta=beta, eta=eta, d_max=d_max)
  bad = np.flatnonzero(radii > 1.0 + tol)
  return int(bad[0]) + 1 if bad.size else None


def stale_threshold_beta0(*, k):
  """First unstable refresh interval of a fully stale gradient at ``beta = 0``: floor(2/k) + 1."""
  _check_positive(k, 'k')
  return math.floor(2.0 / k) + 1


def mean_lag_threshold(*, beta, k):
  """Mean-lag approximation ``d* = 1 + 2 (1 - beta) / k`` (PAPERS.md §5; stale gradients)."""
  _check_beta(beta)
  return 1.0 + 2.0 * (1.0 - beta) / k


def paper_threshold(*, beta, k):
  """The paper-style threshold ``d* = gamma / k = (1 - beta) / k`` (found wrong, PAPERS.md §5)."""
  _check_beta(beta)
  return (1.0 - beta) / k


def delay_polynomial(*, beta, k, delay):
  """Coefficients (highest power first) of the characteristic polynomial of a fixed delay.

  ``x_{t+1} = (1 + beta) x_t - beta x_{t-1} - k x_{t-D}``; for ``D >= 1`` this is
  ``z^{D+1} - (1 + beta) z^D + beta z^{D-1} + k`` (PAPERS.md §5); ``D = 0`` is the plain map.
  """
  _check_beta(beta)
  delay = int(delay)
  if delay < 0:
    raise ValueError(f'`delay` must be >= 0, got {delay}')
  order = max(delay, 1) + 1
  c = np.zeros(order + 1)
  c[0] = 1.0
  c[1] -= 1.0 + beta
  c[2] += beta
  c[1 + delay] += k
  return c


def delay_stable(*, beta, k, delay):
  """True iff every root of the fixed-delay characteristic polynomial is inside the unit circle."""
  roots = np.roots(delay_polynomial(beta=beta, k=k, delay=delay))
  return bool(np.max(np.abs(roots)) < 1.0)


def delay_threshold(*, beta, k, d_max):
  """Smallest pipeline delay ``D <= d_max`` that is unstable, else None."""
  for delay in range(int(d_max) + 1):
    if not delay_stable(beta=beta, k=k, delay=delay):
      return delay
  return None


__all__ = [
  'AR2Fit',
  'MapRoots',
  'advantage_moments',
  'advantage_scale',
  'delay_polynomial',
  'delay_stable',
  'delay_threshold',
  'floquet_radii',
  'floquet_threshold',
  'heavy_ball_map',
  'heavy_ball_roots',
  'kappa_from_ar2',
  'kappa_from_log_decay',
  'mean_lag_threshold',
  'ode_oscillation_onset',
  'oscillation_onset',
  'paper_threshold',
  'stale_threshold_beta0',
  'stationary_variance',
]
