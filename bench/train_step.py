"""Training-step throughput (loss + grad + AdamW) and model-FLOPs utilisation on CPU.

MFU = 6 * N * tokens / step_time / peak, with N the parameter count (a tied embedding counted
once) and the peak the FLOP rate of a jitted 2048x2048 float32 matmul, timed in rounds
interleaved with the training step in the same process (so both see the same machine load).
Prints one JSON line last.

  python bench/train_step.py            # issue 4's medium config: D=512, 8 layers, T=256
  python bench/train_step.py --quick    # smoke size
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from grpo_jax.models import create_decoder, model_preset

MATMUL_N = 2048


def _time(fn, iters: int) -> float:
  """Seconds per call of `fn` (which blocks until its result is ready)."""
  start = time.perf_counter()
  for _ in range(iters):
    fn()
  return (time.perf_counter() - start) / iters


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes, for a smoke run')
  parser.add_argument('--batch', type=int, default=None)
  parser.add_argument('--seq', type=int, default=None)
  parser.add_argument('--vocab', type=int, default=None)
  parser.add_argument('--rounds', type=int, default=None)
  parser.add_argument('--remat', action='store_true')
  args = parser.parse_args()

  if args.quick:
    cfg = model_preset('tiny', vocab_size=args.vocab or 256, remat=args.remat)
    B, T, rounds, step_iters, mm_iters = args.batch or 4, args.seq or 32, args.rounds or 2, 2, 1
  else:
    cfg = model_preset('medium', vocab_size=args.vocab or 8192, remat=args.remat)
    B, T, rounds, step_iters, mm_iters = args.batch or 8, args.seq or 256, args.rounds or 3, 3, 5

  model = create_decoder(cfg, seed=0)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adamw(1e-4)
  opt_state = jax.jit(tx.init)(params)

  def loss_fn(params, tokens_BT):
    m = nnx.merge(graphdef, params)
    inputs, targets = tokens_BT[:, :-1], tokens_BT[:, 1:]
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    logp_BTV = jax.nn.log_softmax(m.logits(m(inputs, positions)[0]))
    return -jnp.mean(jnp.take_along_axis(logp_BTV, targets[..., None], axis=-1))

  @jax.jit
  def train_step(params, opt_state, tokens_BT):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BT)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T + 1)))
  a = jnp.asarray(np.random.default_rng(1).standard_normal((MATMUL_N, MATMUL_N), np.float32))
  matmul = jax.jit(lambda x: x @ x)

  state = [params, opt_state]

  def step():
    state[0], state[1], loss = train_step(state[0], state[1], tokens)
    loss.block_until_ready()

  def mm():
    matmul(a).block_until_ready()

  t0 = time.perf_counter()
  step()  # compile + first run
  mm()
  compile_s = time.perf_counter() - t0
  step_times, mm_times = [], []
  for r in range(rounds):
    step_times.append(_time(step, step_iters))
    mm_times.append(_time(mm, mm_iters))
    print(f'round {r}: step {step_times[-1]:.4f} s, matmul {mm_times[-1]:.4f} s', flush=True)

  n_params = cfg.num_params()
  n_counted = sum(x.size for x in jax.tree.leaves(params))
  assert n_counted == n_params, (n_counted, n_params)
  step_s, mm_s = float(np.median(step_times)), float(np.median(mm_times))
  tokens_per_step = B * T
  model_flops = 6 * n_params * tokens_per_step / step_s
  peak = 2 * MATMUL_N**3 / mm_s
  result = {
    'bench': 'train_step',
    'quick': args.quick,
    'backend': jax.default_backend(),
    'devices': jax.device_count(),
    'd_model': cfg.d_model,
    'n_layers': cfg.n_layers,
    'vocab_size': cfg.vocab_size,
    'batch': B,
    'seq_len': T,
    'remat': cfg.remat,
    'params': n_params,
    'compile_s': round(compile_s, 3),
    'step_s': step_s,
    'tokens_per_s': tokens_per_step / step_s,
    'model_flops_per_s': model_flops,
    'peak_matmul_flops_per_s': peak,
    'mfu': model_flops / peak,
  }
  print(
    f'{tokens_per_step / step_s:.1f} tokens/s, {model_flops / 1e9:.2f} model GFLOP/s, '
    f'peak {peak / 1e9:.2f} GFLOP/s, MFU {100 * model_flops / peak:.1f}%'
  )
  print(json.dumps(result))


if __name__ == '__main__':
  main()
