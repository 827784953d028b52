"""AlphaRL study: the Orbax trajectory reader, the tables on a tiny trainer run and their
invariants, and the pipeline on an exactly rank-1 linear synthetic trajectory."""

import os

import jax
import numpy as np
import pytest

from grpo_jax import rank1
from grpo_jax.checkpoint import CheckpointStore
from grpo_jax.studies import alpharl, common


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  """A 5-step GRPO run (a checkpoint and an evaluation at every step) and its analysis."""
  from grpo_jax.train import Trainer

  run_dir = str(tmp_path_factory.mktemp('alpharl') / 'run')
  cfg = alpharl.quick_config(run_dir, 'steps=5')
  trainer = Trainer(cfg, progress=False, log=lambda *_: None)
  results = alpharl.run(
    cfg,
    trainer=trainer,
    log=lambda *_: None,
    ranks=(1, None),
    fractions=(0.2, 0.4),
    fits=('time', 'relex'),
    residuals=(False,),
  )
  reader = alpharl.RunCheckpoints(run_dir, target=trainer.init_params, cache=True)
  return {'run_dir': run_dir, 'trainer': trainer, 'results': results, 'reader': reader}


def _ulps(tree, n=4):
  """n float32 ulps at the largest magnitude of `tree` (one add and one subtract round)."""
  biggest = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(tree))
  return n * np.spacing(np.float32(biggest))


def test_reader_streams_every_kept_step_base_first(study):
  reader = alpharl.RunCheckpoints(study['run_dir'], target=study['trainer'].init_params)
  with CheckpointStore(os.path.join(study['run_dir'], 'checkpoints'), read_only=True) as store:
    kept = store.steps()
    last = store.restore_params(step=kept[-1], target=study['trainer'].init_params)
  assert reader.steps == kept == list(range(6))
  it = iter(reader)
  step0, params0 = next(it)
  # SFT is off in the quick run, so W_0 is the initialisation, bit for bit.
  assert step0 == 0
  jax.tree.map(np.testing.assert_array_equal, params0, study['trainer'].init_params)
  steps = [0] + [s for s, _ in it]
  assert steps == kept
  jax.tree.map(np.testing.assert_array_equal, reader.params(kept[-1]), last)


def test_reader_names_a_missing_base_or_step(study, tmp_path):
  with pytest.raises(ValueError, match='must include 0'):
    alpharl.RunCheckpoints(study['run_dir'], steps=[2, 4])
  with pytest.raises(ValueError, match=r'steps \[6\] are not kept'):
    alpharl.RunCheckpoints(study['run_dir'], steps=[0, 6])
  with pytest.raises(FileNotFoundError, match='no trainer checkpoints'):
    alpharl.RunCheckpoints(tmp_path)


def test_full_rank_model_is_the_final_model(study):
  reader, results = study['reader'], study['results']
  p0, pt = reader.params(0), reader.params(5)
  view = alpharl.hf_view(study['trainer'].model_cfg)
  full = rank1.rank_k_model(p0, pt, k=None, view=view, others='final')
  # W_0 + (W_T - W_0) in float32: equal up to the rounding of one subtract and one add.
  tol = _ulps(pt)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=tol), full, pt)
  inv = results['invariants']
  assert inv['full_rank_max_abs_diff'] <= tol
  assert inv['final_update_max_abs'] > 1e3 * tol  # the run did move the weights
  logged = alpharl.eval_accuracies(study['run_dir'])
  assert inv['full_rank_acc'] == inv['final_acc'] == logged[5]


def test_window_covering_every_checkpoint_reproduces_the_final_weights(study):
  reader = study['reader']
  view = alpharl.hf_view(study['trainer'].model_cfg)
  pt = reader.params(5)
  # Two checkpoints after the base: the line through them is exact, so with the residual
  # the prediction at the window's end is W_T (time fit and RELEX alike).
  two = alpharl.MemoryCheckpoints({s: reader.params(s) for s in (0, 4, 5)})
  tol = _ulps(pt, n=8)
  for fit in ('time', 'relex'):
    pred, _ = rank1.extrapolate(two, target_step=5, window=2, fit=fit, residual=True, view=view)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=tol), pred, pt)
  assert study['results']['invariants']['window_all_two_max_abs_diff'] <= tol


def _numpy_prediction_gap(reader, view, name):
  """(a_hat(T) - a_T) v_T^T from float64 numpy SVDs and np.polyfit, signs walked back."""
  m0 = np.asarray(rank1.select_matrices(reader.params(0), view=view)[name], np.float64)
  a, v = [], []
  for s in reader.steps[1:]:
    dw = np.asarray(rank1.select_matrices(reader.params(s), view=view)[name], np.float64) - m0
    u_, s_, vt_ = np.linalg.svd(dw)
    a.append(s_[0] * u_[:, 0])
    v.append(vt_[0])
  for t in range(len(a) - 2, -1, -1):
    if a[t] @ a[t + 1] < 0:
      a[t], v[t] = -a[t], -v[t]
  steps = np.asarray(reader.steps[1:], np.float64)
  slope, icpt = np.polyfit(steps, np.stack(a), 1)
  return np.outer(icpt + slope * steps[-1] - a[-1], v[-1])


def test_window_over_all_checkpoints_differs_by_the_fit_residual_only(study):
  reader = study['reader']
  view = alpharl.hf_view(study['trainer'].model_cfg)
  pred, _ = rank1.extrapolate(reader, target_step=5, last_step=5, residual=True, view=view)
  got = rank1.select_matrices(pred, view=view)
  final = rank1.select_matrices(reader.params(5), view=view)
  scale = study['results']['invariants']['final_update_max_abs']
  for name in ('model.layers.0.self_attn.q_proj.weight', 'model.layers.1.mlp.down_proj.weight'):
    expected = _numpy_prediction_gap(reader, view, name)
    gap = np.asarray(got[name], np.float64) - np.asarray(final[name], np.float64)
    assert np.abs(expected).max() > 1e-3 * scale  # the fit residual is not trivially zero
    np.testing.assert_allclose(gap, expected, rtol=0, atol=1e-3 * scale)


def test_tables_json_figures_and_dw_dump(study):
  results, run_dir = study['results'], study['run_dir']
  text = alpharl.format_tables(results)
  rank1_line = next(line for line in text.splitlines() if line.startswith('rank-1'))
  assert rank1_line.count('| > 99 %') == 2 and rank1_line.count('| n/a') == 2
  time_line = next(line for line in text.splitlines() if line.startswith('40% (t_w=2, n=2) time'))
  assert '2.50x | up to 2.5x (2.0x mean)' in time_line and 'n/a | >= 96 %' in time_line
  relex_line = next(line for line in text.splitlines() if line.startswith('20% (t_w=1, n=1) relex'))
  assert '5.00x | 15 % of steps suffice' in relex_line
  saved = common.read_json(os.path.join(run_dir, 'alpharl', 'alpharl.json'))
  assert [r['k'] for r in saved['rank_k']] == [0, 1, 'full', 0, 1, 'full']
  assert [(r['last_step'], r['fit']) for r in saved['extrapolation']] == [
    (1, 'time'), (1, 'relex'), (2, 'time'), (2, 'relex')
  ]  # fmt: skip
  # 20 % of 5 steps is step 1: a single checkpoint, reported as such rather than fitted.
  assert saved['extrapolation'][0]['acc'] is None
  assert 'a line needs 2' in saved['extrapolation'][0]['error']
  assert all(os.path.getsize(p) > 0 for p in saved['figures'])
  r2 = saved['linearity']['time_r2']
  assert len(r2) == 14 and all(-1e-9 <= x <= 1 + 1e-9 for x in r2.values())
  view = alpharl.hf_view(study['trainer'].model_cfg)
  dws = rank1.deltas(study['reader'].params(0), study['reader'].params(5), view=view)
  with np.load(os.path.join(run_dir, 'alpharl', 'dw_final.npz')) as dumped:
    assert sorted(dumped.files) == sorted(n.replace('.', '_') for n in dws)
    for name, dw in dws.items():
      np.testing.assert_array_equal(dumped[name.replace('.', '_')], np.asarray(dw))


def test_gain_retained_and_window_pinned_values():
  assert alpharl.gain_pct(0.5, 0.2, 0.8) == pytest.approx(50.0)
  assert np.isnan(alpharl.gain_pct(0.5, 0.3, 0.3))
  assert alpharl.retained_pct(0.48, 0.5) == pytest.approx(96.0)
  assert alpharl.window_for(list(range(0, 401, 20)), 0.3) == (120, 6)
  # Uneven steps: the window ends at the last checkpoint at or before 40% of 13 = 5.2.
  assert alpharl.window_for([0, 1, 2, 3, 5, 8, 13], 0.4) == (5, 4)
  assert alpharl.window_for([0, 5, 10], 0.2) == (0, 0)


def test_exactly_linear_rank1_trajectory_recovers_everything():
  """W_t = W_0 + (t / T) a* v*^T: rank-1 keeps the whole gain and every fit extrapolates it."""
  rng = np.random.default_rng(0)
  names = ('layers.0.q_proj', 'layers.0.down_proj')
  shapes = ((6, 4), (4, 7))
  w0 = {n: rng.normal(size=s).astype(np.float32) for n, s in zip(names, shapes)}
  spikes = {
    n: np.outer(rng.normal(size=s[0]), rng.normal(size=s[1])) for n, s in zip(names, shapes)
  }
  steps = [0, 3, 5, 6, 9, 12, 20]  # uneven on purpose
  final = steps[-1]
  pairs = {
    t: {n: (w0[n] + (t / final) * spikes[n]).astype(np.float32) for n in names} for t in steps
  }

  def evaluate(params):  # 1 at W_T, 0 at W_0, falling with the distance to W_T
    dist = sum(np.linalg.norm(np.asarray(params[n]) - pairs[final][n]) for n in names)
    return float(1.0 - dist / sum(np.linalg.norm(spikes[n]) for n in names))

  acc = {t: 1.0 * t / final for t in steps}
  results = alpharl.analyze(
    alpharl.MemoryCheckpoints(pairs),
    evaluate=evaluate,
    view=rank1.tree_view(),
    accuracies=acc,
    log=lambda *_: None,
  )
  assert results['acc']['base'] == pytest.approx(0.0, abs=1e-5)
  rank1_row = next(r for r in results['rank_k'] if r['k'] == 1 and r['others'] == 'final')
  assert rank1_row['gain_pct'] == pytest.approx(100.0, abs=1e-3)
  assert min(results['linearity']['time_r2'].values()) == pytest.approx(1.0, abs=1e-6)
  assert min(results['linearity']['pls_r2'].values()) == pytest.approx(1.0, abs=1e-6)
  assert min(results['energy'].values()) == pytest.approx(1.0, abs=1e-5)
  windows = {(r['last_step'], r['window']) for r in results['extrapolation']}
  assert windows == {(3, 1), (6, 3)}  # 20%: 4 -> step 3; 30%, 40%: 6, 8 -> step 6
  for row in results['extrapolation']:
    if row['window'] < 2:
      assert row['acc'] is None and 'a line needs 2' in row['error']
      continue
    assert row['retained_pct'] == pytest.approx(100.0, abs=1e-2), row
    assert row['speedup'] == pytest.approx(final / row['last_step'])


def test_hf_checkpoint_directories_read_like_the_run(study, tmp_path):
  """The `paper` route: a user's local HF checkpoints (exported here from the run)."""
  from flax import nnx

  from grpo_jax.models import export_hf

  trainer, reader = study['trainer'], study['reader']
  paths = {}
  for step in (0, 5):
    model = nnx.merge(trainer.graphdef, reader.params(step))
    paths[step] = str(export_hf(model, trainer.model_cfg, tmp_path / f'step{step}'))
  hf = alpharl.HFCheckpoints(paths)
  view = alpharl.hf_view(trainer.model_cfg)
  assert [s for s, _ in hf] == hf.steps == [0, 5]
  for step in (0, 5):
    got = rank1.select_matrices(hf.params(step), view=view)
    want = rank1.select_matrices(reader.params(step), view=view)
    jax.tree.map(np.testing.assert_array_equal, got, want)
  with pytest.raises(ValueError, match='needs step 0'):
    alpharl.HFCheckpoints({5: paths[5]})
  with pytest.raises(FileNotFoundError, match='step 3: .* has no config.json'):
    alpharl.HFCheckpoints({0: paths[0], 3: str(tmp_path)})
