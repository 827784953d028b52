"""Group advantages and the DAPO reward-side helpers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax import advantages as adv_lib


def _adv(rewards, **kw):
  return np.asarray(jax.jit(lambda r: adv_lib.group_advantages(r, **kw))(jnp.asarray(rewards)))


def test_std_ddof0_hand_values():
  # mean 0.5, population std 0.5.
  out = _adv([[1.0, 0.0, 0.0, 1.0]], normalize='std', ddof=0, eps=1e-6)
  np.testing.assert_allclose(out, np.array([[1, -1, -1, 1]]) * (0.5 / 0.500001), rtol=1e-6)


def test_std_ddof1_hand_values():
  # sample std sqrt(1/3): A = 0.5 / 0.57735 = 0.866025.
  out = _adv([[1.0, 0.0, 0.0, 1.0]], normalize='std', ddof=1, eps=0.0)
  np.testing.assert_allclose(out, [[0.8660254, -0.8660254, -0.8660254, 0.8660254]], rtol=1e-6)


def test_mean_only_hand_values():
  out = _adv([[3.0, 1.0, 2.0], [0.0, 0.0, 3.0]], normalize='mean')
  np.testing.assert_allclose(out, [[1.0, -1.0, 0.0], [-1.0, -1.0, 2.0]], rtol=1e-6)


def test_batch_std_hand_values():
  # Group means 0.5 and 2; batch population std of [1, 0, 2, 2] is sqrt(0.6875).
  out = _adv([[1.0, 0.0], [2.0, 2.0]], normalize='batch_std', ddof=0, eps=0.0)
  a = 0.5 / np.sqrt(0.6875)
  np.testing.assert_allclose(out, [[a, -a], [0.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize('normalize', adv_lib.NORMALIZE_MODES)
@pytest.mark.parametrize('ddof', [0, 1])
def test_all_equal_group_is_exactly_zero(normalize, ddof):
  # 0.1 is not representable: mean(0.1, 0.1, 0.1) is 1 ulp off in float32, and eps = 0
  # would turn the 0/0 into NaN without the all-equal rule.
  rewards = [[0.1, 0.1, 0.1], [1.0, 0.0, 0.5], [-3.7, -3.7, -3.7]]
  out = _adv(rewards, normalize=normalize, ddof=ddof, eps=0.0)
  assert np.all(out[0] == 0.0) and np.all(out[2] == 0.0)
  assert np.all(np.isfinite(out)) and np.any(out[1] != 0.0)


def test_all_groups_equal_batch_std_is_zero_not_nan():
  out = _adv([[2.0, 2.0], [2.0, 2.0]], normalize='batch_std', eps=0.0)
  assert np.all(out == 0.0)


def test_singleton_groups():
  r = [[2.0], [-1.0]]
  np.testing.assert_array_equal(_adv(r, singleton='zero'), [[0.0], [0.0]])
  # verl: mean 0, std 1 for a one-completion group.
  np.testing.assert_allclose(
    _adv(r, singleton='raw', eps=1e-6), [[2.0 / 1.000001], [-1.0 / 1.000001]], rtol=1e-7
  )
  np.testing.assert_array_equal(_adv(r, singleton='raw', normalize='mean'), r)


@settings(max_examples=10)
@given(
  b=st.integers(1, 5),
  g=st.integers(2, 6),
  ddof=st.sampled_from([0, 1]),
  normalize=st.sampled_from(adv_lib.NORMALIZE_MODES),
  seed=st.integers(0, 2**16),
)
def test_matches_float64_numpy_reference(b, g, ddof, normalize, seed):
  rng = np.random.default_rng(seed)
  r = rng.integers(0, 3, size=(b, g)).astype(np.float64) * rng.choice([0.5, 1.0])
  eps = 1e-6
  with jax.enable_x64(True):
    out = _adv(r, normalize=normalize, ddof=ddof, eps=eps)
  centered = r - r.mean(axis=1, keepdims=True)
  if normalize == 'mean':
    ref = centered
  elif normalize == 'std':
    ref = centered / (r.std(axis=1, ddof=ddof, keepdims=True) + eps)
  else:
    ref = centered / (r.std(ddof=ddof) + eps)
  ref[np.ptp(r, axis=1) == 0] = 0.0
  assert out.dtype == np.float64
  np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_integer_rewards_become_float():
  out = _adv(np.array([[1, 0]], np.int32), normalize='mean')
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, [[0.5, -0.5]])


def test_compiled_once():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(r):
    return adv_lib.group_advantages(r, normalize='std', ddof=1)

  fn(jnp.ones((3, 4)))
  fn(jnp.zeros((3, 4)))
  fn(jnp.arange(12.0).reshape(3, 4))


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(normalize='median'), '`normalize`'),
    (dict(ddof=2), '`ddof`'),
    (dict(eps=-1e-6), '`eps`'),
    (dict(singleton='drop'), '`singleton`'),
  ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    adv_lib.group_advantages(jnp.ones((2, 3)), **kwargs)


def test_bad_rewards_shape_raises_at_trace_time():
  with pytest.raises(ValueError, match='`rewards_BG`'):
    jax.jit(adv_lib.group_advantages)(jnp.ones((6,)))


def test_overlong_reward_shaping_hand_values():
  # L_max = 10, L_cache = 4: free up to 6, then -(|y| - 6) / 4, then -1.
  lengths = jnp.array([0, 6, 7, 8, 10, 11, 50])
  fn = jax.jit(lambda x: adv_lib.overlong_reward_shaping(x, max_len=10, cache_len=4))
  np.testing.assert_allclose(fn(lengths), [0, 0, -0.25, -0.5, -1, -1, -1], rtol=1e-7)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(max_len=0, cache_len=1), '`max_len`'),
    (dict(max_len=10, cache_len=0), '`cache_len`'),
    (dict(max_len=10, cache_len=11), '`cache_len`'),
  ],
)
def test_overlong_reward_shaping_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    adv_lib.overlong_reward_shaping(jnp.array([1]), **kwargs)


def test_overlong_filter_mask_keeps_untruncated():
  keep = jax.jit(adv_lib.overlong_filter_mask)(jnp.array([True, False, True, False]))
  np.testing.assert_array_equal(keep, [False, True, False, True])


def test_dynamic_sampling_mask_drops_all_equal_groups():
  rewards = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.25]])
  keep = jax.jit(adv_lib.dynamic_sampling_mask)(rewards)
  np.testing.assert_array_equal(keep, [False, True, False, True])


def test_dynamic_sampling_mask_matches_zero_advantage_groups():
  rewards = jnp.array([[1.0, 1.0], [0.0, 1.0], [0.3, 0.3]])
  adv = adv_lib.group_advantages(rewards)
  np.testing.assert_array_equal(
    adv_lib.dynamic_sampling_mask(rewards), np.any(np.asarray(adv) != 0, axis=1)
  )
