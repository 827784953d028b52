"""Role-based parameter sharding and activation constraints: sharded steps equal one device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _sharded_step import CFG, run, single_device_result
from flax import nnx
from jax.sharding import PartitionSpec as P

from grpo_jax import sharding
from grpo_jax.models import Decoder


@pytest.fixture(scope='module')
def single_device():
  return single_device_result()


@pytest.mark.parametrize(
  'axes',
  [
    dict(fsdp=8),
    dict(fsdp=2, tensor=4),  # 2 key/value heads do not split 4 ways: exercises the fallback
    dict(data=2, fsdp=2, tensor=2),
    pytest.param(dict(data=8), marks=pytest.mark.slow),
  ],
)
def test_sharded_training_step_equals_single_device(axes, single_device):
  loss, grads, params = run(sharding.make_mesh(**axes))
  loss0, grads0, params0 = single_device
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  assert loss0 > 1.0  # a real cross-entropy over a 64-token vocabulary (log 64 = 4.2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), grads, grads0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=0), params, params0)


def _abstract_params(cfg):
  model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  return nnx.state(model, nnx.Param)


def get(v):
  return v.get_value() if isinstance(v, nnx.Variable) else v


def test_partition_specs_follow_each_weight_role():
  mesh = sharding.make_mesh(fsdp=2, tensor=4)
  specs = sharding.param_partition_specs(_abstract_params(CFG), mesh)
  layer = specs['layers'][0]
  assert get(specs['embed_tokens']['embedding']) == P('tensor', 'fsdp')
  assert get(layer['self_attn']['q_proj']['kernel']) == P('fsdp', 'tensor', None)
  # 2 key/value heads cannot split 4 ways: that dimension is replicated instead.
  assert get(layer['self_attn']['k_proj']['kernel']) == P('fsdp', None, None)
  assert get(layer['self_attn']['o_proj']['kernel']) == P('tensor', None, 'fsdp')
  assert get(layer['mlp']['up_proj']['kernel']) == P('fsdp', 'tensor')
  assert get(layer['mlp']['down_proj']['kernel']) == P('tensor', 'fsdp')
  assert get(layer['input_layernorm']['scale']) == P()
  assert get(specs['lm_head']['kernel']) == P('fsdp', 'tensor')


def test_stacked_layers_and_optimizer_state_get_the_same_roles():
  mesh = sharding.make_mesh(fsdp=2, tensor=4)
  params = _abstract_params(CFG.replace(scan_layers=True))
  specs = sharding.param_partition_specs(params, mesh)
  assert get(specs['layers']['mlp']['gate_proj']['kernel']) == P(None, 'fsdp', 'tensor')
  opt_state = jax.eval_shape(optax.adamw(1e-3).init, params)
  opt_specs = sharding.param_partition_specs(opt_state, mesh)
  assert get(opt_specs[0].mu['layers']['mlp']['gate_proj']['kernel']) == P(None, 'fsdp', 'tensor')
  assert opt_specs[0].count == P()


def test_constrain_is_a_no_op_without_a_mesh_and_a_constraint_with_one():
  x = jnp.ones((8, 4, 6))

  def f(x):
    return sharding.constrain(x * 2, (sharding.BATCH_AXES, None, 'tensor'))

  assert 'sharding_constraint' not in str(jax.make_jaxpr(f)(x))
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  with jax.set_mesh(mesh):
    jaxpr = str(jax.make_jaxpr(f)(x))
    y = jax.jit(f)(x)
  assert 'sharding_constraint' in jaxpr
  assert y.sharding.spec == P(('data', 'fsdp'), None, 'tensor')
  with jax.set_mesh(mesh), pytest.raises(ValueError, match='2 entries'):
    sharding.constrain(x, (None, None))


def test_distributed_config_defaults_to_one_process_and_checks_fields():
  assert sharding.initialize_distributed(sharding.DistributedConfig()) is False
  with pytest.raises(ValueError, match='process_id'):
    sharding.DistributedConfig(enabled=True, num_processes=2, process_id=2)
  with pytest.raises(ValueError, match='cpu_collectives'):
    sharding.DistributedConfig(cpu_collectives='nccl')
