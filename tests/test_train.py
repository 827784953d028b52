"""Trainer: optimizer pieces, exact micro-batch accumulation, an end-to-end run whose reward
rises, resume equivalence and the resume config check."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _tiny_run import QUIET, tiny_cfg
from flax import nnx

from grpo_jax import config as C
from grpo_jax import presets
from grpo_jax import train as T
from grpo_jax.checkpoint import CheckpointStore
from grpo_jax.metrics import METRIC_KEYS, check_key, read_metrics
from grpo_jax.models import Decoder, model_preset


def test_weight_decay_mask_skips_norms_and_biases():
  cfg = model_preset('tiny', vocab_size=16, qkv_bias=True)
  _, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  mask = T.weight_decay_mask(params)
  skipped = {
    jax.tree_util.keystr(path)
    for path, decay in jax.tree_util.tree_leaves_with_path(mask)
    if not decay
  }
  expected = {
    f"['layers'][{i}]['{name}'].value"
    for i in range(2)
    for name in (
      "input_layernorm']['scale",
      "post_attention_layernorm']['scale",
      "self_attn']['q_proj']['bias",
      "self_attn']['k_proj']['bias",
      "self_attn']['v_proj']['bias",
    )
  } | {"['norm']['scale'].value"}
  assert skipped == expected
  assert len(jax.tree.leaves(mask)) == len(expected) + 1 + 2 * 7  # embedding, 7 matrices/layer


def test_schedules_pinned_values():
  o = C.OptimSection(lr=1.0, schedule='cosine', warmup_steps=2, decay_steps=6, min_lr_ratio=0.1)
  s = T.make_schedule(o)
  # Linear warm-up 0 -> 1 over 2 steps, then cosine from 1 to 0.1 over the next 4 steps.
  np.testing.assert_allclose(
    [float(s(i)) for i in (0, 1, 2, 4, 6)], [0, 0.5, 1, 0.55, 0.1], atol=1e-6
  )
  w = T.make_schedule(C.OptimSection(lr=2.0, schedule='warmup', warmup_steps=4))
  np.testing.assert_allclose([float(w(i)) for i in (0, 2, 4, 9)], [0, 1, 2, 2], atol=1e-6)


def test_sgd_is_heavy_ball_with_masked_decay():
  o = C.OptimSection(name='sgd', lr=0.1, momentum=0.9, weight_decay=0.5)
  tx = T.make_optimizer(o)
  params = {'w': jnp.array([[1.0, -2.0]]), 'b': jnp.array([3.0])}
  grads = {'w': jnp.array([[0.5, 0.5]]), 'b': jnp.array([1.0])}
  state = tx.init(params)
  p, v = {k: np.asarray(x) for k, x in params.items()}, {k: 0.0 for k in params}
  for _ in range(3):
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
    for k in p:  # v <- 0.9 v + (g + 0.5 w [matrices only]); w <- w - 0.1 v
      g = np.asarray(grads[k]) + (0.5 * p[k] if k == 'w' else 0.0)
      v[k] = 0.9 * v[k] + g
      p[k] = p[k] - 0.1 * v[k]
  for k in p:
    np.testing.assert_allclose(params[k], p[k], rtol=1e-6)


def _learner_batch(rows, n_new, prompt_len, seed):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, 16, size=(rows, prompt_len + n_new)).astype(np.int32)
  lengths = rng.integers(1, n_new + 1, size=rows)
  mask = np.arange(n_new)[None] < lengths[:, None]
  valid = np.concatenate([np.ones((rows, prompt_len), bool), mask], axis=1)
  valid[0, :2] = False  # a left-padded prompt
  return {
    'tokens': tokens,
    'valid': valid,
    'old_logp': np.where(mask, rng.normal(-2.5, 0.3, size=(rows, n_new)), 0).astype(np.float32),
    'mask': mask.astype(np.float32),
    'adv': rng.normal(size=rows).astype(np.float32),
  }


def test_micro_batch_accumulation_equals_full_batch():
  # Token-mean: micro-batches hold different token counts, so only Σ num / Σ den is exact.
  preset = 'dapo'
  cfg = model_preset('tiny', vocab_size=16)
  graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  loss = presets.get_preset(preset, kl_coef=0.0)
  grad_fn = jax.jit(T.make_grad_fn(graphdef, loss, prompt_len=5, temperature=1.0))
  batch = _learner_batch(8, 4, 5, seed=1)
  full = {k: v[None] for k, v in batch.items()}  # one micro-batch of 8 rows
  micro = {k: v.reshape(4, 2, *v.shape[1:]) for k, v in batch.items()}  # four of 2 rows
  g_full, aux_full = grad_fn(params, full)
  g_micro, aux_micro = grad_fn(params, micro)
  for a, b in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_micro)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(aux_full['loss'], aux_micro['loss'], rtol=1e-6)

  # And the full-batch gradient is the gradient of the preset's own num / den.
  def direct(p):
    logp, _ = T.completion_logprobs(
      graphdef, p, batch['tokens'], batch['valid'], prompt_len=5, temperature=1.0
    )
    num, den, _ = loss.objective(logp, batch['old_logp'], batch['adv'], batch['mask'])
    return num / den

  g_direct = jax.jit(jax.grad(direct))(params)
  for a, b in zip(jax.tree.leaves(g_direct), jax.tree.leaves(g_micro)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


STEPS = 8


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory):
  """An uninterrupted tiny run of STEPS rollout steps (shared by the tests below)."""
  path = tmp_path_factory.mktemp('reference')
  result = T.train(tiny_cfg(path, f'steps={STEPS}'), **QUIET)
  return path, result


def test_end_to_end_reward_rises_and_logs_documented_keys(reference_run):
  path, result = reference_run
  rows = read_metrics(path, kind='train')
  assert [r['step'] for r in rows] == list(range(1, STEPS + 1))
  rewards = [r['train/reward_mean'] for r in rows]
  assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.2, rewards
  for r in rows:
    for key in r:
      check_key(key)
  # GRPO: one backward pass per update; 8 prompts / mini-batch 4 = 2 updates per step.
  assert rows[-1]['updates'] == 2 * STEPS and rows[-1]['cum/backward_passes'] == 2 * STEPS
  assert rows[-1]['cum/samples'] == STEPS * 32
  for key in ('train/entropy', 'train/clip_frac', 'train/ratio_max', 'opt/grad_norm', 'opt/lr'):
    assert key in METRIC_KEYS and np.isfinite(rows[-1][key])
  evals = read_metrics(path, kind='eval')
  assert [r['step'] for r in evals] == [0, 4, 8]
  with CheckpointStore(path / 'checkpoints', read_only=True) as store:
    assert store.steps() == [0, 4, 8]
  assert json.loads((path / 'summary.json').read_text())['steps'] == result['steps'] == STEPS


def final_params(directory):
  with CheckpointStore(directory / 'checkpoints', read_only=True) as store:
    return store.restore_params()


def test_resumed_run_is_bitwise_equal_and_refuses_config_change(reference_run, tmp_path):
  T.train(tiny_cfg(tmp_path, 'steps=4'), **QUIET)
  T.train(tiny_cfg(tmp_path, f'steps={STEPS}'), **QUIET)  # a run-length change: resumes
  for a, b in zip(
    jax.tree.leaves(final_params(reference_run[0])), jax.tree.leaves(final_params(tmp_path))
  ):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match=r'optim\.lr'):
    T.train(tiny_cfg(tmp_path, f'steps={STEPS + 1}', 'optim.lr=2e-2'), **QUIET)


@pytest.mark.parametrize('rule, passes', [('sfpo', 4), ('gxpo', 3)])
def test_rule_from_config_counts_backward_passes(tmp_path, rule, passes):
  # SFPO costs K+1 = 4 backward passes per update while active, GXPO 3 (issue 6).
  T.train(tiny_cfg(tmp_path, 'steps=2', f'rule.name={rule}', 'rule.k=3'), **QUIET)
  rows = read_metrics(tmp_path, kind='train')
  assert [r['rule/active'] for r in rows] == [1.0, 1.0]
  assert [r['rule/backward_passes'] for r in rows] == [passes, passes]
  assert [r['cum/backward_passes'] for r in rows] == [2 * passes, 4 * passes]


@pytest.mark.slow
def test_local_hf_checkpoint_and_jsonl_dataset(tmp_path):
  from grpo_jax.models import export_hf
  from grpo_jax.tokenizer import TextTokenizer, char_tokenizer

  tok = TextTokenizer(char_tokenizer('0123456789+=? abhistw', path=tmp_path / 'ckpt'))
  cfg = model_preset('tiny', vocab_size=tok.vocab_size, eos_token_ids=tok.eos_ids)
  export_hf(Decoder(cfg, rngs=nnx.Rngs(0)), cfg, tmp_path / 'ckpt')
  data = tmp_path / 'train.jsonl'
  data.write_text(
    ''.join(json.dumps({'prompt': f'what is {a}+{a}?', 'answer': 2 * a}) + '\n' for a in range(24))
  )
  run = C.apply_overrides(
    C.cpu_tiny(),
    [
      f'model.path={tmp_path / "ckpt"}',
      'data.task=jsonl',
      f'data.path={data}',
      'data.held_out_size=8',
      'eval.size=8',
      'eval.avg_k=0',
      'sft.enabled=false',
      'steps=1',
      'batch.prompts_per_step=4',
      'batch.mini_batch=4',
      'batch.micro_batch=4',
      'batch.group_size=2',
      f'output_dir={tmp_path / "run"}',
    ],
  )
  trainer = T.Trainer(run, **QUIET)
  # The checkpoint's weights are the starting point, its tokenizer encodes the prompts.
  _, exported = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(trainer.init_params)):
    np.testing.assert_array_equal(a, b)
  assert trainer.tokenizer.eos_ids == tok.eos_ids
  result = trainer.run()
  assert result['steps'] == 1
  rows = read_metrics(tmp_path / 'run', kind='train')
  assert rows[0]['cum/samples'] == 8 and 'train/reward/correct' in rows[0]


def test_dynamic_sampling_drops_equal_reward_groups(tmp_path):
  dyn = T.Trainer(tiny_cfg(tmp_path / 'dyn', 'dynamic_sampling=true', 'max_extra_rollouts=6'))
  groups, cursor, extra, stats = dyn.rollout(dyn.init_params, 1, 0)
  base = T.Trainer(tiny_cfg(tmp_path / 'base'))
  first, base_cursor, base_extra, base_stats = base.rollout(base.init_params, 1, 0)
  # Without it, one round of 8 prompts is taken as it comes, equal-reward groups included.
  assert (base_cursor, base_extra, len(first)) == (8, 0, 8)
  zero_std = [np.ptp(g['rewards']) == 0 for g in first]
  assert base_stats['zero_std_groups'] == sum(zero_std) >= 1
  # With it, extra rounds of 8 prompts are drawn until 8 informative groups are kept.
  assert 1 <= extra <= 6 and cursor == 8 * (extra + 1) and stats['groups'] == cursor
  assert len(groups) == 8 and all(np.ptp(g['rewards']) > 0 for g in groups)
  # The first round is the same sample (keys depend on step, draw and sample index only).
  kept_first = [g for g, z in zip(first, zero_std) if not z]
  for a, b in zip(kept_first, groups):
    np.testing.assert_array_equal(a['tokens_BN'], b['tokens_BN'])


def test_prompts_carry_the_task_system_prompt(tmp_path):
  trainer = T.Trainer(tiny_cfg(tmp_path), **QUIET)
  plain_ids, _ = trainer.encode_prompts(['2+2='])
  trainer.task.system_prompt = '1+1='
  ids_BP, valid_BP = trainer.encode_prompts(['2+2='])
  # '\n' is not in the addition alphabet, so the separator decodes as a dropped <unk>.
  text = trainer.tokenizer.hf.decode(ids_BP[0][valid_BP[0]], skip_special_tokens=True)
  assert text == '1+1=2+2='
  assert ids_BP.shape[1] > plain_ids.shape[1]


def test_learner_batch_rejects_a_non_finite_reward(tmp_path):
  from grpo_jax.validation import BatchError

  trainer = T.Trainer(tiny_cfg(tmp_path), **QUIET)
  groups, *_ = trainer.rollout(trainer.init_params, 1, 0)
  trainer.learner_batch(trainer.init_params, groups)  # a clean batch passes
  groups[1]['rewards'] = np.where(np.arange(len(groups[1]['rewards'])) == 2, np.nan, 1.0)
  with pytest.raises(BatchError, match='finite'):
    trainer.learner_batch(trainer.init_params, groups)
