"""Predictions from hyper-parameters: regime, time constant, thresholds (PAPERS.md §5).

The exact discrete heavy-ball map gives the prediction; the continuous model's value is
reported beside it (it is within ~1 % for beta >= 0.7 and wrong at beta = 0).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from grpo_jax.dynamics import discrete, rom


@dataclasses.dataclass(frozen=True)
class Prediction:
  """What the model predicts for one set of hyper-parameters (rates per step)."""

  beta: float
  eta: float
  kappa: float
  group_size: int | None
  refresh: int
  s: float  # advantage scale s(R*, G) (1 when not computed)
  k: float  # eta * s * kappa
  regime: str  # 'overdamped', 'critical', 'oscillatory' or 'unstable' (exact map)
  decay: float  # -ln|z| of the dominant root
  frequency: float  # |arg z|
  time_constant: float  # 1 / decay
  oscillation_onset: float  # beta_c = (1 - sqrt k)^2
  stable: bool  # 0 < k < 2 (1 + beta)
  ode_regime: str
  ode_decay: float
  ode_frequency: float
  ode_time_constant: float
  ode_oscillation_onset: float
  stale: bool  # fully stale gradient (no ratio) assumed for the refresh threshold
  refresh_threshold: int | None  # first unstable d by the (1-D) Floquet test, None if none
  refresh_stable: bool
  mean_lag_threshold: float
  paper_threshold: float  # gamma / k (found wrong, PAPERS.md §5)

  def curve(self, steps, *, r0, r_star):
    """Mean reward curve from rest: exact map and the ODE closed form, both ``[len(steps)]``."""
    steps = np.asarray(steps, int)
    x = discrete.heavy_ball_map(r0 - r_star, beta=self.beta, k=self.k, steps=int(steps.max()))
    m, gamma, k = rom.heavy_ball_coefficients(beta=self.beta, eta_eff=self.k, kappa=1.0)
    ode = np.asarray(
      rom.oscillator(steps.astype(float), r0=r0, r_star=r_star, m=m, gamma=gamma, k=k)
    )
    return r_star + x[steps], ode


def predict(
  *,
  beta,
  eta,
  kappa,
  group_size=None,
  r_star=None,
  refresh=1,
  normalize='std',
  ddof=1,
  stale=False,
  d_max=10_000,
) -> Prediction:
  """Predict the dynamics from (beta, eta, kappa, G, d) (PAPERS.md §5).

  Args:
    beta: heavy-ball momentum in [0, 1).
    eta: learning rate.
    kappa: curvature; with ``group_size`` and ``r_star`` it is ``kappa0`` and
      ``k = eta s(R*, G) kappa0``, otherwise ``k = eta kappa``.
    group_size: G, or None.
    r_star: fixed point of the reward, needed with ``group_size``.
    refresh: refresh interval d of the sampling policy.
    normalize: advantage normalisation for ``s`` ('std' or 'mean').
    ddof: ddof of the group std for ``s``.
    stale: True for fully stale gradients (asynchronous or no ratio). With a PPO ratio the
      expected force is not delayed (PAPERS.md §5) and the 1-D map has no refresh threshold.
    d_max: search bound of the refresh threshold.

  Returns:
    A :class:`Prediction`.
  """
  discrete._check_beta(beta)
  discrete._check_positive(eta, 'eta')
  discrete._check_positive(kappa, 'kappa')
  if int(refresh) < 1:
    raise ValueError(f'`refresh` must be >= 1, got {refresh}')
  s = 1.0
  if group_size is not None:
    if r_star is None or not 0 < r_star < 1:
      raise ValueError(f'`r_star` in (0, 1) is needed with `group_size`, got {r_star}')
    s = float(discrete.advantage_scale(r_star, int(group_size), normalize=normalize, ddof=ddof))
  k = float(eta * s * kappa)
  roots = discrete.heavy_ball_roots(beta=beta, k=k)
  stable = bool(roots.stable)
  disc = (1 + beta - k) ** 2 - 4 * beta
  if not stable:
    regime = 'unstable'
  elif abs(disc) < 1e-12:
    regime = 'critical'
  else:
    regime = 'oscillatory' if bool(roots.oscillatory) else 'overdamped'
  decay = float(roots.decay)

  m, gamma, _ = rom.heavy_ball_coefficients(beta=beta, eta_eff=k, kappa=1.0)
  lam = gamma / (2 * m)
  d = lam * lam - k / m
  if d > 0:
    ode_regime, ode_decay, ode_freq = 'overdamped', (k / m) / (lam + math.sqrt(d)), 0.0
  elif d < 0:
    ode_regime, ode_decay, ode_freq = 'oscillatory', lam, math.sqrt(-d)
  else:
    ode_regime, ode_decay, ode_freq = 'critical', lam, 0.0

  j = np.array([[-k / eta]])
  zero = np.zeros((1, 1))
  j_cur, j_old = (zero, j) if stale else (j, zero)
  threshold = discrete.floquet_threshold(j_cur, j_old, beta=beta, eta=eta, d_max=d_max)
  radius = discrete.floquet_radii(j_cur, j_old, beta=beta, eta=eta, d_max=int(refresh))[-1]
  return Prediction(
    beta=float(beta),
    eta=float(eta),
    kappa=float(kappa),
    group_size=None if group_size is None else int(group_size),
    refresh=int(refresh),
    s=s,
    k=k,
    regime=regime,
    decay=decay,
    frequency=float(roots.frequency),
    time_constant=1.0 / decay if decay > 0 else math.inf,
    oscillation_onset=float(discrete.oscillation_onset(k=k)),
    stable=stable,
    ode_regime=ode_regime,
    ode_decay=ode_decay,
    ode_frequency=ode_freq,
    ode_time_constant=1.0 / ode_decay if ode_decay > 0 else math.inf,
    ode_oscillation_onset=float(discrete.ode_oscillation_onset(k=k)),
    stale=bool(stale),
    refresh_threshold=threshold,
    refresh_stable=bool(radius <= 1.0 + 1e-9),
    mean_lag_threshold=float(discrete.mean_lag_threshold(beta=beta, k=k)),
    paper_threshold=float(discrete.paper_threshold(beta=beta, k=k)),
  )


__all__ = ['Prediction', 'predict']
