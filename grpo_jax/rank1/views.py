"""Which matrices AlphaRL touches, how they are read from a params pytree, and the rank-k model.

PAPERS.md §4: every 2-D attention (q, k, v, o) and MLP (gate, up, down) matrix of every layer, in
the Hugging Face `[out, in]` layout; never embeddings, lm_head, norms or biases. The module reads
matrices through a *view*: a pair of callables

    view(params) -> dict[str, [out, in] matrix]
    unview(params, new: dict[str, matrix]) -> params with those matrices replaced

such as the models' `hf_matrices` / `with_hf_matrices` (bound to a config with
`functools.partial`), `tree_view(...)` for any pytree, or None when `params` already is a dict
of `[out, in]` matrices.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax.rank1.svd import jitted_power_iteration, top_k_svd

PyTree = Any
Selector = Callable[[str], bool]

ATTENTION_MLP = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
EXCLUDED = ('embed', 'lm_head', 'norm', 'bias')


class MatrixView(NamedTuple):
  """`view(params) -> {name: [out, in]}` and `unview(params, new) -> params`."""

  view: Callable[[PyTree], Mapping[str, jax.Array]]
  unview: Callable[[PyTree, Mapping[str, jax.Array]], PyTree]


def _components(name: str) -> list[str]:
  return [c for c in re.split(r'[./\[\]\'"]+', name) if c]


def matrix_selector(
  include: tuple[str, ...] = ATTENTION_MLP, exclude: tuple[str, ...] = EXCLUDED
) -> Selector:
  """A selector over tensor names.

  A name is selected when one of its path components (split on '.', '/', '[', ']') equals an
  `include` entry and no component contains an `exclude` entry (so 'q_proj.bias',
  'model.embed_tokens.weight' and 'input_layernorm.weight' are all left out).
  """
  include, exclude = tuple(include), tuple(exclude)

  def select(name: str) -> bool:
    parts = _components(name)
    if any(x in p for p in parts for x in exclude):
      return False
    return any(p in include for p in parts)

  return select


default_select = matrix_selector()


def _identity_view() -> MatrixView:
  def view(params):
    if not isinstance(params, Mapping):
      raise TypeError(
        f'without a `view`, params must be a dict name -> 2-D [out, in] matrix, got '
        f'{type(params).__name__}; pass view=(view_fn, unview_fn) or view=tree_view(...)'
      )
    return params

  def unview(params, new):
    return {**params, **new}

  return MatrixView(view, unview)


def as_view(view: MatrixView | tuple | None) -> MatrixView:
  """Normalises `view` (None, a `MatrixView` or a `(view, unview)` pair)."""
  if view is None:
    return _identity_view()
  if isinstance(view, tuple) and len(view) == 2 and all(callable(f) for f in view):
    return MatrixView(*view)
  raise TypeError(f'`view` must be None or a (view, unview) pair of callables, got {view!r}')


def tree_view(*, layout: str = 'out_in', stacked: bool = False) -> MatrixView:
  """A view of any pytree: each 2-D leaf is a matrix named by its '.'-joined key path.

  Args:
    layout: 'out_in' when leaves are already `[out, in]` (PyTorch/HF), 'in_out' for Flax
      `[in, out]` kernels (the view transposes them, so `a = sigma u` stays on the output side).
    stacked: also read 3-D leaves as a stack of layers `[L, ., .]`, named '<path>.<layer>'.
      Other leaves are not matrices and are left alone.
  """
  if layout not in ('out_in', 'in_out'):
    raise ValueError(f"`layout` must be 'out_in' or 'in_out', got {layout!r}")
  flip = layout == 'in_out'

  def leaves(params):
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      name = '.'.join(_components(jax.tree_util.keystr(path)))
      out.append((name, leaf))
    return out

  def view(params):
    mats = {}
    for name, leaf in leaves(params):
      ndim = getattr(leaf, 'ndim', 0)
      if ndim == 2:
        mats[name] = leaf.T if flip else leaf
      elif ndim == 3 and stacked:
        for layer in range(leaf.shape[0]):
          mats[f'{name}.{layer}'] = leaf[layer].T if flip else leaf[layer]
    return mats

  def unview(params, new):
    new = dict(new)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for path, leaf in flat:
      name = '.'.join(_components(jax.tree_util.keystr(path)))
      ndim = getattr(leaf, 'ndim', 0)
      if ndim == 2 and name in new:
        m = new.pop(name)
        leaf = (m.T if flip else m).astype(leaf.dtype)
      elif ndim == 3 and stacked:
        layers = [new.pop(f'{name}.{i}', None) for i in range(leaf.shape[0])]
        if any(m is not None for m in layers):
          leaf = jnp.stack(
            [
              leaf[i] if m is None else (m.T if flip else m).astype(leaf.dtype)
              for i, m in enumerate(layers)
            ]
          )
      out.append(leaf)
    if new:
      raise KeyError(f'unview: no matrix named {sorted(new)[:5]} in params')
    return jax.tree_util.tree_unflatten(treedef, out)

  return MatrixView(view, unview)


def select_matrices(
  params: PyTree, *, view: MatrixView | tuple | None = None, select: Selector | None = None
) -> dict[str, jax.Array]:
  """The selected `[out, in]` matrices of `params`, by name (sorted)."""
  mats = as_view(view).view(params)
  select = default_select if select is None else select
  out = {}
  for name in sorted(mats):
    if not select(name):
      continue
    m = mats[name]
    if getattr(m, 'ndim', None) != 2:
      raise ValueError(f'selected tensor {name!r} is not a 2-D matrix: shape {np.shape(m)}')
    out[name] = m
  if not out:
    raise ValueError(
      f'no matrix selected out of {len(mats)} tensors (first names: {sorted(mats)[:5]}); '
      'check `view` and `select`'
    )
  return out


def check_same(ref: Mapping[str, Any], other: Mapping[str, Any], what: str) -> None:
  """Raises naming the first tensor whose name or shape differs between two matrix dicts."""
  missing, extra = sorted(set(ref) - set(other)), sorted(set(other) - set(ref))
  if missing or extra:
    raise ValueError(
      f'{what}: mismatched structure: missing {missing[:5]}, unexpected {extra[:5]} '
      '(relative to the base checkpoint)'
    )
  for name in ref:
    if tuple(ref[name].shape) != tuple(other[name].shape):
      raise ValueError(
        f'{what}: tensor {name!r} has shape {tuple(other[name].shape)}, base has '
        f'{tuple(ref[name].shape)}'
      )


@jax.jit
def _delta(w_MN, w0_MN):
  dtype = jnp.promote_types(jnp.promote_types(w_MN.dtype, w0_MN.dtype), jnp.float32)
  return w_MN.astype(dtype) - w0_MN.astype(dtype)


def deltas(
  params0: PyTree,
  params_t: PyTree,
  *,
  view: MatrixView | tuple | None = None,
  select: Selector | None = None,
) -> dict[str, jax.Array]:
  """`dW = W_t - W_0` (float32) for every selected matrix."""
  m0 = select_matrices(params0, view=view, select=select)
  mt = select_matrices(params_t, view=view, select=lambda n: n in m0)
  check_same(m0, mt, 'params_t')
  return {name: _delta(mt[name], m0[name]) for name in m0}


def rank_k_update(dw_MN: jax.Array, *, k: int | None, alpha: float = 1.0) -> jax.Array:
  """The norm-matched rank-k update `alpha (||dW||_F / ||dW^(k)||_F) dW^(k)` (PAPERS.md §4).

  `k=None` (or k >= rank) returns `alpha * dW` exactly: the full-rank model is the final model.
  """
  full = min(dw_MN.shape)
  if k is None or k >= full:
    return alpha * dw_MN
  u_MK, s_K, vt_KN = top_k_svd(dw_MN, k)
  dwk_MN = (u_MK * s_K) @ vt_KN
  # ||U_k S_k V_k^T||_F = ||s_K||; a zero update stays zero.
  scale = jnp.linalg.norm(dw_MN) / jnp.maximum(jnp.linalg.norm(s_K), jnp.finfo(s_K.dtype).tiny)
  return alpha * scale * dwk_MN


@functools.partial(jax.jit, static_argnames='k')
def _rank_k_apply(w0_MN, dw_MN, *, k, alpha):
  return (w0_MN.astype(dw_MN.dtype) + rank_k_update(dw_MN, k=k, alpha=alpha)).astype(w0_MN.dtype)


def rank_k_model(
  params0: PyTree,
  params_t: PyTree,
  *,
  k: int | None,
  alpha: float = 1.0,
  view: MatrixView | tuple | None = None,
  select: Selector | None = None,
  others: str = 'base',
) -> PyTree:
  """The rank-k model `W_0 + alpha (||dW|| / ||dW^(k)||) dW^(k)` of every selected matrix.

  Args:
    params0: the base model W_0.
    params_t: the fine-tuned model W_t.
    k: rank kept per matrix; None for full rank.
    alpha: the scale alpha of PAPERS.md §4 (1 = norm-matched).
    view: how matrices are read (see the module docstring).
    select: which matrix names to rebuild (default: attention and MLP).
    others: tensors that are not rebuilt come from 'base' (W_0, as in the AlphaRL code) or
      'final' (W_t).

  Returns:
    A params pytree shaped like `params0`, rebuilt matrices cast to W_0's dtype.
  """
  if k is not None and (not isinstance(k, int) or k < 1):
    raise ValueError(f'`k` must be an int >= 1 or None (full rank), got {k!r}')
  if others not in ('base', 'final'):
    raise ValueError(f"`others` must be 'base' or 'final', got {others!r}")
  view = as_view(view)
  m0 = select_matrices(params0, view=view, select=select)
  dws = deltas(params0, params_t, view=view, select=select)
  new = {name: _rank_k_apply(m0[name], dw, k=k, alpha=alpha) for name, dw in dws.items()}
  return view.unview(params0 if others == 'base' else params_t, new)


@jax.jit
def _energy_exact(dw_MN):
  s_K = jnp.linalg.svd(dw_MN, compute_uv=False)
  return s_K[0] ** 2 / jnp.sum(dw_MN**2)


def energy_fraction(dw_MN: jax.Array, *, method: str = 'svd', tol: float = 1e-5) -> jax.Array:
  """`sigma1^2 / ||dW||_F^2`, the share of the update's energy in its top component.

  NaN for a zero update. `method='power'` uses power iteration (same tolerance semantics).
  """
  if dw_MN.ndim != 2:
    raise ValueError(f'`dw_MN` must be 2-D, got shape {tuple(dw_MN.shape)}')
  dw_MN = dw_MN.astype(jnp.promote_types(dw_MN.dtype, jnp.float32))
  if method == 'svd':
    return _energy_exact(dw_MN)
  if method == 'power':
    s = jitted_power_iteration(dw_MN, tol=tol).s
    return s**2 / jnp.sum(dw_MN**2)
  raise ValueError(f"`method` must be 'svd' or 'power', got {method!r}")


def energy_fractions(
  params0: PyTree,
  params_t: PyTree,
  *,
  view: MatrixView | tuple | None = None,
  select: Selector | None = None,
  method: str = 'svd',
) -> dict[str, float]:
  """`energy_fraction` of every selected matrix's update, by name."""
  return {
    name: float(energy_fraction(dw, method=method))
    for name, dw in deltas(params0, params_t, view=view, select=select).items()
  }
