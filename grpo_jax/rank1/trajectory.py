"""Rank-1 trajectories streamed from checkpoints, sign alignment, and AlphaRL extrapolation.

PAPERS.md §4. A trajectory source is any iterable of `(step, params)` pairs in increasing step
order whose first pair is the base model W_0 (e.g. a generator restoring the trainer's Orbax
checkpoints one at a time). It is read once, front to back, and at most the base, the current
checkpoint and (for extrapolation) the window's last checkpoint are held at any time; only one
vector pair per matrix and checkpoint is kept. Time is the step value, never the index.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.rank1 import fit as fit_lib
from grpo_jax.rank1.svd import top1
from grpo_jax.rank1.views import (
  MatrixView,
  Selector,
  as_view,
  check_same,
  select_matrices,
)

PyTree = Any


def align_signs(a_TM, v_TN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """AlphaRL's backward sign walk (PAPERS.md §4).

  Walking from the last checkpoint back, a_t is flipped (and v_t with it, so a_t v_t^T is
  unchanged) when cos(a_t, a_{t+1}) < 0 against the already aligned a_{t+1}. A genuine sign
  change of a(t) (a zero crossing) is folded by this rule; that is a known limit.

  Returns:
    `(a_TM, v_TN, flipped_T)`.
  """
  a_TM = np.array(a_TM, copy=True)
  v_TN = np.array(v_TN, copy=True)
  if a_TM.ndim != 2 or v_TN.ndim != 2 or a_TM.shape[0] != v_TN.shape[0]:
    raise ValueError(f'`a_TM` {a_TM.shape} and `v_TN` {v_TN.shape} must be [T, M] and [T, N]')
  flipped_T = np.zeros(a_TM.shape[0], bool)
  for t in range(a_TM.shape[0] - 2, -1, -1):
    if a_TM[t] @ a_TM[t + 1] < 0:
      a_TM[t], v_TN[t], flipped_T[t] = -a_TM[t], -v_TN[t], True
  return a_TM, v_TN, flipped_T


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """Top singular components of `W_t - W_0` along training, signs aligned, keyed by matrix.

  Attributes:
    base_step: the step of W_0.
    steps: [T] steps of the checkpoints after the base.
    a: name -> [T, out] trajectory vectors a_t = sigma1(t) u1(t).
    v: name -> [T, in] right singular vectors v1(t).
    sigma: name -> [T] top singular values.
    energy: name -> [T] sigma1^2 / ||dW||_F^2.
    iterations, converged: name -> [T] power-iteration diagnostics (0 / True for 'svd').
    flipped: name -> [T] whether the sign walk flipped that checkpoint.
  """

  base_step: int
  steps: np.ndarray
  a: dict[str, np.ndarray]
  v: dict[str, np.ndarray]
  sigma: dict[str, np.ndarray]
  energy: dict[str, np.ndarray]
  iterations: dict[str, np.ndarray]
  converged: dict[str, np.ndarray]
  flipped: dict[str, np.ndarray]

  @property
  def names(self) -> list[str]:
    return sorted(self.a)

  def linearity_r2(self) -> dict[str, float]:
    """Per-matrix R^2 of a_t linear in time over every checkpoint, pooled over components."""
    return {n: fit_lib.linearity_r2(self.steps, self.a[n]) for n in self.names}

  def pls_r2(self, accuracies) -> dict[str, float]:
    """Per-matrix R^2 of accuracy on the one-component PLS score of a_t (the AlphaRL code)."""
    acc_T = _accuracies(accuracies, self.steps)
    return {n: fit_lib.pls1(self.a[n], acc_T).r2 for n in self.names}


@functools.partial(jax.jit, static_argnames=('method', 'tol', 'max_iters'))
def _component(w_MN, w0_MN, *, method, tol, max_iters):
  dtype = jnp.promote_types(jnp.promote_types(w_MN.dtype, w0_MN.dtype), jnp.float32)
  dw_MN = w_MN.astype(dtype) - w0_MN.astype(dtype)
  u_M, s, v_N, iters, ok = top1(dw_MN, method=method, tol=tol, max_iters=max_iters)
  energy = s**2 / jnp.sum(dw_MN**2)
  return s * u_M, v_N, s, energy, iters, ok


def _open(checkpoints: Iterable, view: MatrixView, select: Selector | None):
  """Reads the base; returns `(base_step, params0, mats0, rest)`.

  `rest` yields `(step, params, mats)` for each later checkpoint, checked against the base.
  """
  it = iter(checkpoints)
  first = next(it, None)
  if first is None:
    raise ValueError('too few checkpoints: the sequence is empty (the base W_0 comes first)')
  base_step, params0 = _pair(first, 0)
  del first
  mats0 = select_matrices(params0, view=view, select=select)

  def rest():
    prev, index = base_step, 0
    # No enumerate(): it caches its last (index, item) tuple, keeping the previous checkpoint
    # alive while the next one loads.
    for item in it:
      index += 1
      step, params = _pair(item, index)
      del item
      if step <= prev:
        raise ValueError(
          f'checkpoint {index}: step {step} is not after the previous step {prev} '
          '(steps must be strictly increasing, base first)'
        )
      mats = select_matrices(params, view=view, select=lambda n: n in mats0)
      check_same(mats0, mats, f'checkpoint {index} (step {step})')
      yield step, params, mats
      prev = step
      del params, mats

  return base_step, params0, mats0, rest()


def _pair(item, index: int) -> tuple[int, PyTree]:
  if not (isinstance(item, tuple | list) and len(item) == 2):
    raise TypeError(
      f'checkpoint {index}: expected a (step, params) pair, got {type(item).__name__}'
    )
  step, params = item
  if isinstance(step, bool) or not isinstance(step, int | np.integer):
    raise TypeError(f'checkpoint {index}: step must be an int, got {step!r}')
  return int(step), params


class _Collector:
  """Accumulates per-matrix components of successive checkpoints on the host."""

  def __init__(self, method: str, tol: float, max_iters: int):
    self.kw = dict(method=method, tol=tol, max_iters=max_iters)
    self.steps: list[int] = []
    self.rows: dict[str, list] = {}

  def add(self, step, mats, mats0):
    self.steps.append(step)
    for name, w in mats.items():
      out = _component(w, mats0[name], **self.kw)
      self.rows.setdefault(name, []).append(tuple(np.asarray(x) for x in out))

  def trajectory(self, base_step: int) -> Trajectory:
    fields = {k: {} for k in ('a', 'v', 'sigma', 'energy', 'iterations', 'converged', 'flipped')}
    for name, rows in self.rows.items():
      a_TM, v_TN, s_T, e_T, i_T, ok_T = (np.stack(col) for col in zip(*rows))
      a_TM, v_TN, flipped_T = align_signs(a_TM, v_TN)
      for key, val in zip(fields, (a_TM, v_TN, s_T, e_T, i_T, ok_T, flipped_T)):
        fields[key][name] = val
    return Trajectory(base_step=base_step, steps=np.asarray(self.steps, np.int64), **fields)


def collect_trajectory(
  checkpoints: Iterable,
  *,
  view: MatrixView | tuple | None = None,
  select: Selector | None = None,
  method: str = 'power',
  tol: float = 1e-5,
  max_iters: int = 1000,
) -> Trajectory:
  """Streams `(step, params)` checkpoints (base first) into a sign-aligned `Trajectory`.

  Args:
    checkpoints: iterable of `(step, params)`, the base model W_0 first.
    view: how matrices are read from params (see `grpo_jax.rank1.views`).
    select: which matrix names to follow (default: attention and MLP).
    method: 'power' (power iteration) or 'svd' (`jnp.linalg.svd`) for the top component.
    tol, max_iters: power-iteration stopping rule.

  Returns:
    The `Trajectory` over every checkpoint after the base.
  """
  view = as_view(view)
  col = _Collector(method, tol, max_iters)
  base_step, _, mats0, rest = _open(checkpoints, view, select)
  for step, params, mats in rest:
    col.add(step, mats, mats0)
    del params, mats  # so the next checkpoint loads with only the base held
  if not col.steps:
    raise ValueError('too few checkpoints: need the base and at least one more')
  return col.trajectory(base_step)


def _accuracies(accuracies, steps_T) -> np.ndarray:
  if isinstance(accuracies, Mapping):
    missing = [int(s) for s in steps_T if int(s) not in accuracies]
    if missing:
      raise ValueError(f'`accuracies` has no entry for steps {missing}')
    return np.asarray([accuracies[int(s)] for s in steps_T], np.float64)
  acc = np.asarray(accuracies, np.float64)
  if acc.shape != (len(steps_T),):
    raise ValueError(
      f'`accuracies` must give one value per checkpoint ({len(steps_T)}, steps '
      f'{[int(s) for s in steps_T]}), got shape {acc.shape}'
    )
  return acc


@jax.jit
def _rebuild(w_MN, a_M, v_N):
  """`W + a v^T` in float32, cast back to W's dtype."""
  dtype = jnp.promote_types(w_MN.dtype, jnp.float32)
  return (w_MN.astype(dtype) + jnp.outer(a_M, v_N).astype(dtype)).astype(w_MN.dtype)


@jax.jit
def _gram(dws_TMN):
  return jnp.einsum('imn,jmn->ij', dws_TMN, dws_TMN)


@jax.jit
def _combine(weights_T, dws_TMN):
  return jnp.einsum('t,tmn->mn', weights_T.astype(dws_TMN.dtype), dws_TMN)


FITS = ('time', 'pls', 'relex')


def extrapolate(
  checkpoints: Iterable,
  *,
  target_step: int,
  window: int | None = None,
  last_step: int | None = None,
  fit: str = 'time',
  residual: bool = False,
  others: str = 'window',
  accuracies: Mapping[int, float] | Sequence[float] | None = None,
  target_accuracy: float | None = None,
  view: MatrixView | tuple | None = None,
  select: Selector | None = None,
  method: str = 'power',
  tol: float = 1e-5,
  max_iters: int = 1000,
) -> tuple[PyTree, dict[str, Any]]:
  """AlphaRL: predicts the weights at `target_step` from an early window of checkpoints.

  Per selected matrix (PAPERS.md §4), with a_t = sigma1 u1 of dW_t = W_t - W_0, signs aligned
  over the window and t_w the window's last step:

    fit='time' (default): least squares a_t ~ a_0 + t a_dot; a_hat = a_0 + T* a_dot.
    fit='pls': the AlphaRL code's route, one-component PLS of accuracy on a_t, inverted at
      `target_accuracy` (default: window accuracy extrapolated linearly in time to T*).
    fit='relex': RELEX, rank-1 of the window's flattened updates via the Gram matrix,
      M ~ c v^T, c(t) fitted linearly; the direction is v instead of v1(t_w).

    W(T*) = W_0 + a_hat v1(t_w)^T                               (residual=False)
    W(T*) = W_0 + a_hat v1(t_w)^T + (dW_{t_w} - a_{t_w} v1(t_w)^T)   (residual=True)

  For RELEX, a_hat v1(t_w)^T becomes c_hat v and the residual dW_{t_w} - c_{t_w} v.
  The prediction is added to W_0, not to W_{t_w} (the authors' script does the latter and so
  counts the rank-1 part twice). Only the window is read from `checkpoints`; fit='relex' also
  holds the window's updates of the selected matrices, since its Gram matrix needs every pair.

  Args:
    checkpoints: iterable of `(step, params)`, the base first, steps increasing.
    target_step: step to extrapolate to; not before the window's last step.
    window: number of checkpoints after the base in the window (>= 2), or
    last_step: the window is every checkpoint with step <= last_step. Give exactly one.
    fit: 'time', 'pls' or 'relex'.
    residual: add the window's residual dW_{t_w} - (rank-1 part).
    others: tensors that are not extrapolated (embeddings, norms, unselected matrices) come
      from the window's last checkpoint ('window') or the base ('base').
    accuracies: for fit='pls', the accuracy at each window checkpoint, as a step -> value
      mapping or a sequence in window order.
    target_accuracy: for fit='pls', the accuracy to invert at.
    view, select: how matrices are read and which ones are extrapolated.
    method, tol, max_iters: the top-1 SVD ('power' or 'svd') and its stopping rule.

  Returns:
    `(params, info)`: params shaped like the checkpoints (dtypes kept), and a dict with the
    window steps and per-matrix diagnostics ('r2' of the window fit, 'sigma', 'converged',
    'iterations', and 'pls_r2' / 'relex_energy' for those fits).
  """
  if fit not in FITS:
    raise ValueError(f'`fit` must be one of {FITS}, got {fit!r}')
  if others not in ('window', 'base'):
    raise ValueError(f"`others` must be 'window' or 'base', got {others!r}")
  if (window is None) == (last_step is None):
    raise ValueError('give exactly one of `window` (number of checkpoints) and `last_step`')
  if window is not None and (not isinstance(window, int) or window < 2):
    raise ValueError(f'`window` must be an int >= 2 (a line needs two points), got {window!r}')
  if fit == 'pls' and accuracies is None:
    raise ValueError("fit='pls' needs `accuracies` for the window checkpoints")
  if not isinstance(target_step, int | np.integer) or isinstance(target_step, bool):
    raise TypeError(f'`target_step` must be an int, got {target_step!r}')

  view = as_view(view)
  col = _Collector(method, tol, max_iters)
  params_w = mats_w = None
  relex_dws: dict[str, list[jax.Array]] = {}
  base_step, params0, mats0, rest = _open(checkpoints, view, select)
  for step, params, mats in rest:
    if last_step is not None and step > last_step:
      break
    col.add(step, mats, mats0)
    params_w, mats_w = params, mats
    if fit == 'relex':
      for name, w in mats.items():
        relex_dws.setdefault(name, []).append(_component_delta(w, mats0[name]))
    if len(col.steps) == window or step == last_step:
      break
  params = mats = None  # drop the loop's references: only the window end is kept
  n = len(col.steps)
  if window is not None and n < window:
    raise ValueError(
      f'too few checkpoints: window={window} but only {n} checkpoint(s) follow the base'
    )
  if n < 2:
    raise ValueError(
      f'too few checkpoints in the window: need >= 2 after the base to fit a line, got {n} '
      f'(last_step={last_step})'
    )
  t_w = col.steps[-1]
  if target_step < t_w:
    raise ValueError(
      f'target_step {target_step} is inside the window (last window step {t_w}); '
      'extrapolate to a step >= the window end'
    )
  traj = col.trajectory(base_step)
  steps_T = traj.steps.astype(np.float64)
  info: dict[str, Any] = {
    'window_steps': traj.steps.tolist(),
    'target_step': int(target_step),
    'fit': fit,
    'residual': residual,
    'r2': {},
    'sigma': {k: traj.sigma[k][-1].item() for k in traj.names},
    'converged': {k: bool(traj.converged[k].all()) for k in traj.names},
    'iterations': {k: int(traj.iterations[k].max()) for k in traj.names},
  }
  if fit == 'pls':
    acc_T = _accuracies(accuracies, traj.steps)
    if target_accuracy is None:
      target_accuracy = float(fit_lib.predict_linear(steps_T, acc_T, target_step))
    info['target_accuracy'] = float(target_accuracy)
    info['pls_r2'] = {}
  if fit == 'relex':
    info['relex_energy'] = {}

  new = {}
  for name in traj.names:
    a_TM, v_w = traj.a[name], traj.v[name][-1]
    info['r2'][name] = fit_lib.linearity_r2(steps_T, a_TM)
    if fit == 'relex':
      dws_TMN = jnp.stack(relex_dws.pop(name))
      rx = fit_lib.relex_gram(np.asarray(_gram(dws_TMN)))
      info['relex_energy'][name] = rx.energy
      c_hat = float(fit_lib.predict_linear(steps_T, rx.c_T, target_step))
      d_MN = _combine(jnp.asarray(rx.v_weights_T, jnp.float32), dws_TMN)
      del dws_TMN
      coef = c_hat - rx.c_T[-1] if residual else c_hat
      base_MN = mats_w[name] if residual else mats0[name]
      new[name] = _rebuild_full(base_MN, jnp.float32(coef), d_MN)
      continue
    if fit == 'time':
      a_hat = fit_lib.predict_linear(steps_T, a_TM, target_step)
    else:
      pls = fit_lib.pls1(a_TM, acc_T)
      info['pls_r2'][name] = pls.r2
      a_hat = fit_lib.pls_predict(pls, target_accuracy)
    if residual:
      # W_0 + a_hat v^T + (dW_w - a_w v^T) = W_w + (a_hat - a_w) v^T.
      new[name] = _rebuild(mats_w[name], jnp.asarray(a_hat - a_TM[-1], jnp.float32), v_w)
    else:
      new[name] = _rebuild(mats0[name], jnp.asarray(a_hat, jnp.float32), v_w)
  params = view.unview(params_w if others == 'window' else params0, new)
  return params, info


@jax.jit
def _component_delta(w_MN, w0_MN):
  return w_MN.astype(jnp.float32) - w0_MN.astype(jnp.float32)


@jax.jit
def _rebuild_full(w_MN, coef, d_MN):
  dtype = jnp.promote_types(w_MN.dtype, jnp.float32)
  return (w_MN.astype(dtype) + coef * d_MN.astype(dtype)).astype(w_MN.dtype)
