"""The GXPO tables (paper Tables 1 and 2): GRPO, SFPO and GXPO on the trainer's default task.

Run `python experiments/gxpo_table.py` (the CPU preset, <= 60 min on 2 cores), `--preset
paper --model-path ... --data-path ...` on GPU/TPU, or `--preset quick` for a smoke run.
Re-running the same command resumes an interrupted study. Prints both tables with the
paper's numbers beside ours, writes them as JSON and saves a figure. The logic lives in
`grpo_jax.studies.gxpo`; this file is intentionally kept short.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from grpo_jax.studies import common, gxpo


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='cpu', choices=sorted(gxpo.SPECS))
  parser.add_argument('--out', default=None, help='study directory (default runs/gxpo_<preset>)')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--steps', type=int, default=None, help='rollout steps per run')
  keys = [m.key for m in gxpo.default_methods()]
  parser.add_argument('--methods', nargs='+', choices=keys, default=keys, help='rows (GRPO first)')
  parser.add_argument('--model-path', default=None, help='paper preset: local HF checkpoint')
  parser.add_argument('--data-path', default=None, help='paper preset: local JSONL of prompts')
  parser.add_argument('--analyze-only', action='store_true', help='tables from existing runs')
  args = parser.parse_args(argv)
  kwargs = {'seeds': args.seeds}
  if args.steps is not None:
    kwargs['steps'] = args.steps
  if args.preset == 'paper':
    kwargs.update(
      {k: v for k, v in (('model_path', args.model_path), ('data_path', args.data_path)) if v}
    )
  elif args.model_path or args.data_path:
    parser.error('--model-path/--data-path belong to --preset paper')
  spec = gxpo.SPECS[args.preset](**kwargs)
  if args.methods != keys:
    chosen = [m for m in spec.methods if m.key in args.methods]
    spec = dataclasses.replace(spec, methods=tuple(chosen))
  out = args.out or os.path.join('runs', f'gxpo_{args.preset}')
  if not args.analyze_only:
    gxpo.run_study(spec, out)
  results = gxpo.analyze(spec, out)
  print(gxpo.format_tables(results))
  json_path = common.write_json(os.path.join(out, 'gxpo_table.json'), results)
  figure = gxpo.plot(results, os.path.join(out, 'gxpo_table.png'))
  print(f'wrote {json_path} and {figure}')
  return results


if __name__ == '__main__':
  main()
