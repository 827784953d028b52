"""Streamed rank-1 trajectories, sign alignment, fits and AlphaRL extrapolation."""

import weakref

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from grpo_jax.rank1 import (
  align_signs,
  collect_trajectory,
  extrapolate,
  linearity_r2,
  pls1,
  pls_predict,
  tree_view,
)
from grpo_jax.sharding import make_mesh

SHAPES = {'l0.q_proj': (12, 8), 'l0.down_proj': (8, 12)}
STEPS = [0, 2, 5, 6, 11, 15, 23, 40]  # uneven: time is the step value


def _unit(x):
  return x / np.linalg.norm(x)


def _base(rng):
  p0 = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
  p0['embed_tokens'] = rng.normal(size=(5, 8)).astype(np.float32)
  return p0


def _rank1_linear(rng, *, rotating=True):
  """Per matrix dW(t) = (a0 + t a_dot) v^T; a0 and a_dot are parallel unless `rotating`."""
  comps = {}
  for n, (m, k) in SHAPES.items():
    a_dot = 0.05 * rng.normal(size=m)
    a0 = 0.3 * rng.normal(size=m) if rotating else 2.0 * a_dot
    comps[n] = (a0, a_dot, _unit(rng.normal(size=k)))
  return comps


def _params_at(p0, comps, t, *, noise=0.0, rng=None):
  out = {'embed_tokens': (p0['embed_tokens'] + 0.01 * t).astype(np.float32)}
  for n, (a0, a_dot, v) in comps.items():
    w = p0[n] + np.outer(a0 + t * a_dot, v)
    if noise:
      w = w + noise * rng.normal(size=w.shape)
    out[n] = w.astype(np.float32)
  return out


def _ckpts(p0, comps, steps=STEPS, **kw):
  return [(t, p0 if t == 0 else _params_at(p0, comps, t, **kw)) for t in steps]


def test_noisy_linear_trajectory_extrapolates_within_noise():
  rng = np.random.default_rng(0)
  p0, comps = _base(rng), _rank1_linear(rng)
  noise, target = 1e-3, 120
  ckpts = _ckpts(p0, comps, noise=noise, rng=rng)
  out, info = extrapolate(ckpts, target_step=target, window=5)
  assert info['window_steps'] == [2, 5, 6, 11, 15]
  t_T = np.asarray(info['window_steps'], float)
  # Least-squares prediction std per component of a_hat at the target.
  lev = np.sqrt(1 / len(t_T) + (target - t_T.mean()) ** 2 / np.sum((t_T - t_T.mean()) ** 2))
  for n, (a0, a_dot, v) in comps.items():
    truth = p0[n] + np.outer(a0 + target * a_dot, v)
    err = np.linalg.norm(out[n] - truth)
    m, k = SHAPES[n]
    a_hat = a0 + target * a_dot
    # Noise reaches a_hat through the fit (leverage) and v1(t_w) through its angle error.
    bound = noise * (np.sqrt(m) * lev + np.linalg.norm(a_hat) * np.sqrt(k) / info['sigma'][n])
    assert err < 3 * bound, (n, err, bound)
    # ... which is far below how far the weights still move after the window.
    assert err < 0.05 * np.linalg.norm(truth - ckpts[5][1][n])


@pytest.mark.parametrize('fit', ['time', 'pls', 'relex'])
def test_exact_rank1_linear_extrapolates_exactly(fit):
  rng = np.random.default_rng(1)
  p0 = _base(rng)
  comps = _rank1_linear(rng, rotating=fit != 'relex')
  acc = {t: 0.2 + 0.01 * t for t in STEPS}
  out, _ = extrapolate(
    _ckpts(p0, comps), target_step=100, last_step=6, fit=fit, accuracies=acc, others='base'
  )
  for n, (a0, a_dot, v) in comps.items():
    truth = p0[n] + np.outer(a0 + 100 * a_dot, v)
    np.testing.assert_allclose(out[n], truth, atol=2e-5 * np.abs(truth).max())
  np.testing.assert_array_equal(out['embed_tokens'], p0['embed_tokens'])


def test_relex_is_biased_when_a_rotates():
  # PAPERS.md §4 known limit: rank-1 over time cannot follow a rotating a_t; the time fit can.
  rng = np.random.default_rng(2)
  p0, comps = _base(rng), _rank1_linear(rng, rotating=True)
  ckpts = _ckpts(p0, comps)
  out_t, _ = extrapolate(ckpts, target_step=100, window=4)
  out_r, info = extrapolate(ckpts, target_step=100, window=4, fit='relex')
  for n, (a0, a_dot, v) in comps.items():
    truth = p0[n] + np.outer(a0 + 100 * a_dot, v)
    scale = np.linalg.norm(truth - p0[n])
    assert np.linalg.norm(out_t[n] - truth) < 1e-5 * scale
    assert np.linalg.norm(out_r[n] - truth) > 1e-2 * scale
    assert info['relex_energy'][n] < 1.0


@pytest.mark.parametrize('fit', ['time', 'pls', 'relex'])
def test_window_over_every_checkpoint_reproduces_final(fit):
  rng = np.random.default_rng(3)
  p0 = _base(rng)
  c = {n: rng.normal(size=s) for n, s in SHAPES.items()}  # full-rank update direction
  ckpts = [(0, p0)] + [
    (
      t,
      {
        'embed_tokens': (p0['embed_tokens'] + rng.normal(size=(5, 8))).astype(np.float32),
        **{n: (p0[n] + (t + 3) * 0.01 * c[n]).astype(np.float32) for n in SHAPES},
      },
    )
    for t in STEPS[1:]
  ]
  final = ckpts[-1][1]
  acc = [0.1 + 0.002 * t for t in STEPS[1:]]
  out, _ = extrapolate(
    ckpts, target_step=STEPS[-1], window=len(STEPS) - 1, fit=fit, accuracies=acc, residual=True
  )
  for n in final:
    np.testing.assert_allclose(out[n], final[n], atol=2e-5)
  # Without the residual, AlphaRL rebuilds the matrix-rank-1 part alone, W_0 + s1 u1 v1^T of
  # dW_T; RELEX's direction is the whole update (these updates are rank 1 over time).
  out, _ = extrapolate(
    ckpts, target_step=STEPS[-1], window=len(STEPS) - 1, fit=fit, accuracies=acc, method='svd'
  )
  for n in SHAPES:
    u, s, vt = np.linalg.svd(final[n].astype(np.float64) - p0[n])
    want = final[n] if fit == 'relex' else p0[n] + s[0] * np.outer(u[:, 0], vt[0])
    np.testing.assert_allclose(out[n], want, atol=2e-5)


def test_sign_flips_along_the_trajectory_are_handled():
  # a(t) = (1, -t/10, ...): the largest entry of u1 switches from +index 0 to -index 1 at t = 10,
  # so the deterministic per-checkpoint sign convention flips a_t there.
  m, k = SHAPES['l0.q_proj']
  rng = np.random.default_rng(4)
  p0 = _base(rng)
  e0, e1 = np.eye(m)[0], np.eye(m)[1]
  v = _unit(rng.normal(size=k))
  comps = {n: c for n, c in _rank1_linear(rng).items() if n != 'l0.q_proj'}
  comps['l0.q_proj'] = (e0, -0.1 * e1, v)
  ckpts = _ckpts(p0, comps)
  traj = collect_trajectory(ckpts)
  flipped = traj.flipped['l0.q_proj']
  assert flipped.any() and not flipped.all()
  np.testing.assert_array_equal(flipped, np.asarray(STEPS[1:]) < 10)
  a = traj.a['l0.q_proj']
  assert np.all(np.sum(a[1:] * a[:-1], axis=1) > 0)
  # Aligned, a_t is linear in t again (the flipped raw sequence is not), and rank 1 holds.
  np.testing.assert_allclose(traj.linearity_r2()['l0.q_proj'], 1.0, rtol=1e-6)
  raw = np.where(np.asarray(STEPS[1:])[:, None] < 10, -a, a)
  assert linearity_r2(STEPS[1:], raw) < 0.9
  np.testing.assert_allclose(traj.energy['l0.q_proj'], 1.0, rtol=1e-5)
  acc = [0.3 + 0.01 * t for t in STEPS[1:]]
  np.testing.assert_allclose(traj.pls_r2(acc)['l0.q_proj'], 1.0, rtol=1e-6)
  for i, t in enumerate(STEPS[1:]):
    np.testing.assert_allclose(
      np.outer(a[i], traj.v['l0.q_proj'][i]), np.outer(e0 - 0.1 * t * e1, v), atol=1e-5
    )
  out, _ = extrapolate(ckpts, target_step=200, window=4, others='base')
  np.testing.assert_allclose(
    out['l0.q_proj'], p0['l0.q_proj'] + np.outer(e0 - 20 * e1, v), atol=1e-4
  )


def test_align_signs_backward_walk():
  rng = np.random.default_rng(5)
  t = np.arange(1.0, 9.0)
  a_true = np.outer(t, rng.normal(size=4)) + rng.normal(size=4)
  v_true = np.tile(rng.normal(size=3), (8, 1))
  s = np.where(rng.random(8) < 0.5, -1.0, 1.0)
  a, v, flipped = align_signs(s[:, None] * a_true, s[:, None] * v_true)
  np.testing.assert_allclose(a, s[-1] * a_true)  # anchored at the last checkpoint
  np.testing.assert_allclose(v, s[-1] * v_true)
  np.testing.assert_array_equal(flipped, s != s[-1])
  # Known limit: a genuine zero crossing a(t) = (t - 4.5) d is folded into |t - 4.5| d.
  d = rng.normal(size=4)
  a, _, _ = align_signs(np.outer(t - 4.5, d), np.ones((8, 2)))
  np.testing.assert_allclose(a, np.outer(np.abs(t - 4.5), d))


def test_linearity_r2_pinned():
  np.testing.assert_allclose(linearity_r2([1, 2, 3], [1.0, 3.0, 2.0]), 0.25)
  # Pooled over components: 1 - (1.5 + 1.5) / (2 + 6).
  np.testing.assert_allclose(linearity_r2([1, 2, 3], [[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]]), 0.625)
  # Time is the step value: linear in steps (1, 2, 10) is perfectly linear.
  np.testing.assert_allclose(linearity_r2([1, 2, 10], [[1.0], [2.0], [10.0]]), 1.0)
  assert linearity_r2([1, 2, 10], [[1.0], [2.0], [3.0]]) < 0.9


def test_pls_pinned():
  x = np.array([[0.0], [1.0], [2.0]])
  y = np.array([0.0, 1.0, 3.0])
  p = pls1(x, y)
  np.testing.assert_allclose(p.r2, 27 / 28)  # squared Pearson correlation for one column
  # Inverting at y* = 3 reverses the regression of y on x: x* = 1 + (3 - 4/3) / (3/2).
  np.testing.assert_allclose(pls_predict(p, 3.0), [19 / 9])


class _Params(dict):
  """A dict that can be weakly referenced, to count how many checkpoints are alive."""


def test_checkpoints_are_streamed():
  rng = np.random.default_rng(6)
  p0, comps = _base(rng), _rank1_linear(rng)
  alive, peak, served = [0], [0], []

  def source():
    for t in STEPS:
      p = _Params(p0 if t == 0 else _params_at(p0, comps, t))
      alive[0] += 1
      peak[0] = max(peak[0], alive[0])
      weakref.finalize(p, lambda: alive.__setitem__(0, alive[0] - 1))
      served.append(t)
      yield t, p
      del p

  traj = collect_trajectory(source())
  assert traj.steps.tolist() == STEPS[1:]
  assert peak[0] <= 2  # the base and the current checkpoint
  served.clear()
  peak[0] = 0
  extrapolate(source(), target_step=50, window=3)
  assert served == STEPS[:4]  # nothing past the window is read
  assert peak[0] <= 3  # base, window end so far, current


def test_stacked_flax_view_and_sharded_params():
  rng = np.random.default_rng(7)
  # Flax [in, out] kernels stacked over layers; HF views (12, 8) and (8, 12) as in SHAPES.
  L, D, F = 2, 8, 12
  mesh = make_mesh(fsdp=4, tensor=2)
  shard = NamedSharding(mesh, PartitionSpec(None, 'fsdp', 'tensor'))
  k0 = {'up_proj': rng.normal(size=(L, D, F)), 'down_proj': rng.normal(size=(L, F, D))}
  dirs = {n: (rng.normal(size=k.shape), rng.normal(size=k.shape)) for n, k in k0.items()}

  def at(t, sharded):
    # dW(t) = 0.01 t d0 + 0.02 d1 (t > 0): full rank, a_t not linear in t.
    tree = {
      'layers': {
        n: (k0[n] + t * 0.01 * d0 + 0.02 * d1).astype(np.float32) for n, (d0, d1) in dirs.items()
      }
    }
    tree['norm'] = np.full((D,), 1.0 + t, np.float32)
    if t == 0:
      tree['layers'] = {n: k.astype(np.float32) for n, k in k0.items()}
    if sharded:
      tree['layers'] = jax.device_put(tree['layers'], shard)
    return tree

  view = tree_view(layout='in_out', stacked=True)
  steps = [0, 1, 3, 4, 9]
  outs = {}
  for sharded in (False, True):
    ckpts = [(t, at(t, sharded)) for t in steps]
    outs[sharded], info = extrapolate(
      ckpts, target_step=9, window=4, view=view, residual=True, method='svd'
    )
    assert len(info['r2']) == 2 * L
  ref, got = outs[False], outs[True]
  assert jax.tree.structure(ref) == jax.tree.structure(got)
  assert len(got['layers']['down_proj'].sharding.device_set) == 8
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
  # With the residual, the window's last checkpoint plus the (a_hat - a_w) v^T correction:
  # the prediction is W_w + (a_hat - a_w) v1(t_w)^T, checked against a float64 reference.
  final = at(9, False)
  base = at(0, False)
  for n in ('up_proj', 'down_proj'):
    for layer in range(L):
      dws = [(at(t, False)['layers'][n][layer] - base['layers'][n][layer]).T for t in steps[1:]]
      a_rows, v_w = [], None
      for dw in dws:
        u, s, vt = np.linalg.svd(dw.astype(np.float64))
        sign = np.sign(u[np.argmax(np.abs(u[:, 0])), 0])
        a_rows.append(sign * s[0] * u[:, 0])
        v_w = sign * vt[0]
      a_TM = np.stack(a_rows)
      for i in range(len(a_TM) - 2, -1, -1):
        if a_TM[i] @ a_TM[i + 1] < 0:
          a_TM[i] = -a_TM[i]
      t_T = np.asarray(steps[1:], float)
      slope = (t_T - t_T.mean()) @ (a_TM - a_TM.mean(0)) / np.sum((t_T - t_T.mean()) ** 2)
      a_hat = a_TM.mean(0) + (9 - t_T.mean()) * slope
      want = final['layers'][n][layer].T + np.outer(a_hat - a_TM[-1], v_w)
      np.testing.assert_allclose(np.asarray(ref['layers'][n][layer]).T, want, atol=2e-5)
  np.testing.assert_array_equal(ref['norm'], final['norm'])


def _bad(**overrides):
  rng = np.random.default_rng(8)
  p0, comps = _base(rng), _rank1_linear(rng)
  kw = dict(checkpoints=_ckpts(p0, comps), target_step=60, window=3)
  kw.update(overrides)
  return kw


@pytest.mark.parametrize(
  'make, match',
  [
    (lambda: _bad(window=1), 'window.*>= 2'),
    (lambda: _bad(window=20), 'too few checkpoints: window=20'),
    (lambda: _bad(window=None, last_step=3), 'too few checkpoints in the window'),
    (lambda: _bad(checkpoints=[]), 'too few checkpoints'),
    (lambda: _bad(target_step=5), 'target_step 5 is inside the window'),
    (lambda: _bad(last_step=6), 'exactly one'),
    (lambda: _bad(fit='pls'), 'accuracies'),
    (lambda: _bad(fit='pls', accuracies=[0.1, 0.2]), 'one value per checkpoint'),
  ],
)
def test_bad_inputs_name_the_problem(make, match):
  kw = make()
  with pytest.raises(ValueError, match=match):
    extrapolate(kw.pop('checkpoints'), **kw)


def test_bad_checkpoint_sequences_name_the_checkpoint():
  kw = _bad()
  ckpts = kw.pop('checkpoints')
  broken = list(ckpts)
  broken[2] = (broken[2][0], {n: w for n, w in broken[2][1].items() if n != 'l0.down_proj'})
  with pytest.raises(ValueError, match=r"checkpoint 2 \(step 5\).*missing \['l0.down_proj'\]"):
    extrapolate(broken, **kw)
  swapped = [ckpts[0], ckpts[2], ckpts[1]] + ckpts[3:]
  with pytest.raises(ValueError, match='checkpoint 2: step 2 is not after the previous step 5'):
    collect_trajectory(swapped)
  with pytest.raises(ValueError, match='too few checkpoints'):
    collect_trajectory(ckpts[:1])
