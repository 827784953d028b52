"""Loss presets: our paper presets and the verl / TRL compatible ones."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax import presets
from grpo_jax.presets import PRESETS

OURS = ('grpo', 'dr_grpo', 'dapo', 'gspo', 'gspo_token')

# ------------------------------------------------------------------ independent references
# Transcriptions of the frameworks' torch code (verl core_algos.py, TRL grpo_trainer.py)
# into float64 jnp, written from their source and kept deliberately literal.


def verl_grpo_advantage(scores, index, *, eps=1e-6, norm_by_std=True):
  scores = np.asarray(scores, np.float64)
  out = np.empty_like(scores)
  for g in set(index):
    sel = [i for i, x in enumerate(index) if x == g]
    group = scores[sel]
    mean, std = (0.0, 1.0) if len(sel) == 1 else (group.mean(), group.std(ddof=1))
    out[sel] = (group - mean) / (std + eps) if norm_by_std else group - mean
  return out


def verl_agg(mat, mask, mode):
  if mode == 'token-mean':
    return jnp.sum(mat * mask) / jnp.sum(mask)
  if mode == 'seq-mean-token-sum':
    seq = jnp.sum(mat * mask, -1)
    seq_mask = (jnp.sum(mask, -1) > 0).astype(mat.dtype)
    return jnp.sum(seq * seq_mask) / jnp.sum(seq_mask)
  if mode == 'seq-mean-token-mean':
    n = jnp.sum(mask, -1)
    seq = jnp.sum(mat * mask, -1) / (n + 1e-8)
    seq_mask = (n > 0).astype(mat.dtype)
    return jnp.sum(seq * seq_mask) / jnp.sum(seq_mask)
  seq = jnp.sum(mat * mask, -1)
  return jnp.sum(seq) / mask.shape[-1]


def verl_low_var_kl(logp, ref):
  kl = jnp.clip(ref - logp, -20, 20)
  return jnp.clip(jnp.exp(kl) - kl - 1, -10, 10)


def verl_vanilla_loss(old, logp, adv, mask, mode, clip=0.2, clip_c=3.0):
  nak = jnp.clip(logp - old, -20.0, 20.0)
  ratio = jnp.exp(nak)
  l1 = -adv * ratio
  l2 = -adv * jnp.clip(ratio, 1 - clip, 1 + clip)
  c1 = jnp.maximum(l1, l2)
  c2 = jnp.minimum(-adv * clip_c, c1)
  return verl_agg(jnp.where(adv < 0, c2, c1), mask, mode)


def verl_gspo_loss(old, logp, adv, mask, low=3e-4, high=4e-4):
  nak = logp - old
  lengths = jnp.maximum(jnp.sum(mask, -1), 1)
  nak_seq = jnp.sum(nak * mask, -1) / lengths
  log_s = logp - jax.lax.stop_gradient(logp) + jax.lax.stop_gradient(nak_seq)[:, None]
  s = jnp.exp(jnp.minimum(log_s, 10.0))
  pg = jnp.maximum(-adv * s, -adv * jnp.clip(s, 1 - low, 1 + high))
  return verl_agg(pg, mask, 'seq-mean-token-mean')


def trl_advantage(rewards_BG, *, scale='group'):
  r = np.asarray(rewards_BG, np.float64)
  adv = r - r.mean(1, keepdims=True)
  if scale == 'none':
    return adv
  std = r.std(1, ddof=1, keepdims=True) if r.shape[1] > 1 else np.zeros_like(r)
  return adv / (std + 1e-4)


def trl_loss(
  old,
  logp,
  adv,
  mask,
  loss_type,
  *,
  level='token',
  eps=0.2,
  eps_high=0.2,
  beta=0.0,
  ref=None,
  max_completion_length=256,
):
  log_ratio = logp - old
  if level == 'sequence':
    log_w = (jnp.sum(log_ratio * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0))[:, None]
  else:
    log_w = log_ratio
  coef_1 = jnp.exp(log_w)
  coef_2 = jnp.clip(coef_1, 1 - eps, 1 + eps_high)
  loss = -jnp.minimum(coef_1 * adv, coef_2 * adv)
  if beta != 0.0:
    loss = loss + beta * (jnp.exp(ref - logp) - (ref - logp) - 1)
  if loss_type == 'grpo':
    return jnp.mean(jnp.sum(loss * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0))
  if loss_type in ('bnpo', 'dapo'):
    return jnp.sum(loss * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return jnp.sum(loss * mask) / (loss.shape[0] * max_completion_length)


def _batch(seed, B=6, T=7, empty_row=False, spread=0.6):
  rng = np.random.default_rng(seed)
  old = -rng.uniform(0.05, 3.0, (B, T))
  logp = old + rng.normal(0, spread, (B, T))
  ref = old + rng.normal(0, 0.5, (B, T))
  lengths = rng.integers(1, T + 1, B)
  if empty_row:
    lengths[1] = 0
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float64)
  adv = rng.normal(0, 1.5, B)
  return logp, old, ref, mask, adv


def _ours(preset, logp, old, adv, mask, ref=None):
  def loss(lp):
    num, den, _ = preset.objective(lp, old, adv, mask, ref_logp_BT=ref)
    return num / den

  return jax.jit(jax.value_and_grad(loss))(logp)


def _num_den_grad(preset):
  def one(lp, o, a, m, r):
    def f(x):
      num, den, _ = preset.objective(x, o, a, m, ref_logp_BT=r)
      return num, den

    (num, den), vjp = jax.vjp(f, lp)
    return num, den, vjp((jnp.ones_like(num), jnp.zeros_like(den)))[0]

  # One jitted call evaluates several batches (of different shapes): one compile.
  return jax.jit(lambda *batches: [one(*b) for b in batches])


def _theirs(fn, logp):
  return jax.jit(jax.value_and_grad(fn))(logp)


def _assert_same(ours, theirs):
  np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------ names and citations


def test_required_presets_exist_and_cite_their_source():
  for name in OURS + ('verl', 'trl'):
    assert name in PRESETS
  for name, arxiv in [
    ('grpo', '2402.03300'),
    ('dr_grpo', '2503.20783'),
    ('dapo', '2503.14476'),
    ('gspo', '2507.18071'),
  ]:
    assert arxiv in PRESETS[name].reference
  assert 'core_algos.py' in PRESETS['verl'].reference
  assert 'grpo_trainer.py' in PRESETS['trl'].reference


@pytest.mark.parametrize('name', OURS)
def test_our_presets_give_all_equal_groups_exactly_zero(name):
  rewards = jnp.array([[0.1, 0.1, 0.1, 0.1], [1.0, 0.0, 1.0, 1.0], [-2.3, -2.3, -2.3, -2.3]])
  adv = np.asarray(jax.jit(PRESETS[name].advantages)(rewards))
  assert np.all(adv[0] == 0.0) and np.all(adv[2] == 0.0) and np.all(adv[1] != 0.0)


def test_paper_preset_conventions():
  assert (PRESETS['grpo'].kl_estimator, PRESETS['grpo'].kl_coef) == ('k3', 0.04)
  assert PRESETS['grpo'].loss_agg_mode == 'seq-mean-token-mean'
  assert PRESETS['dr_grpo'].normalize == 'mean' and PRESETS['dr_grpo'].kl_coef == 0.0
  assert PRESETS['dr_grpo'].loss_agg_mode == 'seq-mean-token-sum-norm'
  dapo = PRESETS['dapo']
  assert (dapo.eps_low, dapo.eps_high, dapo.loss_agg_mode) == (0.2, 0.28, 'token-mean')
  assert dapo.dynamic_sampling and dapo.kl_coef == 0.0
  assert (PRESETS['gspo'].eps_low, PRESETS['gspo'].eps_high) == (3e-4, 4e-4)


# ------------------------------------------------------------------ verl


def test_verl_advantages_match_verl_including_singletons():
  # verl groups by an index; here 2 groups of 3 and, separately, singleton groups.
  rewards = np.array([[1.0, 0.0, 0.5], [2.0, 2.0, 3.0]])
  with jax.enable_x64(True):
    ours = np.asarray(PRESETS['verl'].advantages(rewards))
    ours_mean = np.asarray(PRESETS['verl_dr_grpo'].advantages(rewards))
    single = np.asarray(PRESETS['verl'].advantages(np.array([[2.0], [-1.0]])))
  index = [0, 0, 0, 1, 1, 1]
  np.testing.assert_allclose(ours.ravel(), verl_grpo_advantage(rewards.ravel(), index), rtol=1e-14)
  np.testing.assert_allclose(
    ours_mean.ravel(), verl_grpo_advantage(rewards.ravel(), index, norm_by_std=False), rtol=1e-14
  )
  np.testing.assert_allclose(single.ravel(), verl_grpo_advantage([2.0, -1.0], [0, 1]), rtol=1e-14)


@pytest.mark.parametrize(
  'mode, empty_row',
  [
    ('token-mean', False),
    ('seq-mean-token-mean', False),
    ('seq-mean-token-mean', True),
    ('seq-mean-token-sum', False),
    ('seq-mean-token-sum', True),
    ('seq-mean-token-sum-norm', False),
    ('seq-mean-token-sum-norm', True),
  ],
)
def test_verl_policy_loss_matches_verl(mode, empty_row):
  with jax.enable_x64(True):
    logp, old, _, mask, adv = _batch(3, empty_row=empty_row, spread=1.5)
    preset = PRESETS['verl'].replace(loss_agg_mode=mode)
    ours = _ours(preset, logp, old, adv, mask)
    theirs = _theirs(lambda lp: verl_vanilla_loss(old, lp, adv[:, None], mask, mode), logp)
    _assert_same(ours, theirs)


def test_verl_dual_clip_is_always_on_for_negative_advantages():
  logp = np.log(np.array([[10.0, 10.0]], np.float32))
  num, den, m = jax.jit(PRESETS['verl'].objective)(
    logp, np.zeros((1, 2), np.float32), np.array([-1.0], np.float32), np.ones((1, 2), np.float32)
  )
  np.testing.assert_allclose(num / den, 3.0)
  assert float(m['dual_clip_frac']) == 1.0


def test_verl_kl_loss_matches_verl():
  with jax.enable_x64(True):
    logp, old, ref, mask, adv = _batch(4, spread=1.0)
    ref = ref - 25.0 * (np.arange(ref.shape[1]) == 0)  # exercise both clamps
    preset = PRESETS['verl_grpo']
    ours = _ours(preset, logp, old, adv, mask, ref)

    def theirs(lp):
      pg = verl_vanilla_loss(old, lp, adv[:, None], mask, 'token-mean')
      return pg + 0.001 * verl_agg(verl_low_var_kl(lp, ref), mask, 'token-mean')

    _assert_same(ours, _theirs(theirs, logp))


def test_verl_gspo_matches_verl():
  with jax.enable_x64(True):
    logp, old, _, mask, adv = _batch(5, empty_row=True, spread=0.01)
    ours = _ours(PRESETS['verl_gspo'], logp, old, adv, mask)
    theirs = _theirs(lambda lp: verl_gspo_loss(old, lp, adv[:, None], mask), logp)
    _assert_same(ours, theirs)


def test_verl_sum_norm_divides_by_padded_width():
  with jax.enable_x64(True):
    logp, old, _, mask, adv = _batch(6)
    preset = PRESETS['verl_dr_grpo']
    pad = lambda x: np.pad(x, ((0, 0), (0, 3)))
    out = _num_den_grad(preset)(
      (logp, old, adv, mask, None), (pad(logp), pad(old), adv, pad(mask), None)
    )
    (num, den, _), (num_p, den_p, _) = jax.tree.map(np.asarray, out)
    value, value_p = num / den, num_p / den_p
  T = logp.shape[1]
  np.testing.assert_allclose(value_p, value * T / (T + 3), rtol=1e-13)


def test_verl_sum_norm_accumulation_is_verl_gradient_accumulation():
  # verl divides each micro-batch loss by the number of micro-batches k; Σnum / Σden with
  # den = T per micro-batch gives exactly that.
  with jax.enable_x64(True):
    logp, old, _, mask, adv = _batch(7, B=6)
    preset = PRESETS['verl_dr_grpo']
    halves = (slice(0, 3), slice(3, 6))

    @jax.jit
    def both(logp, old, adv, mask):
      parts = [preset.objective(logp[s], old[s], adv[s], mask[s])[:2] for s in halves]
      accumulated = sum(p[0] for p in parts) / sum(p[1] for p in parts)
      verl = sum(
        verl_vanilla_loss(old[s], logp[s], adv[s, None], mask[s], 'seq-mean-token-sum-norm') / 2
        for s in halves
      )
      return accumulated, verl

    accumulated, verl = map(np.asarray, both(logp, old, adv, mask))
  np.testing.assert_allclose(accumulated, verl, rtol=1e-13)


# ------------------------------------------------------------------ TRL


def test_trl_advantages_match_trl():
  rewards = np.array([[1.0, 0.0, 0.5, 0.5], [2.0, 2.0, 2.0, 2.0]])
  with jax.enable_x64(True):
    np.testing.assert_allclose(
      PRESETS['trl'].advantages(rewards), trl_advantage(rewards), rtol=1e-14
    )
    np.testing.assert_allclose(
      PRESETS['trl_dr_grpo'].advantages(rewards), trl_advantage(rewards, scale='none'), rtol=1e-14
    )
    np.testing.assert_array_equal(PRESETS['trl'].advantages(np.array([[3.0], [1.0]])), 0.0)


@pytest.mark.parametrize(
  'name, loss_type, kw',
  [
    ('trl', 'dapo', {}),
    ('trl_grpo', 'grpo', {}),
    ('trl_dr_grpo', 'dr_grpo', {}),
    ('trl_gspo', 'grpo', dict(level='sequence', eps=3e-4, eps_high=4e-4)),
  ],
)
def test_trl_policy_loss_matches_trl(name, loss_type, kw):
  with jax.enable_x64(True):
    logp, old, _, mask, adv = _batch(8, spread=0.01 if 'gspo' in name else 1.5)
    ours = _ours(PRESETS[name], logp, old, adv, mask)
    theirs = _theirs(lambda lp: trl_loss(old, lp, adv[:, None], mask, loss_type, **kw), logp)
    _assert_same(ours, theirs)


def test_trl_kl_term_and_unclamped_ratio_match_trl():
  with jax.enable_x64(True):
    logp, old, ref, mask, adv = _batch(9, spread=1.0)
    old = old.copy()
    old[0, 0] -= 30.0  # verl would clamp this log-ratio at 20; TRL does not
    preset = PRESETS['trl_grpo'].replace(kl_coef=0.04)
    ours = _ours(preset, logp, old, adv, mask, ref)
    theirs = _theirs(
      lambda lp: trl_loss(old, lp, adv[:, None], mask, 'grpo', beta=0.04, ref=ref), logp
    )
    _assert_same(ours, theirs)


# ------------------------------------------------------------------ objective contract


def test_objective_metrics_hand_values():
  logp = np.log(np.array([[1.5, 1.0, 0.5], [1.0, 2.0, 9.0]], np.float32))
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  ref = logp - np.float32(0.5)
  fn = jax.jit(lambda lp, o, a, m, r: PRESETS['grpo'].objective(lp, o, a, m, ref_logp_BT=r))
  num, den, m = fn(logp, np.zeros((2, 3), np.float32), np.array([1.0, -1.0]), mask, ref)
  # Clipped: row 0 token 0 (A > 0, 1.5 > 1.2); row 1 token 1 (A < 0 ... ρ = 2 is not
  # clipped below, so only 1 of 5 tokens).
  np.testing.assert_allclose(m['clip_frac'], 1 / 5, rtol=1e-6)
  np.testing.assert_allclose(m['ratio_mean'], (1.5 + 1 + 0.5 + 1 + 2) / 5, rtol=1e-6)
  np.testing.assert_allclose(m['ratio_max'], 2.0, rtol=1e-6)
  np.testing.assert_allclose(m['kl'], np.exp(-0.5) - 1 + 0.5, rtol=1e-5)
  np.testing.assert_allclose(m['tokens'], 5.0)
  pg = ((-1.2 - 1.0 - 0.5) / 3 + (1.0 + 2.0) / 2) / 2
  np.testing.assert_allclose(m['pg_loss'], pg, rtol=1e-6)
  np.testing.assert_allclose(num / den, pg + 0.04 * (np.exp(-0.5) - 0.5), rtol=1e-5)


def test_kl_loss_term_requires_reference():
  with pytest.raises(ValueError, match='`ref_logp_BT`'):
    PRESETS['grpo'].objective(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros(1), jnp.ones((1, 2)))


@pytest.mark.parametrize('name', sorted(PRESETS))
def test_at_ratio_one_gradient_is_minus_adv_over_normaliser(name):
  preset = PRESETS[name].replace(kl_coef=0.0)
  logp, old, _, mask, adv = _batch(10, B=4, T=5)
  logp, old, mask, adv = (x.astype(np.float32) for x in (logp, old, mask, adv))
  _, grad = _ours(preset, old, old, adv, mask)
  n = mask.sum(1, keepdims=True)
  B, T = mask.shape
  norm = {
    'token-mean': mask.sum(),
    'seq-mean-token-mean': B * n,
    'seq-mean-token-sum': B,
    'seq-mean-token-sum-norm': (B if preset.rows_in_norm else 1) * (preset.max_len or T),
  }[preset.loss_agg_mode]
  if preset.policy_loss == 'ppo':
    expected = -adv[:, None] * mask / norm
  else:  # sequence ratio: the row's advantage spread over its tokens
    expected = -adv[:, None] * mask / n / B
  np.testing.assert_allclose(grad, expected, rtol=2e-5, atol=1e-7)


@settings(max_examples=8)
@given(
  name=st.sampled_from(sorted(n for n, p in PRESETS.items() if p.rows_in_norm)),
  split=st.integers(1, 4),
  seed=st.integers(0, 2**16),
)
def test_microbatch_accumulation_equals_full_batch(name, split, seed):
  preset = PRESETS[name].replace(max_len=12) if 'dr_grpo' in name else PRESETS[name]
  with jax.enable_x64(True):
    full = _batch(seed, B=5, T=6)
    logp, old, ref, mask, adv = full
    args = (logp, old, adv, mask, ref)
    out = _num_den_grad(preset)(args, [x[:split] for x in args], [x[split:] for x in args])
    (num, den, grad), *parts = jax.tree.map(np.asarray, out)
  num_acc, den_acc = sum(p[0] for p in parts), sum(p[1] for p in parts)
  np.testing.assert_allclose(num_acc / den_acc, num / den, rtol=1e-12)
  grad_acc = np.concatenate([p[2] for p in parts]) / den_acc
  np.testing.assert_allclose(grad_acc, grad / den, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize('name', sorted(PRESETS))
def test_padding_invariance_except_padded_width_presets(name):
  preset = PRESETS[name]
  logp, old, ref, mask, adv = (x.astype(np.float32) for x in _batch(11, B=4, T=5))
  pad = lambda x: np.pad(x, ((0, 0), (0, 3)), constant_values=-7.0)
  mask_p = np.pad(mask, ((0, 0), (0, 3)))
  out = _num_den_grad(preset)(
    (logp, old, adv, mask, ref), (pad(logp), pad(old), adv, mask_p, pad(ref))
  )
  (num, den, grad), (num_p, den_p, grad_p) = jax.tree.map(np.asarray, out)
  value, value_p, grad, grad_p = num / den, num_p / den_p, grad / den, grad_p / den_p
  divides_by_width = preset.loss_agg_mode == 'seq-mean-token-sum-norm' and preset.max_len is None
  scale = 5 / 8 if divides_by_width else 1.0
  np.testing.assert_allclose(value_p, value * scale, rtol=1e-6)
  np.testing.assert_allclose(grad_p[:, :5], grad * scale, rtol=1e-6, atol=1e-8)
  np.testing.assert_array_equal(grad_p[:, 5:], 0.0)


def test_objective_compiled_once():
  preset = PRESETS['dapo']

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(lp, o, a, m):
    num, den, metrics = preset.objective(lp, o, a, m)
    return num / den, metrics

  for seed in range(3):
    logp, old, _, mask, adv = (x.astype(np.float32) for x in _batch(seed))
    step(logp, old, adv, mask)


# ------------------------------------------------------------------ reward side, validation


def test_shape_rewards_overlong_and_kl_in_reward():
  preset = PRESETS['dapo'].replace(overlong_max_len=10, overlong_cache_len=4)
  out = preset.shape_rewards(jnp.array([1.0, 1.0, 0.0]), lengths_B=jnp.array([3, 8, 12]))
  np.testing.assert_allclose(out, [1.0, 0.5, -1.0], rtol=1e-6)
  preset = PRESETS['verl'].replace(kl_in_reward=True, kl_coef=0.5, kl_estimator='k1', kl_clamp=None)
  out = preset.shape_rewards(
    jnp.array([1.0]),
    sampling_logp_BT=jnp.array([[0.2, 0.4, 5.0]]),
    ref_logp_BT=jnp.zeros((1, 3)),
    mask_BT=jnp.array([[1, 1, 0]]),
  )
  np.testing.assert_allclose(out, [1.0 - 0.5 * 0.6], rtol=1e-6)
  with pytest.raises(ValueError, match='`lengths_B`'):
    PRESETS['dapo'].shape_rewards(jnp.ones(2))


@pytest.mark.parametrize(
  'changes, field',
  [
    (dict(normalize='z'), '`normalize`'),
    (dict(ddof=3), '`ddof`'),
    (dict(eps_low=-0.1), '`eps_low`'),
    (dict(eps_high=-0.1), '`eps_high`'),
    (dict(loss_agg_mode='sum'), '`loss_agg_mode`'),
    (dict(policy_loss='reinforce'), '`policy_loss`'),
    (dict(kl_estimator='k9'), '`kl_estimator`'),
    (dict(dual_clip=0.9), '`dual_clip`'),
    (dict(overlong_max_len=10), '`overlong_cache_len`'),
  ],
)
def test_bad_preset_fields_are_named(changes, field):
  with pytest.raises(ValueError, match=field):
    PRESETS['grpo'].replace(**changes)


def test_unknown_preset_name():
  with pytest.raises(ValueError, match="'nope'"):
    presets.get_preset('nope')
  assert presets.get_preset('dapo', eps_high=0.3).eps_high == 0.3
