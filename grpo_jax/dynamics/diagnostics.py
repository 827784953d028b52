"""Failure-mode diagnostics from a run's logged metric rows (PAPERS.md §5, diagnostics mapping).

Reads the trainer's metric rows (keys fixed by the trainer's metrics table: ``step``,
``train/reward_mean``, ``train/reward_std``, ``train/zero_std_frac``, ``train/entropy``,
``eval/greedy_acc``) and separates four failure modes:

- advantage degeneracy: many groups with all-equal rewards (zero advantage; the effective
  stiffness ``k`` collapses by the fraction of live groups);
- policy concentration: entropy falling and the within-batch reward variance collapsing below
  its Bernoulli value ``R (1 - R)`` (the 1/G sampling expectation);
- dynamical instability: fitted damping <= 0, oscillation growing, or the refresh interval at
  or beyond the threshold d*;
- reward hacking: training reward above its fitted trend while held-out accuracy falls.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from grpo_jax.dynamics import fit as fit_lib

REWARD = 'train/reward_mean'
REWARD_STD = 'train/reward_std'
ZERO_STD = 'train/zero_std_frac'
ENTROPY = 'train/entropy'
EVAL = 'eval/greedy_acc'


def metric_series(rows, key):
  """``(steps, values)`` of ``key`` over the rows, keeping the last row logged for each step.

  After a resume the trainer logs some steps again; the last row wins.

  Raises:
    ValueError: a row with ``key`` but without ``step``, or a non-finite value.
  """
  by_step = {}
  for i, row in enumerate(rows):
    if key not in row:
      continue
    if 'step' not in row:
      raise ValueError(f'metric row {i} has `{key}` but no `step`')
    v = float(row[key])
    if not math.isfinite(v):
      raise ValueError(f'metric row {i} (step {row["step"]}) has non-finite `{key}` = {v}')
    by_step[int(row['step'])] = v
  steps = np.array(sorted(by_step), dtype=float)
  return steps, np.array([by_step[int(s)] for s in steps], dtype=float)


@dataclasses.dataclass(frozen=True)
class Finding:
  """One failure mode: whether it is flagged, the evidence, and a one-line explanation."""

  flagged: bool
  evidence: dict
  message: str


@dataclasses.dataclass(frozen=True)
class Diagnosis:
  advantage_degeneracy: Finding
  policy_concentration: Finding
  dynamical_instability: Finding
  reward_hacking: Finding
  fit: fit_lib.CurveFit | None

  def flagged(self):
    """Names of the flagged failure modes."""
    return [
      f.name for f in dataclasses.fields(self) if f.name != 'fit' and getattr(self, f.name).flagged
    ]


def _slope(x, y):
  if x.size < 3:
    return 0.0, math.inf
  a = np.vstack([x - x.mean(), np.ones_like(x)]).T
  coef, *_ = np.linalg.lstsq(a, y, rcond=None)
  resid = y - a @ coef
  se = math.sqrt(float(resid @ resid) / max(x.size - 2, 1) / float(np.sum((x - x.mean()) ** 2)))
  return float(coef[0]), se


def _window(n, frac):
  return max(3, int(round(n * frac)))


def diagnose(
  rows,
  *,
  refresh=None,
  d_star=None,
  window=0.2,
  zero_std_limit=0.5,
  entropy_drop_limit=0.5,
  variance_ratio_limit=0.25,
  r_max=1.0,
  n_bootstrap=0,
) -> Diagnosis:
  """Diagnose a run from its metric rows.

  Args:
    rows: iterable of metric dicts (JSONL rows of the trainer).
    refresh: the run's refresh interval d (optional).
    d_star: the predicted refresh threshold (first unstable d), e.g. from the Floquet test.
    window: fraction of the run forming the "early" and "late" windows.
    zero_std_limit: late mean of ``train/zero_std_frac`` above this flags degeneracy.
    entropy_drop_limit: relative entropy drop (early -> late) above this flags concentration.
    variance_ratio_limit: late ``reward_std^2 / (R (1 - R))`` below this (with the entropy
      drop) flags concentration.
    r_max: attainable maximum reward for the curve fit.
    n_bootstrap: bootstrap refits of the reward-curve fit.

  Returns:
    A :class:`Diagnosis`.
  """
  rows = list(rows)
  steps, reward = metric_series(rows, REWARD)
  if steps.size < fit_lib.MIN_POINTS:
    raise ValueError(
      f'need >= {fit_lib.MIN_POINTS} rows with `{REWARD}`, got {steps.size}: too short to diagnose'
    )
  n = steps.size
  w = _window(n, window)

  # Advantage degeneracy.
  zs_steps, zs = metric_series(rows, ZERO_STD)
  if zs.size:
    late = float(zs[-_window(zs.size, window) :].mean())
    degeneracy = Finding(
      late > zero_std_limit,
      {'zero_std_frac_late': late, 'live_group_frac': 1 - late},
      f'{late:.0%} of groups have all-equal rewards late in the run; their advantage is 0, '
      f'so the effective stiffness is scaled by {1 - late:.2f}',
    )
  else:
    degeneracy = Finding(False, {}, f'`{ZERO_STD}` not logged')

  # Policy concentration.
  _, ent = metric_series(rows, ENTROPY)
  _, rstd = metric_series(rows, REWARD_STD)
  evidence = {}
  drop = None
  if ent.size >= 6:
    we = _window(ent.size, window)
    e0, e1 = float(ent[:we].mean()), float(ent[-we:].mean())
    drop = 1 - e1 / e0 if e0 > 0 else 0.0
    evidence.update(entropy_early=e0, entropy_late=e1, entropy_drop=drop)
  ratio = None
  if rstd.size == n:
    r_late = float(reward[-w:].mean())
    bern = r_late * (1 - r_late)
    if bern > 0:
      ratio = float(np.mean(rstd[-w:] ** 2)) / bern
      evidence['reward_var_over_bernoulli'] = ratio
  conc = drop is not None and drop > entropy_drop_limit
  if ratio is not None:
    conc = conc and ratio < variance_ratio_limit
  concentration = Finding(
    bool(conc),
    evidence,
    'entropy fell and the within-batch reward variance collapsed below its sampling value'
    if conc
    else 'no entropy collapse with variance collapse',
  )

  # Dynamical instability: fitted damping, growing oscillation, d against d*.
  curve_fit = fit_lib.fit_curve(steps, reward, r_max=r_max, n_bootstrap=n_bootstrap)
  lam = curve_fit.params.get('lam', math.inf)
  resid = reward - curve_fit.curve(steps)
  amp_early, amp_late = float(np.std(resid[:w])), float(np.std(resid[-w:]))
  span = float(np.ptp(reward)) or 1.0
  growing = (curve_fit.regime == 'underdamped' and lam <= 0) or (
    amp_late > 2 * amp_early and amp_late > 0.05 * span
  )
  reasons = []
  if lam <= 0:
    reasons.append(f'fitted damping rate {lam:.3g} <= 0')
  if growing:
    reasons.append(f'oscillation grows (residual std {amp_early:.3g} early -> {amp_late:.3g} late)')
  if refresh is not None and d_star is not None and refresh >= d_star:
    reasons.append(f'refresh interval d={refresh} >= threshold d*={d_star}')
  instability = Finding(
    bool(reasons),
    {
      'fitted_lam': lam,
      'regime': curve_fit.regime,
      'residual_std_early': amp_early,
      'residual_std_late': amp_late,
      'refresh': refresh,
      'd_star': d_star,
    },
    '; '.join(reasons) if reasons else 'damped',
  )

  # Reward hacking: train reward above its trend while held-out accuracy falls.
  ev_steps, ev = metric_series(rows, EVAL)
  hack_evidence = {}
  hacked = False
  if ev.size >= 4:
    we = _window(ev.size, 0.5)
    slope_e, se_e = _slope(ev_steps[-we:], ev[-we:])
    above = float(resid[-w:].mean())
    se_above = float(np.std(resid) / math.sqrt(w))
    hack_evidence = {
      'eval_slope_late': slope_e,
      'eval_slope_se': se_e,
      'train_above_trend_late': above,
      'train_above_trend_se': se_above,
      'eval_peak': float(ev.max()),
      'eval_last': float(ev[-1]),
    }
    hacked = slope_e < -2 * se_e and above > 2 * se_above
  hacking = Finding(
    bool(hacked),
    hack_evidence,
    'training reward is above its fitted trend while held-out accuracy falls'
    if hacked
    else ('no held-out accuracy logged' if not hack_evidence else 'held-out accuracy holds'),
  )
  return Diagnosis(degeneracy, concentration, instability, hacking, curve_fit)


__all__ = ['Diagnosis', 'Finding', 'diagnose', 'metric_series']
