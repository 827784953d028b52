"""ROM fit table and prediction check (issue 8 items 2-3): invariants on synthetic run
directories written in the trainer's metrics format, and the pipeline on a tiny real run."""

import dataclasses
import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest

from grpo_jax.dynamics import discrete
from grpo_jax.metrics import MetricsWriter, read_jsonl
from grpo_jax.studies import common
from grpo_jax.studies import dynamics as study

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _entry_point(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / 'experiments' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_run(directory, train_y, eval_y=None, *, eval_every=1):
  """A run's metrics.jsonl: train rows at steps 1..N (sampled after step - 1 updates) and
  evaluation rows at steps 0, e, 2e, ... < N (after `step` updates)."""
  with MetricsWriter(directory, tensorboard=False) as w:
    for i, r in enumerate(train_y):
      if eval_y is not None and i % eval_every == 0:
        w.write({'step': i, 'eval/greedy_acc': eval_y[i], 'eval/avg_at_k': eval_y[i]})
      w.write(
        {
          'step': i + 1,
          'train/reward_mean': r,
          'train/reward_std': 0.4,
          'train/zero_std_frac': 0.1,
          'train/entropy': 1.0,
        }
      )


# ----------------------------------------------------------------------------- fit table

STEPS = 40
SIGMA = 0.02  # across-seed std at G = 1: seed offsets +-SIGMA / sqrt(2 G) give Var*G = SIGMA^2


def _synthetic_curve(t, g):
  # Time rescaled by G (slower for small G) plus a deterministic wiggle the fit cannot follow.
  tau = 6.0 * 4 / g
  return 0.8 - 0.5 * np.exp(-t / tau) * (1 + t / tau) + 0.01 * np.sin(1.7 * t)


@pytest.fixture(scope='module')
def fit_study(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('rom_fit'))
  spec = study.quick_fit_spec(seeds=(0, 1), steps=STEPS)
  written = {}
  for arm, g, seed in spec.runs():
    sign = (-1.0, 1.0)[spec.seeds.index(seed)]
    offset = sign * SIGMA / np.sqrt(2 * g)
    train_y = _synthetic_curve(np.arange(STEPS, dtype=float), g) + offset
    eval_y = train_y  # same length: one compiled fit serves both signals
    _write_run(study.run_dir(out, arm, g, seed), train_y, eval_y)
    written[(arm.key, g, seed)] = (train_y, eval_y)
  module = _entry_point('rom_fit')
  results = module.main(
    ['--quick', '--out', out, '--analyze-only', '--steps', str(STEPS), '--seeds', '0', '1']
  )
  return {'out': out, 'spec': spec, 'results': results, 'written': written}


def test_fit_r2_matches_numpy_recomputation_on_the_saved_curve(fit_study):
  saved = common.read_json(os.path.join(fit_study['out'], 'rom_fit.json'))
  n_fits = 0
  for arm in saved['arms'].values():
    for group in arm['groups'].values():
      for f in group['fits'].values():
        y, fitted, fitted_exp = (np.asarray(f[k], float) for k in ('y', 'fitted', 'fitted_exp'))
        sst = ((y - y.mean()) ** 2).sum()
        np.testing.assert_allclose(f['r2'], 1 - ((y - fitted) ** 2).sum() / sst, rtol=1e-9)
        np.testing.assert_allclose(f['r2_exp'], 1 - ((y - fitted_exp) ** 2).sum() / sst, rtol=1e-9)
        assert f['meets_paper'] == (f['r2'] >= 0.91) and f['meets_goal'] == (f['r2'] >= 0.95)
        n_fits += 1
  assert n_fits == 2 * 2 * 2  # arms x G x signals


def test_fit_curves_are_the_seed_means_of_the_logged_metrics(fit_study):
  res, written = fit_study['results'], fit_study['written']
  for arm in fit_study['spec'].arms:
    for g in (2, 4):
      fits = res['arms'][arm.key]['groups'][str(g)]['fits']
      train = np.mean([written[(arm.key, g, s)][0] for s in (0, 1)], axis=0)
      evals = np.mean([written[(arm.key, g, s)][1] for s in (0, 1)], axis=0)
      np.testing.assert_allclose(fits['train']['y'], train, rtol=0, atol=1e-15)
      np.testing.assert_allclose(fits['train']['t'], np.arange(STEPS))  # updates before sampling
      np.testing.assert_allclose(fits['eval']['y'], evals, rtol=0, atol=1e-15)
      np.testing.assert_allclose(fits['eval']['t'], np.arange(STEPS))


def test_variance_times_g_and_mean_deviation_against_the_reference_group(fit_study):
  res = fit_study['results']
  for arm in fit_study['spec'].arms:
    groups = res['arms'][arm.key]['groups']
    for g in (2, 4):
      # Constant seed offsets +-SIGMA/sqrt(2G): across-seed variance (ddof 1) is SIGMA^2 / G.
      np.testing.assert_allclose(groups[str(g)]['train_var_x_g'], SIGMA**2, rtol=1e-9)
      np.testing.assert_allclose(groups[str(g)]['eval_var_x_g'], SIGMA**2, rtol=1e-9)
    t = np.arange(STEPS, dtype=float)
    ref = _synthetic_curve(t, 4)
    want = np.max(np.abs(_synthetic_curve(t, 2) - ref)) / np.ptp(ref)
    np.testing.assert_allclose(groups['2']['train_max_dev_vs_ref'], want, rtol=1e-9)
    assert groups['4']['train_max_dev_vs_ref'] == 0.0


def test_noise_r2_ceiling_matches_the_known_noise_level():
  rng = np.random.default_rng(0)
  t = np.arange(2000.0)
  smooth = 0.3 - 0.1 * np.exp(-t / 300)
  sigma = 0.02
  y = smooth + sigma * rng.normal(size=t.size)
  sst = np.sum((y - y.mean()) ** 2)
  want = 1 - t.size * sigma**2 / sst  # the R^2 of the true curve, in expectation
  np.testing.assert_allclose(study.noise_r2_ceiling(y), want, atol=0.02)
  np.testing.assert_allclose(study.noise_r2_ceiling(smooth), 1.0, atol=1e-6)  # no noise
  with pytest.raises(ValueError, match='>= 4 points'):
    study.noise_r2_ceiling([0.1, 0.2, 0.3])


def test_fit_tables_say_which_arm_has_the_exact_mapping(fit_study):
  res, spec = fit_study['results'], fit_study['spec']
  fit = res['tables']['fit']
  assert len(fit['rows']) == len(spec.arms) * 2 * 2
  r2_col = fit['columns'].index('R2 osc')
  for label, cells in fit['rows']:
    mapping = 'exact' if label.startswith('SGD') else 'none validated'
    assert cells[0] == mapping
    assert fit['paper'][label][r2_col] == study.PAPER_R2
  group = res['tables']['group']
  assert [label for label, _ in group['rows']] == [
    f'{a.label}, G={g}' for a in spec.arms for g in (2, 4)
  ]
  for _, cells in group['rows']:
    assert cells[-1] == 'none'  # no failure mode in the synthetic runs
  for name in ('rom_fit.json', 'rom_fit_fits.png', 'rom_fit_groups.png'):
    assert os.path.getsize(os.path.join(fit_study['out'], name)) > 0


def test_exact_mapping_claim_is_checked_against_the_config():
  base = study.quick_fit_spec().base
  bad = dataclasses.replace(study.sgd_arm(), overrides=('optim.name=sgd', 'loss.kl_coef=0.04'))
  with pytest.raises(ValueError, match='max_grad_norm'):
    study.FitSpec(name='x', base=base, arms=(bad,))
  with pytest.raises(ValueError, match='no validated mapping'):
    study.PredictSpec(
      name='x',
      base=base,
      calibrations=(study.Calibration('ar2', study.adamw_arm(), 2, 8),),
      targets=(study.Target(study.sgd_arm(), 4),),
    )


# ----------------------------------------------------------------------------- prediction

KAPPA0, R0, R_STAR = 0.3, 0.2, 0.7
EVAL_EVERY = 3  # held-out rows every 3 updates: the routes read non-consecutive times


def _map_curve(cfg, group_size, steps):
  s = float(discrete.advantage_scale(R_STAR, group_size, normalize='std', ddof=0))
  k = cfg.optim.lr * s * KAPPA0
  x = discrete.heavy_ball_map(R0 - R_STAR, beta=cfg.optim.momentum, k=k, steps=steps - 1)
  return R_STAR + x


@pytest.fixture(scope='module')
def predict_study(tmp_path_factory):
  """Every run is the exact heavy-ball map with k = lr s(R*, G) kappa0 (seeds +-0.01)."""
  out = str(tmp_path_factory.mktemp('rom_predict'))
  steps = STEPS  # the fit study's length: the compiled fits are shared
  spec = study.quick_predict_spec(seeds=(0, 1), steps=steps)
  assert study._advantage_convention(spec.base) == ('std', 0)  # the 'grpo' loss preset
  truth = {}
  runs = spec.runs()
  assert len(runs) == len(set(runs)) == 2 * 2 + 2  # the AR(2) and trajectory routes share one
  for arm, g, seed, n in runs:
    y = _map_curve(spec.arm_config(arm), g, n)
    truth[(arm.key, g)] = y
    y_seed = y + (-0.01, 0.01)[seed]
    _write_run(study.run_dir(out, arm, g, seed), y_seed, y_seed, eval_every=EVAL_EVERY)
  module = _entry_point('rom_predict')
  results = module.main(
    ['--quick', '--out', out, '--analyze-only', '--steps', str(steps), '--seeds', '0', '1']
  )
  return {'out': out, 'spec': spec, 'results': results, 'truth': truth}


def test_kappa_routes_recover_kappa0_on_the_exact_map(predict_study):
  cals = predict_study['results']['signals']['train']['calibrations']
  # AR(2): a linear least-squares solve, exact to rounding.
  np.testing.assert_allclose(cals['ar2']['kappa0'], KAPPA0, rtol=1e-9)
  np.testing.assert_allclose(cals['ar2']['r_star'], R_STAR, rtol=1e-9)
  np.testing.assert_allclose(cals['ar2']['beta_implied'], 0.5, rtol=1e-9)
  # Log-decay: R* comes from an iterative exponential fit (scipy xtol 1e-8).
  np.testing.assert_allclose(cals['log_decay']['kappa0'], KAPPA0, rtol=1e-6)
  np.testing.assert_allclose(cals['log_decay']['r_star'], R_STAR, rtol=1e-7)
  # Trajectory: a bounded scalar search in log k (xatol 1e-10), the rest linear.
  np.testing.assert_allclose(cals['trajectory']['kappa0'], KAPPA0, rtol=1e-7)
  np.testing.assert_allclose(cals['trajectory']['r_star'], R_STAR, rtol=1e-8)
  np.testing.assert_allclose(cals['trajectory']['r0'], R0, rtol=1e-7)
  # The held-out curve, every EVAL_EVERY updates: no AR(2); the other two read the times.
  held_out = predict_study['results']['signals']['eval']['calibrations']
  assert set(held_out) == {'log_decay', 'trajectory'}
  np.testing.assert_array_equal(held_out['trajectory']['curve']['t'], np.arange(0, STEPS, 3))
  np.testing.assert_allclose(held_out['trajectory']['kappa0'], KAPPA0, rtol=1e-7)
  np.testing.assert_allclose(held_out['trajectory']['r_star'], R_STAR, rtol=1e-8)
  np.testing.assert_allclose(held_out['log_decay']['kappa0'], KAPPA0, rtol=1e-6)


def test_exact_map_prediction_reproduces_the_held_out_run(predict_study):
  res, spec = predict_study['results'], predict_study['spec']
  (target,) = spec.targets
  (entry,) = res['signals']['train']['targets']
  want = predict_study['truth'][(target.arm.key, target.group_size)]
  np.testing.assert_allclose(entry['measured'], want, rtol=0, atol=1e-15)
  ar2, log_decay = entry['routes']['ar2'], entry['routes']['log_decay']
  np.testing.assert_allclose(ar2['predicted'], want, rtol=0, atol=1e-12)
  np.testing.assert_allclose(log_decay['predicted'], want, rtol=0, atol=1e-7)
  assert ar2['map']['rmse'] < 1e-12
  np.testing.assert_allclose(
    ar2['map']['rmse'], np.sqrt(np.mean((np.asarray(ar2['predicted']) - want) ** 2)), atol=1e-15
  )
  # The continuous model is only an approximation at beta = 0.5 (PAPERS.md §5).
  assert ar2['ode']['rel_rmse'] > 1e-3
  (held_out,) = res['signals']['eval']['targets']
  np.testing.assert_allclose(held_out['t'], np.arange(0, STEPS, EVAL_EVERY))
  traj = held_out['routes']['trajectory']
  np.testing.assert_allclose(traj['predicted'], want[::EVAL_EVERY], rtol=0, atol=1e-8)


def test_prediction_table_structure(predict_study):
  res = predict_study['results']
  table = res['tables']['predict']
  labels = [label for label, _ in table['rows']]
  assert labels == [
    f'{t["label"]}, {signal} <- {route}'
    for signal in ('train', 'eval')
    for t in res['signals'][signal]['targets']
    for route in (study.ROUTES if signal == 'train' else ('log_decay', 'trajectory'))
  ]
  assert all(len(cells) == len(table['columns']) for _, cells in table['rows'])
  assert all(all(p is None for p in table['paper'][label]) for label in labels)
  saved = json.loads(pathlib.Path(predict_study['out'], 'rom_predict.json').read_text())
  assert saved['tables']['predict']['columns'] == table['columns']
  assert os.path.getsize(os.path.join(predict_study['out'], 'rom_predict.png')) > 0


def test_an_unstable_predicted_map_is_reported_as_diverging(tmp_path):
  """Calibrated at lr 0.05, the target at lr 1.0 has k = eta s kappa0 > 2 (1 + beta): the
  table says the map diverges instead of printing an error of astronomical size."""
  kappa0 = 8.0
  base = study.quick_predict_spec().base
  cal_arm, target_arm = study.sgd_arm(lr=0.05, momentum=0.5), study.sgd_arm(lr=1.0, momentum=0.5)
  spec = study.PredictSpec(
    name='x',
    base=dataclasses.replace(base, steps=STEPS),
    calibrations=(study.Calibration('ar2', cal_arm, 2, STEPS),),
    targets=(study.Target(target_arm, 4),),
    seeds=(0, 1),
    signals=('train',),
  )
  s2 = float(discrete.advantage_scale(R_STAR, 2, normalize='std', ddof=0))
  cal_y = R_STAR + discrete.heavy_ball_map(R0 - R_STAR, beta=0.5, k=0.05 * s2 * kappa0,
                                           steps=STEPS - 1)  # fmt: skip
  target_y = _map_curve(spec.arm_config(cal_arm), 4, STEPS)  # any bounded measured curve
  for seed in (0, 1):
    _write_run(study.run_dir(str(tmp_path), cal_arm, 2, seed), cal_y + (-0.01, 0.01)[seed])
    _write_run(study.run_dir(str(tmp_path), target_arm, 4, seed), target_y)
  res = study.analyze_predict(spec, str(tmp_path))
  block = res['signals']['train']
  np.testing.assert_allclose(block['calibrations']['ar2']['kappa0'], kappa0, rtol=1e-9)
  route = block['targets'][0]['routes']['ar2']
  assert route['regime'] == 'unstable' and route['diverges']
  assert route['k'] > 2 * (1 + 0.5)
  assert route['map'] == {'rmse': None, 'max_abs': None, 'rel_rmse': None}
  assert route['ode']['rmse'] is not None  # the continuous model still gives its curve
  table = res['tables']['predict']
  ((label, cells),) = table['rows']
  for column in ('RMSE map', 'rel map'):
    assert cells[table['columns'].index(column)] == 'diverges'
  assert 'diverges' in study.format_predict_table(res)


def test_route_and_momentum_must_match():
  base = study.quick_predict_spec().base
  with pytest.raises(ValueError, match='log-decay route needs'):
    study.PredictSpec(
      name='x',
      base=base,
      calibrations=(study.Calibration('log_decay', study.sgd_arm(momentum=0.5), 2, 8),),
      targets=(study.Target(study.sgd_arm(), 4),),
    )
  arm = study.sgd_arm(momentum=0.5)
  with pytest.raises(ValueError, match='both a calibration and a target'):
    study.PredictSpec(
      name='x',
      base=base,
      calibrations=(study.Calibration('ar2', arm, 4, 8),),
      targets=(study.Target(arm, 4),),
    )
  with pytest.raises(ValueError, match='start at update 0'):
    study.calibrate(np.arange(5.0, 25.0), np.linspace(0, 1, 20), route='trajectory', beta=0.5,
                    eta=0.1, group_size=4)  # fmt: skip
  with pytest.raises(ValueError, match='consecutive updates'):
    study.calibrate(np.arange(0, 20, 2.0), np.linspace(0, 1, 10), route='ar2', beta=0.5,
                    eta=0.1, group_size=4)  # fmt: skip


# ----------------------------------------------------------------------------- a real run


# ~25 s on a shared 2-core machine (the trainer's sampler, update and eval compiles), beyond
# the 30 s budget of this file with the rest: it runs with `make test-slow`.
@pytest.mark.slow
def test_fit_on_a_tiny_trainer_run(tmp_path):
  """8 GRPO steps (SGD + heavy ball + KL, G = 4): the table reads the logged curve itself."""
  out = str(tmp_path)
  quick = study.quick_fit_spec(seeds=(0,), steps=8)
  base = study.config_lib.apply_overrides(quick.base, ['eval.every=100', 'eval.avg_k=0'])
  spec = dataclasses.replace(
    quick, base=base, arms=(quick.arms[1],), group_sizes=(4,), signals=('train',)
  )
  study.run_study(spec, out, log=lambda *_: None)
  res = study.analyze_fit(spec, out)
  rows = read_jsonl(os.path.join(study.run_dir(out, spec.arms[0], 4, 0), 'metrics.jsonl'))
  logged = [r['train/reward_mean'] for r in rows if 'train/reward_mean' in r]
  f = res['arms'][spec.arms[0].key]['groups']['4']['fits']['train']
  assert len(logged) == 8
  np.testing.assert_array_equal(f['y'], logged)
  y, fitted = np.asarray(f['y']), np.asarray(f['fitted'])
  np.testing.assert_allclose(
    f['r2'], 1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum(), rtol=1e-9
  )
  diag = res['arms'][spec.arms[0].key]['groups']['4']['diagnostics']['0']
  assert 'error' not in diag and set(diag['messages']) == {
    'advantage_degeneracy',
    'policy_concentration',
    'dynamical_instability',
    'reward_hacking',
  }


def test_failed_calibration_is_reported_not_hidden():
  # A straight line has no saturation: the exponential's R* runs far above 1.
  t = np.arange(12.0)
  with pytest.raises(ValueError, match='log_decay calibration failed: R\\* = '):
    study.calibrate(t, 0.1 + 0.07 * t, route='log_decay', beta=0.0, eta=0.1, group_size=4)
