"""Fit table of the reduced-order model on GRPO runs of the trainer's default task.

Trains AdamW (default, no validated mapping) and SGD + heavy-ball momentum with a KL anchor
(exact mapping) at G = 4 and 16 over three seeds, fits the oscillator closed form and the
single exponential to the seed-averaged training reward and held-out accuracy, overlays the
mean curves across G, measures Var*G and runs the diagnostics (PAPERS.md §5, issue 8 item 2).

  python experiments/rom_fit.py [--quick] [--out runs/rom] [--seeds 0 1 2] [--steps 200]

Re-running resumes; the logic lives in `grpo_jax.studies.dynamics`.
"""

from __future__ import annotations

import argparse
import os

from grpo_jax.studies import common
from grpo_jax.studies import dynamics as study


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='smoke size (seconds per run)')
  parser.add_argument('--out', default=None, help='study directory (default runs/rom[_quick])')
  parser.add_argument('--seeds', type=int, nargs='+', default=None)
  parser.add_argument('--steps', type=int, default=None, help='rollout steps per run')
  parser.add_argument('--sgd-lr', type=float, default=None, help='lr of the SGD+HB+KL arm')
  parser.add_argument('--analyze-only', action='store_true', help='tables from existing runs')
  args = parser.parse_args(argv)
  preset = 'quick' if args.quick else 'cpu'
  kwargs = {k: v for k, v in (('seeds', args.seeds), ('steps', args.steps)) if v is not None}
  if args.sgd_lr is not None:
    kwargs['sgd_lr'] = args.sgd_lr
  spec = study.FIT_SPECS[preset](**kwargs)
  out = args.out or os.path.join('runs', 'rom_quick' if args.quick else 'rom')
  if not args.analyze_only:
    study.run_study(spec, out)
  results = study.analyze_fit(spec, out)
  print(study.format_fit_tables(results))
  json_path = common.write_json(os.path.join(out, 'rom_fit.json'), results)
  figures = study.plot_fit(results, os.path.join(out, 'rom_fit'))
  print(f'wrote {json_path} and {", ".join(figures)}')
  return results


if __name__ == '__main__':
  main()
