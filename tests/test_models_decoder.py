"""The decoder: causality, padding, KV cache, scan/remat equivalence, presets and config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sharded_step import init_params
from flax import nnx

from grpo_jax.models import (
  Decoder,
  ModelConfig,
  init_cache,
  left_padded_positions,
  model_preset,
)

V = 61


def _model(**overrides):
  """A tiny model with seeded host-side weights (no init compilation)."""
  cfg = model_preset('tiny', vocab_size=V, **overrides)
  return nnx.merge(*init_params(cfg)), cfg


def _forward_logits(model, tokens_BT, valid_BT):
  @jax.jit
  def f(model, tokens_BT, valid_BT):
    hidden_BTD, _ = model(tokens_BT, left_padded_positions(valid_BT), valid_BT=valid_BT)
    return model.logits(hidden_BTD)

  return f(model, tokens_BT, valid_BT)


def test_tiny_preset_parameter_count_is_pinned():
  cfg = model_preset('tiny', vocab_size=V)
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # 2 blocks x (attn 64*16*8 + 4*16*64, mlp 3*64*128, 2 norms of 64) + 61*64 tied + final norm.
  assert n == cfg.num_params() == 2 * (8192 + 4096 + 24576 + 128) + 61 * 64 + 64


def test_gradient_of_position_t_wrt_later_tokens_is_exactly_zero():
  # Untied: with tied embeddings every row of the table also feeds the output projection.
  model, cfg = _model(qkv_bias=True, qk_norm=True, tie_embeddings=False)
  T, t = 8, 3
  tokens_1T = jnp.arange(1, T + 1)[None]  # distinct tokens: embedding row i+1 belongs to position i
  graphdef, params = nnx.split(model, nnx.Param)

  @jax.jit
  def grad_of_position_t(params):
    def f(params):
      m = nnx.merge(graphdef, params)
      hidden_BTD, _ = m(tokens_1T, jnp.arange(T)[None])
      return jnp.sum(m.logits(hidden_BTD)[:, t] ** 2)

    return jax.grad(f)(params)

  g_VD = np.asarray(grad_of_position_t(params)['embed_tokens']['embedding'][...])
  rows = np.abs(g_VD[1 : T + 1]).sum(-1)
  assert np.all(rows[t + 1 :] == 0.0)
  assert np.all(rows[: t + 1] > 0.0)


def test_left_padding_leaves_valid_positions_unchanged():
  model, _ = _model()
  tokens = jnp.array([[5, 9, 2, 7, 3]])
  padded = jnp.concatenate([jnp.array([[0, 0, 0]]), tokens], axis=1)
  valid = jnp.array([[False] * 3 + [True] * 5])
  full = _forward_logits(model, tokens, jnp.ones_like(tokens, bool))
  pad = _forward_logits(model, padded, valid)
  np.testing.assert_allclose(pad[:, 3:], full, atol=1e-5, rtol=1e-5)
  assert np.all(np.isfinite(pad))


@pytest.mark.parametrize('scan_layers', [False, True])
def test_cached_decode_equals_full_recompute(scan_layers):
  model, cfg = _model(qkv_bias=True, scan_layers=scan_layers)
  rng = np.random.default_rng(0)
  tokens_BT = jnp.asarray(rng.integers(0, V, (2, 9)))
  valid_BT = jnp.array([[True] * 9, [False, False] + [True] * 7])  # row 1 left-padded prompt
  P = 5  # prompt length; the rest is decoded one token at a time
  full = _forward_logits(model, tokens_BT, valid_BT)
  positions_BT = left_padded_positions(valid_BT)

  @jax.jit
  def step(model, cache, tokens, positions, valid, index):
    hidden, cache = model(tokens, positions, valid_BT=valid, cache=cache, cache_index=index)
    return model.logits(hidden), cache

  cache = init_cache(cfg, 2, 12)
  logits, cache = step(model, cache, tokens_BT[:, :P], positions_BT[:, :P], valid_BT[:, :P], 0)
  outs = [logits]
  for i in range(P, 9):
    s = slice(i, i + 1)
    logits, cache = step(model, cache, tokens_BT[:, s], positions_BT[:, s], valid_BT[:, s], i)
    outs.append(logits)
  cached = jnp.concatenate(outs, axis=1)
  valid = np.asarray(valid_BT)
  np.testing.assert_allclose(np.asarray(cached)[valid], np.asarray(full)[valid], atol=1e-5)
  np.testing.assert_array_equal(cache.valid_BS[:, :9], valid_BT)
  assert not cache.valid_BS[:, 9:].any()


def _stack_layers(model_unrolled, model_scanned):
  """Copies an unrolled model's parameters into a scan_layers model."""
  src = nnx.state(model_unrolled, nnx.Param)
  dst = nnx.state(model_scanned, nnx.Param)
  layers = [src['layers'][i] for i in range(len(model_unrolled.layers))]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  dst['layers'] = stacked
  for k in ('embed_tokens', 'norm'):
    dst[k] = src[k]
  nnx.update(model_scanned, dst)


def test_scan_and_remat_match_the_unrolled_model_and_gradients():
  plain, cfg = _model(qk_norm=True, tie_embeddings=False)
  scanned = nnx.eval_shape(
    lambda: Decoder(cfg.replace(scan_layers=True, remat=True), rngs=nnx.Rngs(1))
  )
  _stack_layers(plain, scanned)
  nnx.update(scanned.lm_head, nnx.state(plain.lm_head))
  tokens_BT = jnp.asarray(np.random.default_rng(1).integers(0, V, (2, 6)))
  positions_BT = jnp.broadcast_to(jnp.arange(6), (2, 6))

  def loss_and_grad(model):
    @jax.jit
    def f(model):
      def loss(model):
        hidden, _ = model(tokens_BT, positions_BT)
        return jnp.mean(jax.nn.log_softmax(model.logits(hidden))[..., 0])

      return nnx.value_and_grad(loss)(model)

    return f(model)

  l0, g0 = loss_and_grad(plain)
  l1, g1 = loss_and_grad(scanned)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  g0_q = jnp.stack([g0['layers'][i]['self_attn']['q_proj']['kernel'][...] for i in range(2)])
  np.testing.assert_allclose(g1['layers']['self_attn']['q_proj']['kernel'][...], g0_q, atol=1e-6)
  np.testing.assert_allclose(
    g1['embed_tokens']['embedding'][...], g0['embed_tokens']['embedding'][...], atol=1e-6
  )


def test_bfloat16_params_stay_bfloat16_and_track_float32():
  model32, cfg = _model()
  cfg16 = cfg.replace(param_dtype='bfloat16', dtype='bfloat16')
  model16 = nnx.eval_shape(lambda: Decoder(cfg16, rngs=nnx.Rngs(0)))
  nnx.update(model16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(model32)))
  assert {x.dtype for x in jax.tree.leaves(nnx.state(model16, nnx.Param))} == {
    jnp.dtype(jnp.bfloat16)
  }
  tokens = jnp.array([[3, 1, 4, 1, 5, 9]])
  valid = jnp.ones_like(tokens, bool)
  l16 = _forward_logits(model16, tokens, valid)
  l32 = _forward_logits(model32, tokens, valid)
  assert l16.dtype == jnp.float32
  # bf16 keeps 8 mantissa bits (relative rounding 2**-9 per op); through two blocks the logits
  # stay within a few percent of their largest magnitude.
  scale = float(jnp.abs(l32).max())
  np.testing.assert_allclose(l16, l32, atol=0.05 * scale)
  assert float(jnp.abs(l16 - l32).max()) > 0  # the bf16 path really computed in bf16


@pytest.mark.parametrize(
  'fields, match',
  [
    (dict(n_kv_heads=3), 'multiple of n_kv_heads'),
    (dict(d_model=0), 'd_model'),
    (dict(param_dtype='float64'), 'param_dtype'),
    (dict(rope_scaling=(('rope_type', 'yarn'),)), 'yarn'),
  ],
)
def test_config_rejects_bad_fields(fields, match):
  with pytest.raises(ValueError, match=match):
    model_preset('tiny', vocab_size=V, **fields)


def test_preset_needs_vocab_and_known_name():
  with pytest.raises(ValueError, match='vocab_size'):
    model_preset('tiny')
  with pytest.raises(ValueError, match='unknown model preset'):
    model_preset('huge', vocab_size=V)
  assert isinstance(model_preset('small', vocab_size=V), ModelConfig)


def test_left_padded_positions_are_pinned():
  valid = jnp.array([[False, False, True, True, True], [True, True, True, True, True]])
  np.testing.assert_array_equal(left_padded_positions(valid), [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]])


def test_cache_overflow_and_missing_index_are_errors():
  model, cfg = _model()
  cache = init_cache(cfg, 1, 4)
  tokens, positions = jnp.zeros((1, 3), jnp.int32), jnp.arange(3)[None]
  with pytest.raises(ValueError, match='overflows the 4-slot cache'):
    model(tokens, positions, cache=cache, cache_index=2)
  with pytest.raises(ValueError, match='needs cache_index'):
    model(tokens, positions, cache=cache)
