"""Surrogate analysis of GXPO's extrapolation (paper Table 6 kind).

Run `python experiments/surrogate.py` (`--quick` for a smoke-size run). Prints the table with
the paper's values beside ours, writes it as JSON and saves a figure. The logic lives in
`grpo_jax.transforms.surrogate`; this file is intentionally kept short.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from grpo_jax.transforms import surrogate


def plot(results: dict, path: pathlib.Path) -> None:
  """theta_K error against K, one line per setting (log scale)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  ks = results['config']['ks']
  for row, cells in results['rows'].items():
    means = [max(cells[str(k)]['mean'], 1e-17) for k in ks]  # exact rows sit at round-off
    stds = [cells[str(k)]['std'] for k in ks]
    title = surrogate.ROW_TITLES[row].format(dim=results['config']['dim'])
    ax.errorbar(ks, means, yerr=stds, marker='o', capsize=3, label=title)
  ax.set_yscale('log')
  ax.set_xlabel('K')
  ax.set_ylabel(r'$\|\hat\theta_K-\theta_K\| / \|\theta_K-\theta_0\|$')
  ax.set_xticks(ks)
  ax.legend(fontsize=8)
  ax.set_title('GXPO surrogate error vs K')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path('runs/surrogate'))
  parser.add_argument('--ks', type=int, nargs='+', default=[3, 5, 10])
  parser.add_argument('--dim', type=int, default=50)
  parser.add_argument('--problems', type=int, default=32)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--quick', action='store_true', help='a tiny configuration (smoke test)')
  args = parser.parse_args(argv)
  if args.quick:
    args.ks, args.dim, args.problems = [3], 8, 4
  config = surrogate.SurrogateConfig(
    ks=tuple(args.ks), dim=args.dim, n_problems=args.problems, seed=args.seed
  )
  results = surrogate.run(config)
  print(surrogate.format_table(results))
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / 'surrogate.json').write_text(json.dumps(results, indent=2))
  plot(results, args.out / 'surrogate.png')
  print(f'wrote {args.out / "surrogate.json"} and {args.out / "surrogate.png"}')
  return results


if __name__ == '__main__':
  main()
