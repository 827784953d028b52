"""Top-k and top-1 singular triplets of a weight update, with deterministic signs (PAPERS.md §4).

Conventions: a matrix is in the Hugging Face `[out, in]` layout, so the left factor `u` lives on
the output side and `a = sigma * u` is the AlphaRL trajectory vector. Work is done in float32
(float64 inputs stay float64, lower precisions are promoted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class PowerIteration(NamedTuple):
  """Top singular triplet found by power iteration.

  Attributes:
    u: left singular vector [out], unit norm.
    s: top singular value (scalar), with `A v = s u` exactly for the returned pair.
    v: right singular vector [in], unit norm.
    iterations: products with `A` (and with `A^T`) performed.
    converged: whether `||A^T u - s v|| <= tol * s` held when the loop stopped.
    residual: the relative residual `||A^T u - s v|| / s` of the returned triplet.
  """

  u: jax.Array
  s: jax.Array
  v: jax.Array
  iterations: jax.Array
  converged: jax.Array
  residual: jax.Array


def _float_dtype(x: jax.Array) -> jnp.dtype:
  return jnp.promote_types(x.dtype, jnp.float32)


def _check_matrix(a: jax.Array, name: str) -> None:
  if a.ndim != 2:
    raise ValueError(f'`{name}` must be a 2-D [out, in] matrix, got shape {tuple(a.shape)}')
  if 0 in a.shape:
    raise ValueError(f'`{name}` must be non-empty, got shape {tuple(a.shape)}')


def sign_fix(u_MK: jax.Array, vt_KN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Makes singular vector signs deterministic: each column of `u` has its largest-|.| entry > 0.

  The sign of `v` flips with `u`, so `u diag(s) v^T` is unchanged. (The same rule as
  scikit-learn's `svd_flip`; a zero column keeps its sign.)
  """
  idx_K = jnp.argmax(jnp.abs(u_MK), axis=0)
  pivot_K = jnp.take_along_axis(u_MK, idx_K[None, :], axis=0)[0]
  sign_K = jnp.where(pivot_K < 0, -1.0, 1.0).astype(u_MK.dtype)
  return u_MK * sign_K[None, :], vt_KN * sign_K[:, None].astype(vt_KN.dtype)


def top_k_svd(a_MN: jax.Array, k: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Top-k SVD of a matrix by `jnp.linalg.svd` in float32, with deterministic signs.

  Args:
    a_MN: a 2-D matrix.
    k: number of components to keep; None keeps all min(M, N).

  Returns:
    `(u_MK, s_K, vt_KN)` with singular values in decreasing order.
  """
  _check_matrix(a_MN, 'a_MN')
  full = min(a_MN.shape)
  if k is None:
    k = full
  if not isinstance(k, int) or not 1 <= k <= full:
    raise ValueError(f'`k` must be an int in [1, {full}] for shape {tuple(a_MN.shape)}, got {k!r}')
  a_MN = a_MN.astype(_float_dtype(a_MN))
  u_MK, s_K, vt_KN = jnp.linalg.svd(a_MN, full_matrices=False)
  u_MK, vt_KN = sign_fix(u_MK[:, :k], vt_KN[:k])
  return u_MK, s_K[:k], vt_KN


def power_iteration_op(
  matvec: Callable[[jax.Array], jax.Array],
  rmatvec: Callable[[jax.Array], jax.Array],
  v0_N: jax.Array,
  *,
  tol: float = 1e-5,
  max_iters: int = 1000,
) -> PowerIteration:
  """Matrix-free top-1 SVD by power iteration under `lax.while_loop` (PAPERS.md §4).

  Each iteration sets `u = A v / ||A v||`, `s = ||A v||` (so `A v = s u` holds exactly) and
  checks the other half of the singular-triplet equations, `||A^T u - s v|| <= tol * s`. The
  stop is on this residual or on `max_iters`, never on the change in `s` alone: near a degenerate
  gap (sigma2/sigma1 -> 1) `s` stalls long before `v` has converged. When the test fails, the
  next `v` is `A^T u / ||A^T u||`. The error in `s` is second order in the residual.

  Args:
    matvec: `v_N -> (A v)_M`.
    rmatvec: `u_M -> (A^T u)_N`.
    v0_N: starting vector (need not be normalised; must not be orthogonal to v1).
    tol: relative residual at which to stop; above the float32 rounding floor (~1e-6).
    max_iters: iteration cap (a Python int or a traced int scalar).

  Returns:
    A `PowerIteration` with signs fixed so the largest-|.| entry of `u` is positive.
  """
  # Checked when concrete; both may also be traced (one compilation for many settings).
  if isinstance(tol, int | float) and not tol > 0:
    raise ValueError(f'`tol` must be > 0, got {tol!r}')
  if isinstance(max_iters, int | float) and (not float(max_iters).is_integer() or max_iters < 1):
    raise ValueError(f'`max_iters` must be an int >= 1, got {max_iters!r}')
  tiny = jnp.finfo(v0_N.dtype).tiny

  def step(v_N):
    av_M = matvec(v_N)
    s = jnp.linalg.norm(av_M)
    u_M = av_M / jnp.maximum(s, tiny)
    atu_N = rmatvec(u_M)
    res = jnp.linalg.norm(atu_N - s * v_N)
    next_N = atu_N / jnp.maximum(jnp.linalg.norm(atu_N), tiny)
    # A zero matrix has s = 0 = res: the test `res <= tol * s` passes and v stays put.
    next_N = jnp.where(s > 0, next_N, v_N)
    return u_M, s, res, next_N

  v_N = v0_N / jnp.linalg.norm(v0_N)
  u_M, s, res, next_N = step(v_N)

  def cond(carry):
    i, _, _, s, res, _ = carry
    return (i < max_iters) & (res > tol * s)

  def body(carry):
    i, _, _, _, _, v_N = carry
    u_M, s, res, next_N = step(v_N)
    return i + 1, v_N, u_M, s, res, next_N

  i, v_N, u_M, s, res, _ = lax.while_loop(
    cond, body, (jnp.asarray(1, jnp.int32), v_N, u_M, s, res, next_N)
  )
  u_M1, vt_1N = sign_fix(u_M[:, None], v_N[None, :])
  return PowerIteration(
    u=u_M1[:, 0],
    s=s,
    v=vt_1N[0],
    iterations=i,
    converged=res <= tol * s,
    residual=res / jnp.maximum(s, tiny),
  )


def power_iteration(
  a_MN: jax.Array,
  *,
  tol: float = 1e-5,
  max_iters: int = 1000,
  v0_N: jax.Array | None = None,
) -> PowerIteration:
  """Top-1 SVD of a matrix by power iteration; see `power_iteration_op`.

  Only products `A v` and `A^T u` are formed (O(MN) per iteration), never `A^T A`.

  Args:
    a_MN: a 2-D matrix (float32 compute).
    tol: relative residual at which to stop.
    max_iters: iteration cap.
    v0_N: starting vector; by default a fixed pseudo-random vector, so results are
      deterministic.

  Returns:
    A `PowerIteration`.
  """
  _check_matrix(a_MN, 'a_MN')
  a_MN = a_MN.astype(_float_dtype(a_MN))
  n = a_MN.shape[1]
  if v0_N is None:
    v0_N = jax.random.normal(jax.random.key(0), (n,), a_MN.dtype)
  elif v0_N.shape != (n,):
    raise ValueError(
      f'`v0_N` must have shape ({n},) to match `a_MN` {a_MN.shape}, got {v0_N.shape}'
    )
  return power_iteration_op(
    lambda v: a_MN @ v,
    lambda u: u @ a_MN,
    v0_N.astype(a_MN.dtype),
    tol=tol,
    max_iters=max_iters,
  )


jitted_power_iteration = jax.jit(power_iteration)


def top1(a_MN: jax.Array, *, method: str = 'power', tol: float = 1e-5, max_iters: int = 1000):
  """`(u, s, v, iterations, converged)` of the top singular triplet by 'power' or 'svd'."""
  if method == 'power':
    r = power_iteration(a_MN, tol=tol, max_iters=max_iters)
    return r.u, r.s, r.v, r.iterations, r.converged
  if method == 'svd':
    u_M1, s_1, vt_1N = top_k_svd(a_MN, 1)
    return u_M1[:, 0], s_1[0], vt_1N[0], jnp.asarray(0, jnp.int32), jnp.asarray(True)
  raise ValueError(f"`method` must be 'power' or 'svd', got {method!r}")
