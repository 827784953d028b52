"""Top-k SVD and power iteration of grpo_jax.rank1 against numpy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from grpo_jax.rank1 import power_iteration, power_iteration_op, top_k_svd
from grpo_jax.sharding import make_mesh

_power = jax.jit(power_iteration)


def power(a, *, tol=1e-5, max_iters=1000, **kw):
  # tol and max_iters are traced, so every call on a (24, 16) matrix shares one compilation.
  return _power(a, tol=tol, max_iters=max_iters, **kw)


svd_k = jax.jit(top_k_svd, static_argnames='k')


def _spectrum(m, n, s, seed=0):
  """A float32 matrix with prescribed singular values `s` and random singular vectors."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(m, len(s))))
  v, _ = np.linalg.qr(rng.normal(size=(n, len(s))))
  return (u * np.asarray(s)) @ v.T


def _pivot_positive(u):
  return u[np.argmax(np.abs(u))] > 0


def test_exact_rank1_recovered_exactly():
  rng = np.random.default_rng(1)
  u = rng.normal(size=24)
  v = rng.normal(size=16)
  a = np.outer(u, v).astype(np.float32)
  sigma = np.linalg.norm(u) * np.linalg.norm(v)
  u_hat, v_hat = u / np.linalg.norm(u), v / np.linalg.norm(v)
  sign = np.sign(u_hat[np.argmax(np.abs(u_hat))])
  r = power(jnp.asarray(a))
  assert bool(r.converged) and int(r.iterations) <= 2
  np.testing.assert_allclose(float(r.s), sigma, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(r.u), sign * u_hat, atol=1e-6)
  np.testing.assert_allclose(np.asarray(r.v), sign * v_hat, atol=1e-6)
  uk, sk, vtk = svd_k(jnp.asarray(a), k=1)
  np.testing.assert_allclose(float(sk[0]), sigma, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(uk[:, 0]), sign * u_hat, atol=1e-6)
  np.testing.assert_allclose(np.asarray(vtk[0]), sign * v_hat, atol=1e-6)


def test_power_iteration_matches_svd():
  a = _spectrum(24, 16, [5.0, 2.5, 1.0, 0.5], seed=2) + 0.01 * np.random.default_rng(3).normal(
    size=(24, 16)
  )
  a = jnp.asarray(a, jnp.float32)
  r = power(a, tol=1e-6)
  u, s, vt = svd_k(a, k=1)
  assert bool(r.converged)
  np.testing.assert_allclose(float(r.s), float(s[0]), rtol=1e-6)
  # Same deterministic signs in both routes, so the vectors agree entrywise.
  np.testing.assert_allclose(np.asarray(r.u), np.asarray(u[:, 0]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(r.v), np.asarray(vt[0]), atol=1e-5)
  assert _pivot_positive(np.asarray(r.u))
  # The reported residual is the true one, recomputed in float64.
  a64, u64, v64 = (np.asarray(x, np.float64) for x in (a, r.u, r.v))
  res = np.linalg.norm(a64.T @ u64 - float(r.s) * v64) / float(r.s)
  np.testing.assert_allclose(float(r.residual), res, rtol=1e-2, atol=1e-7)
  assert res <= 1e-6


def test_stop_is_on_residual_not_on_sigma_change():
  # sigma2 / sigma1 = 0.995: sigma stalls long before v converges.
  a = jnp.asarray(_spectrum(24, 16, [1.0, 0.995, 0.5], seed=4), jnp.float32)
  capped = power(a, tol=1e-5, max_iters=40)
  assert not bool(capped.converged)
  assert int(capped.iterations) == 40
  # sigma moves by < 1e-6 per iteration here, so a stop on its change would have fired,
  # while sigma is still 5e-3 off; the residual sees that v has not converged.
  before = power(a, tol=1e-5, max_iters=39)
  assert abs(float(capped.s) - float(before.s)) < 1e-6
  assert float(capped.residual) > 1e-4
  assert abs(float(capped.s) - 1.0) > 1e-3
  full = power(a, tol=1e-5, max_iters=20000)
  assert bool(full.converged) and 40 < int(full.iterations) < 20000
  assert float(full.residual) <= 1e-5
  _, _, vt = np.linalg.svd(np.asarray(a, np.float64))
  assert abs(np.asarray(full.v) @ vt[0]) > 1 - 1e-6


def test_top_k_svd_matches_numpy_with_deterministic_signs():
  a = np.random.default_rng(5).normal(size=(24, 16)).astype(np.float32)
  u, s, vt = svd_k(jnp.asarray(a), k=3)
  u64, s64, vt64 = np.linalg.svd(a.astype(np.float64), full_matrices=False)
  np.testing.assert_allclose(np.asarray(s), s64[:3], rtol=1e-5)
  for j in range(3):
    assert _pivot_positive(np.asarray(u[:, j]))
    sign = np.sign(np.asarray(u[:, j]) @ u64[:, j])
    np.testing.assert_allclose(np.asarray(u[:, j]), sign * u64[:, j], atol=1e-5)
    np.testing.assert_allclose(np.asarray(vt[j]), sign * vt64[j], atol=1e-5)
  # Negating A keeps u (its pivot stays positive) and negates v.
  un, sn, vtn = svd_k(jnp.asarray(-a), k=3)
  np.testing.assert_allclose(np.asarray(un), np.asarray(u), atol=1e-6)
  np.testing.assert_allclose(np.asarray(vtn), -np.asarray(vt), atol=1e-6)


def test_zero_matrix_is_finite():
  r = power(jnp.zeros((24, 16), jnp.float32))
  assert bool(r.converged) and float(r.s) == 0.0
  assert np.all(np.isfinite(np.asarray(r.u))) and np.all(np.isfinite(np.asarray(r.v)))


def test_matrix_free_operator_matches_matrix():
  a = jnp.asarray(_spectrum(24, 16, [3.0, 1.0], seed=6), jnp.float32)
  v0 = jnp.ones((16,), jnp.float32)
  r_op = jax.jit(lambda v0: power_iteration_op(lambda v: a @ v, lambda u: a.T @ u, v0))(v0)
  r = power(a, v0_N=v0)
  np.testing.assert_allclose(float(r_op.s), 3.0, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(r_op.u), np.asarray(r.u), atol=1e-6)


def test_sharded_matrix():
  mesh = make_mesh(fsdp=8)
  a = _spectrum(64, 32, [4.0, 1.5, 1.0], seed=7).astype(np.float32)
  a_sh = jax.device_put(a, NamedSharding(mesh, PartitionSpec('fsdp', None)))
  assert len(a_sh.sharding.device_set) == 8
  u64, s64, vt64 = np.linalg.svd(a.astype(np.float64))
  sign = np.sign(u64[np.argmax(np.abs(u64[:, 0])), 0])
  r = power(a_sh)
  np.testing.assert_allclose(float(r.s), s64[0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(r.u), sign * u64[:, 0], atol=1e-5)
  np.testing.assert_allclose(np.asarray(r.v), sign * vt64[0], atol=1e-5)
  u, s, _ = svd_k(a_sh, k=2)
  np.testing.assert_allclose(np.asarray(s), s64[:2], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(u[:, 0]), sign * u64[:, 0], atol=1e-5)


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match='2-D'):
    power_iteration(jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match='`k`'):
    top_k_svd(jnp.zeros((3, 4)), k=4)
  with pytest.raises(ValueError, match='`tol`'):
    power_iteration(jnp.ones((3, 4)), tol=0.0)
  with pytest.raises(ValueError, match='`v0_N`'):
    power_iteration(jnp.ones((3, 4)), v0_N=jnp.ones(3))
