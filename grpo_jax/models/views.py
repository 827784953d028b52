"""The Hugging Face view of decoder parameters: one tensor per HF name, in HF `[out, in]` layout.

Layout of each HF tensor against our parameter (see `grpo_jax.models.decoder`), for layer l:

  HF tensor (`model.layers.l.` prefix)   HF shape      ours                    our shape
  self_attn.q_proj.weight                [H*K, D]      self_attn.q_proj.kernel  [D, H, K]
  self_attn.{k,v}_proj.weight            [N*K, D]      self_attn.{k,v}_proj.kernel [D, N, K]
  self_attn.{q,k,v}_proj.bias            [H*K|N*K]     self_attn.{q,k,v}_proj.bias [H|N, K]
  self_attn.o_proj.weight                [D, H*K]      self_attn.o_proj.kernel  [H, K, D]
  self_attn.{q,k}_norm.weight            [K]           self_attn.{q,k}_norm.scale
  mlp.{gate,up}_proj.weight              [F, D]        mlp.{gate,up}_proj.kernel [D, F]
  mlp.down_proj.weight                   [D, F]        mlp.down_proj.kernel     [F, D]
  {input,post_attention}_layernorm.weight [D]          ..._layernorm.scale

plus `model.embed_tokens.weight` [V, D] (same layout), `model.norm.weight` [D] and, untied,
`lm_head.weight` [V, D] (ours `lm_head.kernel` [D, V]). An HF matrix is our kernel flattened to
[in, out] and transposed: `W_hf = kernel.reshape(in, out).T`, so `y = x @ W_hf.T` in both.

With `scan_layers` a parameter holds all layers stacked on a leading L axis and layer l is
`leaf[l]`; the view hides this. `hf_matrices` and `with_hf_matrices` expose the seven attention and
MLP matrices per layer (the low-rank / AlphaRL view); the checkpoint loader and exporter use
`hf_layout` for every tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from grpo_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class HFTensor:
  """How one Hugging Face tensor maps onto one of our parameters.

  Attributes:
    name: the HF tensor name.
    path: our parameter path (without the layer index).
    layer: the layer index, or None for non-layer tensors.
    hf_shape: shape in the HF checkpoint.
    to_hf: our per-layer array -> HF array.
    to_ours: HF array -> our per-layer array.
    matrix: True for the attention/MLP matrices of `hf_matrices`.
  """

  name: str
  path: tuple[str, ...]
  layer: int | None
  hf_shape: tuple[int, ...]
  to_hf: Callable
  to_ours: Callable
  matrix: bool = False


def _identity(x):
  return x


def _transpose(x):
  return x.T


def hf_layout(cfg: ModelConfig) -> list[HFTensor]:
  """Every HF tensor of a checkpoint with config `cfg`, in a fixed order."""
  D, H, N, K, F, V = (
    cfg.d_model,
    cfg.n_heads,
    cfg.n_kv_heads,
    cfg.head_dim,
    cfg.d_ff,
    cfg.vocab_size,
  )
  out = [HFTensor('model.embed_tokens.weight', ('embed_tokens', 'embedding'), None, (V, D),
                  _identity, _identity)]  # fmt: skip
  for l in range(cfg.n_layers):
    p = f'model.layers.{l}.'

    def qkv(proj, heads, p=p, l=l):
      items = [
        HFTensor(
          f'{p}self_attn.{proj}.weight',
          ('self_attn', proj, 'kernel'),
          l,
          (heads * K, D),
          lambda k: k.reshape(D, -1).T,
          lambda w, heads=heads: w.T.reshape(D, heads, K),
          matrix=True,
        )
      ]
      if cfg.qkv_bias:
        items.append(
          HFTensor(
            f'{p}self_attn.{proj}.bias',
            ('self_attn', proj, 'bias'),
            l,
            (heads * K,),
            lambda b: b.reshape(-1),
            lambda b, heads=heads: b.reshape(heads, K),
          )
        )
      return items

    out += qkv('q_proj', H) + qkv('k_proj', N) + qkv('v_proj', N)
    out.append(
      HFTensor(
        f'{p}self_attn.o_proj.weight',
        ('self_attn', 'o_proj', 'kernel'),
        l,
        (D, H * K),
        lambda k: k.reshape(-1, D).T,
        lambda w: w.T.reshape(H, K, D),
        matrix=True,
      )
    )
    if cfg.qk_norm:
      for norm in ('q_norm', 'k_norm'):
        out.append(
          HFTensor(f'{p}self_attn.{norm}.weight', ('self_attn', norm, 'scale'), l, (K,),
                   _identity, _identity)
        )  # fmt: skip
    for proj, shape in (('gate_proj', (F, D)), ('up_proj', (F, D)), ('down_proj', (D, F))):
      out.append(
        HFTensor(f'{p}mlp.{proj}.weight', ('mlp', proj, 'kernel'), l, shape, _transpose,
                 _transpose, matrix=True)
      )  # fmt: skip
    for norm in ('input_layernorm', 'post_attention_layernorm'):
      out.append(HFTensor(f'{p}{norm}.weight', (norm, 'scale'), l, (D,), _identity, _identity))
  out.append(HFTensor('model.norm.weight', ('norm', 'scale'), None, (D,), _identity, _identity))
  if not cfg.tie_embeddings:
    out.append(
      HFTensor('lm_head.weight', ('lm_head', 'kernel'), None, (V, D), _transpose, _transpose)
    )
  return out


def leaf_path(cfg: ModelConfig, t: HFTensor) -> tuple:
  """Our full parameter path for `t` (with the layer index unless layers are stacked)."""
  if t.layer is None:
    return t.path
  if cfg.scan_layers:
    return ('layers', *t.path)
  return ('layers', t.layer, *t.path)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree[...] if isinstance(tree, nnx.Variable) else tree


def _as_pure(params):
  if isinstance(params, nnx.State):
    return nnx.to_pure_dict(params)
  return jax.tree.map(lambda x: x, params)  # a copy of a nested dict of arrays


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = value


def hf_tensor(cfg: ModelConfig, params, t: HFTensor) -> jax.Array:
  """The HF-layout value of tensor `t` read from `params`."""
  leaf = _get(params, leaf_path(cfg, t))
  if cfg.scan_layers and t.layer is not None:
    leaf = leaf[t.layer]
  return t.to_hf(leaf)


def hf_matrices(cfg: ModelConfig, params) -> dict[str, jax.Array]:
  """The attention and MLP matrices keyed by HF tensor name, each 2-D in HF `[out, in]` layout.

  Args:
    cfg: the model config.
    params: the `nnx.State` of `nnx.Param` (from `nnx.split(model, nnx.Param, ...)`) or the
      equivalent nested dict of arrays; layers stacked (`scan_layers`) or not.

  Returns:
    {name: matrix}, e.g. 'model.layers.0.self_attn.q_proj.weight' -> [H*K, D].
  """
  return {t.name: hf_tensor(cfg, params, t) for t in hf_layout(cfg) if t.matrix}


def with_hf_matrices(cfg: ModelConfig, params, new: dict[str, jax.Array]):
  """`params` with the matrices in `new` (HF names, `[out, in]` layout) written back.

  Args:
    cfg: the model config.
    params: as for `hf_matrices`; it is not modified.
    new: a subset of the names `hf_matrices` returns; values are cast to the parameter dtype.

  Returns:
    A new params tree of the same type as `params`.
  """
  layout = {t.name: t for t in hf_layout(cfg) if t.matrix}
  unknown = sorted(set(new) - set(layout))
  if unknown:
    raise KeyError(f'with_hf_matrices: not an attention/MLP matrix of this model: {unknown}')
  pure = _as_pure(params)
  for name, value in new.items():
    t = layout[name]
    if tuple(value.shape) != t.hf_shape:
      raise ValueError(f'with_hf_matrices: {name} has shape {value.shape}, expected {t.hf_shape}')
    path = leaf_path(cfg, t)
    leaf = _get(pure, path)
    ours = t.to_ours(jnp.asarray(value)).astype(leaf.dtype)
    _set(pure, path, leaf.at[t.layer].set(ours) if cfg.scan_layers else ours)
  if isinstance(params, nnx.State):
    out = jax.tree.map(lambda x: x, params)
    nnx.replace_by_pure_dict(out, pure)
    return out
  return pure
