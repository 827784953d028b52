"""Metrics: documented keys only, JSONL + TensorBoard rows, last row per step, figure."""

import json
import os

import numpy as np
import pytest

from grpo_jax import metrics as M


def test_writer_rejects_undocumented_keys(tmp_path):
  with M.MetricsWriter(tmp_path, tensorboard=False) as w:
    with pytest.raises(KeyError, match='train/rewardmean'):
      w.write({'step': 1, 'train/rewardmean': 0.5})
    w.write({'step': 1, 'train/reward/correct': 0.5, 'rule/g0_norm': 1.0})
    with pytest.raises(ValueError, match='needs a `step`'):
      w.write({'train/reward_mean': 0.5})


def test_reader_keeps_last_row_per_step_and_kind(tmp_path):
  with M.MetricsWriter(tmp_path, tensorboard=True) as w:
    for step in (1, 2, 3):
      w.write({'step': step, 'train/reward_mean': float(step)})
    w.write({'step': 2, 'eval/greedy_acc': 0.25})
    # A resumed run logs steps 2 and 3 again.
    for step in (2, 3):
      w.write({'step': step, 'train/reward_mean': 10.0 * step})
    w.write({'step': 2, 'eval/greedy_acc': 0.5})
  train = M.read_metrics(tmp_path, kind='train')
  assert [(r['step'], r['train/reward_mean']) for r in train] == [(1, 1.0), (2, 20.0), (3, 30.0)]
  evals = M.read_metrics(tmp_path, kind='eval')
  assert [(r['step'], r['eval/greedy_acc']) for r in evals] == [(2, 0.5)]
  assert len(M.read_metrics(tmp_path)) == 4
  assert any(name.startswith('events') for name in os.listdir(tmp_path / 'tb'))


def test_reader_skips_torn_last_line_and_names_bad_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(json.dumps({'step': 1, 'train/reward_mean': 1.0}) + '\n{"step": 2, "tr')
  assert [r['step'] for r in M.read_metrics(path)] == [1]
  path.write_text('{"step": 1,\n' + json.dumps({'step': 2, 'train/reward_mean': 1.0}) + '\n')
  with pytest.raises(ValueError, match='metrics.jsonl:1'):
    M.read_metrics(path)


def test_values_become_python_scalars(tmp_path):
  with M.MetricsWriter(tmp_path, tensorboard=False) as w:
    row = w.write({'step': np.int32(4), 'train/reward_mean': np.float32(0.25)})
  assert row == {'step': 4, 'train/reward_mean': 0.25}
  assert type(row['step']) is int and type(row['train/reward_mean']) is float


def test_summary_is_mean_of_last_three_evals():
  rows = [{'step': s, 'eval/greedy_acc': a} for s, a in enumerate([0.1, 0.2, 0.3, 0.5, 0.7])]
  assert M.summarize(rows) == pytest.approx(0.5)


def test_plot_run_writes_png(tmp_path):
  with M.MetricsWriter(tmp_path, tensorboard=False) as w:
    for step in range(3):
      w.write({'step': step, 'train/reward_mean': 0.1 * step})
      w.write({'step': step, 'eval/greedy_acc': 0.2 * step, 'eval/avg_at_k': 0.1 * step})
  path = M.plot_run(tmp_path)
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
