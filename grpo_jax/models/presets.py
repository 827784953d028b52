"""Small model presets for CPU work, tests and benchmarks."""

from __future__ import annotations

from grpo_jax.models.config import ModelConfig

_PRESETS: dict[str, dict] = {
  # The trainer's default for CPU experiments: tied, GQA 4:2.
  'tiny': dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128),
  'small': dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=384),
  # bench/train_step.py's medium CPU config (issue 4): D=512, 8 layers.
  'medium': dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=8, head_dim=64, d_ff=1536),
}

PRESET_NAMES = tuple(_PRESETS)


def model_preset(name: str, **overrides) -> ModelConfig:
  """A preset config; `vocab_size` (and any other field) comes from `overrides`.

  Args:
    name: one of `PRESET_NAMES`.
    **overrides: `ModelConfig` fields; `vocab_size` is required.

  Returns:
    The config.
  """
  if name not in _PRESETS:
    raise ValueError(f'unknown model preset {name!r}; choose from {PRESET_NAMES}')
  if 'vocab_size' not in overrides:
    raise ValueError(f'model_preset({name!r}) needs vocab_size=...')
  fields = {**_PRESETS[name], **overrides}
  return ModelConfig(**fields)
