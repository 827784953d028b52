"""The contract every update rule (plain, sfpo, gxpo, lookahead) satisfies as an optax transform."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from grpo_jax import sharding
from grpo_jax import transforms as T

RULES = {
  'plain': lambda inner, **kw: T.plain(inner, **kw),
  'sfpo': lambda inner, **kw: T.sfpo(inner, **{'k': 3, 'alpha': 0.8, 'window': 5, **kw}),
  'gxpo': lambda inner, **kw: T.gxpo(inner, **{'k': 3, 'alpha': 0.5, **kw}),
  'lookahead': lambda inner, **kw: T.lookahead(inner, **{'k': 3, 'alpha': 0.8, **kw}),
}
FACTORIES = {'plain': T.plain, 'sfpo': T.sfpo, 'gxpo': T.gxpo, 'lookahead': T.lookahead}
# Hyperparameters each rule gets under inject_hyperparams (k static where the rule has one).
INJECTED = {
  'plain': dict(max_grad_norm=1.0),
  'sfpo': dict(k=3, alpha=0.8, window=5, max_grad_norm=1.0),
  'gxpo': dict(k=3, alpha=0.5, max_grad_norm=1.0),
  'lookahead': dict(k=3, alpha=0.8, max_grad_norm=1.0),
}
STATIC = {'plain': (), 'sfpo': ('k', 'window'), 'gxpo': ('k',), 'lookahead': ('k',)}

TARGET = {'w': np.array([[1.0, -2.0], [3.0, 0.5]], np.float32), 'b': np.array([-1.0], np.float32)}


def parabola(params):
  """0.5 ||theta - theta*||^2, minimised at TARGET."""
  return sum(
    0.5 * jnp.sum(jnp.square(params[n].astype(jnp.float32) - TARGET[n])) for n in ('w', 'b')
  )


def grad_fn(params):
  return jax.grad(parabola)(params)


def zeros(dtype=jnp.float32):
  return {'w': jnp.zeros((2, 2), dtype), 'b': jnp.zeros((1,), dtype)}


@functools.cache
def sgd_rule(rule):
  """The rule around sgd(0.5) with a 1.0 clip, and its jitted step (shared by several tests)."""
  tx = RULES[rule](optax.sgd(0.5), max_grad_norm=1.0)
  return tx, step_fn(tx)


def step_fn(tx):
  """A jitted train step: g0 from the loss, then the rule with grad_fn and entropy."""

  @jax.jit
  def step(params, state):
    g0 = grad_fn(params)
    updates, state = tx.update(g0, state, params, grad_fn=grad_fn, entropy=jnp.float32(1.0))
    return optax.apply_updates(params, updates), updates, state

  return step


@pytest.mark.parametrize('rule', RULES)
def test_unknown_extra_args_are_accepted(rule):
  tx, step = sgd_rule(rule)
  params = zeros()

  @jax.jit
  def with_extras(params, state):
    g0 = grad_fn(params)
    kw = dict(grad_fn=grad_fn, entropy=jnp.float32(1.0), unknown_arg=3, value=jnp.float32(0.5))
    return tx.update(g0, state, params, **kw)[0]

  got = with_extras(params, tx.init(params))
  ref = step(params, tx.init(params))[1]
  jax.tree.map(np.testing.assert_array_equal, got, ref)
  assert float(jnp.abs(got['b'][0])) > 0  # the call moved the parameters


@pytest.mark.parametrize('rule', RULES)
def test_dtypes_are_preserved(rule, dtype=jnp.bfloat16):
  tx = RULES[rule](optax.adam(0.1))
  params = zeros(dtype)
  state = tx.init(params)
  types0 = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  step = step_fn(tx)
  for _ in range(2):
    params, updates, state = step(params, state)
  assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
  assert all(p.dtype == dtype for p in jax.tree.leaves(params))
  assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == types0


@pytest.mark.parametrize('rule', RULES)
def test_works_under_inject_hyperparams(rule):
  injected = optax.inject_hyperparams(FACTORIES[rule], static_args=STATIC[rule])
  tx = injected(inner=optax.sgd(0.5), **INJECTED[rule])
  direct, direct_step = sgd_rule(rule)
  params = zeros()
  step = step_fn(tx)
  got, state = step(params, tx.init(params))[1:]
  ref = direct_step(params, direct.init(params))[1]
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6), got, ref)
  # The hyperparameters are live: a smaller clip changes the update.
  state.hyperparams['max_grad_norm'] = jnp.asarray(0.01, state.hyperparams['max_grad_norm'].dtype)
  smaller = step(params, state)[1]
  assert float(optax.tree.norm(smaller)) < float(optax.tree.norm(got))


@pytest.mark.parametrize('rule', RULES)
def test_init_on_shape_dtype_structs(rule):
  params = zeros()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  real = RULES[rule](optax.adam(0.1)).init(params)
  shapes = lambda t: jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), t)  # noqa: E731
  assert shapes(RULES[rule](optax.adam(0.1)).init(abstract)) == shapes(real)
  injected = optax.inject_hyperparams(
    FACTORIES[rule], static_args=STATIC[rule], hyperparam_dtype=jnp.float32
  )(inner=optax.adam(0.1), **INJECTED[rule])
  assert shapes(injected.init(abstract).inner_state) == shapes(real)


@pytest.mark.parametrize('rule', RULES)
def test_compiles_once_across_steps(rule):
  traces = []

  tx = RULES[rule](optax.adam(0.1))

  @jax.jit
  def step(params, state, scale):
    traces.append(1)
    g0 = jax.tree.map(lambda g: scale * g, grad_fn(params))
    fn = lambda p: jax.tree.map(lambda g: scale * g, grad_fn(p))  # noqa: E731
    updates, state = tx.update(g0, state, params, grad_fn=fn, entropy=scale)
    return optax.apply_updates(params, updates), state

  params, state = zeros(), tx.init(zeros())
  # A spike at call 5 shuts sfpo/gxpo off, so both branches are exercised by the same program.
  for i in range(8):
    params, state = step(params, state, jnp.float32(1e4 if i == 5 else 1.0))
  assert len(traces) == 1
  if rule in ('sfpo', 'gxpo'):
    assert not bool(state.active)


@pytest.mark.parametrize('rule', RULES)
def test_state_types_and_shardings_are_stable_on_eight_devices(rule):
  mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
  specs = {'w': P('fsdp', 'tensor'), 'b': P()}
  params = {'w': jnp.zeros((8, 4)), 'b': jnp.zeros((1,))}
  params = jax.tree.map(lambda x, s: jax.device_put(x, sharding.named(mesh, *s)), params, specs)
  target = {'w': jnp.arange(32.0).reshape(8, 4) / 32, 'b': jnp.ones((1,))}
  fn = jax.grad(lambda p: sum(0.5 * jnp.sum(jnp.square(p[n] - target[n])) for n in p))
  tx = RULES[rule](optax.adam(0.1))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(fn(params), state, params, grad_fn=fn, entropy=jnp.float32(1.0))
    return optax.apply_updates(params, updates), state

  avals = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
  shard = lambda t: jax.tree.map(lambda x: x.sharding, t)  # noqa: E731
  # Eager init under the mesh: moments follow the params (zeros_like keeps the sharding) and
  # scalars are replicated over the mesh. (A jitted init would need out_shardings, as in optax.)
  with jax.set_mesh(mesh):
    state = tx.init(params)
    first = (avals(state), shard(state))
    for _ in range(2):
      params, state = step(params, state)
      assert (avals(state), shard(state)) == first
  # Adam's moments are sharded exactly like the parameters they track.
  mu = T.find_rule_state(state).inner_state[0].mu
  assert mu['w'].sharding.spec == P('fsdp', 'tensor')
  assert params['w'].sharding.spec == P('fsdp', 'tensor')


# Steps each rule is given to reach ||theta - theta*|| <= 1e-4 on the parabola (SGD 0.5,
# clip 1.0). Measured: plain needs 20 calls, sfpo and lookahead 7, gxpo 10.
PARABOLA_STEPS = 30


@pytest.mark.parametrize('rule', RULES)
def test_converges_on_a_parabola(rule):
  tx, step = sgd_rule(rule)
  params, state = zeros(), tx.init(zeros())
  for _ in range(PARABOLA_STEPS):
    params, _, state = step(params, state)
  err = np.sqrt(sum(np.sum((np.asarray(params[n]) - TARGET[n]) ** 2) for n in TARGET))
  assert err <= 1e-4
