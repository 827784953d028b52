"""Tests of the KV-cache sampler against full recomputes of the decoder and numpy references."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from grpo_jax import sampling
from grpo_jax.models import Decoder, left_padded_positions, model_preset
from grpo_jax.sampling import SamplerConfig, filter_logits, sample, sample_keys
from grpo_jax.sharding import make_mesh, shard_model

VOCAB = 48
N_NEW = 12
PAD = 0


@pytest.fixture(scope='module')
def model():
  """A tiny random decoder whose next-token distributions depend on the context."""
  cfg = model_preset('tiny', vocab_size=VOCAB, tie_embeddings=False)
  graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
  # At the init scale (std 0.02) every next-token distribution is almost uniform. Larger
  # matrices give peaked, context-dependent distributions, so top-k/top-p and EOS matter.
  decoder = nnx.merge(graphdef, jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, state))
  decoder.lm_head.kernel[...] = decoder.lm_head.kernel[...] * 4.0
  return decoder


def _prompts(rows: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token lists to `width` columns."""
  tokens = np.full((len(rows), width), PAD, np.int32)
  valid = np.zeros((len(rows), width), bool)
  for b, row in enumerate(rows):
    tokens[b, width - len(row) :] = row
    valid[b, width - len(row) :] = True
  return tokens, valid


PROMPTS = [[5, 6, 7], [3, 4, 5, 6, 7], [9], [10, 11, 12, 13]]
# Most tests share these shapes and one of a few configs, so the sampler compiles only a few
# programs (temperature and top-p are runtime values).
ROWS = PROMPTS * 2
WIDTH = 6
ROW_IDS = dict(prompt_ids=[0, 1, 2, 3] * 2, sample_ids=[0] * 4 + [1] * 4)
EOS_IDS = (1, 2, 3, 4)
SAMPLED = SamplerConfig(max_new_tokens=N_NEW, eos_token_ids=EOS_IDS, pad_token_id=PAD)
GREEDY = SamplerConfig(max_new_tokens=N_NEW, pad_token_id=PAD, temperature=0.0)


def _run(model, rows, width, config, *, prompt_ids=None, sample_ids=None, step=0, seed=0):
  tokens, valid = _prompts(rows, width)
  batch = len(rows)
  return sample(
    model,
    tokens,
    valid,
    key=jax.random.key(seed),
    step=step,
    prompt_ids_B=np.arange(batch) if prompt_ids is None else np.asarray(prompt_ids),
    sample_ids_B=np.zeros(batch, np.int32) if sample_ids is None else np.asarray(sample_ids),
    config=config,
  )


@jax.jit
def _full_logits(graphdef, state, tokens_BT, valid_BT):
  """Logits of every position with no cache: the whole prefix recomputed."""
  decoder = nnx.merge(graphdef, state)
  hidden_BTD, _ = decoder(tokens_BT, left_padded_positions(valid_BT), valid_BT=valid_BT)
  return decoder.logits(hidden_BTD)


def _recompute_completion_logits(model, rows, width, out) -> np.ndarray:
  """logits_BNV predicting completion token n from prompt + completion[:n], no cache."""
  tokens, valid = _prompts(rows, width)
  seq = np.concatenate([tokens, np.asarray(out.tokens_BN)], axis=1)
  seq_valid = np.concatenate([valid, np.asarray(out.completion_mask_BN)], axis=1)
  logits = _full_logits(*nnx.split(model), jnp.asarray(seq), jnp.asarray(seq_valid))
  return np.asarray(logits)[:, width - 1 : width - 1 + out.tokens_BN.shape[1]]


def _log_softmax_np(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _at_tokens(values_BNV, tokens_BN) -> np.ndarray:
  return np.take_along_axis(values_BNV, np.asarray(tokens_BN)[..., None], -1)[..., 0]


def _support_np(scaled_V, top_k, top_p) -> np.ndarray:
  """Reference top-k then top-p support (float64, explicit loop over the sorted order)."""
  scaled_V = np.asarray(scaled_V, np.float64)
  keep = np.ones(scaled_V.shape, bool)
  if 0 < top_k < scaled_V.size:
    kth = np.sort(scaled_V)[::-1][top_k - 1]
    keep &= scaled_V >= kth
  if top_p < 1.0:
    probs = np.where(keep, np.exp(scaled_V - scaled_V.max()), 0.0)
    probs /= probs.sum()
    mass, threshold = 0.0, np.inf
    for v in np.argsort(-scaled_V, kind='stable'):
      if not keep[v] or mass >= top_p:
        break
      threshold = scaled_V[v]
      mass += probs[v]
    keep &= scaled_V >= threshold
  return keep


def _first_eos_mask(tokens_BN, eos_ids) -> np.ndarray:
  """Reference completion mask: every token up to and including the first EOS."""
  mask = np.ones(tokens_BN.shape, bool)
  for b, row in enumerate(np.asarray(tokens_BN)):
    hits = np.flatnonzero(np.isin(row, eos_ids))
    if hits.size:
      mask[b, hits[0] + 1 :] = False
  return mask


def test_cached_decode_logprobs_equal_full_recompute(model):
  out = _run(model, ROWS, WIDTH, SAMPLED, **ROW_IDS, seed=3)
  mask = np.asarray(out.completion_mask_BN)
  logits = _recompute_completion_logits(model, ROWS, WIDTH, out)
  ref = _at_tokens(_log_softmax_np(logits), out.tokens_BN)
  np.testing.assert_allclose(np.asarray(out.logp_BN)[mask], ref[mask], atol=1e-5)
  # No truncation: the sampling distribution is the plain softmax.
  np.testing.assert_allclose(out.logp_sampling_BN, out.logp_BN, atol=1e-6)
  # The seed gives both finished and running rows, so the masks are exercised.
  assert mask.all(axis=1).any() and not mask.all()


def test_greedy_equals_argmax_of_full_recompute(model):
  # temperature 0, and the explicit flag (logp_BN then at the given temperature).
  for config in (GREEDY, dataclasses.replace(GREEDY, temperature=0.8, greedy=True)):
    out = _run(model, PROMPTS, WIDTH, config)
    logits = _recompute_completion_logits(model, PROMPTS, WIDTH, out)
    np.testing.assert_array_equal(out.tokens_BN, logits.argmax(-1))
    ref = _at_tokens(_log_softmax_np(logits / config.logp_temperature), out.tokens_BN)
    np.testing.assert_allclose(out.logp_BN, ref, atol=1e-5)
    # A point mass: the sampled token has probability 1 under the sampling distribution.
    np.testing.assert_array_equal(out.logp_sampling_BN, 0.0)


def test_batch_composition_and_padding_do_not_change_samples(model):
  ref = _run(model, ROWS, WIDTH, SAMPLED, **ROW_IDS, step=7)
  # Rows 1 and 4 of ROWS (prompt, sample) = (1, 0) and (0, 1) among other rows, reordered,
  # in a smaller batch with more left padding.
  rows = [[20, 21], PROMPTS[1], [30, 31, 32, 33, 34, 35, 36], PROMPTS[0], [40]]
  mixed = _run(
    model, rows, 8, SAMPLED, prompt_ids=[99, 1, 98, 0, 97], sample_ids=[0, 0, 2, 1, 3], step=7
  )
  for r, m in ((1, 1), (4, 3)):
    np.testing.assert_array_equal(ref.tokens_BN[r], mixed.tokens_BN[m])
    np.testing.assert_array_equal(ref.completion_mask_BN[r], mixed.completion_mask_BN[m])
    np.testing.assert_allclose(ref.logp_BN[r], mixed.logp_BN[m], atol=1e-5)
    np.testing.assert_allclose(ref.logp_sampling_BN[r], mixed.logp_sampling_BN[m], atol=1e-5)
  # The two rows differ (different prompts) so a row mix-up could not pass.
  assert not np.array_equal(ref.tokens_BN[1], ref.tokens_BN[4])


def test_keys_fold_in_step_prompt_and_sample_index():
  key = jax.random.key(0)
  keys = sample_keys(key, 3, jnp.array([4, 4, 5]), jnp.array([0, 1, 0]))
  expected = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 3), 4), 1)
  np.testing.assert_array_equal(jax.random.key_data(keys[1]), jax.random.key_data(expected))
  data = np.asarray(jax.random.key_data(keys))
  assert len({row.tobytes() for row in data}) == 3


def test_group_samples_differ_and_repeat_exactly(model):
  rows, ids = [PROMPTS[1]] * 8, dict(prompt_ids=[7] * 8, sample_ids=range(8))
  out = _run(model, rows, WIDTH, SAMPLED, **ids)
  again = _run(model, rows, WIDTH, SAMPLED, **ids)
  np.testing.assert_array_equal(out.tokens_BN, again.tokens_BN)
  assert len({tuple(row) for row in np.asarray(out.tokens_BN)}) == 8
  next_step = _run(model, rows, WIDTH, SAMPLED, **ids, step=1)
  assert not np.array_equal(out.tokens_BN, next_step.tokens_BN)


def test_rows_stop_at_eos_with_masks_lengths_and_padding(model):
  free = _run(model, PROMPTS, WIDTH, GREEDY)
  free_tokens = np.asarray(free.tokens_BN)
  # EOS := a token that row 0 first emits mid-way, at position n, so row 0 must stop there.
  fresh = [n for n in range(2, N_NEW - 1) if free_tokens[0, n] not in free_tokens[0, :n]]
  assert fresh, 'the fixture model should emit a new token mid-way through row 0'
  n = fresh[0]
  eos = int(free_tokens[0, n])
  stopped = _run(model, PROMPTS, WIDTH, dataclasses.replace(GREEDY, eos_token_ids=(eos,)))
  mask = _first_eos_mask(free_tokens, [eos])
  assert mask[0].sum() == n + 1
  np.testing.assert_array_equal(stopped.completion_mask_BN, mask)
  np.testing.assert_array_equal(stopped.tokens_BN, np.where(mask, free_tokens, PAD))
  np.testing.assert_array_equal(stopped.lengths_B, mask.sum(1))
  np.testing.assert_array_equal(stopped.truncated_B, ~np.isin(free_tokens, [eos]).any(1))
  np.testing.assert_allclose(stopped.logp_BN, np.where(mask, free.logp_BN, 0.0), atol=1e-6)


def test_sampled_rows_mask_everything_after_first_eos(model):
  config = dataclasses.replace(SAMPLED, temperature=1.5)
  out = _run(model, ROWS, WIDTH, config, **ROW_IDS)
  tokens = np.asarray(out.tokens_BN)
  mask = _first_eos_mask(tokens, EOS_IDS)
  np.testing.assert_array_equal(out.completion_mask_BN, mask)
  np.testing.assert_array_equal(tokens[~mask], PAD)
  np.testing.assert_array_equal(np.asarray(out.logp_BN)[~mask], 0.0)
  np.testing.assert_array_equal(np.asarray(out.logp_sampling_BN)[~mask], 0.0)
  assert np.all(np.asarray(out.logp_BN)[mask] < 0.0)
  np.testing.assert_array_equal(out.lengths_B, mask.sum(1))
  np.testing.assert_array_equal(out.truncated_B, ~(np.isin(tokens, EOS_IDS) & mask).any(1))
  assert (~mask).any() and np.asarray(out.truncated_B).any()


def test_truncated_flag_without_eos_and_with_eos_on_the_last_token(model):
  free = _run(model, PROMPTS, WIDTH, GREEDY)
  np.testing.assert_array_equal(free.truncated_B, True)
  np.testing.assert_array_equal(free.lengths_B, N_NEW)
  np.testing.assert_array_equal(free.completion_mask_BN, True)
  # Find a row whose first EOS is the last allowed token: it is complete, not truncated.
  for seed in range(40):
    out = _run(model, ROWS, WIDTH, SAMPLED, **ROW_IDS, seed=seed)
    tokens = np.asarray(out.tokens_BN)
    last = np.isin(tokens[:, -1], EOS_IDS) & ~np.isin(tokens[:, :-1], EOS_IDS).any(1)
    if last.any():
      break
  assert last.any(), 'no seed ended a row with EOS on its last token'
  np.testing.assert_array_equal(np.asarray(out.truncated_B)[last], False)
  np.testing.assert_array_equal(np.asarray(out.lengths_B)[last], N_NEW)
  np.testing.assert_array_equal(np.asarray(out.completion_mask_BN)[last], True)


_filter_jit = jax.jit(filter_logits, static_argnames=('top_k', 'top_p'))


def test_filter_logits_pinned_values():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  probs = lambda x: np.asarray(jax.nn.softmax(x, axis=-1))
  np.testing.assert_allclose(
    probs(_filter_jit(logits, top_p=0.7)), [[0.625, 0.375, 0.0, 0.0]], atol=1e-6
  )
  np.testing.assert_allclose(
    probs(_filter_jit(logits, top_k=2)), [[0.625, 0.375, 0.0, 0.0]], atol=1e-6
  )
  # top-p acts on the top-k renormalised mass: [.5, .3, .15] / .95 -> 0.842 < 0.9 before
  # the third token, which is kept.
  np.testing.assert_allclose(
    probs(_filter_jit(logits, top_k=3, top_p=0.9)),
    [[0.5, 0.3, 0.15, 0.0]] / np.float32(0.95),
    atol=1e-6,
  )
  # Ties with the last kept token are kept.
  tied = jnp.array([[2.0, 1.0, 1.0, 0.0]])
  np.testing.assert_array_equal(
    np.isfinite(_filter_jit(tied, top_k=2)), [[True, True, True, False]]
  )


@pytest.mark.parametrize('top_k, top_p', [(5, 1.0), (0, 0.6), (8, 0.75)])
def test_filter_logits_matches_numpy_reference(top_k, top_p):
  rng = np.random.default_rng(top_k)
  for _ in range(3):
    logits = rng.normal(size=(16, 40)).astype(np.float32) * 2.0
    got = np.asarray(_filter_jit(logits, top_k=top_k, top_p=top_p))
    want = np.stack([_support_np(row, top_k, top_p) for row in logits])
    np.testing.assert_array_equal(np.isfinite(got), want)
    np.testing.assert_array_equal(got[want], logits[want])


def test_sampled_tokens_stay_in_nucleus_and_logps_match_reference(model):
  config = SamplerConfig(
    max_new_tokens=N_NEW, pad_token_id=PAD, temperature=0.7, top_k=12, top_p=0.8
  )
  out = _run(model, ROWS, WIDTH, config, **ROW_IDS)
  logits = _recompute_completion_logits(model, ROWS, WIDTH, out) / config.temperature
  tokens = np.asarray(out.tokens_BN)
  logp_ref = _log_softmax_np(logits)
  support = np.zeros(logits.shape, bool)
  for b in range(logits.shape[0]):
    for n in range(logits.shape[1]):
      support[b, n] = _support_np(logits[b, n], config.top_k, config.top_p)
  assert _at_tokens(support, tokens).all()
  # The truncation removes mass somewhere, otherwise the checks below would be vacuous.
  assert (support.sum(-1) < config.top_k).any()
  logp_tok = _at_tokens(logp_ref, tokens)
  # Renormalised over the support: log q(tok) = log p(tok) - log sum_{support} p.
  kept_mass = np.where(support, np.exp(logp_ref), 0.0).sum(-1)
  np.testing.assert_allclose(out.logp_BN, logp_tok, atol=1e-5)
  np.testing.assert_allclose(out.logp_sampling_BN, logp_tok - np.log(kept_mass), atol=1e-5)


def test_new_temperature_top_p_step_and_key_do_not_recompile(model):
  base = SamplerConfig(max_new_tokens=N_NEW, pad_token_id=PAD, temperature=0.7, top_k=12, top_p=0.8)
  first = _run(model, ROWS, WIDTH, base, **ROW_IDS)
  before = sampling._sample_jit._cache_size()
  hotter = _run(
    model, ROWS, WIDTH, dataclasses.replace(base, temperature=1.3, top_p=0.95), **ROW_IDS
  )
  # Same keys, new values: the run used them rather than the ones first compiled.
  assert not np.allclose(hotter.logp_BN, first.logp_BN)
  _run(model, ROWS, WIDTH, base, **ROW_IDS, step=5, seed=1)
  assert sampling._sample_jit._cache_size() == before


def test_sharded_sampling_equals_single_device(model):
  single = _run(model, ROWS, WIDTH, SAMPLED, **ROW_IDS)
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  sharded_model = shard_model(nnx.clone(model), mesh)
  with jax.set_mesh(mesh):
    sharded = _run(sharded_model, ROWS, WIDTH, SAMPLED, **ROW_IDS)
  np.testing.assert_array_equal(sharded.tokens_BN, single.tokens_BN)
  np.testing.assert_allclose(sharded.logp_BN, single.logp_BN, atol=1e-5)


@pytest.mark.parametrize(
  'tokens, valid, match',
  [
    ([[1, 2, 0]], [[True, True, False]], 'not left-padded'),
    ([[0, 0]], [[False, False]], 'no valid prompt token'),
    ([[1, 2]], [[True]], 'prompt_valid_BP'),
    ([1, 2], [True, True], r'\[batch, prompt_len\]'),
  ],
)
def test_bad_prompts_raise_naming_the_argument(model, tokens, valid, match):
  config = SamplerConfig(max_new_tokens=2)
  batch = np.asarray(tokens).shape[0] if np.asarray(tokens).ndim == 2 else 1
  with pytest.raises(ValueError, match=match):
    sample(
      model,
      np.asarray(tokens, np.int32),
      np.asarray(valid, bool),
      key=jax.random.key(0),
      step=0,
      prompt_ids_B=np.arange(batch),
      sample_ids_B=np.zeros(batch, np.int32),
      config=config,
    )


@pytest.mark.parametrize(
  'field, value',
  [('max_new_tokens', 0), ('temperature', -1.0), ('top_k', -2), ('top_p', 0.0), ('top_p', 1.5)],
)
def test_bad_config_raises_naming_the_field(field, value):
  kwargs = {'max_new_tokens': 4, field: value}
  with pytest.raises(ValueError, match=f'SamplerConfig.{field}'):
    SamplerConfig(**kwargs)


def test_sampling_under_x64_gives_the_same_tokens(model):
  # Cache and buffer indices keep one integer dtype when jax_enable_x64 is on (a notebook or
  # a float64 analysis may have turned it on).
  expected = _run(model, PROMPTS, WIDTH, GREEDY)
  with jax.enable_x64(True):
    out = _run(model, PROMPTS, WIDTH, GREEDY)
  np.testing.assert_array_equal(out.tokens_BN, expected.tokens_BN)
