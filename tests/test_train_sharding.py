"""Trainer on a device mesh: the sharded run equals the single-device run, parameters and
optimizer state live on their role's shardings (and come back onto them from a checkpoint),
and the `mesh` config section names bad fields."""

import jax
import numpy as np
import pytest
from _tiny_run import QUIET, tiny_cfg
from jax.sharding import PartitionSpec as P

from grpo_jax import config as C
from grpo_jax import sharding as S
from grpo_jax import train as T
from grpo_jax.checkpoint import CheckpointStore
from grpo_jax.metrics import read_metrics

# The tiny run (8 prompts x G=4, two updates of two micro-batches each, which split over 4
# batch shards) for two rollout steps, with Adam at the cpu-tiny RL learning rate; a
# checkpoint, and so an evaluation, after every step.
RUN = ['optim.lr=1e-4', 'eval.size=8', 'eval.avg_k=0', 'checkpoint.every=1', 'steps=2']
MESH = ['mesh.fsdp=4', 'mesh.tensor=2']
# Rows that must agree exactly: they depend only on the sampled tokens and the data.
EXACT = ('step', 'updates', 'train/reward_mean', 'train/reward_std', 'train/len_mean')


def run(path, *extra):
  trainer = T.Trainer(tiny_cfg(path, *RUN, *extra), **QUIET)
  trainer.run()
  return trainer


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  single = run(tmp_path_factory.mktemp('single'))
  sharded = run(tmp_path_factory.mktemp('sharded'), *MESH)
  return single, sharded


def test_sharded_run_matches_single_device(runs):
  single, sharded = runs
  assert single.mesh is None and dict(sharded.mesh.shape) == {'data': 1, 'fsdp': 4, 'tensor': 2}
  moved = max(
    float(np.abs(np.asarray(a) - np.asarray(b)).max())
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(single.init_params))
  )
  assert moved > 1e-4  # four Adam steps of 1e-4: the comparison below is not vacuous
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)
  rows_1 = read_metrics(single.out, kind='train')
  rows_8 = read_metrics(sharded.out, kind='train')
  assert [r['step'] for r in rows_8] == [1, 2]
  for r1, r8 in zip(rows_1, rows_8):
    assert r1.keys() == r8.keys()
    for key in EXACT:
      assert r8[key] == r1[key], key
    for key in ('train/ratio_mean', 'train/clip_frac', 'opt/grad_norm', 'opt/update_norm'):
      np.testing.assert_allclose(r8[key], r1[key], rtol=1e-5, err_msg=key)
  evals_1 = read_metrics(single.out, kind='eval')
  evals_8 = read_metrics(sharded.out, kind='eval')
  assert [r['eval/greedy_acc'] for r in evals_8] == [r['eval/greedy_acc'] for r in evals_1]


def _specs(tree):
  return [x.sharding.spec for x in jax.tree.leaves(tree)]


def test_params_and_opt_state_keep_their_role_shardings(runs):
  _, trainer = runs
  mesh = trainer.mesh
  expected = jax.tree.leaves(S.param_shardings(trainer.params, mesh))
  for tree in (trainer.init_params, trainer.params):
    for x, want in zip(jax.tree.leaves(tree), expected, strict=True):
      assert x.sharding.is_equivalent_to(want, x.ndim), (x.sharding, want)
  layer = trainer.params['layers'][0]
  assert layer['self_attn']['q_proj']['kernel'][...].sharding.spec == P('fsdp', 'tensor')
  assert layer['mlp']['down_proj']['kernel'][...].sharding.spec == P('tensor', 'fsdp')
  # The Adam moments are sharded like their params after the updates; counters replicated.
  adam = trainer.opt_state.inner_state.inner_state[0]  # plain -> inject_hyperparams -> adamw
  assert _specs(adam.mu) == _specs(trainer.params) == _specs(adam.nu)
  assert adam.count.sharding.spec == P()
  sharded_leaves = [x for x in jax.tree.leaves(trainer.opt_state) if x.sharding.spec != P()]
  assert len(sharded_leaves) == 2 * (1 + 2 * 7)  # mu and nu: embedding, 7 matrices x 2 layers


def test_checkpoint_restores_onto_the_mesh_shardings(runs):
  _, trainer = runs
  opt_target = trainer.init_opt_state(trainer.init_params)
  with CheckpointStore(f'{trainer.out}/checkpoints', read_only=True) as store:
    restored = store.restore(
      params=trainer.init_params,
      opt_state=opt_target,
      rng=trainer._rng_for_store(trainer.rollout_key),
    )
  assert restored['step'] == 2
  for got, want in zip(jax.tree.leaves(restored['params']), jax.tree.leaves(trainer.params)):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for got, want in zip(jax.tree.leaves(restored['opt_state']), jax.tree.leaves(trainer.opt_state)):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize(
  'override, field',
  [
    (['mesh.fsdp=0'], 'mesh.fsdp'),
    (['mesh.data=-1', 'mesh.tensor=-1'], 'mesh.tensor'),
    (['mesh.num_processes=2'], 'mesh.num_processes'),
    (['mesh.distributed=true', 'mesh.num_processes=2', 'mesh.process_id=2'], 'mesh.process_id'),
    (['mesh.distributed=true', 'mesh.cpu_collectives=tcp'], 'mesh.cpu_collectives'),
    (['mesh.fsdp=3'], 'mesh.fsdp'),  # 64 prompts x 8 rows do not split 3 ways
  ],
)
def test_mesh_config_errors_name_the_field(override, field):
  with pytest.raises(ValueError, match=f'`{field}`'):
    C.apply_overrides(C.cpu_tiny(), override)


def test_mesh_that_does_not_fit_the_devices_is_rejected(tmp_path):
  cfg = C.apply_overrides(C.cpu_tiny(), ['mesh.data=2', 'mesh.fsdp=2', 'mesh.tensor=4'])
  with pytest.raises(ValueError, match='need 16 devices, but 8'):
    T.build_mesh(cfg)
  # -1 takes the devices left over; the default uses no mesh at all.
  assert dict(T.build_mesh(C.apply_overrides(C.cpu_tiny(), ['mesh.data=-1'])).shape) == {
    'data': 8,
    'fsdp': 1,
    'tensor': 1,
  }
  assert T.build_mesh(C.cpu_tiny()) is None


def test_resume_may_change_the_mesh_only():
  saved = C.cpu_tiny()
  C.check_resume_compatible(saved, C.apply_overrides(saved, ['mesh.fsdp=4', 'mesh.tensor=2']))
  with pytest.raises(ValueError, match=r'optim\.lr'):
    C.check_resume_compatible(saved, C.apply_overrides(saved, ['mesh.fsdp=4', 'optim.lr=1e-3']))
  # A checkpoint written before the mesh section existed still loads with the defaults.
  d = saved.to_dict()
  del d['mesh']
  assert C.TrainConfig.from_dict(d) == saved
