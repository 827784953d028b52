"""Chunked vs naive token log-probs + gradient from hidden states: time and peak memory.

Each variant runs in its own child process, so its peak RSS is its own. Memory is reported
twice: XLA's compiled `memory_analysis()` (temporaries + arguments + outputs) and the child's
peak resident set size. The naive path materialises [B, T, V] float32 logits (and their
gradient), so it runs at a smaller batch; compare per-token numbers.

  python bench/logprob.py            # D=512, T=1024, V=32768; naive B=16, chunked B=64
  python bench/logprob.py --quick    # small sizes, seconds

The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

FULL = dict(d=512, t=1024, v=32768, naive_b=16, chunked_b=64, chunk_size=32, iters=3)
QUICK = dict(d=64, t=128, v=2048, naive_b=4, chunked_b=16, chunk_size=32, iters=3)


def _peak_rss_bytes() -> int:
  # Linux reports ru_maxrss in KiB.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_child(variant: str, b: int, t: int, d: int, v: int, chunk_size: int, iters: int) -> dict:
  """Compiles and times value-and-grad of the summed log-probs and entropy; returns stats."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from grpo_jax import logprobs

  rss_start = _peak_rss_bytes()
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(0, 1, (b, t, d)), jnp.float32)
  w = jnp.asarray(rng.normal(0, d**-0.5, (d, v)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)

  if variant == 'chunked':
    fn = lambda h, w: logprobs.token_logprobs(h, w, targets, chunk_size=chunk_size)
  else:
    fn = lambda h, w: logprobs.naive_token_logprobs(h, w, targets)

  def loss(h, w):
    logp, ent = fn(h, w)
    return jnp.sum(logp) + 0.01 * jnp.sum(ent)

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  t0 = time.perf_counter()
  compiled = step.lower(hidden, w).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  jax.block_until_ready(compiled(hidden, w))  # warm-up
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(hidden, w))
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  tokens = b * t
  return dict(
    variant=variant,
    batch=b,
    tokens=tokens,
    compile_s=compile_s,
    step_s=step_s,
    us_per_token=1e6 * step_s / tokens,
    compiled_temp_bytes=int(mem.temp_size_in_bytes),
    compiled_total_bytes=int(
      mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    ),
    peak_rss_bytes=_peak_rss_bytes(),
    rss_before_inputs_bytes=rss_start,
  )


def _spawn(variant: str, b: int, sizes: dict) -> dict:
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    '--child',
    variant,
    '--batch',
    str(b),
    *[f'--{k.replace("_", "-")}={sizes[k]}' for k in ('d', 't', 'v', 'chunk_size', 'iters')],
  ]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='small sizes for a smoke run')
  parser.add_argument('--child', choices=('naive', 'chunked'), help=argparse.SUPPRESS)
  parser.add_argument('--batch', type=int, help=argparse.SUPPRESS)
  for k in ('d', 't', 'v', 'chunk-size', 'iters', 'naive-b', 'chunked-b'):
    parser.add_argument(f'--{k}', type=int, default=None)
  args = parser.parse_args()
  sizes = dict(QUICK if args.quick else FULL)
  for k in sizes:
    if getattr(args, k) is not None:
      sizes[k] = getattr(args, k)

  if args.child:
    stats = run_child(
      args.child,
      args.batch,
      sizes['t'],
      sizes['d'],
      sizes['v'],
      sizes['chunk_size'],
      sizes['iters'],
    )
    print(json.dumps(stats))
    return

  naive = _spawn('naive', sizes['naive_b'], sizes)
  chunked = _spawn('chunked', sizes['chunked_b'], sizes)
  mib = 2.0**-20
  print(f'D={sizes["d"]} T={sizes["t"]} V={sizes["v"]} chunk={sizes["chunk_size"]}')
  header = (
    f'{"variant":8} {"B":>4} {"us/token":>9} {"temp MiB":>9} {"total MiB":>10} {"RSS MiB":>9}'
  )
  print(header)
  for s in (naive, chunked):
    print(
      f'{s["variant"]:8} {s["batch"]:>4} {s["us_per_token"]:>9.3f} '
      f'{s["compiled_temp_bytes"] * mib:>9.1f} {s["compiled_total_bytes"] * mib:>10.1f} '
      f'{s["peak_rss_bytes"] * mib:>9.1f}'
    )
  ratios = dict(
    time_per_token_chunked_over_naive=chunked['us_per_token'] / naive['us_per_token'],
    compiled_temp_chunked_over_naive=chunked['compiled_temp_bytes'] / naive['compiled_temp_bytes'],
    compiled_temp_per_token_chunked_over_naive=(chunked['compiled_temp_bytes'] / chunked['tokens'])
    / (naive['compiled_temp_bytes'] / naive['tokens']),
    peak_rss_chunked_over_naive=chunked['peak_rss_bytes'] / naive['peak_rss_bytes'],
  )
  for k, r in ratios.items():
    print(f'{k}: {r:.3f}')
  print(json.dumps(dict(bench='logprob', sizes=sizes, naive=naive, chunked=chunked, **ratios)))


if __name__ == '__main__':
  main()
