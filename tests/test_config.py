"""Config: presets, overrides, field validation, batch geometry and resume compatibility."""

import pytest

from grpo_jax import config as C


def test_default_preset_is_cpu_tiny_recipe():
  cfg = C.parse_args([])
  assert cfg == C.cpu_tiny()
  assert (cfg.batch.prompts_per_step, cfg.batch.group_size) == (64, 8)
  assert cfg.batch.updates_per_rollout == 1
  assert cfg.optim.lr == 1e-4 and cfg.loss.kl_coef == 0.0


def test_paper_preset_recipe():
  cfg = C.parse_args(['--preset', 'paper'])
  assert (cfg.batch.prompts_per_step, cfg.batch.group_size, cfg.batch.mini_batch) == (64, 8, 16)
  assert cfg.optim.lr == 1e-6 and cfg.loss.kl_coef == 0.0
  assert cfg.batch.refresh_interval == 4


def test_overrides_are_typed():
  cfg = C.parse_args(
    [
      'optim.lr=2e-4',
      'batch.group_size=4',
      'steps=7',
      'data.rewards=correct,format',
      'data.reward_weights=1,0.5',
      'optim.max_grad_norm=none',
      'dynamic_sampling=true',
    ]
  )
  assert cfg.optim.lr == 2e-4 and isinstance(cfg.optim.lr, float)
  assert cfg.batch.group_size == 4 and cfg.steps == 7
  assert cfg.data.rewards == ('correct', 'format')
  assert cfg.data.reward_weights == (1.0, 0.5)
  assert cfg.optim.max_grad_norm is None
  assert cfg.dynamic_sampling is True


@pytest.mark.parametrize(
  'override, field',
  [
    ('optim.lrr=1', 'optim.lrr'),
    ('nosuch.lr=1', 'nosuch.lr'),
    ('stepz=3', 'stepz'),
    ('optim=3', 'optim'),
  ],
)
def test_unknown_field_is_named(override, field):
  with pytest.raises(ValueError, match=f'`{field}`'):
    C.parse_args([override])


@pytest.mark.parametrize(
  'override, field',
  [
    ('optim.lr=-1', 'optim.lr'),
    ('optim.name=adam', 'optim.name'),
    ('batch.group_size=1', 'batch.group_size'),
    ('batch.group_size=two', 'batch.group_size'),
    ('steps=1.5', 'steps'),
    ('rule.name=ppo', 'rule.name'),
    ('rule.alpha=1.5', 'rule.alpha'),
    ('sampler.top_p=0', 'sampler.top_p'),
    ('loss.kl_estimator=k4', 'loss.kl_estimator'),
    ('eval.size=4096', 'eval.size'),
  ],
)
def test_invalid_value_is_named(override, field):
  with pytest.raises(ValueError, match=f'`{field}`'):
    C.parse_args([override])


def test_geometry_rejects_inconsistent_sizes_naming_numbers():
  with pytest.raises(ValueError, match='prompts_per_step=64 is not a multiple of mini_batch=24'):
    C.BatchGeometry(prompts_per_step=64, mini_batch=24, micro_batch=8)
  with pytest.raises(ValueError, match='mini_batch=16 is not a multiple of micro_batch=6'):
    C.BatchGeometry(prompts_per_step=64, mini_batch=16, micro_batch=6)


def test_geometry_counts_and_table():
  g = C.BatchGeometry(prompts_per_step=64, group_size=8, mini_batch=16, micro_batch=4, epochs=2)
  assert g.sequences == 512
  assert g.micro_steps == 4
  # 64 / 16 = 4 updates per epoch, 2 epochs: the sampler refreshes every 8 updates.
  assert g.updates_per_rollout == 8 and g.refresh_interval == 8
  table = g.table(prompt_len=9, max_new_tokens=6)
  rows = {k.strip(): int(v) for k, v in (line.rsplit(None, 1) for line in table.splitlines())}
  assert rows['tokens per rollout (max)'] == 512 * 15
  assert rows['refresh interval d (updates)'] == 8


def test_dict_round_trip_and_unknown_key():
  cfg = C.parse_args(['rule.name=gxpo', 'data.rewards=correct,format'])
  assert C.TrainConfig.from_dict(cfg.to_dict()) == cfg
  d = cfg.to_dict()
  d['optim']['bogus'] = 1
  with pytest.raises(ValueError, match='`optim.bogus`'):
    C.TrainConfig.from_dict(d)


def test_resume_accepts_only_run_length_changes():
  saved = C.cpu_tiny()
  C.check_resume_compatible(saved, C.apply_overrides(saved, ['steps=800', 'sft.max_steps=10']))
  with pytest.raises(ValueError, match=r'optim\.lr: 0\.0001 -> 0\.0002'):
    C.check_resume_compatible(saved, C.apply_overrides(saved, ['optim.lr=2e-4', 'steps=800']))
