"""Fits of the rank-1 trajectory: linear in time, PLS on accuracy, RELEX, linearity R^2.

PAPERS.md §4. These work on small host arrays (one vector per checkpoint) in float64; the
matrices themselves never leave the device.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _check_series(steps_T, a_TM, name='a_TM'):
  steps_T = np.asarray(steps_T, np.float64)
  a_TM = np.asarray(a_TM, np.float64)
  if a_TM.ndim == 1:
    a_TM = a_TM[:, None]
  if steps_T.ndim != 1 or a_TM.ndim != 2 or a_TM.shape[0] != steps_T.shape[0]:
    raise ValueError(
      f'`steps_T` {steps_T.shape} and `{name}` {a_TM.shape} must be [T] and [T, M] with the same T'
    )
  if steps_T.shape[0] < 2:
    raise ValueError(f'too few checkpoints to fit a line: need >= 2, got {steps_T.shape[0]}')
  if np.any(np.diff(steps_T) <= 0):
    raise ValueError(f'steps must be strictly increasing, got {steps_T.tolist()}')
  return steps_T, a_TM


def linear_time_fit(steps_T, a_TM) -> tuple[np.ndarray, np.ndarray]:
  """Least-squares `a_t ~ a_0 + t * a_dot`, componentwise (PAPERS.md §4 [ours]).

  Time is the step value, so uneven spacing is handled. Returns `(a_0, a_dot)`.
  """
  t_T, a_TM = _check_series(steps_T, a_TM)
  tc_T = t_T - t_T.mean()  # centred for conditioning
  slope_M = tc_T @ (a_TM - a_TM.mean(0)) / (tc_T @ tc_T)
  return a_TM.mean(0) - t_T.mean() * slope_M, slope_M


def predict_linear(steps_T, a_TM, target_step: float) -> np.ndarray:
  """`a_0 + T* a_dot` from `linear_time_fit`; shape [M] (or scalar for 1-D input)."""
  a0_M, slope_M = linear_time_fit(steps_T, a_TM)
  out = a0_M + float(target_step) * slope_M
  return out[0] if np.ndim(a_TM) == 1 else out


def linearity_r2(steps_T, a_TM) -> float:
  """R^2 of the linear-in-time fit, pooled over the components of a_t (PAPERS.md §4).

  `1 - sum_{t,m} residual^2 / sum_{t,m} (a_tm - mean_t a_m)^2`; NaN when a_t is constant.
  """
  t_T, a_TM = _check_series(steps_T, a_TM)
  a0_M, slope_M = linear_time_fit(t_T, a_TM)
  sse = np.sum((a_TM - a0_M - t_T[:, None] * slope_M) ** 2)
  sst = np.sum((a_TM - a_TM.mean(0)) ** 2)
  return float(1.0 - sse / sst) if sst > 0 else float('nan')


class Pls1(NamedTuple):
  """One-component PLS of accuracy on the trajectory vectors, as in the AlphaRL code.

  Attributes:
    mean_M, std_M: the column centring and scaling of X (1 where a column is constant up to
      1e-6 of the largest column std).
    weights_M: unit x-weights. loadings_M: x-loadings, X_std ~ score * loadings.
    slope, intercept: the linear fit of accuracy on the score.
    r2: R^2 of that fit (the AlphaRL linearity measure).
  """

  mean_M: np.ndarray
  std_M: np.ndarray
  weights_M: np.ndarray
  loadings_M: np.ndarray
  slope: float
  intercept: float
  r2: float


def pls1(a_TM, accuracy_T, *, scale: bool = True) -> Pls1:
  """Fits one-component PLS (the NIPALS first component) of `accuracy_T` on `a_TM`.

  With `scale=True` the columns of X are standardised (ddof=1), the default of the
  scikit-learn `PLSRegression` the AlphaRL code uses.
  """
  a_TM = np.asarray(a_TM, np.float64)
  y_T = np.asarray(accuracy_T, np.float64)
  if a_TM.ndim != 2 or y_T.shape != (a_TM.shape[0],):
    raise ValueError(
      f'`a_TM` must be [T, M] and `accuracy_T` [T], got {a_TM.shape} and {y_T.shape}'
    )
  if a_TM.shape[0] < 2:
    raise ValueError(f'too few checkpoints for PLS: need >= 2, got {a_TM.shape[0]}')
  mean_M = a_TM.mean(0)
  std_M = a_TM.std(0, ddof=1) if scale else np.ones(a_TM.shape[1])
  # Columns constant up to rounding are left unscaled: standardising float noise would blow it
  # up to unit variance (scikit-learn only spares exactly constant columns).
  std_M = np.where(std_M > 1e-6 * std_M.max(initial=0.0), std_M, 1.0)
  x_TM = (a_TM - mean_M) / std_M
  yc_T = y_T - y_T.mean()
  w_M = x_TM.T @ yc_T
  if not np.linalg.norm(w_M) > 0:
    raise ValueError('PLS is undefined: accuracy is constant or uncorrelated with every component')
  w_M /= np.linalg.norm(w_M)
  score_T = x_TM @ w_M
  loadings_M = x_TM.T @ score_T / (score_T @ score_T)
  slope = float(score_T @ yc_T / (score_T @ score_T))
  intercept = float(y_T.mean())  # the score has zero mean
  sse = np.sum((yc_T - slope * score_T) ** 2)
  sst = np.sum(yc_T**2)
  return Pls1(mean_M, std_M, w_M, loadings_M, slope, intercept, float(1.0 - sse / sst))


def pls_predict(pls: Pls1, target_accuracy: float) -> np.ndarray:
  """The trajectory vector PLS maps to `target_accuracy`: invert the score fit, then X."""
  score = (float(target_accuracy) - pls.intercept) / pls.slope
  return score * pls.loadings_M * pls.std_M + pls.mean_M


class Relex(NamedTuple):
  """RELEX's rank-1 over time `M ~ c v^T` (PAPERS.md §4, arXiv 2605.21468).

  Attributes:
    c_T: temporal coefficients (c = sqrt(lambda1) e1 of the Gram matrix M M^T).
    v_weights_T: `v = sum_t v_weights_T[t] dW_t` (= e1 / sqrt(lambda1)), a unit-norm direction.
    energy: lambda1 / trace(M M^T), the share of the window captured by rank 1.
  """

  c_T: np.ndarray
  v_weights_T: np.ndarray
  energy: float


def relex_gram(gram_TT) -> Relex:
  """Rank-1 over time from the Gram matrix `G[i, j] = <dW_i, dW_j>` of the window."""
  g_TT = np.asarray(gram_TT, np.float64)
  if g_TT.ndim != 2 or g_TT.shape[0] != g_TT.shape[1]:
    raise ValueError(f'`gram_TT` must be square, got {g_TT.shape}')
  lam_T, e_TT = np.linalg.eigh(0.5 * (g_TT + g_TT.T))
  lam, e_T = lam_T[-1], e_TT[:, -1]
  if not lam > 0:
    raise ValueError('RELEX is undefined: every update in the window is zero')
  # The sign of e1 cancels in c v^T; fix it anyway so c is reproducible.
  if e_T[np.argmax(np.abs(e_T))] < 0:
    e_T = -e_T
  return Relex(np.sqrt(lam) * e_T, e_T / np.sqrt(lam), float(lam / np.trace(g_TT)))
