"""The decoder-only transformer shared by the Llama 3.x, Qwen2/2.5 and Qwen3 families.

Shape vocabulary (suffixes of array names and einsum letters): B batch, T time (new tokens),
S cache slots, D model width, H heads, N key/value heads, G query heads per key/value head,
K head dim, F MLP hidden width, V vocab, L layers.

Parameter paths mirror the Hugging Face module names so that a path reads like the tensor it
loads from: `embed_tokens.embedding` [V, D]; per block `layers.<i>.` (or `layers.` with a leading
L axis when `scan_layers`) `input_layernorm.scale`, `self_attn.{q,k,v}_proj.kernel` [D, H|N, K]
(+ `.bias` [H|N, K] with `qkv_bias`), `self_attn.o_proj.kernel` [H, K, D],
`self_attn.{q,k}_norm.scale` [K] (with `qk_norm`), `post_attention_layernorm.scale`,
`mlp.{gate,up}_proj.kernel` [D, F], `mlp.down_proj.kernel` [F, D]; then `norm.scale` and, when
embeddings are untied, `lm_head.kernel` [D, V]. `grpo_jax.models.views` maps these to the
Hugging Face `[out, in]` matrices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from grpo_jax.models.config import ModelConfig
from grpo_jax.sharding import BATCH_AXES, constrain, param_shardings

# Large but finite, so a fully masked row (a left-padding query) gives no NaN; its
# probabilities are then zeroed explicitly.
_MASK_VALUE = -1e30
_INIT_STD = 0.02  # Hugging Face `initializer_range` for Llama/Qwen.


@struct.dataclass
class KVCache:
  """Static-size key/value cache for all layers.

  Attributes:
    k_LBSNK: cached keys, slot j of row b at `[:, b, j]`.
    v_LBSNK: cached values.
    valid_BS: True where slot j of row b holds a real (non-padding) token.
  """

  k_LBSNK: jax.Array
  v_LBSNK: jax.Array
  valid_BS: jax.Array

  @property
  def max_len(self) -> int:
    return self.valid_BS.shape[1]


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache of `max_len` slots for `batch` rows; keys/values in `dtype` (cfg.dtype)."""
  dtype = cfg.jnp_dtype if dtype is None else dtype
  shape = (cfg.n_layers, batch, max_len, cfg.n_kv_heads, cfg.head_dim)
  return KVCache(
    k_LBSNK=jnp.zeros(shape, dtype),
    v_LBSNK=jnp.zeros(shape, dtype),
    valid_BS=jnp.zeros((batch, max_len), bool),
  )


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """RoPE inverse frequencies [K/2] (float32), with Llama-3 frequency scaling when configured.

  Llama 3.1 scaling: wavelengths longer than `original_max_position_embeddings /
  low_freq_factor` are divided by `factor`, shorter than `... / high_freq_factor` kept, and the
  band between interpolated smoothly.
  """
  K = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, K, 2, dtype=np.float32) / K))
  inv_freq = inv_freq.astype(np.float32)
  scaling = cfg.rope_scaling_dict
  if scaling is None or scaling['rope_type'] == 'default':
    return inv_freq
  factor = float(scaling['factor'])
  low, high = float(scaling['low_freq_factor']), float(scaling['high_freq_factor'])
  old_len = float(scaling['original_max_position_embeddings'])
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def _rotate(x_BTHK, cos_BTK, sin_BTK):
  """RoPE in the Hugging Face (half-split, not interleaved) layout, computed in float32."""
  x = x_BTHK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  out = x * cos_BTK[:, :, None] + rotated * sin_BTK[:, :, None]
  return out.astype(x_BTHK.dtype)


def _normal(rngs: nnx.Rngs, shape, dtype):
  return nnx.Param(_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype))


class RMSNorm(nnx.Module):
  """Root-mean-square norm; statistics in float32 (as Llama/Qwen)."""

  def __init__(self, dim: int, *, eps: float, param_dtype):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


class Projection(nnx.Module):
  """A linear map whose kernel is `in_shape + out_shape` (contracting the trailing input dims)."""

  def __init__(self, in_shape, out_shape, *, bias: bool, param_dtype, rngs: nnx.Rngs):
    self.kernel = _normal(rngs, (*in_shape, *out_shape), param_dtype)
    self.bias = nnx.Param(jnp.zeros(out_shape, param_dtype)) if bias else None
    self.n_in = len(in_shape)

  def __call__(self, x):
    n = self.n_in
    kernel = self.kernel[...].astype(x.dtype)
    y = jnp.tensordot(x, kernel, axes=(tuple(range(x.ndim - n, x.ndim)), tuple(range(n))))
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE, optional q/k/v bias and q/k RMSNorm."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    D, H, N, K, pd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.jnp_param_dtype
    self.q_proj = Projection((D,), (H, K), bias=cfg.qkv_bias, param_dtype=pd, rngs=rngs)
    self.k_proj = Projection((D,), (N, K), bias=cfg.qkv_bias, param_dtype=pd, rngs=rngs)
    self.v_proj = Projection((D,), (N, K), bias=cfg.qkv_bias, param_dtype=pd, rngs=rngs)
    self.o_proj = Projection((H, K), (D,), bias=False, param_dtype=pd, rngs=rngs)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(K, eps=cfg.rms_eps, param_dtype=pd)
      self.k_norm = RMSNorm(K, eps=cfg.rms_eps, param_dtype=pd)
    else:
      self.q_norm = self.k_norm = None
    self.n_kv_heads = N

  def __call__(self, x_BTD, cos_BTK, sin_BTK, mask_BTS, kv=None, cache_index=None):
    q_BTHK = constrain(self.q_proj(x_BTD), (BATCH_AXES, None, 'tensor', None))
    k_BTNK = constrain(self.k_proj(x_BTD), (BATCH_AXES, None, 'tensor', None))
    v_BTNK = constrain(self.v_proj(x_BTD), (BATCH_AXES, None, 'tensor', None))
    if self.q_norm is not None:
      q_BTHK, k_BTNK = self.q_norm(q_BTHK), self.k_norm(k_BTNK)
    q_BTHK = _rotate(q_BTHK, cos_BTK, sin_BTK)
    k_BTNK = _rotate(k_BTNK, cos_BTK, sin_BTK)
    if kv is None:
      k_BSNK, v_BSNK = k_BTNK, v_BTNK
    else:
      k_BSNK, v_BSNK = kv
      zero = jnp.zeros_like(cache_index)  # same index dtype, also under jax_enable_x64
      start = (zero, cache_index, zero, zero)
      k_BSNK = jax.lax.dynamic_update_slice(k_BSNK, k_BTNK.astype(k_BSNK.dtype), start)
      v_BSNK = jax.lax.dynamic_update_slice(v_BSNK, v_BTNK.astype(v_BSNK.dtype), start)
      kv = (k_BSNK, v_BSNK)
    B, T, H, K = q_BTHK.shape
    N = self.n_kv_heads
    q_BTNGK = q_BTHK.reshape(B, T, N, H // N, K)
    scores_BNGTS = jnp.einsum(
      'BTNGK,BSNK->BNGTS', q_BTNGK, k_BSNK.astype(q_BTHK.dtype), preferred_element_type=jnp.float32
    ) * (K**-0.5)
    mask = mask_BTS[:, None, None]
    scores_BNGTS = jnp.where(mask, scores_BNGTS, _MASK_VALUE)
    probs_BNGTS = jax.nn.softmax(scores_BNGTS, axis=-1) * mask
    out_BTNGK = jnp.einsum(
      'BNGTS,BSNK->BTNGK', probs_BNGTS.astype(x_BTD.dtype), v_BSNK.astype(x_BTD.dtype)
    )
    out_BTHK = constrain(out_BTNGK.reshape(B, T, H, K), (BATCH_AXES, None, 'tensor', None))
    return self.o_proj(out_BTHK), kv


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    D, F, pd = cfg.d_model, cfg.d_ff, cfg.jnp_param_dtype
    self.gate_proj = Projection((D,), (F,), bias=False, param_dtype=pd, rngs=rngs)
    self.up_proj = Projection((D,), (F,), bias=False, param_dtype=pd, rngs=rngs)
    self.down_proj = Projection((F,), (D,), bias=False, param_dtype=pd, rngs=rngs)

  def __call__(self, x_BTD):
    h_BTF = jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD)
    return self.down_proj(constrain(h_BTF, (BATCH_AXES, None, 'tensor')))


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = cfg.jnp_param_dtype
    self.input_layernorm = RMSNorm(cfg.d_model, eps=cfg.rms_eps, param_dtype=pd)
    self.self_attn = Attention(cfg, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.d_model, eps=cfg.rms_eps, param_dtype=pd)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_BTD, cos_BTK, sin_BTK, mask_BTS, kv=None, cache_index=None):
    h_BTD, kv = self.self_attn(
      self.input_layernorm(x_BTD), cos_BTK, sin_BTK, mask_BTS, kv=kv, cache_index=cache_index
    )
    x_BTD = constrain(x_BTD + h_BTD, (BATCH_AXES, None, None))
    x_BTD = x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))
    return constrain(x_BTD, (BATCH_AXES, None, None)), kv


class Embed(nnx.Module):
  """Token embedding table [V, D]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.embedding = _normal(rngs, (cfg.vocab_size, cfg.d_model), cfg.jnp_param_dtype)

  def __call__(self, tokens_BT, dtype):
    # Gather from a table split over the vocabulary only (fsdp all-gathers D first, as for
    # every ZeRO-3 weight); a D-split table would make the partitioner replicate the gather.
    table_VD = constrain(self.embedding[...], ('tensor', None))
    return jnp.take(table_VD, tokens_BT, axis=0).astype(dtype)


class LMHead(nnx.Module):
  """Untied output projection [D, V]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.kernel = _normal(rngs, (cfg.d_model, cfg.vocab_size), cfg.jnp_param_dtype)


class Decoder(nnx.Module):
  """Decoder-only LM returning final-norm hidden states; see `logits` and `output_weights`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed_tokens = Embed(cfg, rngs=rngs)
    if cfg.scan_layers:

      @nnx.split_rngs(splits=cfg.n_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=cfg.n_layers)
      def stacked(rngs):
        return Block(cfg, rngs=rngs)

      self.layers = stacked(rngs)
    else:
      self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.norm = RMSNorm(cfg.d_model, eps=cfg.rms_eps, param_dtype=cfg.jnp_param_dtype)
    self.lm_head = None if cfg.tie_embeddings else LMHead(cfg, rngs=rngs)

  def __call__(
    self,
    tokens_BT: jax.Array,
    positions_BT: jax.Array,
    *,
    valid_BT: jax.Array | None = None,
    cache: KVCache | None = None,
    cache_index: jax.Array | int | None = None,
  ) -> tuple[jax.Array, KVCache | None]:
    """Runs the decoder.

    Args:
      tokens_BT: int token ids.
      positions_BT: RoPE positions; for left-padded rows `max(cumsum(valid_BT) - 1, 0)`.
      valid_BT: False marks padding, which no query attends to (default: all valid).
      cache: a `KVCache` of S slots; the T new keys/values are written at slots
        `[cache_index, cache_index + T)` and a query at slot `cache_index + t` attends slots
        `j <= cache_index + t` holding valid tokens.
      cache_index: int scalar (may be traced) first slot to write; required with `cache`.
        A Python int must leave room for the T new tokens; a traced index is the caller's
        responsibility (an overflowing write is clamped by `dynamic_update_slice`).

    Returns:
      (hidden_BTD after the final norm, updated cache or None).
    """
    cfg = self.cfg
    B, T = tokens_BT.shape
    if positions_BT.shape != (B, T):
      raise ValueError(f'positions_BT has shape {positions_BT.shape}, expected {(B, T)}')
    if valid_BT is None:
      valid_BT = jnp.ones((B, T), bool)
    elif valid_BT.shape != (B, T):
      raise ValueError(f'valid_BT has shape {valid_BT.shape}, expected {(B, T)}')
    valid_BT = valid_BT.astype(bool)
    if cache is None:
      if cache_index is not None:
        raise ValueError('cache_index was given without a cache')
      causal_TT = jnp.tril(jnp.ones((T, T), bool))
      mask_BTS = causal_TT[None] & valid_BT[:, None, :]
    else:
      if cache_index is None:
        raise ValueError('a cache needs cache_index (the first slot to write)')
      if cache.valid_BS.shape[0] != B:
        raise ValueError(f'cache holds {cache.valid_BS.shape[0]} rows but tokens_BT has {B}')
      S = cache.valid_BS.shape[1]
      if isinstance(cache_index, int) and not 0 <= cache_index <= S - T:
        # A traced index cannot be checked here; dynamic_update_slice would clamp it.
        raise ValueError(f'cache_index={cache_index} + {T} new tokens overflows the {S}-slot cache')
      cache_index = jnp.asarray(cache_index, jnp.int32)
      valid_BS = jax.lax.dynamic_update_slice(
        cache.valid_BS, valid_BT, (jnp.zeros_like(cache_index), cache_index)
      )
      slot_T = cache_index + jnp.arange(T)
      mask_BTS = (jnp.arange(S)[None, :] <= slot_T[:, None])[None] & valid_BS[:, None, :]

    angles_BTk = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(cfg))
    angles_BTK = jnp.concatenate([angles_BTk, angles_BTk], axis=-1)
    cos_BTK, sin_BTK = jnp.cos(angles_BTK), jnp.sin(angles_BTK)

    x_BTD = constrain(self.embed_tokens(tokens_BT, cfg.jnp_dtype), (BATCH_AXES, None, None))

    def run_block(graphdef, state, x_BTD, kv):
      block = nnx.merge(graphdef, state)
      return block(x_BTD, cos_BTK, sin_BTK, mask_BTS, kv=kv, cache_index=cache_index)

    if cfg.remat:
      run_block = jax.checkpoint(run_block, static_argnums=(0,))

    if cfg.scan_layers:
      graphdef, state = nnx.split(self.layers)

      def body(x_BTD, xs):
        layer_state, kv = xs
        x_BTD, kv = run_block(graphdef, layer_state, x_BTD, kv)
        return x_BTD, kv

      kv_all = None if cache is None else (cache.k_LBSNK, cache.v_LBSNK)
      x_BTD, kv_all = jax.lax.scan(body, x_BTD, (state, kv_all))
    else:
      new_k, new_v = [], []
      for i, layer in enumerate(self.layers):
        graphdef, state = nnx.split(layer)
        kv = None if cache is None else (cache.k_LBSNK[i], cache.v_LBSNK[i])
        x_BTD, kv = run_block(graphdef, state, x_BTD, kv)
        if kv is not None:
          new_k.append(kv[0])
          new_v.append(kv[1])
      kv_all = None if cache is None else (jnp.stack(new_k), jnp.stack(new_v))

    hidden_BTD = self.norm(x_BTD)
    if cache is not None:
      cache = KVCache(k_LBSNK=kv_all[0], v_LBSNK=kv_all[1], valid_BS=valid_BS)
    return hidden_BTD, cache

  def output_weights(self) -> jax.Array:
    """The output projection w_DV (the transposed embedding table when tied)."""
    if self.lm_head is None:
      return self.embed_tokens.embedding[...].T
    return self.lm_head.kernel[...]

  def logits(self, hidden_BTD: jax.Array) -> jax.Array:
    """float32 logits_BTV = hidden_BTD @ w_DV."""
    w_DV = self.output_weights()
    return jnp.einsum(
      'BTD,DV->BTV', hidden_BTD.astype(w_DV.dtype), w_DV, preferred_element_type=jnp.float32
    )


def left_padded_positions(valid_BT: jax.Array) -> jax.Array:
  """RoPE positions of left-padded rows: `max(cumsum(valid_BT) - 1, 0)`."""
  return jnp.maximum(jnp.cumsum(valid_BT.astype(jnp.int32), axis=-1) - 1, 0)


def create_decoder(cfg: ModelConfig, *, seed: int = 0, mesh=None) -> Decoder:
  """A randomly initialised `Decoder`, built by one jitted init (each weight born sharded).

  Args:
    cfg: the model config.
    seed: parameter-init seed.
    mesh: optional mesh from `grpo_jax.sharding.make_mesh`; parameters are created directly
      with their role's sharding (`grpo_jax.sharding.param_partition_specs`).

  Returns:
    The model (the values of `Decoder(cfg, rngs=nnx.Rngs(seed))` up to float rounding).
  """
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(seed)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = None if mesh is None else param_shardings(abstract_state, mesh)

  @jax.jit
  def init():
    state = nnx.state(Decoder(cfg, rngs=nnx.Rngs(seed)))
    return state if shardings is None else jax.lax.with_sharding_constraint(state, shardings)

  return nnx.merge(graphdef, init())
