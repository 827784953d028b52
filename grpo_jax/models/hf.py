"""Local Hugging Face checkpoints: config.json parsing, safetensors loading and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from grpo_jax.models.config import ModelConfig
from grpo_jax.models.decoder import Decoder
from grpo_jax.models.views import hf_layout, hf_tensor, leaf_path

ARCHITECTURES = {
  'LlamaForCausalLM': 'llama',
  'Qwen2ForCausalLM': 'qwen2',
  'Qwen3ForCausalLM': 'qwen3',
}

# Keys that do not change the function the checkpoint computes (bookkeeping, generation and
# training-framework switches). Anything not consumed below and not listed here is an error, so
# a new architectural switch is never silently dropped.
IGNORED_KEYS = frozenset({
  '_name_or_path', 'transformers_version', 'architectures', 'model_type', 'use_cache',
  'initializer_range', 'pretraining_tp', 'output_hidden_states', 'output_attentions',
  'return_dict', 'chunk_size_feed_forward', 'is_encoder_decoder', 'id2label', 'label2id',
  'problem_type', 'tokenizer_class', 'torchscript', 'use_bfloat16', 'tf_legacy_loss',
  'pruned_heads', 'add_cross_attention', 'cross_attention_hidden_size', 'finetuning_task',
  'prefix', 'sep_token_id', 'decoder_start_token_id', 'task_specific_params',
  'tie_encoder_decoder', 'is_decoder', 'max_window_layers', 'sliding_window', 'layer_types',
  'use_sliding_window', 'use_mrope', 'attention_dropout', 'mlp_bias', 'attention_bias',
  'hidden_act', 'rope_scaling', 'rope_theta', 'rope_parameters', 'torch_dtype', 'dtype',
  'bos_token_id', 'eos_token_id', 'pad_token_id', 'head_dim', 'num_key_value_heads',
  'max_position_embeddings', 'rms_norm_eps', 'tie_word_embeddings', 'vocab_size', 'hidden_size',
  'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'partial_rotary_factor',
})  # fmt: skip
_LLAMA3_KEYS = ('factor', 'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings')


def _fail(key: str, value, why: str):
  raise ValueError(f'config.json: {key}={value!r} is not supported: {why}')


def _rope(d: dict[str, Any]) -> tuple[float, tuple | None]:
  """(rope_theta, rope_scaling) from transformers-5 `rope_parameters` or 4.x top-level keys."""
  params = d.get('rope_parameters')
  if params is not None:
    if 'rope_theta' not in params:
      _fail('rope_parameters', params, 'it has no rope_theta')
    theta, scaling = params['rope_theta'], params
  else:
    theta, scaling = d.get('rope_theta', 10_000.0), d.get('rope_scaling')
  if scaling is None:
    return float(theta), None
  rope_type = scaling.get('rope_type', scaling.get('type', 'default'))
  key = 'rope_parameters' if params is not None else 'rope_scaling'
  if rope_type == 'default':
    return float(theta), None
  if rope_type != 'llama3':
    _fail(f'{key}.rope_type', rope_type, "only 'default' and 'llama3' RoPE are implemented")
  missing = [k for k in _LLAMA3_KEYS if k not in scaling]
  if missing:
    _fail(key, scaling, f'llama3 rope scaling needs {missing}')
  items = (('rope_type', 'llama3'),) + tuple((k, float(scaling[k])) for k in _LLAMA3_KEYS)
  return float(theta), tuple(sorted(items))


def _dtype_name(d: dict[str, Any]) -> str:
  name = d.get('dtype', d.get('torch_dtype')) or 'float32'
  name = str(name).removeprefix('torch.')
  if name not in ('float32', 'bfloat16', 'float16'):
    _fail('dtype', name, 'parameters must be float32, bfloat16 or float16')
  return name


def config_from_hf_dict(d: dict[str, Any], **overrides) -> ModelConfig:
  """A `ModelConfig` from a Hugging Face `config.json` dict.

  Reads both transformers-5 keys (`rope_parameters`, `dtype`) and 4.x keys (`rope_theta`,
  `rope_scaling`, `torch_dtype`). Keys in `IGNORED_KEYS` are accepted and dropped when harmless;
  a value we cannot honour raises a ValueError naming the key: an unknown architecture, sliding
  window attention, `mlp_bias`, a bias on the attention output, non-SiLU activations, dropout,
  or a RoPE type other than default/llama3.

  Args:
    d: the parsed config.json.
    **overrides: `ModelConfig` fields to set afterwards (e.g. param_dtype, remat, scan_layers).

  Returns:
    The config.
  """
  archs = d.get('architectures') or []
  arch = archs[0] if archs else None
  if arch is None:
    by_type = {v: k for k, v in ARCHITECTURES.items()}
    arch = by_type.get(d.get('model_type'))
    if arch is None:
      _fail('model_type', d.get('model_type'), f'expected one of {sorted(by_type)}')
  if arch not in ARCHITECTURES or len(archs) > 1:
    _fail('architectures', archs or arch, f'expected one of {sorted(ARCHITECTURES)}')
  family = ARCHITECTURES[arch]
  if d.get('model_type', family) != family:
    _fail('model_type', d['model_type'], f'{arch} needs model_type {family!r}')
  unknown = sorted(set(d) - IGNORED_KEYS)
  if unknown:
    raise ValueError(
      f'config.json: unknown keys {unknown}; add them to grpo_jax.models.hf.IGNORED_KEYS if '
      'they do not change the model'
    )
  if d.get('hidden_act', 'silu') != 'silu':
    _fail('hidden_act', d['hidden_act'], 'the MLP is SwiGLU (silu)')
  if d.get('mlp_bias', False):
    _fail('mlp_bias', d['mlp_bias'], 'MLP projections have no bias')
  if d.get('use_sliding_window', False):
    _fail('use_sliding_window', d['use_sliding_window'], 'only full attention is implemented')
  if d.get('use_mrope', False):
    _fail('use_mrope', d['use_mrope'], 'multimodal RoPE is not implemented')
  bad_layers = [t for t in d.get('layer_types') or [] if t != 'full_attention']
  if bad_layers:
    _fail('layer_types', sorted(set(bad_layers)), 'only full_attention layers are implemented')
  if family == 'llama' and d.get('sliding_window') is not None:
    _fail('sliding_window', d['sliding_window'], 'Llama has no sliding window')
  if d.get('attention_dropout', 0.0):
    _fail('attention_dropout', d['attention_dropout'], 'dropout is not implemented')
  if d.get('partial_rotary_factor', 1.0) != 1.0:
    _fail('partial_rotary_factor', d['partial_rotary_factor'], 'RoPE covers the whole head')
  if family in ('llama', 'qwen3') and d.get('attention_bias', False):
    _fail('attention_bias', d['attention_bias'], f'{arch} with biased attention projections')
  theta, scaling = _rope(d)
  dtype = _dtype_name(d)
  n_heads = d['num_attention_heads']
  eos = d.get('eos_token_id')
  eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
  try:
    fields = dict(
      vocab_size=d['vocab_size'],
      d_model=d['hidden_size'],
      n_layers=d['num_hidden_layers'],
      n_heads=n_heads,
      n_kv_heads=d.get('num_key_value_heads') or n_heads,
      head_dim=d.get('head_dim') or d['hidden_size'] // n_heads,
      d_ff=d['intermediate_size'],
    )
  except KeyError as e:
    raise ValueError(f'config.json: required key {e.args[0]!r} is missing') from None
  fields.update(
    rope_theta=theta,
    rope_scaling=scaling,
    rms_eps=float(d.get('rms_norm_eps', 1e-6)),
    tie_embeddings=bool(d.get('tie_word_embeddings', False)),
    qkv_bias=family == 'qwen2',
    qk_norm=family == 'qwen3',
    param_dtype=dtype,
    dtype=dtype,
    eos_token_ids=eos,
    bos_token_id=d.get('bos_token_id'),
    pad_token_id=d.get('pad_token_id'),
    max_position_embeddings=int(d.get('max_position_embeddings', 4096)),
    architecture=arch,
  )
  fields.update(overrides)
  return ModelConfig(**fields)


def config_to_hf_dict(cfg: ModelConfig) -> dict[str, Any]:
  """The transformers-5 `config.json` dict of `cfg` (inverse of `config_from_hf_dict`)."""
  family = ARCHITECTURES.get(cfg.architecture)
  if family is None:
    raise ValueError(f'ModelConfig.architecture {cfg.architecture!r} cannot be exported')
  want = {'llama': (False, False), 'qwen2': (True, False), 'qwen3': (False, True)}[family]
  if (cfg.qkv_bias, cfg.qk_norm) != want:
    raise ValueError(
      f'{cfg.architecture} needs qkv_bias={want[0]}, qk_norm={want[1]}; the config has '
      f'qkv_bias={cfg.qkv_bias}, qk_norm={cfg.qk_norm} (set ModelConfig.architecture)'
    )
  rope = {'rope_theta': cfg.rope_theta, 'rope_type': 'default'}
  if cfg.rope_scaling is not None:
    rope.update(cfg.rope_scaling_dict)
  eos = list(cfg.eos_token_ids)
  d = dict(
    architectures=[cfg.architecture],
    model_type=family,
    vocab_size=cfg.vocab_size,
    hidden_size=cfg.d_model,
    intermediate_size=cfg.d_ff,
    num_hidden_layers=cfg.n_layers,
    num_attention_heads=cfg.n_heads,
    num_key_value_heads=cfg.n_kv_heads,
    head_dim=cfg.head_dim,
    hidden_act='silu',
    max_position_embeddings=cfg.max_position_embeddings,
    rms_norm_eps=cfg.rms_eps,
    tie_word_embeddings=cfg.tie_embeddings,
    rope_parameters=rope,
    dtype=cfg.param_dtype,
    bos_token_id=cfg.bos_token_id,
    eos_token_id=(eos[0] if len(eos) == 1 else eos) if eos else None,
    pad_token_id=cfg.pad_token_id,
  )
  if family in ('llama', 'qwen3'):
    d['attention_bias'] = False
  if family == 'llama':
    d['mlp_bias'] = False
  else:
    d['use_sliding_window'] = False
  return d


def _weight_files(path: Path) -> dict[str, Path]:
  """HF tensor name -> safetensors file, from model.safetensors or a sharded index."""
  index = path / 'model.safetensors.index.json'
  single = path / 'model.safetensors'
  if index.is_file():
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
    return {name: path / file for name, file in weight_map.items()}
  if single.is_file():
    from safetensors import safe_open

    with safe_open(single, framework='numpy') as f:
      return dict.fromkeys(f.keys(), single)
  others = sorted(p.name for p in path.glob('*.bin')) + sorted(p.name for p in path.glob('*.pt'))
  hint = f' (found {others}: pickle checkpoints are not loaded)' if others else ''
  raise FileNotFoundError(f'no model.safetensors or model.safetensors.index.json in {path}{hint}')


def _is_ignorable(name: str, cfg: ModelConfig) -> bool:
  # Old checkpoints store the RoPE table; a tied checkpoint may still carry lm_head.weight.
  return name.endswith('rotary_emb.inv_freq') or (cfg.tie_embeddings and name == 'lm_head.weight')


def load_hf(
  path, *, mesh=None, dtype: str | None = None, **overrides
) -> tuple[Decoder, ModelConfig]:
  """Loads a local Hugging Face checkpoint directory into a `Decoder`.

  Each tensor is read from safetensors on the host, converted to our layout and dtype, and
  placed straight onto its sharding (its role's `param_partition_spec` on `mesh`, or the
  default device without a mesh), so no device ever holds a full copy of a sharded weight.

  Args:
    path: directory with config.json and model.safetensors (or a sharded index).
    mesh: optional mesh from `grpo_jax.sharding.make_mesh`.
    dtype: parameter and compute dtype override ('float32', 'bfloat16'); default: checkpoint's.
    **overrides: other `ModelConfig` fields (e.g. remat=True, scan_layers=True).

  Returns:
    (model, cfg).

  Raises:
    ValueError: listing every missing, unexpected or mis-shaped tensor with both shapes.
  """
  from safetensors import safe_open

  from grpo_jax.sharding import param_shardings

  path = Path(path)
  if dtype is not None:
    overrides = {'param_dtype': dtype, 'dtype': dtype, **overrides}
  cfg = ModelConfig.from_pretrained(path, **overrides)
  files = _weight_files(path)
  layout = hf_layout(cfg)
  expected = {t.name: t for t in layout}

  shapes = {}
  for file in sorted(set(files.values())):
    with safe_open(file, framework='numpy') as f:
      for name in f.keys():
        shapes[name] = tuple(f.get_slice(name).get_shape())
  problems = [
    f'missing tensor {n} (expected shape {t.hf_shape})'
    for n, t in expected.items()
    if n not in shapes
  ]
  problems += [
    f'unexpected tensor {n} (shape {s})'
    for n, s in shapes.items()
    if n not in expected and not _is_ignorable(n, cfg)
  ]
  problems += [
    f'tensor {n} has shape {shapes[n]} in the checkpoint but the config needs {t.hf_shape}'
    for n, t in expected.items()
    if n in shapes and shapes[n] != t.hf_shape
  ]
  if problems:
    raise ValueError(
      f'checkpoint {path} does not match its config.json:\n  ' + '\n  '.join(problems)
    )

  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  pure = nnx.to_pure_dict(abstract_state)
  by_leaf: dict[tuple, list] = {}
  for t in layout:
    by_leaf.setdefault(leaf_path(cfg, t), []).append(t)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, pure)
  else:
    shardings = nnx.to_pure_dict(param_shardings(abstract_state, mesh))
  param_dtype = cfg.jnp_param_dtype

  handles = {}

  def read(name):
    file = files[name]
    if file not in handles:
      handles[file] = safe_open(file, framework='numpy')
    return handles[file].get_tensor(name)

  def lookup(tree, key_path):
    for k in key_path:
      tree = tree[k]
    return tree

  try:
    for key_path, tensors in by_leaf.items():
      leaf = lookup(pure, key_path)
      parts = [np.asarray(t.to_ours(read(t.name))).astype(param_dtype) for t in tensors]
      host = np.stack(parts) if cfg.scan_layers and tensors[0].layer is not None else parts[0]
      if host.shape != leaf.shape:
        raise AssertionError(f'{key_path}: built {host.shape}, expected {leaf.shape}')
      value = jax.make_array_from_callback(
        host.shape, lookup(shardings, key_path), lambda index, host=host: host[index]
      )
      parent = lookup(pure, key_path[:-1])
      parent[key_path[-1]] = value
  finally:
    handles.clear()
  nnx.replace_by_pure_dict(abstract_state, pure)
  return nnx.merge(graphdef, abstract_state), cfg


def export_hf(model: Decoder, cfg: ModelConfig, path, *, dtype: str | None = None) -> Path:
  """Writes config.json and model.safetensors in the Hugging Face layout (transformers loads it).

  Args:
    model: the decoder (parameters must be addressable from this process).
    cfg: its config.
    path: output directory (created).
    dtype: tensor dtype in the file; default `cfg.param_dtype`.

  Returns:
    The directory.
  """
  from safetensors.numpy import save_file

  from grpo_jax.models.config import _DTYPES

  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  hf = config_to_hf_dict(cfg)
  dtype = dtype or cfg.param_dtype
  hf['dtype'] = dtype
  # Host numpy first: the layout changes are then numpy views, not one device op per tensor.
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  tensors = {}
  for t in hf_layout(cfg):
    value = hf_tensor(cfg, params, t)
    tensors[t.name] = np.ascontiguousarray(value.astype(_DTYPES[dtype]))
  save_file(tensors, path / 'model.safetensors', metadata={'format': 'pt'})
  with open(path / 'config.json', 'w') as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  return path


def load_tokenizer(path):
  """`transformers.AutoTokenizer` from a local directory (no hub access, no remote code)."""
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
