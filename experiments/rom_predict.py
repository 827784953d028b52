"""Prediction check of the reduced-order model: held-out reward curves from hyper-parameters.

Measures kappa on a short beta = 0 SGD run with a KL anchor (the log-decay and the AR(2)
routes of PAPERS.md §5), then predicts the seed-averaged reward curve of held-out runs at
other beta, lr and G with the exact heavy-ball map (continuous model beside it) and reports
the error (issue 8 item 3). The targets are the SGD runs of `experiments/rom_fit.py` when
both use the same --out (runs are shared, never trained twice).

  python experiments/rom_predict.py [--quick] [--out runs/rom] [--seeds 0 1 2]

The logic lives in `grpo_jax.studies.dynamics`.
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
  parser.add_argument('--steps', type=int, default=None, help='rollout steps of the targets')
  parser.add_argument('--analyze-only', action='store_true', help='tables from existing runs')
  args = parser.parse_args(argv)
  preset = 'quick' if args.quick else 'cpu'
  kwargs = {k: v for k, v in (('seeds', args.seeds), ('steps', args.steps)) if v is not None}
  spec = study.PREDICT_SPECS[preset](**kwargs)
  out = args.out or os.path.join('runs', 'rom_quick' if args.quick else 'rom')
  if not args.analyze_only:
    study.run_study(spec, out)
  results = study.analyze_predict(spec, out)
  print(study.format_predict_table(results))
  json_path = common.write_json(os.path.join(out, 'rom_predict.json'), results)
  figure = study.plot_predict(results, os.path.join(out, 'rom_predict.png'))
  print(f'wrote {json_path} and {figure}')
  return results


if __name__ == '__main__':
  main()
