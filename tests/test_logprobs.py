"""Chunked, rematerialised token log-probs and entropy from hidden states."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import logprobs


def _reference(hidden, w, targets, temperature):
  """float64 numpy log-softmax of hidden @ w / temperature."""
  logits = np.einsum('btd,dv->btv', hidden.astype(np.float64), w.astype(np.float64)) / temperature
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  logp_all = logits - logz[..., None]
  logp = np.take_along_axis(logp_all, targets[..., None], -1)[..., 0]
  entropy = -(np.exp(logp_all) * logp_all).sum(-1)
  return logp, entropy


def _inputs(B=2, T=7, D=8, V=11, seed=0):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(0, 1, (B, T, D)).astype(np.float32)
  w = rng.normal(0, 0.5, (D, V)).astype(np.float32)
  targets = rng.integers(0, V, (B, T)).astype(np.int32)
  return hidden, w, targets


def test_hand_computed_two_token_vocab():
  # logits [0, log 3]: p = [1/4, 3/4].
  hidden = np.ones((1, 2, 1), np.float32)
  w = np.array([[0.0, np.log(3.0)]], np.float32)
  targets = np.array([[1, 0]], np.int32)
  fn = jax.jit(lambda h, w, t: logprobs.token_logprobs(h, w, t, chunk_size=1))
  logp, ent = fn(hidden, w, targets)
  np.testing.assert_allclose(logp, [[np.log(0.75), np.log(0.25)]], rtol=1e-6)
  h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
  np.testing.assert_allclose(ent, [[h, h]], rtol=1e-6)
  # Temperature 2: logits [0, log(3)/2], p = [1, sqrt 3] / (1 + sqrt 3).
  logp, _ = jax.jit(lambda h, w, t: logprobs.token_logprobs(h, w, t, temperature=2.0))(
    hidden, w, targets
  )
  q = np.sqrt(3.0) / (1 + np.sqrt(3.0))
  np.testing.assert_allclose(logp, [[np.log(q), np.log(1 - q)]], rtol=1e-6)


@pytest.mark.parametrize('chunk_size', [1, 3, 7, 64])
@pytest.mark.parametrize('temperature', [1.0, 0.7])
def test_matches_float64_reference(chunk_size, temperature):
  hidden, w, targets = _inputs()
  fn = jax.jit(
    lambda h, w, t: logprobs.token_logprobs(h, w, t, temperature=temperature, chunk_size=chunk_size)
  )
  logp, ent = fn(hidden, w, targets)
  ref_logp, ref_ent = _reference(hidden, w, targets, temperature)
  assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent, ref_ent, rtol=1e-5, atol=1e-5)


def _loss(fn, **kw):
  def loss(h, w, t, c_logp, c_ent):
    logp, ent = fn(h, w, t, **kw)
    return jnp.sum(c_logp * logp) + jnp.sum(c_ent * ent)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def test_chunked_gradient_equals_naive():
  hidden, w, targets = _inputs(B=3, T=10, D=6, V=13, seed=1)
  rng = np.random.default_rng(2)
  c_logp, c_ent = rng.normal(size=(2, 3, 10)).astype(np.float32)
  v_c, (gh_c, gw_c) = _loss(logprobs.token_logprobs, temperature=0.8, chunk_size=4)(
    hidden, w, targets, c_logp, c_ent
  )
  v_n, (gh_n, gw_n) = _loss(logprobs.naive_token_logprobs, temperature=0.8)(
    hidden, w, targets, c_logp, c_ent
  )
  np.testing.assert_allclose(v_c, v_n, rtol=1e-5)
  np.testing.assert_allclose(gh_c, gh_n, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gw_c, gw_n, rtol=1e-4, atol=1e-5)


def test_gradient_matches_closed_form():
  # d logp_t / d logits = (onehot(target) - p) / temperature; d logits / d hidden = w.
  hidden, w, targets = _inputs(B=1, T=3, D=4, V=5, seed=3)
  temp = 1.5
  _, (g_h, _) = _loss(logprobs.token_logprobs, temperature=temp, chunk_size=2)(
    hidden, w, targets, np.ones((1, 3), np.float32), np.zeros((1, 3), np.float32)
  )
  logits = np.einsum('btd,dv->btv', hidden.astype(np.float64), w) / temp
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  onehot = np.eye(5)[targets]
  expected = np.einsum('btv,dv->btd', (onehot - p) / temp, w)
  np.testing.assert_allclose(g_h, expected, rtol=1e-5, atol=1e-6)


def _largest_intermediate(jaxpr) -> int:
  best = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      best = max(best, int(np.prod(v.aval.shape)) if hasattr(v.aval, 'shape') else 0)
    for param in eqn.params.values():
      for sub in param if isinstance(param, tuple | list) else (param,):
        if hasattr(sub, 'eqns'):
          best = max(best, _largest_intermediate(sub))
        elif hasattr(sub, 'jaxpr') and hasattr(sub.jaxpr, 'eqns'):
          best = max(best, _largest_intermediate(sub.jaxpr))
  return best


def test_no_btv_array_forward_or_backward():
  B, T, D, V, C = 2, 32, 8, 64, 8
  hidden, w, targets = _inputs(B, T, D, V)

  def size(fn, **kw):
    grad_fn = jax.value_and_grad(
      lambda h, w: sum(jnp.sum(x) for x in fn(h, w, targets, **kw)), argnums=(0, 1)
    )
    return _largest_intermediate(jax.make_jaxpr(grad_fn)(hidden, w).jaxpr)

  assert size(logprobs.token_logprobs, chunk_size=C) <= B * C * V
  # The same probe sees the [B, T, V] logits of the naive version.
  assert size(logprobs.naive_token_logprobs) >= B * T * V


def test_compiled_temp_memory_is_a_chunk_not_the_full_logits():
  D, V, C = 16, 512, 16

  def temp_bytes(fn, T, **kw):
    hidden, w, targets = _inputs(2, T, D, V)
    grad_fn = jax.jit(
      jax.grad(lambda h, w: sum(jnp.sum(x) for x in fn(h, w, targets, **kw)), argnums=(0, 1))
    )
    return grad_fn.lower(hidden, w).compile().memory_analysis().temp_size_in_bytes

  chunked = [temp_bytes(logprobs.token_logprobs, T, chunk_size=C) for T in (256, 512)]
  naive = [temp_bytes(logprobs.naive_token_logprobs, T) for T in (256, 512)]
  btv_bytes = 2 * 512 * V * 4
  # A few [B, C, V] buffers, not growing with T; the naive gradient holds [B, T, V] ones.
  assert chunked[1] < btv_bytes / 4
  assert chunked[1] < 1.25 * chunked[0]
  assert naive[1] >= btv_bytes and naive[1] > 1.8 * naive[0]


def test_bfloat16_hidden_gives_float32_outputs():
  hidden, w, targets = _inputs()
  logp, ent = jax.jit(lambda h, w, t: logprobs.token_logprobs(h, w, t, chunk_size=4))(
    hidden.astype(jnp.bfloat16), w.astype(jnp.bfloat16), targets
  )
  assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
  ref_logp, _ = _reference(
    np.asarray(jnp.asarray(hidden, jnp.bfloat16), np.float32),
    np.asarray(jnp.asarray(w, jnp.bfloat16), np.float32),
    targets,
    1.0,
  )
  np.testing.assert_allclose(logp, ref_logp, rtol=2e-2, atol=2e-2)


def test_traced_temperature_and_no_retrace():
  hidden, w, targets = _inputs()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(h, w, t, temp):
    return logprobs.token_logprobs(h, w, t, temperature=temp, chunk_size=4)

  a = fn(hidden, w, targets, 1.0)
  b = fn(hidden, w, targets, 0.5)
  fn(hidden + 1.0, w, targets, 0.5)
  np.testing.assert_allclose(a[0], _reference(hidden, w, targets, 1.0)[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(b[0], _reference(hidden, w, targets, 0.5)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  'args, kwargs, match',
  [
    (((2, 7), (8, 11), (2, 7)), {}, '`hidden_BTD`'),
    (((2, 7, 8), (9, 11), (2, 7)), {}, '`w_DV`'),
    (((2, 7, 8), (8, 11), (2, 6)), {}, '`targets_BT`'),
    (((2, 7, 8), (8, 11), (2, 7)), dict(temperature=0.0), '`temperature`'),
    (((2, 7, 8), (8, 11), (2, 7)), dict(chunk_size=0), '`chunk_size`'),
  ],
)
def test_bad_input_names_the_argument(args, kwargs, match):
  h, w, t = (jnp.zeros(s, jnp.int32 if i == 2 else jnp.float32) for i, s in enumerate(args))
  with pytest.raises(ValueError, match=match):
    jax.jit(lambda h, w, t: logprobs.token_logprobs(h, w, t, **kwargs))(h, w, t)


def test_float_targets_rejected():
  with pytest.raises(ValueError, match='`targets_BT`'):
    logprobs.token_logprobs(jnp.zeros((1, 2, 3)), jnp.zeros((3, 4)), jnp.zeros((1, 2)))
