"""`make demo`: SFT warm start, then GRPO on 3-digit addition, on CPU in a few minutes.

Prints the held-out greedy accuracy before and after RL (after = mean of the last three
evaluations) and saves the reward/accuracy figure. Re-running with the same output
directory resumes (or just re-reports a finished run).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from grpo_jax.config import apply_overrides, cpu_tiny
from grpo_jax.train import train


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--output-dir', default=None, help='default: runs/demo-seed<seed>')
  parser.add_argument('overrides', nargs='*', help='config overrides, e.g. steps=200')
  args = parser.parse_args(argv)
  out = args.output_dir or f'runs/demo-seed{args.seed}'
  cfg = apply_overrides(cpu_tiny(), [f'seed={args.seed}', f'output_dir={out}', *args.overrides])
  result = train(cfg)
  print()
  print(f'held-out greedy accuracy before RL: {100 * result["before_acc"]:.1f} %')
  print(
    f'held-out greedy accuracy after {result["steps"]} GRPO steps: '
    f'{100 * result["after_acc"]:.1f} % (mean of the last three evaluations), '
    f'{result["gain_points"]:+.1f} points'
  )
  print(f'time {result["time_s"]:.0f} s; figure: {result["figure"]}')
  return result


if __name__ == '__main__':
  main()
