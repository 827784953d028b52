"""Matrix selection, pytree views, the rank-k model and the energy fraction of grpo_jax.rank1."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.rank1 import (
  default_select,
  deltas,
  energy_fraction,
  energy_fractions,
  matrix_selector,
  rank_k_model,
  select_matrices,
  tree_view,
)

HF_NAMES = [
  'model.embed_tokens.weight',
  'lm_head.weight',
  'model.norm.weight',
  'model.layers.0.input_layernorm.weight',
  'model.layers.0.self_attn.q_proj.weight',
  'model.layers.0.self_attn.q_proj.bias',
  'model.layers.0.self_attn.k_proj.weight',
  'model.layers.0.self_attn.v_proj.weight',
  'model.layers.0.self_attn.o_proj.weight',
  'model.layers.0.self_attn.q_norm.weight',
  'model.layers.0.mlp.gate_proj.weight',
  'model.layers.0.mlp.up_proj.weight',
  'model.layers.0.mlp.down_proj.weight',
]


def test_default_selector_takes_attention_and_mlp_only():
  chosen = [n for n in HF_NAMES if default_select(n)]
  assert chosen == [
    'model.layers.0.self_attn.q_proj.weight',
    'model.layers.0.self_attn.k_proj.weight',
    'model.layers.0.self_attn.v_proj.weight',
    'model.layers.0.self_attn.o_proj.weight',
    'model.layers.0.mlp.gate_proj.weight',
    'model.layers.0.mlp.up_proj.weight',
    'model.layers.0.mlp.down_proj.weight',
  ]
  only_mlp = matrix_selector(include=('gate_proj', 'up_proj', 'down_proj'))
  assert [n for n in HF_NAMES if only_mlp(n)] == chosen[4:]


def _flax_tree(rng, L=2, D=6, F=10, V=7):
  """A Flax-like pytree: stacked [L, in, out] kernels, an embedding, a norm and a bias."""
  f32 = np.float32
  return {
    'embed': {'embedding': rng.normal(size=(V, D)).astype(f32)},
    'layers': {
      'attn': {'q_proj': {'kernel': rng.normal(size=(L, D, D)).astype(f32)}},
      'mlp': {
        'down_proj': {'kernel': rng.normal(size=(L, F, D)).astype(f32)},
        'up_proj': {'kernel': rng.normal(size=(L, D, F)).astype(f32)},
        'up_bias': rng.normal(size=(L, F)).astype(f32),
      },
      'norm': {'scale': rng.normal(size=(L, D)).astype(f32)},
    },
  }


def test_tree_view_reads_stacked_in_out_kernels_as_out_in():
  params = _flax_tree(np.random.default_rng(0))
  view = tree_view(layout='in_out', stacked=True)
  mats = select_matrices(params, view=view)
  assert sorted(mats) == [
    'layers.attn.q_proj.kernel.0',
    'layers.attn.q_proj.kernel.1',
    'layers.mlp.down_proj.kernel.0',
    'layers.mlp.down_proj.kernel.1',
    'layers.mlp.up_proj.kernel.0',
    'layers.mlp.up_proj.kernel.1',
  ]
  # HF [out, in]: down_proj maps F=10 -> D=6.
  assert mats['layers.mlp.down_proj.kernel.1'].shape == (6, 10)
  np.testing.assert_array_equal(
    mats['layers.mlp.down_proj.kernel.1'], params['layers']['mlp']['down_proj']['kernel'][1].T
  )
  new = {'layers.mlp.down_proj.kernel.1': np.zeros((6, 10), np.float32)}
  back = view.unview(params, new)
  np.testing.assert_array_equal(back['layers']['mlp']['down_proj']['kernel'][1], 0.0)
  np.testing.assert_array_equal(
    back['layers']['mlp']['down_proj']['kernel'][0],
    params['layers']['mlp']['down_proj']['kernel'][0],
  )
  np.testing.assert_array_equal(back['embed']['embedding'], params['embed']['embedding'])


def _pair(rng, shapes):
  p0 = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
  p1 = {n: (w + 0.1 * rng.normal(size=w.shape)).astype(np.float32) for n, w in p0.items()}
  return p0, p1


SHAPES = {'l0.q_proj': (12, 8), 'l0.down_proj': (8, 12), 'embed_tokens': (5, 8)}


@pytest.mark.parametrize('k', [1, 2])
def test_rank_k_model_matches_numpy_reference(k):
  p0, p1 = _pair(np.random.default_rng(1), SHAPES)
  out = rank_k_model(p0, p1, k=k, alpha=0.7)
  for name in ('l0.q_proj', 'l0.down_proj'):
    dw = p1[name].astype(np.float64) - p0[name]
    u, s, vt = np.linalg.svd(dw, full_matrices=False)
    dwk = (u[:, :k] * s[:k]) @ vt[:k]
    want = p0[name] + 0.7 * np.linalg.norm(dw) / np.linalg.norm(dwk) * dwk
    np.testing.assert_allclose(out[name], want, atol=2e-6)
    # The update carries alpha times the full update's Frobenius norm.
    np.testing.assert_allclose(
      np.linalg.norm(out[name] - p0[name]), 0.7 * np.linalg.norm(dw), rtol=1e-5
    )
  np.testing.assert_array_equal(out['embed_tokens'], p0['embed_tokens'])


def test_full_rank_model_equals_final_model():
  p0, p1 = _pair(np.random.default_rng(2), SHAPES)
  out = rank_k_model(p0, p1, k=None, others='final')
  for name in SHAPES:
    np.testing.assert_allclose(out[name], p1[name], atol=1e-6)
  # k >= rank is full rank too; 'base' keeps unselected tensors at W_0.
  out = rank_k_model(p0, p1, k=8)
  np.testing.assert_allclose(out['l0.q_proj'], p1['l0.q_proj'], atol=1e-6)
  np.testing.assert_array_equal(out['embed_tokens'], p0['embed_tokens'])


def test_rank_k_model_through_stacked_view_keeps_dtype():
  rng = np.random.default_rng(3)
  # Multiples of 1/8 below 4 in magnitude: bf16 holds x and x + 0.25 exactly.
  p0 = jax.tree.map(lambda x: jnp.asarray(np.round(x * 8) / 8, jnp.bfloat16), _flax_tree(rng, F=6))
  p1 = jax.tree.map(lambda x: x + 0.25, p0)  # dW = 0.25 * ones: exactly rank 1
  out = rank_k_model(p0, p1, k=1, view=tree_view(layout='in_out', stacked=True), others='base')
  assert jax.tree.structure(out) == jax.tree.structure(p0)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(p0)):
    assert a.dtype == b.dtype and a.shape == b.shape
  k = out['layers']['mlp']['up_proj']['kernel']
  np.testing.assert_allclose(
    np.asarray(k, np.float32),
    np.asarray(p1['layers']['mlp']['up_proj']['kernel'], np.float32),
    atol=1e-6,
  )
  np.testing.assert_array_equal(out['layers']['norm']['scale'], p0['layers']['norm']['scale'])
  np.testing.assert_array_equal(out['layers']['mlp']['up_bias'], p0['layers']['mlp']['up_bias'])


def test_energy_fraction_matches_numpy():
  p0, p1 = _pair(np.random.default_rng(4), SHAPES)
  fr = energy_fractions(p0, p1)
  assert sorted(fr) == ['l0.down_proj', 'l0.q_proj']
  for name, got in fr.items():
    s = np.linalg.svd(p1[name].astype(np.float64) - p0[name], compute_uv=False)
    np.testing.assert_allclose(got, s[0] ** 2 / np.sum(s**2), rtol=1e-5)
  dw = jnp.asarray(np.outer(np.arange(1.0, 4.0), [1.0, -2.0]), jnp.float32)
  np.testing.assert_allclose(float(energy_fraction(dw, method='power')), 1.0, rtol=1e-6)


def test_mismatched_structures_name_the_tensor():
  p0, p1 = _pair(np.random.default_rng(5), SHAPES)
  with pytest.raises(ValueError, match="'l0.q_proj'.*shape"):
    deltas(p0, {**p1, 'l0.q_proj': p1['l0.q_proj'][:, :4]})
  with pytest.raises(ValueError, match=r"missing \['l0.down_proj'\]"):
    deltas(p0, {n: w for n, w in p1.items() if n != 'l0.down_proj'})
  with pytest.raises(ValueError, match='no matrix selected'):
    select_matrices({'embed_tokens': p0['embed_tokens']})
  with pytest.raises(ValueError, match="'l0.q_proj' is not a 2-D"):
    select_matrices({'l0.q_proj': np.zeros((2, 3, 4))})
  with pytest.raises(TypeError, match='view'):
    select_matrices([p0['l0.q_proj']])
