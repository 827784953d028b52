"""The GXPO tables (experiments/gxpo_table.py): curve helpers, table logic on synthetic runs
with hand-computed answers, and a tiny real study whose backward passes follow the accounting
(GRPO 1, SFPO K+1, GXPO 3 per step while active), which shares SFT and resumes."""

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from grpo_jax import config as C
from grpo_jax.metrics import MetricsWriter, read_metrics
from grpo_jax.presets import get_preset
from grpo_jax.studies import common, gxpo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _entry_point():
  spec = importlib.util.spec_from_file_location(
    'gxpo_table', ROOT / 'experiments' / 'gxpo_table.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ----------------------------------------------------------------------------- helpers


def test_smooth_is_a_centred_moving_average_shrinking_at_the_ends():
  y = [0.0, 3.0, 6.0, 3.0, 9.0]
  # By hand: [mean(0,3), mean(0,3,6), mean(3,6,3), mean(6,3,9), mean(3,9)].
  np.testing.assert_allclose(common.smooth(y, window=3), [1.5, 3.0, 4.0, 6.0, 6.0])
  np.testing.assert_allclose(common.smooth(y, window=1), y)
  # Width 5 at index 0 averages y[0:3], at index 2 all five.
  np.testing.assert_allclose(common.smooth(y, window=5)[[0, 2]], [3.0, 4.2])
  with pytest.raises(ValueError, match='window'):
    common.smooth(y, window=2)


def test_seed_average_keeps_shared_x_and_first_reach():
  x, mean, std = common.seed_average(
    [([0, 10, 20], [0.1, 0.3, 0.5]), ([0, 10, 30], [0.3, 0.5, 0.9])]
  )
  np.testing.assert_allclose(x, [0, 10])
  np.testing.assert_allclose(mean, [0.2, 0.4])
  np.testing.assert_allclose(std, [0.1, 0.1])
  assert common.first_reach([0, 10, 20], [0.1, 0.4, 0.6], 0.4) == 10
  assert common.first_reach([0, 10, 20], [0.1, 0.4, 0.6], 0.61) is None
  with pytest.raises(ValueError, match='share no x'):
    common.seed_average([([0], [1.0]), ([1], [1.0])])


def test_format_table_sets_paper_beside_ours_and_na_where_none():
  text = common.format_table(
    'T', ['a', 'b'], [('GRPO', ['1', '2']), ('GXPO', ['3', '4'])], paper={'GXPO': ['9', None]}
  )
  lines = text.splitlines()
  grpo = next(line for line in lines if line.startswith('GRPO'))
  gxpo_line = next(line for line in lines if line.startswith('GXPO'))
  assert grpo.split() == ['GRPO', '1', '|', 'n/a', '2', '|', 'n/a']
  assert gxpo_line.split() == ['GXPO', '3', '|', '9', '4', '|', 'n/a']
  with pytest.raises(ValueError, match="row 'X' has 1 cells"):
    common.format_table('T', ['a', 'b'], [('X', ['1'])])


def test_write_json_is_strict_json(tmp_path):
  path = common.write_json(
    tmp_path / 'a.json', {'x': np.float32(1.5), 'y': [float('nan')], 'z': np.arange(2)}
  )
  text = pathlib.Path(path).read_text()
  assert json.loads(text) == {'x': 1.5, 'y': [None], 'z': [0, 1]}
  assert 'NaN' not in text


# ----------------------------------------------------------------------------- analysis


def _synthetic_spec():
  base = C.apply_overrides(C.cpu_tiny(), ['steps=4', 'eval.every=1', 'sft.enabled=false'])
  R = C.RuleSection
  methods = (
    gxpo.Method('grpo', 'GRPO', R(name='grpo')),
    gxpo.Method('gxpo_k3', 'GXPO3', R(name='gxpo', k=3, alpha=0.5)),
    gxpo.Method('sfpo_k3', 'SFPO3', R(name='sfpo', k=3, alpha=0.8)),
  )
  return gxpo.StudySpec(
    name='synthetic', base=base, methods=methods, seeds=(0, 1), smooth_window=1, final_evals=2
  )


# Per method: greedy accuracy at steps 0..4 for seeds 0 and 1, per-step backward passes, and
# per-step seconds (rollout + update). Seed means: GRPO [.1 .2 .3 .5 .4] peaks at .5 on step 3;
# GXPO [.1 .3 .5 .5 .6] first reaches .5 on step 2; SFPO [.1 .2 .3 .4 .45] never does.
SYNTHETIC = {
  'grpo': (
    [[0.1, 0.2, 0.3, 0.6, 0.4], [0.1, 0.2, 0.3, 0.4, 0.4]],
    [1, 1, 1, 1],
    [1.0, 1.0, 1.0, 1.0],
  ),
  'gxpo_k3': (
    [[0.1, 0.3, 0.5, 0.5, 0.6], [0.1, 0.3, 0.5, 0.5, 0.6]],
    [3, 3, 1, 1],
    [2.0, 2.0, 1.0, 1.0],
  ),
  'sfpo_k3': (
    [[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.4]],
    [4, 4, 4, 4],
    [3.0, 3.0, 3.0, 3.0],
  ),
}


def _write_synthetic(spec, out):
  for m in spec.methods:
    acc, passes, seconds = SYNTHETIC[m.key]
    for i, seed in enumerate(spec.seeds):
      directory = gxpo.run_config(spec, out, m, seed).output_dir
      with MetricsWriter(directory, tensorboard=False) as w:
        w.write({'step': 0, 'eval/greedy_acc': acc[i][0], 'eval/avg_at_k': acc[i][0] / 2})
        cum = 0
        for step in range(1, 5):
          cum += passes[step - 1]
          active = m.key != 'grpo' and (m.key == 'sfpo_k3' or step < 2)  # GXPO trips at step 2
          w.write(
            {
              'step': step,
              'train/reward_mean': 0.0,
              'cum/backward_passes': cum,
              'cum/samples': 512 * step,
              'cum/tokens': 2000 * step,
              'time/rollout_s': seconds[step - 1] / 2,
              'time/update_s': seconds[step - 1] / 2,
              'rule/active': float(active),
              'rule/fallbacks': 0.0,
            }
          )
          w.write(
            {'step': step, 'eval/greedy_acc': acc[i][step], 'eval/avg_at_k': acc[i][step] / 2}
          )


def test_analysis_reads_peak_reach_and_speedups_by_hand(tmp_path):
  spec = _synthetic_spec()
  _write_synthetic(spec, str(tmp_path))
  res = gxpo.analyze(spec, str(tmp_path))
  assert res['grpo_peak'] == {'greedy_acc': pytest.approx(0.5), 'step': 3.0}
  g, x, s = (res['methods'][k] for k in ('grpo', 'gxpo_k3', 'sfpo_k3'))
  assert g['reach'] == {
    'step': 3.0,
    'rollouts': 1536.0,
    'tokens': 6000.0,
    'backward_passes': 3.0,
    'time_s': 3.0,
  }
  # GXPO: step 2 = 1024 rollouts, 3 + 3 passes, 2 + 2 seconds.
  assert x['reach'] == {
    'step': 2.0,
    'rollouts': 1024.0,
    'tokens': 4000.0,
    'backward_passes': 6.0,
    'time_s': 4.0,
  }
  assert x['speedup']['step'] == pytest.approx(1.5)
  assert x['speedup']['backward_passes'] == pytest.approx(0.5)
  assert x['speedup']['time_s'] == pytest.approx(0.75)
  assert s['reach']['step'] is None and s['speedup']['step'] is None
  # Final = mean of the last 2 evaluations per seed; mean ± std over seeds.
  assert g['final_greedy']['mean'] == pytest.approx(0.45) and g['final_greedy'][
    'std'
  ] == pytest.approx(0.05)
  assert s['final_avg_at_k']['mean'] == pytest.approx(0.2125)
  assert [
    g['backward_pass_audit_ok'],
    x['backward_pass_audit_ok'],
    s['backward_pass_audit_ok'],
  ] == [True] * 3
  assert x['active_steps'] == [2, 2]  # the tripping step keeps its three passes
  t2 = res['tables']['table2']
  rows = dict((label, cells) for label, cells in t2['rows'])
  assert rows['SFPO3'][0] == 'not reached' and rows['SFPO3'][5] == 'not reached'
  assert rows['GXPO3'][:5] == ['2', '1,024', '4,000', '6', '4.0']
  assert rows['GXPO3'][5] == '1.50x'
  # The paper gives no absolute counts: every such cell is None (printed "n/a").
  assert t2['paper']['GXPO3'][:5] == [None] * 5 and 'GRPO' not in t2['paper']
  text = gxpo.format_tables(res)
  assert 'not reached | 3.2-4.9x' in text and '1.50x | up to 4.00x' in text


def test_step_times_replace_compile_outliers_per_pass_count():
  # Steps 1-2 compile (10 s); active steps (4 passes) take 0.4 s, after shutoff (1) 0.1 s.
  secs = [10.0, 10.0, 0.4, 0.4, 0.4, 0.1, 0.1, 0.1, 0.1]
  passes = [4, 4, 4, 4, 4, 1, 1, 1, 1]
  cum = np.cumsum(passes)
  rows = [
    {'time/rollout_s': t / 2, 'time/update_s': t / 2, 'cum/backward_passes': c}
    for t, c in zip(secs, cum)
  ]
  seconds, n = gxpo.step_times(rows)
  assert n == 2  # 0.4 s steps are 4x the 0.1 s ones and are kept
  np.testing.assert_allclose(seconds, [0.4, 0.4, 0.4, 0.4, 0.4, 0.1, 0.1, 0.1, 0.1])


def test_audit_flags_a_wrong_backward_pass_count():
  method = gxpo.Method('gxpo_k3', 'GXPO3', C.RuleSection(name='gxpo', k=3, alpha=0.5))
  rows = [
    {'cum/backward_passes': 3, 'rule/active': 1.0, 'rule/fallbacks': 0},
    {'cum/backward_passes': 5, 'rule/active': 1.0, 'rule/fallbacks': 0},  # 2 passes: wrong
  ]
  audit = gxpo.backward_pass_audit(rows, method, updates_per_step=1)
  assert audit['passes'] == [3.0, 2.0] and audit['expected'] == [3, 3] and not audit['ok']


def test_study_refuses_a_different_recipe_in_the_same_directory(tmp_path):
  spec = _synthetic_spec()
  gxpo._check_spec(spec, str(tmp_path))
  # More steps, more seeds or fewer methods: the same study, continued.
  longer = C.apply_overrides(spec.base, ['steps=9'])
  gxpo._check_spec(dataclasses.replace(spec, base=longer, seeds=(0, 1, 2)), str(tmp_path))
  gxpo._check_spec(dataclasses.replace(spec, methods=spec.methods[:1]), str(tmp_path))
  saved = common.read_json(tmp_path / 'study.json')
  assert saved['seeds'] == [0, 1, 2] and len(saved['methods']) == 3
  with pytest.raises(ValueError, match=r"differs in \['optim'\]"):
    gxpo._check_spec(
      dataclasses.replace(spec, base=C.apply_overrides(spec.base, ['optim.lr=1e-3'])),
      str(tmp_path),
    )
  changed = gxpo.Method('gxpo_k3', 'GXPO3', C.RuleSection(name='gxpo', k=5, alpha=0.5))
  with pytest.raises(ValueError, match="method 'gxpo_k3' had rule"):
    gxpo._check_spec(dataclasses.replace(spec, methods=(spec.methods[0], changed)), str(tmp_path))


def test_paper_preset_is_the_papers_protocol_from_local_paths(tmp_path):
  spec = gxpo.paper_spec(model_path=str(tmp_path / 'qwen'), data_path=str(tmp_path / 'd.jsonl'))
  b = spec.base
  assert (b.batch.prompts_per_step, b.batch.group_size, b.batch.mini_batch) == (64, 8, 16)
  assert (b.optim.name, b.optim.lr, b.loss.kl_coef, b.sft.enabled) == ('adamw', 1e-6, 0.0, False)
  assert get_preset(b.loss.preset).normalize == 'mean'  # mean-only advantages
  assert [m.rule for m in spec.methods] == [m.rule for m in gxpo.default_methods()]
  with pytest.raises(FileNotFoundError, match='model.path'):
    gxpo.run_study(spec, str(tmp_path / 'study'), log=lambda m: None)


# ----------------------------------------------------------------------------- a real study


@pytest.fixture
def fast_compile():
  """XLA without most optimisations: the tiny study is compile-bound, not compute-bound.

  The flag is not part of jit's cache key, so the caches are cleared on the way out: an
  unoptimised executable left behind would be reused by later tests in this process and
  round differently from a fresh compile (a bitwise resume check then fails).
  """
  old = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', old)
  jax.clear_caches()


def _passes_per_step(rows):
  cum = [r['cum/backward_passes'] for r in rows]
  return np.diff([0.0, *cum]).tolist()


def _check_run_accounting(out, method, seed, *, k):
  rows = read_metrics(out / 'runs' / method / f'seed{seed}', kind='train')
  passes = _passes_per_step(rows)
  active = [r['rule/active'] for r in rows]
  assert all(r['rule/fallbacks'] == 0 for r in rows if 'rule/fallbacks' in r)
  if method == 'grpo':
    assert passes == [1.0] * len(rows)
  elif method.startswith('sfpo'):
    # The entropy trigger needs a window of 30 entropies: active throughout a short run.
    assert active == [1.0] * len(rows) and passes == [k + 1.0] * len(rows)
  else:
    # Active before a step -> 3 passes (the tripping step included); 1 after shutoff.
    before = [1.0, *active[:-1]]
    assert passes == [3.0 if a else 1.0 for a in before]
    assert passes[0] == 3.0
  return rows


def test_tiny_study_accounting_shared_sft_tables_and_resume(tmp_path, capsys, fast_compile):
  main = _entry_point().main
  argv = ['--preset', 'quick', '--out', str(tmp_path), '--seeds', '0', '1', '--steps', '4']
  argv += ['--methods', 'grpo', 'sfpo_k3', 'gxpo_k3']
  res = main(argv)
  for seed in (0, 1):
    _check_run_accounting(tmp_path, 'grpo', seed, k=1)
    _check_run_accounting(tmp_path, 'sfpo_k3', seed, k=3)
    _check_run_accounting(tmp_path, 'gxpo_k3', seed, k=3)
    # One SFT per seed, in the shared directory; the runs have none of their own, and every
    # method's step-0 evaluation sees the same warm-started params.
    assert (tmp_path / 'sft' / f'seed{seed}' / 'sft' / 'checkpoints').is_dir()
    step0 = set()
    for m in ('grpo', 'sfpo_k3', 'gxpo_k3'):
      assert not (tmp_path / 'runs' / m / f'seed{seed}' / 'sft').exists()
      evals = read_metrics(tmp_path / 'runs' / m / f'seed{seed}', kind='eval')
      step0.add((evals[0]['step'], evals[0]['eval/greedy_acc'], evals[0]['eval/avg_at_k']))
    assert len(step0) == 1
  saved = json.loads((tmp_path / 'gxpo_table.json').read_text())
  assert saved == json.loads(json.dumps(res))
  assert (tmp_path / 'gxpo_table.png').stat().st_size > 0
  labels = [m.label for m in gxpo.default_methods()[:3]]
  for name, ncol in (('table1', 8), ('table2', 9)):
    table = saved['tables'][name]
    assert [row[0] for row in table['rows']] == labels
    assert all(len(row[1]) == ncol == len(table['columns']) for row in table['rows'])
  assert saved['tables']['table1']['rows'][0][1][3] == '1'
  assert [r[1][3] for r in saved['tables']['table1']['rows']] == ['1', '4', '3']
  for m in saved['methods'].values():
    assert m['backward_pass_audit_ok'] and m['steps_run'] == [4, 4]
    assert math.isfinite(m['final_greedy']['mean']) and m['final_greedy']['n'] == 2
  # Resume. A finished study trains nothing (no metrics row appended) and gives the same
  # tables; a run killed after step 4 was logged but before its checkpoint and summary were
  # written resumes from its step-3 checkpoint, reusing the seed's SFT, and ends the same.
  sizes = {p: p.stat().st_size for p in tmp_path.glob('runs/*/seed*/metrics.jsonl')}
  capsys.readouterr()
  again = main(argv)
  assert {p: p.stat().st_size for p in sizes} == sizes
  assert again['tables'] == res['tables']
  killed = tmp_path / 'runs' / 'gxpo_k3' / 'seed1'
  shutil.rmtree(killed / 'checkpoints' / '4')
  os.remove(killed / 'summary.json')
  capsys.readouterr()
  resumed = main(argv)
  log = capsys.readouterr().out
  assert 'resuming' in log and 'from step 3' in log and 'warm start' not in log
  assert log.count('finished, skipped') == 5
  assert [r['step'] for r in read_metrics(killed, kind='train')] == [1, 2, 3, 4]
  for key in ('grpo_peak',):
    assert resumed[key] == res[key]
  for m in res['methods']:
    for key in ('final_greedy', 'final_avg_at_k', 'backward_passes_total', 'active_steps'):
      assert resumed['methods'][m][key] == res['methods'][m][key], (m, key)
    assert resumed['methods'][m]['reach']['step'] == res['methods'][m]['reach']['step']
