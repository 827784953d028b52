"""The bandit-table experiment at its tiny configuration: invariants of its tables."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load():
  spec = importlib.util.spec_from_file_location(
    'bandit_table', ROOT / 'experiments/bandit_table.py'
  )
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope='module')
def result(tmp_path_factory):
  out = tmp_path_factory.mktemp('bandit_table')
  res = _load().main(['--quick', '--out', str(out)])
  return out, res


def test_outputs_written(result):
  out, res = result
  on_disk = json.loads((out / 'bandit_table.json').read_text())
  assert set(on_disk) == {'spec', 'onset', 'threshold', 'group_mean', 'group_variance', 'verdicts'}
  for name in ('onset.png', 'threshold.png', 'group.png'):
    assert (out / name).stat().st_size > 1000


def test_measured_threshold_equals_floquet_and_brute_force_radii(result):
  _, res = result
  for row in res['threshold']:
    # The brute-force bandit threshold is the Floquet one (PAPERS.md §5) ...
    assert row['d_measured'] == row['d_floquet']
    # ... near the stability boundary, where the threshold is decided, the growth per period
    # read from a finite run is the monodromy radius (far from it the deviation leaves the
    # linear or the above-round-off range within a few periods, too few to read a rate) ...
    meas = np.array([np.nan if v is None else v for v in row['radius_measured']])
    floq = np.array(row['radius_floquet'])
    ok = np.isfinite(meas) & (meas > 0)
    assert ok.sum() >= len(floq) - 1
    near = ok & (np.abs(floq - 1) < 0.2)
    np.testing.assert_allclose(meas[near], floq[near], rtol=0.02)
    # ... and classifies every interval the same way.
    np.testing.assert_array_equal((meas > 1)[ok], (floq > 1)[ok])
  # With the PPO ratio the expected force is not delayed: no threshold up to d_max.
  assert all(r['d_measured'] is None for r in res['threshold'] if r['ratio'])
  assert any(r['d_measured'] is not None for r in res['threshold'] if not r['ratio'])


def test_onset_matches_exact_map_and_plain_case_never_overshoots(result):
  _, res = result
  for row in res['onset']:
    if row['case'] == 'kl':
      # The exact map predicts the measured onset: the first grid point above (1 - sqrt k)^2
      # where the second crossing is large enough to be seen.
      assert row['beta_c_measured'] == row['beta_c_resolvable']
      assert row['beta_c_map'] <= row['beta_c_measured'] <= row['beta_c_map'] + 2 * row['grid_step']
      np.testing.assert_allclose(row['k_log_decay'], row['k_modes'][0], rtol=1e-3)
      np.testing.assert_allclose(row['k_ar2_beta0.5'], row['k_modes'][0], rtol=1e-3)
    else:
      assert not any(row['overshoot']) and row['max_reward'] <= row['r_star'] + 1e-12
      assert row['beta_first_non_monotone'] is None


def test_group_tables_invariants(result):
  _, res = result
  by_case = {}
  for r in res['group_mean']:
    by_case.setdefault(r['case'], {})[r['G']] = r
  for rows in by_case.values():
    # s(R, 2) = 1/sqrt(2) with ddof = 1, and a small group learns more slowly.
    np.testing.assert_allclose(rows[2]['s_R_final'], 1 / np.sqrt(2), rtol=1e-9)
    assert rows[2]['t90'] > rows[max(rows)]['t90']
  kl = by_case['kl']
  assert kl[2]['R_final'] < kl[max(kl)]['R_final']  # the KL fixed point moves with G
  for r in res['group_variance']:
    assert r['var'] > 0 and r['var_pred_linear_noise'] > 0
