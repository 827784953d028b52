"""PPO/GSPO surrogates, KL estimators and (num, den) aggregation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax import losses

MODES = losses.AGG_MODES


def _ppo(logp, old, adv, **kw):
  fn = jax.jit(lambda a, b, c: losses.clipped_surrogate(a, b, c, **kw))
  return jax.tree.map(np.asarray, fn(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv)))


def _log(ratios):
  return np.log(np.asarray(ratios, np.float32))[None]


# ---------------------------------------------------------------- PPO clip, hand values


def test_ppo_clip_positive_advantage_hand_values():
  out = _ppo(_log([1.0, 1.5, 0.5]), np.zeros((1, 3), np.float32), [1.0])
  # max(-ρ, -clip(ρ, 0.8, 1.2)): the clip binds only above 1 + ε for A > 0.
  np.testing.assert_allclose(out.loss_BT, [[-1.0, -1.2, -0.5]], rtol=1e-6)
  np.testing.assert_array_equal(out.clipped_BT, [[False, True, False]])
  np.testing.assert_allclose(out.ratio_BT, [[1.0, 1.5, 0.5]], rtol=1e-6)


def test_ppo_clip_negative_advantage_hand_values():
  out = _ppo(_log([1.0, 1.5, 0.5]), np.zeros((1, 3), np.float32), [-2.0])
  np.testing.assert_allclose(out.loss_BT, [[2.0, 3.0, 1.6]], rtol=1e-6)
  np.testing.assert_array_equal(out.clipped_BT, [[False, False, True]])


def test_clip_higher_uses_separate_upper_range():
  out = _ppo(_log([1.25, 1.3, 0.7]), np.zeros((1, 3), np.float32), [1.0], eps_high=0.28)
  np.testing.assert_allclose(out.loss_BT, [[-1.25, -1.28, -0.7]], rtol=1e-6)
  out = _ppo(_log([1.25, 0.75, 0.7]), np.zeros((1, 3), np.float32), [-1.0], eps_low=0.25)
  np.testing.assert_allclose(out.loss_BT, [[1.25, 0.75, 0.75]], rtol=1e-6)


def test_dual_clip_caps_negative_advantage_loss():
  out = _ppo(
    _log([5.0, 2.0, 5.0]), np.zeros((1, 3), np.float32), [[-1.0, -1.0, 1.0]], dual_clip=3.0
  )
  # A < 0: min(max(ρ, clip(ρ)), 3) = [3, 2]; the dual clip never touches A > 0.
  np.testing.assert_allclose(out.loss_BT, [[3.0, 2.0, -1.2]], rtol=1e-6)
  np.testing.assert_array_equal(out.dual_clipped_BT, [[True, False, False]])


def test_log_ratio_is_clamped_before_exp():
  logp = np.array([[0.0, -1.0]], np.float32)
  old = np.array([[-200.0, -1.0]], np.float32)
  out = _ppo(logp, old, [-1.0])
  np.testing.assert_allclose(out.loss_BT, [[np.exp(np.float32(20.0)), 1.0]], rtol=1e-6)
  out = _ppo(logp, old, [-1.0], log_ratio_clamp=None)
  assert np.isinf(out.loss_BT[0, 0])
  out = _ppo(logp, old, [-1.0], log_ratio_clamp=(None, 5.0))
  np.testing.assert_allclose(out.loss_BT[0, 0], np.exp(np.float32(5.0)), rtol=1e-6)


def test_ratio_cap_limits_unclipped_term():
  # TRL `delta`: min(ρ, δ) in the unclipped term only.
  out = _ppo(_log([4.0, 1.1]), np.zeros((1, 2), np.float32), [-1.0], ratio_cap=2.0)
  np.testing.assert_allclose(out.loss_BT, [[2.0, 1.1]], rtol=1e-6)


# ---------------------------------------------------------------- aggregation


LOSS = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)


@pytest.mark.parametrize(
  'kwargs, num, den',
  [
    (dict(mode='token-mean'), 15.0, 5.0),
    (dict(mode='seq-mean-token-mean'), 2.0 + 4.5, 2.0),
    (dict(mode='seq-mean-token-sum'), 15.0, 2.0),
    (dict(mode='seq-mean-token-sum-norm'), 15.0, 6.0),
    (dict(mode='seq-mean-token-sum-norm', max_len=4), 15.0, 8.0),
    (dict(mode='seq-mean-token-sum-norm', rows_in_norm=False), 15.0, 3.0),
  ],
)
def test_aggregate_hand_values(kwargs, num, den):
  n, d = jax.jit(lambda l, m: losses.aggregate(l, m, **kwargs))(LOSS, MASK)
  np.testing.assert_allclose([n, d], [num, den], rtol=1e-6)


def test_aggregate_empty_rows():
  mask = np.array([[1, 1, 0], [0, 0, 0]], np.float32)
  loss = np.array([[1.0, 3.0, 9.0], [7.0, 7.0, 7.0]], np.float32)
  fn = jax.jit(
    lambda l, m: [
      losses.aggregate(l, m, mode='seq-mean-token-mean'),
      losses.aggregate(l, m, mode='seq-mean-token-mean', skip_empty_rows=True),
      losses.aggregate(l, m, mode='seq-mean-token-mean', seq_len_eps=1e-8),
    ]
  )
  with jax.enable_x64(True):
    (n0, d0), (n1, d1), (n2, _) = jax.tree.map(np.asarray, fn(loss.astype(np.float64), mask))
  np.testing.assert_allclose([n0, d0], [2.0, 2.0])
  np.testing.assert_allclose([n1, d1], [2.0, 1.0])
  np.testing.assert_allclose(n2, 4.0 / (2.0 + 1e-8), rtol=1e-15)


def test_aggregate_ignores_nonfinite_loss_on_padding():
  loss = np.array([[1.0, np.inf, np.nan]], np.float32)
  mask = np.array([[1, 0, 0]], np.float32)
  fn = jax.jit(lambda l, m: [losses.aggregate(l, m, mode=mode)[0] for mode in MODES])
  assert np.all(np.isfinite(fn(loss, mask)))


def _normaliser(mode, mask, max_len=None):
  """The closed-form per-token weight 1/normaliser of each mode, [B, T]."""
  B, T = mask.shape
  n = mask.sum(axis=1, keepdims=True)
  if mode == 'token-mean':
    return np.broadcast_to(mask.sum(), mask.shape)
  if mode == 'seq-mean-token-mean':
    return np.broadcast_to(B * n, mask.shape)
  if mode == 'seq-mean-token-sum':
    return np.full(mask.shape, float(B))
  return np.full(mask.shape, float(B * (max_len or T)))


def _loss_fn(mode, adv, old, mask, **kw):
  def fn(logp):
    sur = losses.clipped_surrogate(logp, old, adv, **kw)
    num, den = losses.aggregate(sur.loss_BT, mask, mode=mode)
    return num / den

  return jax.jit(jax.grad(fn))


@pytest.mark.parametrize('mode', MODES)
def test_gradient_at_ratio_one_is_minus_adv_over_normaliser(mode):
  rng = np.random.default_rng(0)
  old = -rng.uniform(0.1, 3.0, (3, 5)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.float32)
  adv = np.array([1.5, -0.5, 2.0], np.float32)
  grad = _loss_fn(mode, adv, old, mask)(old)
  expected = -adv[:, None] * mask / _normaliser(mode, mask)
  np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('mode', MODES)
def test_gradient_is_zero_on_clipped_tokens_and_unchanged_elsewhere(mode):
  old = np.zeros((2, 4), np.float32)
  ratios = np.array([[1.5, 1.1, 0.5, 0.9], [1.5, 1.1, 0.5, 0.9]], np.float32)
  logp = np.log(ratios)
  mask = np.ones((2, 4), np.float32)
  adv = np.array([1.0, -1.0], np.float32)
  grad = np.asarray(_loss_fn(mode, adv, old, mask)(logp))
  # A > 0 clipped above 1.2 (token 0); A < 0 clipped below 0.8 (token 2).
  clipped = np.array([[1, 0, 0, 0], [0, 0, 1, 0]], bool)
  expected = -adv[:, None] * ratios / _normaliser(mode, mask)
  np.testing.assert_array_equal(grad[clipped], 0.0)
  np.testing.assert_allclose(grad[~clipped], expected[~clipped], rtol=1e-6)


def test_dual_clipped_token_has_zero_gradient():
  old = np.zeros((1, 2), np.float32)
  logp = np.log(np.array([[5.0, 2.0]], np.float32))
  grad = _loss_fn('token-mean', np.array([-1.0], np.float32), old, np.ones((1, 2)), dual_clip=3.0)(
    logp
  )
  np.testing.assert_allclose(grad, [[0.0, 2.0 / 2]], rtol=1e-6)


# ---------------------------------------------------------------- accumulation, padding


def _random_batch(rng, B, T, empty_rows=False):
  logp = -rng.uniform(0.05, 2.0, (B, T)).astype(np.float32)
  old = logp + rng.normal(0, 0.3, (B, T)).astype(np.float32)
  lengths = rng.integers(0 if empty_rows else 1, T + 1, B)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  adv = rng.normal(0, 1, B).astype(np.float32)
  return logp, old, adv, mask


def _num_den_grad(mode, max_len=None):
  def fn(logp, old, adv, mask):
    sur = losses.clipped_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    return losses.aggregate(sur.loss_BT, mask, mode=mode, max_len=max_len)

  def both(logp, old, adv, mask):
    (num, den), vjp = jax.vjp(lambda lp: fn(lp, old, adv, mask), logp)
    return num, den, vjp((jnp.ones_like(num), jnp.zeros_like(den)))[0]

  # One jitted call evaluates several batches (of different shapes): one compile, not three.
  return jax.jit(lambda *batches: [both(*b) for b in batches])


@settings(max_examples=8)
@given(
  B=st.integers(2, 6),
  T=st.integers(1, 6),
  split=st.integers(1, 5),
  mode=st.sampled_from(MODES),
  seed=st.integers(0, 2**16),
)
def test_microbatch_accumulation_equals_full_batch(B, T, split, mode, seed):
  split = min(split, B - 1)
  logp, old, adv, mask = _random_batch(np.random.default_rng(seed), B, T)
  fn = _num_den_grad(mode, max_len=8)
  with jax.enable_x64(True):
    args = [x.astype(np.float64) for x in (logp, old, adv, mask)]
    out = fn(args, [x[:split] for x in args], [x[split:] for x in args])
    (num, den, grad), *parts = jax.tree.map(np.asarray, out)
  num_acc = sum(p[0] for p in parts)
  den_acc = sum(p[1] for p in parts)
  np.testing.assert_allclose(num_acc / den_acc, num / den, rtol=1e-12)
  grad_acc = np.concatenate([p[2] for p in parts]) / den_acc
  np.testing.assert_allclose(grad_acc, grad / den, rtol=1e-12, atol=1e-15)


@settings(max_examples=8)
@given(
  B=st.integers(1, 4),
  T=st.integers(1, 5),
  pad=st.integers(1, 4),
  mode=st.sampled_from(MODES),
  seed=st.integers(0, 2**16),
)
def test_extra_padding_changes_nothing(B, T, pad, mode, seed):
  rng = np.random.default_rng(seed)
  logp, old, adv, mask = _random_batch(rng, B, T)
  garbage = rng.normal(0, 5, (B, pad)).astype(np.float32)
  padded = [np.concatenate([x, garbage], axis=1) for x in (logp, old)]
  mask_p = np.concatenate([mask, np.zeros((B, pad), np.float32)], axis=1)
  fn = _num_den_grad(mode, max_len=16)
  (num, den, grad), (num_p, den_p, grad_p) = fn(
    (logp, old, adv, mask), (padded[0], padded[1], adv, mask_p)
  )
  np.testing.assert_allclose(num_p / den_p, num / den, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad_p)[:, :T] / den_p, np.asarray(grad) / den, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad_p)[:, T:], 0.0)


def test_sum_norm_without_max_len_divides_by_padded_width():
  logp, old, adv, mask = _random_batch(np.random.default_rng(1), 3, 4)
  fn = _num_den_grad('seq-mean-token-sum-norm')
  pad = lambda x: np.pad(x, ((0, 0), (0, 2)))
  (num, den, _), (num_p, den_p, _) = fn(
    (logp, old, adv, mask), (pad(logp), pad(old), adv, pad(mask))
  )
  np.testing.assert_allclose(den, 3 * 4)
  np.testing.assert_allclose(den_p, 3 * 6)
  np.testing.assert_allclose(num_p / den_p, (num / den) * 4 / 6, rtol=1e-6)


# ---------------------------------------------------------------- GSPO


def test_gspo_sequence_ratio_hand_values():
  logp = np.array([[0.2, 0.4, 9.0]], np.float32)
  old = np.zeros((1, 3), np.float32)
  mask = np.array([[1, 1, 0]], np.float32)
  fn = jax.jit(lambda a, b, c, m: losses.gspo_surrogate(a, b, c, m))
  out = fn(logp, old, jnp.array([1.0]), mask)
  s = np.exp(0.3)  # mean log-ratio over the two real tokens
  np.testing.assert_allclose(out.ratio_BT, [[s, s, s]], rtol=1e-6)
  np.testing.assert_allclose(out.loss_BT, [[-(1 + 4e-4)] * 3], rtol=1e-6)
  assert np.all(np.asarray(out.clipped_BT))
  wide = jax.jit(lambda a, b, c, m: losses.gspo_surrogate(a, b, c, m, eps_low=0.5, eps_high=0.5))(
    logp, old, jnp.array([1.0]), mask
  )
  np.testing.assert_allclose(wide.loss_BT, [[-s] * 3], rtol=1e-6)


def _gspo_grad(token_level, adv, mask, old):
  def fn(logp):
    sur = losses.gspo_surrogate(
      logp, old, adv, mask, eps_low=0.9, eps_high=9.0, token_level=token_level
    )
    num, den = losses.aggregate(sur.loss_BT, mask, mode='seq-mean-token-mean')
    return num / den

  return jax.jit(jax.grad(fn))


def test_gspo_gradient_closed_form_and_gspo_token_agrees():
  rng = np.random.default_rng(2)
  old = -rng.uniform(0.1, 2, (2, 4)).astype(np.float32)
  logp = old + rng.normal(0, 0.2, (2, 4)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  adv = np.array([1.0, -2.0], np.float32)
  n = mask.sum(1, keepdims=True)
  s = np.exp(((logp - old) * mask).sum(1, keepdims=True) / n)
  # d/dlogp_{i,t} of 1/B Σ_i -A_i s_i = -A_i s_i / (|o_i| B) on real tokens.
  expected = -adv[:, None] * s * mask / (n * 2)
  g_seq = _gspo_grad(False, adv, mask, old)(logp)
  g_tok = _gspo_grad(True, adv, mask, old)(logp)
  np.testing.assert_allclose(g_seq, expected, rtol=1e-5)
  np.testing.assert_allclose(g_tok, expected, rtol=1e-5)


def test_gspo_token_gradient_uses_per_token_advantages():
  old = np.zeros((1, 2), np.float32)
  mask = np.ones((1, 2), np.float32)
  adv_BT = np.array([[1.0, -3.0]], np.float32)
  g = _gspo_grad(True, adv_BT, mask, old)(np.zeros((1, 2), np.float32))
  # s = 1; d/dlogp_t of mean_t(-A_t s_{i,t}) = -A_t / 2.
  np.testing.assert_allclose(g, [[-0.5, 1.5]], rtol=1e-6)


# ---------------------------------------------------------------- KL


def test_kl_estimators_hand_values():
  logp = jnp.array([[0.5, -0.25]])
  ref = jnp.zeros((1, 2))
  k = {
    e: np.asarray(jax.jit(lambda a, b, e=e: losses.kl_penalty(a, b, estimator=e))(logp, ref))
    for e in losses.KL_ESTIMATORS
  }
  np.testing.assert_allclose(k['k1'], [[0.5, -0.25]], rtol=1e-6)
  np.testing.assert_allclose(k['k2'], [[0.125, 0.03125]], rtol=1e-6)
  np.testing.assert_allclose(
    k['k3'], [[np.exp(-0.5) - 1 + 0.5, np.exp(0.25) - 1 - 0.25]], rtol=1e-5
  )


def test_kl_clamps_like_verl():
  logp = jnp.array([[-40.0, 0.0]])
  ref = jnp.array([[0.0, -40.0]])
  kl_fn = jax.jit(losses.kl_penalty, static_argnames=('estimator', 'clamp', 'log_ratio_clamp'))
  kl = kl_fn(logp, ref, estimator='k3', clamp=10.0, log_ratio_clamp=20.0)
  # ref - logp = 40 -> 20 -> e^20 - 21 -> 10;  ref - logp = -40 -> -20 -> e^-20 + 19 -> 10.
  np.testing.assert_allclose(kl, [[10.0, 10.0]])
  kl = kl_fn(logp, ref, estimator='k3', log_ratio_clamp=20.0)
  np.testing.assert_allclose(kl, [[np.exp(20.0) - 21.0, np.exp(-20.0) + 19.0]], rtol=1e-6)
  kl = kl_fn(logp, ref, estimator='k1', clamp=10.0)
  np.testing.assert_allclose(kl, [[-10.0, 10.0]])


_k3 = jax.jit(lambda lp: losses.kl_penalty(lp, jnp.zeros_like(lp), estimator='k3'))


@given(x=st.floats(-15, 15))
def test_k3_is_nonnegative(x):
  assert float(_k3(jnp.array([[x]], jnp.float32))[0, 0]) >= 0


def test_k2_and_k3_gradients_at_the_sample():
  # d k2/d logp = ℓ; d k3/d logp = 1 - e^{-ℓ}.
  ell = jnp.array([[0.3, -0.7]])
  for est, expected in (('k2', ell), ('k3', 1 - jnp.exp(-ell))):
    fn = lambda lp, e=est: losses.kl_penalty(lp, jnp.zeros((1, 2)), estimator=e).sum()
    g = jax.jit(jax.grad(fn))(ell)
    np.testing.assert_allclose(g, expected, rtol=1e-6)


def test_kl_reward_penalty_subtracts_summed_kl():
  logp = jnp.array([[0.5, 0.25, 9.0], [0.1, 0.0, 0.0]])
  mask = jnp.array([[1, 1, 0], [1, 0, 0]])
  r = losses.kl_reward_penalty(
    jnp.array([1.0, 0.0]), logp, jnp.zeros((2, 3)), mask, coef=0.1, estimator='k1'
  )
  np.testing.assert_allclose(r, [1.0 - 0.1 * 0.75, -0.1 * 0.1], rtol=1e-6)


# ---------------------------------------------------------------- compile once, bad input


def test_compiled_once_per_shape():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(logp, old, adv, mask):
    sur = losses.clipped_surrogate(logp, old, adv, dual_clip=3.0)
    kl = losses.kl_penalty(logp, old, estimator='k3')
    return losses.aggregate(sur.loss_BT + 0.1 * kl, mask, mode='seq-mean-token-mean')

  rng = np.random.default_rng(0)
  for _ in range(3):
    logp, old, adv, mask = _random_batch(rng, 3, 4)
    step(logp, old, adv, mask)


@pytest.mark.parametrize(
  'call, match',
  [
    (
      lambda: losses.clipped_surrogate(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.zeros(2)),
      '`old_logp_BT`',
    ),
    (
      lambda: losses.clipped_surrogate(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(3)),
      '`adv_B`',
    ),
    (lambda: losses.clipped_surrogate(jnp.zeros(3), jnp.zeros(3), jnp.zeros(1)), '`logp_BT`'),
    (
      lambda: losses.clipped_surrogate(
        jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), eps_low=-0.1
      ),
      '`eps_low`',
    ),
    (
      lambda: losses.clipped_surrogate(
        jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), eps_high=-0.1
      ),
      '`eps_high`',
    ),
    (
      lambda: losses.clipped_surrogate(
        jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), dual_clip=0.5
      ),
      '`dual_clip`',
    ),
    (
      lambda: losses.clipped_surrogate(
        jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), log_ratio_clamp=-1.0
      ),
      '`log_ratio_clamp`',
    ),
    (
      lambda: losses.gspo_surrogate(
        jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), jnp.ones((1, 3))
      ),
      '`mask_BT`',
    ),
    (
      lambda: losses.gspo_surrogate(
        jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), jnp.ones((1, 2)), eps_low=-1.0
      ),
      '`eps_low`',
    ),
    (lambda: losses.aggregate(jnp.zeros((2, 3)), jnp.ones((2, 3)), mode='sum'), '`mode`'),
    (lambda: losses.aggregate(jnp.zeros((2, 3)), jnp.ones((3, 2)), mode='token-mean'), '`mask_BT`'),
    (
      lambda: losses.aggregate(
        jnp.zeros((2, 3)), jnp.ones((2, 3)), mode='seq-mean-token-sum-norm', max_len=0
      ),
      '`max_len`',
    ),
    (
      lambda: losses.kl_penalty(jnp.zeros((2, 3)), jnp.zeros((2, 3)), estimator='k4'),
      '`estimator`',
    ),
    (lambda: losses.kl_penalty(jnp.zeros((2, 3)), jnp.zeros((2, 2))), '`ref_logp_BT`'),
    (lambda: losses.kl_penalty(jnp.zeros((1, 1)), jnp.zeros((1, 1)), clamp=0.0), '`clamp`'),
  ],
)
def test_bad_input_names_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_bad_shapes_raise_at_trace_time():
  fn = jax.jit(lambda a, b, c: losses.clipped_surrogate(a, b, c).loss_BT)
  with pytest.raises(ValueError, match='`old_logp_BT`'):
    fn(jnp.zeros((2, 3)), jnp.zeros((2, 5)), jnp.zeros(2))
  agg = jax.jit(lambda l, m: losses.aggregate(l, m, mode='token-mean'))
  with pytest.raises(ValueError, match='`mask_BT`'):
    agg(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
