"""Power iteration against `jnp.linalg.svd` for the top singular triplet (PAPERS.md §4).

Cases per size N (an N x N float32 matrix):
  rank1+noise  4 u v^T + G / sqrt(N), G standard Gaussian: a rank-1 dominant update with
               sigma2/sigma1 ~ 0.47, the matrices AlphaRL works on;
  gaussian     G / sqrt(N): sigma2/sigma1 -> 1, where power iteration stops paying;
  dw:<name>    each 2-D array of the .npy/.npz files given with --dw (e.g. a dW = W_t - W_0
               saved from a trainer run).
For each: median wall time of both routes (compiled ahead, so compilation is excluded; power
iteration also gets one untimed warm-up run, the full SVD none as it is the slow side), the
time ratio, iterations, convergence, and the sigma1 relative error of both against a float64
reference (ARPACK, scipy.sparse.linalg.svds). The last line is one JSON object.

  python bench/svd.py --quick                 # smoke sizes 256, 512
  python bench/svd.py                         # 1024, 2048, 4096 (minutes of CPU)
  python bench/svd.py --dw run/dw_q_proj.npy  # add real updates
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse.linalg import svds

from grpo_jax.rank1 import power_iteration, top_k_svd

TARGET = {'case': 'rank1+noise', 'size': 4096, 'min_speedup': 20.0, 'max_rel_err': 1e-5}


def _cases(sizes, dw_paths):
  for n in sizes:
    k1, k2, k3 = jax.random.split(jax.random.key(n), 3)
    noise = jax.random.normal(k3, (n, n), jnp.float32) / np.sqrt(n)
    u = jax.random.normal(k1, (n,), jnp.float32)
    v = jax.random.normal(k2, (n,), jnp.float32)
    spike = 4.0 * jnp.outer(u / jnp.linalg.norm(u), v / jnp.linalg.norm(v))
    yield 'rank1+noise', n, spike + noise
    yield 'gaussian', n, noise
  for path in dw_paths:
    path = pathlib.Path(path)
    loaded = np.load(path, allow_pickle=False)
    arrays = {path.stem: loaded} if isinstance(loaded, np.ndarray) else dict(loaded)
    for name, arr in arrays.items():
      if arr.ndim != 2:
        raise ValueError(f'{path}: array {name!r} is not 2-D (shape {arr.shape})')
      yield f'dw:{name}', max(arr.shape), jnp.asarray(arr, jnp.float32)


def _time(fn, a, repeats, warmup=0):
  for _ in range(warmup):
    jax.block_until_ready(fn(a))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(a))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--quick', action='store_true', help='smoke sizes 256 and 512')
  p.add_argument('--sizes', type=int, nargs='+', default=[1024, 2048, 4096])
  p.add_argument('--dw', nargs='*', default=[], help='.npy/.npz files of 2-D updates')
  p.add_argument('--tol', type=float, default=1e-5)
  p.add_argument('--max-iters', type=int, default=1000)
  p.add_argument('--repeats', type=int, default=5, help='timed runs of power iteration')
  p.add_argument('--svd-repeats', type=int, default=1, help='timed runs of the full SVD')
  args = p.parse_args(argv)
  sizes = [256, 512] if args.quick else args.sizes

  power = jax.jit(lambda a: power_iteration(a, tol=args.tol, max_iters=args.max_iters))
  full = jax.jit(lambda a: top_k_svd(a, 2))
  rows = []
  header = (
    f'{"case":<14}{"N":>6}{"s2/s1":>8}{"power ms":>11}{"svd ms":>11}{"ratio":>9}'
    f'{"iters":>7}{"conv":>6}{"err power":>11}{"err svd":>10}'
  )
  print(header)
  for case, n, a in _cases(sizes, args.dw):
    a = jax.block_until_ready(a)
    p_fn, s_fn = power.lower(a).compile(), full.lower(a).compile()
    t_pow, r = _time(p_fn, a, args.repeats, warmup=1)
    t_svd, (_, s2, _) = _time(s_fn, a, args.svd_repeats)
    ref = float(svds(np.asarray(a, np.float64), k=1, return_singular_vectors=False, tol=0)[0])
    row = {
      'case': case,
      'size': n,
      'shape': list(a.shape),
      'sigma2_over_sigma1': float(s2[1] / s2[0]),
      'power_s': t_pow,
      'svd_s': t_svd,
      'speedup': t_svd / t_pow,
      'iterations': int(r.iterations),
      'converged': bool(r.converged),
      'rel_err_power': abs(float(r.s) - ref) / ref,
      'rel_err_svd': abs(float(s2[0]) - ref) / ref,
    }
    rows.append(row)
    print(
      f'{case:<14}{n:>6}{row["sigma2_over_sigma1"]:>8.3f}{1e3 * t_pow:>11.2f}'
      f'{1e3 * t_svd:>11.1f}{row["speedup"]:>9.1f}{row["iterations"]:>7}'
      f'{"yes" if row["converged"] else "no":>6}{row["rel_err_power"]:>11.1e}'
      f'{row["rel_err_svd"]:>10.1e}',
      flush=True,
    )
  hit = [r for r in rows if r['case'] == TARGET['case'] and r['size'] == TARGET['size']]
  met = (
    None
    if not hit
    else hit[0]['speedup'] >= TARGET['min_speedup']
    and hit[0]['rel_err_power'] <= TARGET['max_rel_err']
  )
  summary = {
    'bench': 'svd',
    'quick': args.quick,
    'tol': args.tol,
    'max_iters': args.max_iters,
    'devices': [str(d) for d in jax.devices()[:1]],
    'target': {**TARGET, 'met': met},
    'results': rows,
  }
  print(json.dumps(summary))


if __name__ == '__main__':
  main()
