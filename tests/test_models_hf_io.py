"""Checkpoint I/O without transformers models: config.json parsing, errors, shards, views."""

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from grpo_jax import sharding
from grpo_jax.models import (
  ModelConfig,
  config_from_hf_dict,
  config_to_hf_dict,
  export_hf,
  hf_matrices,
  load_hf,
  load_tokenizer,
  model_preset,
  with_hf_matrices,
)
from grpo_jax.models.views import hf_layout

# As transformers 4.x wrote a Llama-3.2 config.json (values shrunk): top-level rope_theta,
# rope_scaling with the llama3 type, torch_dtype.
LLAMA_4X = {
  'architectures': ['LlamaForCausalLM'],
  'attention_bias': False,
  'attention_dropout': 0.0,
  'bos_token_id': 128000,
  'eos_token_id': [128001, 128008, 128009],
  'head_dim': 16,
  'hidden_act': 'silu',
  'hidden_size': 64,
  'initializer_range': 0.02,
  'intermediate_size': 128,
  'max_position_embeddings': 131072,
  'mlp_bias': False,
  'model_type': 'llama',
  'num_attention_heads': 4,
  'num_hidden_layers': 2,
  'num_key_value_heads': 2,
  'pretraining_tp': 1,
  'rms_norm_eps': 1e-05,
  'rope_scaling': {
    'factor': 32.0,
    'high_freq_factor': 4.0,
    'low_freq_factor': 1.0,
    'original_max_position_embeddings': 8192,
    'rope_type': 'llama3',
  },
  'rope_theta': 500000.0,
  'tie_word_embeddings': True,
  'torch_dtype': 'bfloat16',
  'transformers_version': '4.45.0.dev0',
  'use_cache': True,
  'vocab_size': 128256,
}

# As transformers 4.x wrote a Qwen2.5 config.json (values shrunk).
QWEN25_4X = {
  'architectures': ['Qwen2ForCausalLM'],
  'bos_token_id': 151643,
  'eos_token_id': 151643,
  'hidden_act': 'silu',
  'hidden_size': 64,
  'initializer_range': 0.02,
  'intermediate_size': 128,
  'max_position_embeddings': 4096,
  'max_window_layers': 21,
  'model_type': 'qwen2',
  'num_attention_heads': 4,
  'num_hidden_layers': 2,
  'num_key_value_heads': 2,
  'rms_norm_eps': 1e-06,
  'rope_scaling': None,
  'rope_theta': 10000.0,
  'sliding_window': 4096,
  'tie_word_embeddings': True,
  'torch_dtype': 'bfloat16',
  'transformers_version': '4.44.0',
  'use_cache': True,
  'use_mrope': False,
  'use_sliding_window': False,
  'vocab_size': 151936,
}


def test_transformers_4x_llama_config_parses():
  cfg = config_from_hf_dict(LLAMA_4X)
  assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (64, 2, 4, 2, 16)
  assert cfg.rope_theta == 500000.0 and cfg.param_dtype == 'bfloat16' and cfg.tie_embeddings
  assert cfg.rope_scaling_dict == {
    'rope_type': 'llama3',
    'factor': 32.0,
    'low_freq_factor': 1.0,
    'high_freq_factor': 4.0,
    'original_max_position_embeddings': 8192.0,
  }
  assert cfg.eos_token_ids == (128001, 128008, 128009)
  assert not cfg.qkv_bias and not cfg.qk_norm and cfg.rms_eps == 1e-5


def test_hand_written_4x_config_json_file_loads(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps(LLAMA_4X, indent=2))
  cfg = ModelConfig.from_pretrained(tmp_path, param_dtype='float32', remat=True)
  assert cfg == config_from_hf_dict(LLAMA_4X).replace(param_dtype='float32', remat=True)
  assert cfg.dtype == 'bfloat16' and cfg.architecture == 'LlamaForCausalLM'


def test_transformers_4x_qwen25_config_parses_with_bias_and_no_window():
  cfg = config_from_hf_dict(QWEN25_4X)
  assert cfg.qkv_bias and not cfg.qk_norm and cfg.rope_scaling is None
  assert cfg.head_dim == 16 and cfg.eos_token_ids == (151643,) and cfg.rope_theta == 10000.0


def test_transformers_5_and_4x_forms_give_the_same_config():
  v5 = {k: v for k, v in LLAMA_4X.items() if k not in ('rope_theta', 'rope_scaling', 'torch_dtype')}
  v5['rope_parameters'] = {**LLAMA_4X['rope_scaling'], 'rope_theta': 500000.0}
  v5['dtype'] = 'bfloat16'
  assert config_from_hf_dict(v5) == config_from_hf_dict(LLAMA_4X)


@pytest.mark.parametrize(
  'change, match',
  [
    (dict(architectures=['MistralForCausalLM']), 'architectures.*MistralForCausalLM'),
    (dict(use_sliding_window=True), 'use_sliding_window=True'),
    (dict(layer_types=['full_attention', 'sliding_attention']), 'sliding_attention'),
    (dict(mlp_bias=True), 'mlp_bias=True'),
    (dict(rope_scaling={'rope_type': 'yarn', 'factor': 4.0}), "rope_type='yarn'"),
    (dict(rope_scaling={'type': 'dynamic', 'factor': 2.0}), "rope_type='dynamic'"),
    (dict(hidden_act='gelu'), 'hidden_act'),
    (dict(attention_bias=True), 'attention_bias'),
    (dict(some_new_switch=3), 'some_new_switch'),
  ],
)
def test_unsupported_config_values_are_named(change, match):
  with pytest.raises(ValueError, match=match):
    config_from_hf_dict({**LLAMA_4X, **change})


def test_qwen2_sliding_window_on_is_rejected():
  with pytest.raises(ValueError, match='use_sliding_window=True'):
    config_from_hf_dict({**QWEN25_4X, 'use_sliding_window': True})


CFG = model_preset('tiny', vocab_size=37, tie_embeddings=False)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(random HF tensors by name, checkpoint directory written from them with safetensors)."""
  rng = np.random.default_rng(0)
  tensors = {t.name: rng.normal(size=t.hf_shape).astype(np.float32) for t in hf_layout(CFG)}
  path = tmp_path_factory.mktemp('tiny')
  save_file(tensors, path / 'model.safetensors', metadata={'format': 'pt'})
  (path / 'config.json').write_text(json.dumps(config_to_hf_dict(CFG)))
  return tensors, path


def _copy(path, tmp_path):
  return Path(shutil.copytree(path, tmp_path / 'copy'))


def _params(model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_load_then_export_round_trips_every_tensor(exported, tmp_path):
  tensors, path = exported
  model, cfg = load_hf(path)
  assert cfg == CFG
  export_hf(model, cfg, tmp_path / 'out')
  assert json.loads((tmp_path / 'out' / 'config.json').read_text())['tie_word_embeddings'] is False
  again = load_file(tmp_path / 'out' / 'model.safetensors')
  assert set(again) == set(tensors)
  for k, v in tensors.items():
    np.testing.assert_array_equal(again[k], v)
  # Spot-check the layout: HF q_proj.weight[h*K + k, d] is our kernel[d, h, k].
  kernel = np.asarray(model.layers[1].self_attn.q_proj.kernel[...])
  np.testing.assert_array_equal(tensors['model.layers.1.self_attn.q_proj.weight'][2 * 16 + 5],
                                kernel[:, 2, 5])  # fmt: skip
  np.testing.assert_array_equal(tensors['lm_head.weight'], np.asarray(model.lm_head.kernel[...]).T)


def test_sharded_index_loads_like_a_single_file(exported, tmp_path):
  tensors, path = exported
  path = _copy(path, tmp_path)
  names = sorted(tensors)
  (path / 'model.safetensors').unlink()
  weight_map = {}
  for i, part in enumerate((names[::2], names[1::2])):
    file = f'model-0000{i + 1}-of-00002.safetensors'
    save_file({n: tensors[n] for n in part}, path / file, metadata={'format': 'pt'})
    weight_map.update(dict.fromkeys(part, file))
  (path / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
  loaded, _ = load_hf(path)
  reference, _ = load_hf(exported[1])
  jax.tree.map(np.testing.assert_array_equal, _params(loaded), _params(reference))


def test_missing_unexpected_and_misshaped_tensors_are_each_named(exported, tmp_path):
  path = _copy(exported[1], tmp_path)
  tensors = load_file(path / 'model.safetensors')
  del tensors['model.layers.1.mlp.up_proj.weight']
  tensors['model.layers.0.mlp.extra.weight'] = np.zeros((2, 3), np.float32)
  tensors['model.layers.0.self_attn.k_proj.weight'] = np.zeros((16, 64), np.float32)
  save_file(tensors, path / 'model.safetensors', metadata={'format': 'pt'})
  with pytest.raises(ValueError) as err:
    load_hf(path)
  msg = str(err.value)
  assert 'missing tensor model.layers.1.mlp.up_proj.weight (expected shape (128, 64))' in msg
  assert 'unexpected tensor model.layers.0.mlp.extra.weight (shape (2, 3))' in msg
  assert 'model.layers.0.self_attn.k_proj.weight has shape (16, 64)' in msg
  assert 'needs (32, 64)' in msg


def test_pickle_checkpoints_are_refused(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps(QWEN25_4X))
  (tmp_path / 'pytorch_model.bin').write_bytes(b'')
  with pytest.raises(FileNotFoundError, match='pytorch_model.bin'):
    load_hf(tmp_path)


def test_load_places_each_tensor_on_its_role_sharding(exported):
  tensors, path = exported
  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  loaded, cfg = load_hf(path, mesh=mesh, scan_layers=True)
  assert cfg.scan_layers
  q = loaded.layers.self_attn.q_proj.kernel[...]  # [L, D, H, K]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor', None)
  assert q.addressable_shards[0].data.shape == (2, 16, 2, 16)
  emb = loaded.embed_tokens.embedding[...]  # [V=37, D]: 37 is not divisible by tensor=2
  assert emb.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp')
  q_hf = tensors['model.layers.1.self_attn.q_proj.weight']
  np.testing.assert_array_equal(q[1], q_hf.T.reshape(64, 4, 16))
  np.testing.assert_array_equal(emb, tensors['model.embed_tokens.weight'])


def test_load_converts_dtype(exported):
  tensors, path = exported
  loaded, cfg = load_hf(path, dtype='bfloat16')
  assert cfg.param_dtype == 'bfloat16'
  w = loaded.layers[0].mlp.down_proj.kernel[...]
  assert w.dtype == jnp.bfloat16
  expected = tensors['model.layers.0.mlp.down_proj.weight'].T.astype(jnp.bfloat16)
  np.testing.assert_array_equal(w, expected)


def test_hf_matrices_view_is_layout_independent_and_invertible(exported):
  tensors, path = exported
  model, _ = load_hf(path)
  params = nnx.state(model, nnx.Param)
  view = jax.jit(functools.partial(hf_matrices, CFG))(params)
  q0 = view['model.layers.0.self_attn.q_proj.weight']
  # HF q_proj.weight[h*K + k, d] is our kernel[d, h, k].
  kernel = np.asarray(params['layers'][0]['self_attn']['q_proj']['kernel'][...])
  np.testing.assert_array_equal(q0[2 * 16 + 5], kernel[:, 2, 5])
  assert view['model.layers.1.self_attn.o_proj.weight'].shape == (64, 64)
  assert view['model.layers.1.mlp.down_proj.weight'].shape == (64, 128)
  # The checkpoint holds exactly the view's matrices.
  for k, w in view.items():
    np.testing.assert_array_equal(w, tensors[k])

  # The same weights stacked for scan give the same view; writes land in the right layer.
  scfg = CFG.replace(scan_layers=True)
  stacked, _ = load_hf(path, scan_layers=True)

  @jax.jit
  def zero_then_restore(stacked_params, view):
    zeroed = jax.tree.map(jnp.zeros_like, stacked_params)
    return hf_matrices(scfg, with_hf_matrices(scfg, zeroed, view))

  sview = zero_then_restore(nnx.state(stacked, nnx.Param), view)
  assert set(sview) == set(view)
  for k in view:
    np.testing.assert_array_equal(sview[k], view[k])

  new = {'model.layers.1.mlp.up_proj.weight': jnp.ones((128, 64))}
  updated = with_hf_matrices(CFG, params, new)
  assert isinstance(updated, nnx.State)
  np.testing.assert_array_equal(updated['layers'][1]['mlp']['up_proj']['kernel'][...], 1.0)
  assert not np.all(np.asarray(params['layers'][1]['mlp']['up_proj']['kernel'][...]) == 1.0)
  with pytest.raises(KeyError, match='model.norm.weight'):
    with_hf_matrices(CFG, params, {'model.norm.weight': jnp.ones(64)})
  with pytest.raises(ValueError, match=r'expected \(128, 64\)'):
    with_hf_matrices(CFG, params, {'model.layers.1.mlp.up_proj.weight': jnp.ones((64, 128))})


def test_hf_matrices_work_under_jit(exported):
  cfg = CFG.replace(scan_layers=True)
  stacked, _ = load_hf(exported[1], scan_layers=True)
  params = nnx.state(stacked, nnx.Param)

  @jax.jit
  def double(params):
    view = hf_matrices(cfg, params)
    return with_hf_matrices(cfg, params, {k: 2 * v for k, v in view.items()})

  out = double(params)
  np.testing.assert_array_equal(
    out['layers']['mlp']['gate_proj']['kernel'][...],
    2 * params['layers']['mlp']['gate_proj']['kernel'][...],
  )
  np.testing.assert_array_equal(out['norm']['scale'][...], params['norm']['scale'][...])


def test_load_tokenizer_reads_the_local_directory_and_chat_template(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  vocab = {'<pad>': 0, '<eos>': 1, 'hello': 2, 'world': 3, 'user': 4, '[UNK]': 5}
  tok = Tokenizer(models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>', eos_token='<eos>')
  fast.chat_template = '{% for m in messages %}user {{ m.content }} {% endfor %}'
  fast.save_pretrained(tmp_path)
  loaded = load_tokenizer(tmp_path)
  assert loaded('hello world')['input_ids'] == [2, 3]
  ids = loaded.apply_chat_template([{'role': 'user', 'content': 'hello'}], tokenize=True)
  ids = ids['input_ids'] if isinstance(ids, dict) or hasattr(ids, 'keys') else ids
  assert list(ids) == [4, 2]
