"""Checkpoints: every item restorable alone, exact round trip, combined retention."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax.checkpoint import CheckpointStore


def _state(seed):
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {'layer': {'w': jax.random.normal(k1, (3, 4))}, 'norm': jax.random.normal(k2, (4,))}
  opt = optax.adamw(1e-3)
  state = opt.init(params)
  _, state = opt.update(params, state, params)
  return params, state


def _save(store, step, acc=None):
  params, opt_state = _state(step)
  store.save(
    step,
    params=params,
    opt_state=opt_state,
    rng=jax.random.key(100 + step),
    progress={'cursor': 10 * step, 'updates': step},
    config={'seed': 0, 'steps': 9},
    metrics=None if acc is None else {'eval/greedy_acc': acc},
  )


def test_round_trip_is_exact_and_items_restore_alone(tmp_path):
  with CheckpointStore(tmp_path) as store:
    _save(store, 0)
    _save(store, 3)
  with CheckpointStore(tmp_path, read_only=True) as store:
    params, opt_state = _state(3)
    out = store.restore(
      params=params, opt_state=opt_state, rng=jax.random.key_data(jax.random.key(0))
    )
    assert out['step'] == 3 and out['progress'] == {'cursor': 30, 'updates': 3}
    assert out['config'] == {'seed': 0, 'steps': 9}
    assert jax.tree.structure(out['opt_state']) == jax.tree.structure(opt_state)
    for a, b in zip(jax.tree.leaves(out['opt_state']), jax.tree.leaves(opt_state)):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out['rng'], jax.random.key_data(jax.random.key(103)))
    # Params alone, without any target, from the starting weights (step 0).
    p0 = store.restore_params(step=0)
    np.testing.assert_array_equal(p0['layer']['w'], _state(0)[0]['layer']['w'])
    assert store.restore_item('progress', step=0) == {'cursor': 0, 'updates': 0}


def test_missing_step_and_unknown_item_raise(tmp_path):
  with CheckpointStore(tmp_path) as store:
    _save(store, 0)
    with pytest.raises(FileNotFoundError, match='step 5'):
      store.restore_params(step=5)
    with pytest.raises(ValueError, match="'weights'"):
      store.restore_item('weights')


def test_retention_keeps_last_best_every_kth_and_step0_across_restart(tmp_path):
  accs = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.2, 5: 0.3}
  with CheckpointStore(tmp_path, keep_last=2, keep_best=1, keep_every=4) as store:
    _save(store, 0)
    for step in (1, 2, 3):
      _save(store, step, accs[step])
  # Reopened (as after a resume), the best step's accuracy is still known.
  with CheckpointStore(tmp_path, keep_last=2, keep_best=1, keep_every=4) as store:
    assert store.metrics(2) == {'eval/greedy_acc': 0.9}
    for step in (4, 5):
      _save(store, step, accs[step])
    _save(store, 6, 0.0)
    # 0: starting weights; 2: best; 4: every 4th; 5, 6: last two.
    assert store.steps() == [0, 2, 4, 5, 6]
    assert store.latest_step() == 6


def test_unfinished_write_is_ignored(tmp_path):
  with CheckpointStore(tmp_path) as store:
    _save(store, 0)
  # What a run killed mid-save leaves behind.
  (tmp_path / '1.orbax-checkpoint-tmp-123').mkdir()
  with CheckpointStore(tmp_path) as store:
    assert store.steps() == [0]
    _save(store, 1)
    assert store.steps() == [0, 1]
    np.testing.assert_array_equal(store.restore_params()['norm'], _state(1)[0]['norm'])


def test_nnx_state_params_round_trip(tmp_path):
  from flax import nnx

  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  _, params = nnx.split(model, nnx.Param)
  with CheckpointStore(tmp_path) as store:
    store.save(
      0,
      params=params,
      opt_state={'count': jnp.zeros((), jnp.int32)},
      rng=jax.random.key(0),
      progress={},
      config={},
    )
    restored = store.restore_params(target=params)
  assert jax.tree.structure(restored) == jax.tree.structure(params)
  np.testing.assert_array_equal(restored['kernel'][...], jnp.asarray(params['kernel'][...]))
