"""`ModelConfig`: the hyper-parameters of the one decoder (Llama 3.x, Qwen2/2.5, Qwen3)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax.numpy as jnp

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
ROPE_TYPES = ('default', 'llama3')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture and numerics of a decoder-only transformer.

  Attributes:
    vocab_size: V, rows of the embedding table.
    d_model: D, width of the residual stream.
    n_layers: L, number of transformer blocks.
    n_heads: H, query heads.
    n_kv_heads: key/value heads (grouped-query attention); divides `n_heads`.
    head_dim: K, width of one head (not necessarily D / H, e.g. Qwen3).
    d_ff: hidden width of the SwiGLU MLP.
    rope_theta: RoPE base frequency.
    rope_scaling: None, or a sorted tuple of (key, value) pairs of the rope parameters for
      `rope_type='llama3'` (factor, low_freq_factor, high_freq_factor,
      original_max_position_embeddings), stored as a tuple so the config stays hashable.
    rms_eps: epsilon of every RMSNorm.
    tie_embeddings: the output projection is the transposed embedding table.
    qkv_bias: q/k/v projections carry a bias (Qwen2/2.5).
    qk_norm: per-head RMSNorm on queries and keys before RoPE (Qwen3).
    param_dtype: storage dtype of parameters ('float32' or 'bfloat16').
    dtype: compute dtype of activations and matmuls; softmax, norms and logits stay float32.
    remat: rematerialise each block in the backward pass (saves activation memory).
    scan_layers: stack the blocks' parameters along a leading L axis and run them with
      `lax.scan` (compiles once per model instead of once per layer).
    eos_token_ids: token ids that end a sequence.
    bos_token_id: beginning-of-sequence id, if any.
    pad_token_id: padding id, if any.
    max_position_embeddings: longest position the checkpoint was trained for.
    architecture: the Hugging Face class this config round-trips to.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  rope_theta: float = 10_000.0
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  rms_eps: float = 1e-6
  tie_embeddings: bool = True
  qkv_bias: bool = False
  qk_norm: bool = False
  param_dtype: str = 'float32'
  dtype: str = 'float32'
  remat: bool = False
  scan_layers: bool = False
  eos_token_ids: tuple[int, ...] = ()
  bos_token_id: int | None = None
  pad_token_id: int | None = None
  max_position_embeddings: int = 4096
  architecture: str = 'LlamaForCausalLM'

  def __post_init__(self):
    for name in ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'n_kv_heads', 'head_dim', 'd_ff'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'ModelConfig.{name} must be a positive int, got {value!r}')
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
        f'ModelConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})'
      )
    for name in ('param_dtype', 'dtype'):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(
          f'ModelConfig.{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}'
        )
    if not (self.rope_theta > 0 and math.isfinite(self.rope_theta)):
      raise ValueError(f'ModelConfig.rope_theta must be positive, got {self.rope_theta!r}')
    if self.rope_scaling is not None:
      scaling = dict(self.rope_scaling)
      if scaling.get('rope_type') not in ROPE_TYPES:
        raise ValueError(
          f'ModelConfig.rope_scaling: rope_type {scaling.get("rope_type")!r} is not supported '
          f'(supported: {ROPE_TYPES})'
        )
    if not isinstance(self.eos_token_ids, tuple):
      raise ValueError(f'ModelConfig.eos_token_ids must be a tuple, got {self.eos_token_ids!r}')

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  def num_params(self) -> int:
    """Parameter count N (a tied embedding counted once)."""
    D, F, K = self.d_model, self.d_ff, self.head_dim
    attn = D * K * (self.n_heads + 2 * self.n_kv_heads) + self.n_heads * K * D
    if self.qkv_bias:
      attn += K * (self.n_heads + 2 * self.n_kv_heads)
    if self.qk_norm:
      attn += 2 * K
    block = attn + 3 * D * F + 2 * D
    embed = self.vocab_size * D * (1 if self.tie_embeddings else 2)
    return self.n_layers * block + embed + D

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], **overrides) -> ModelConfig:
    """Builds a config from a Hugging Face `config.json` dict (transformers 4.x or 5).

    See `grpo_jax.models.hf.config_from_hf_dict` for the accepted keys.
    """
    from grpo_jax.models.hf import config_from_hf_dict

    return config_from_hf_dict(d, **overrides)

  @classmethod
  def from_pretrained(cls, path: str | Path, **overrides) -> ModelConfig:
    """Reads `<path>/config.json` (a local checkpoint directory)."""
    file = Path(path) / 'config.json'
    if not file.is_file():
      raise FileNotFoundError(f'no config.json in {path}')
    with open(file) as f:
      d = json.load(f)
    return cls.from_hf_dict(d, **overrides)
