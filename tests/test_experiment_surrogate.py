"""experiments/surrogate.py on its tiny configuration: invariants of the printed table and JSON."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from grpo_jax.transforms import surrogate

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  spec = importlib.util.spec_from_file_location('surrogate_main', ROOT / 'experiments/surrogate.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = tmp_path_factory.mktemp('surrogate')
  results = module.main(['--quick', '--out', str(out)])
  return results, out


def numpy_spd_sgd_errors(config):
  """Independent numpy reference of the 'SPD, SGD' row: GD iterates and the S_K/S_2 scale."""
  with_x64 = surrogate.random_problems(config, diagonal=False)
  hess, theta0 = (np.asarray(a) for a in with_x64)
  out = {}
  for k in config.ks:
    errs = []
    for h, th0 in zip(hess, theta0, strict=True):
      traj = [th0]
      for _ in range(k):
        traj.append(traj[-1] - config.sgd_lr * h @ traj[-1])
      g0, g1 = h @ traj[0], h @ traj[1]
      g0s = np.where(g0 >= 0, 1.0, -1.0) * np.maximum(np.abs(g0), 1e-8)
      r = np.clip(g1 / g0s, -2, 3)
      s_k = sum(r**i for i in range(k))
      scale = np.where(np.abs(1 + r) > 1e-8, np.clip(s_k / (1 + r), 1, k / 2 + 1), 1.0)
      approx = th0 + scale * (traj[2] - th0)
      errs.append(np.linalg.norm(approx - traj[k]) / np.linalg.norm(traj[k] - th0))
    out[str(k)] = float(np.mean(errs))
  return out


def test_corollary_2_row_is_exact(quick_run):
  results, _ = quick_run
  for k, err in results['corollary2_max_abs_err'].items():
    assert err <= 1e-12, k
  for cell in results['rows']['diagonal_sgd'].values():
    assert cell['max'] <= 1e-12


def test_backward_passes_per_active_step_are_1_k_plus_1_and_3(quick_run):
  results, _ = quick_run
  for k, passes in results['backward_passes'].items():
    k = int(k)
    assert passes == {'plain': 1, 'sfpo': k + 1, 'lookahead': k + 1, 'gxpo': 3}


def test_spd_sgd_row_matches_a_numpy_reference(quick_run):
  results, _ = quick_run
  config = surrogate.SurrogateConfig(**{**results['config'], 'ks': tuple(results['config']['ks'])})
  ref = numpy_spd_sgd_errors(config)
  for k, mean in ref.items():
    np.testing.assert_allclose(results['rows']['spd_sgd'][k]['mean'], mean, rtol=1e-9)
    assert mean > 1e-6  # off-diagonal coupling makes the surrogate inexact


def test_paper_column_holds_only_the_papers_statements(quick_run):
  results, out = quick_run
  saved = json.loads((out / 'surrogate.json').read_text())
  assert saved['rows'] == results['rows']
  for row, cells in saved['paper'].items():
    for value in cells.values():
      assert value == ('exact (Cor. 2)' if row == 'diagonal_sgd' else 'n/a')
  assert (out / 'surrogate.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_table_layout_lists_every_setting_and_k(quick_run):
  results, _ = quick_run
  table = surrogate.format_table(results)
  for k in results['config']['ks']:
    assert f'K={k}' in table
  for title in ('diagonal, SGD', 'SPD 8-d, SGD', 'SPD 8-d, Adam', 'SPD 8-d, SGD + clip'):
    assert title in table
