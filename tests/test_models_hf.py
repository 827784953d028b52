"""Parity with transformers: logits, greedy generation and export for Llama, Qwen2 and Qwen3."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.models import (
  export_hf,
  hf_matrices,
  init_cache,
  left_padded_positions,
  load_hf,
)

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

V = 97
P = 7  # prompt length
N_NEW = 16

COMMON = dict(
  vocab_size=V,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  rms_norm_eps=1e-5,
  bos_token_id=1,
  eos_token_id=None,
  pad_token_id=0,
)

# name: (transformers class, extra config kwargs); GQA 4:2 everywhere.
MODELS = {
  'llama_untied_llama3_rope': (
    'Llama',
    dict(
      tie_word_embeddings=False,
      rope_parameters=dict(
        rope_type='llama3',
        rope_theta=500_000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=16,
      ),
    ),
  ),
  'llama_tied': ('Llama', dict(tie_word_embeddings=True)),
  'qwen2_tied': ('Qwen2', dict(tie_word_embeddings=True, rope_parameters=dict(rope_theta=1e6))),
  'qwen3_untied_head_dim_16': ('Qwen3', dict(tie_word_embeddings=False, head_dim=16)),
}


def _randomise(model, seed):
  """Larger-than-default random weights, so logits are peaked and greedy choices unambiguous."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('norm.weight'):
        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def _to_4x_config(d):
  """Rewrites a transformers-5 config dict the way transformers 4.x wrote it."""
  d = dict(d)
  rope = dict(d.pop('rope_parameters'))
  d['rope_theta'] = rope.pop('rope_theta')
  d['rope_scaling'] = None if rope.get('rope_type') == 'default' else rope
  d['torch_dtype'] = d.pop('dtype')
  d['transformers_version'] = '4.46.0'
  return d


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """name -> (directory, the transformers model it was saved from)."""
  out = {}
  for i, (name, (family, extra)) in enumerate(MODELS.items()):
    cfg = getattr(transformers, f'{family}Config')(**COMMON, **extra)
    model = getattr(transformers, f'{family}ForCausalLM')(cfg).eval()
    _randomise(model, i)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    if name.startswith('llama_untied'):
      # Users' checkpoints come from transformers 4.x: load this one through a 4.x config.
      d = json.loads((path / 'config.json').read_text())
      (path / 'config.json').write_text(json.dumps(_to_4x_config(d)))
    out[name] = (path, model)
  return out


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, V, (2, P))
  valid = np.ones((2, P), bool)
  valid[1, :3] = False  # row 1: a shorter prompt, left-padded
  tokens[~valid] = 0
  return tokens, valid


def _hf_logits(model, tokens, valid):
  positions = np.asarray(left_padded_positions(jnp.asarray(valid)))
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(tokens),
      attention_mask=torch.tensor(valid.astype(np.int64)),
      position_ids=torch.tensor(positions, dtype=torch.long),
    )
  return out.logits.numpy()


@functools.partial(jax.jit, static_argnames='n')
def _greedy(model, tokens_BP, valid_BP, *, n):
  """(prompt logits from the cached prefill, n greedy tokens decoded one at a time)."""
  B, P = tokens_BP.shape
  positions_BP = left_padded_positions(valid_BP)
  cache = init_cache(model.cfg, B, P + n)
  hidden, cache = model(tokens_BP, positions_BP, valid_BT=valid_BP, cache=cache, cache_index=0)
  prompt_logits = model.logits(hidden)
  first_B = jnp.argmax(prompt_logits[:, -1], -1)

  def decode(i, carry):
    out_BN, prev_B, pos_B, cache = carry
    hidden, cache = model(
      prev_B[:, None], pos_B[:, None], valid_BT=jnp.ones((B, 1), bool), cache=cache,
      cache_index=P + i,
    )  # fmt: skip
    next_B = jnp.argmax(model.logits(hidden)[:, -1], -1)
    return out_BN.at[:, i + 1].set(next_B), next_B, pos_B + 1, cache

  out_BN = jnp.zeros((B, n), first_B.dtype).at[:, 0].set(first_B)
  carry = (out_BN, first_B, positions_BP[:, -1] + 1, cache)
  out_BN = jax.lax.fori_loop(0, n - 1, decode, carry)[0]
  return prompt_logits, out_BN


@pytest.mark.parametrize('name', list(MODELS))
def test_logits_greedy_generation_and_export_match_transformers(name, checkpoints, tmp_path):
  path, hf_model = checkpoints[name]
  model, cfg = load_hf(path)
  assert cfg.tie_embeddings == hf_model.config.tie_word_embeddings
  tokens, valid = _batch()

  ref = _hf_logits(hf_model, tokens, valid)
  ours, greedy = _greedy(model, jnp.asarray(tokens), jnp.asarray(valid), n=N_NEW)
  assert np.abs(ours - ref)[valid].max() < 1e-4

  with torch.no_grad():
    generated = hf_model.generate(
      input_ids=torch.tensor(tokens),
      attention_mask=torch.tensor(valid.astype(np.int64)),
      max_new_tokens=N_NEW,
      min_new_tokens=N_NEW,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    )[:, P:].numpy()
  assert generated.shape == (2, N_NEW)
  np.testing.assert_array_equal(greedy, generated)

  export_hf(model, cfg, tmp_path / 'export')
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'export').eval()
  np.testing.assert_array_equal(_hf_logits(reloaded, tokens, valid), ref)


@pytest.mark.parametrize('scan_layers', [False, True])
def test_hf_matrices_equal_the_transformers_weights(checkpoints, scan_layers):
  from flax import nnx

  path, hf_model = checkpoints['qwen3_untied_head_dim_16']
  model, cfg = load_hf(path, scan_layers=scan_layers)
  view = hf_matrices(cfg, nnx.state(model, nnx.Param))
  state = hf_model.state_dict()
  expected = {k for k in state if k.endswith('proj.weight')}
  assert set(view) == expected and len(view) == 2 * 7
  for k, w in view.items():
    assert w.ndim == 2
    np.testing.assert_array_equal(np.asarray(w), state[k].numpy())
