"""One language-model training step (loss, grads, AdamW), sharded or not; shared by the sharding
tests and by the worker processes of the multi-host test."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from grpo_jax import sharding
from grpo_jax.models import Decoder, model_preset

CFG = model_preset('tiny', vocab_size=64, tie_embeddings=False)
B, T = 8, 12


def batch():
  return np.random.default_rng(0).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)


def _loss(graphdef, params, tokens_BT):
  model = nnx.merge(graphdef, params)
  inputs, targets = tokens_BT[:, :-1], tokens_BT[:, 1:]
  positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
  logits_BTV = model.logits(model(inputs, positions)[0])
  logp_BTV = jax.nn.log_softmax(logits_BTV)
  return -jnp.mean(jnp.take_along_axis(logp_BTV, targets[..., None], axis=-1))


def init_params(cfg=CFG, mesh=None):
  """(graphdef, params) with seeded numpy weights, placed straight onto their shardings.

  Host-side init keeps the tests free of a separate init compilation.
  """
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  rng = np.random.default_rng(1)
  values = jax.tree.map(
    lambda x: (0.1 * rng.standard_normal(x.shape) + (x.ndim == 1)).astype(np.float32),
    nnx.to_pure_dict(abstract),
  )
  if mesh is None:
    shardings = jax.tree.map(lambda _: None, values)
    values = jax.tree.map(jnp.asarray, values)
  else:
    shardings = nnx.to_pure_dict(sharding.param_shardings(abstract, mesh))
    values = jax.tree.map(sharding.host_to_global, values, shardings)
  nnx.replace_by_pure_dict(abstract, values)
  return graphdef, abstract


def run(mesh=None, cfg=CFG):
  """(loss, grads, new params) as host numpy pure dicts, after one step."""
  graphdef, params = init_params(cfg, mesh)
  # eps well above the gradients' rounding noise: Adam's first step is ~lr * sign(g), so with the
  # default eps a gradient of ~1e-9 whose sign depends on summation order flips a whole update.
  tx = optax.adamw(1e-2, eps=1e-3)

  def step(params, tokens_BT):
    opt_state = tx.init(params)
    loss, grads = jax.value_and_grad(lambda p: _loss(graphdef, p, tokens_BT))(params)
    updates, _ = tx.update(grads, opt_state, params)
    return loss, grads, optax.apply_updates(params, updates)

  tokens = batch()
  if mesh is None:
    out = jax.jit(step)(params, jnp.asarray(tokens))
    jax.block_until_ready(out)
  else:
    p_shard = sharding.param_shardings(params, mesh)
    step = jax.jit(
      step,
      in_shardings=(p_shard, sharding.batch_sharding(mesh, 2)),
      out_shardings=(sharding.replicated(mesh), p_shard, p_shard),
    )
    tokens = sharding.host_to_global(tokens, sharding.batch_sharding(mesh, 2))
    with jax.set_mesh(mesh):
      out = step(params, tokens)
  to_host = np.asarray
  if jax.process_count() > 1:
    # Other processes' shards are not addressable here: replicate everything in one program.
    out = jax.jit(lambda tree: tree, out_shardings=sharding.replicated(mesh))(out)
    to_host = lambda x: np.asarray(x.addressable_data(0))
  loss, grads, new_params = jax.tree.map(to_host, out)
  return float(loss), nnx.to_pure_dict(grads), nnx.to_pure_dict(new_params)


@functools.cache
def single_device_result():
  """`run(None)`, computed once per test session."""
  return run(None)


def flatten(tree, prefix=''):
  """{'a/b/0/c': array} from a nested dict (for np.savez)."""
  out = {}
  for k, v in tree.items():
    name = f'{prefix}{k}'
    out.update(flatten(v, name + '/') if isinstance(v, dict) else {name: v})
  return out
