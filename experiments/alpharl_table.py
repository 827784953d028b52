"""AlphaRL tables (PAPERS.md §4): rank-1 dominance, linearity, extrapolation on a GRPO run.

  python experiments/alpharl_table.py                 # SFT + GRPO on 3-digit addition, every 20th
                                                      # step kept and evaluated, then the tables
  python experiments/alpharl_table.py --quick         # smoke size (a minute on CPU)
  python experiments/alpharl_table.py --run-dir /path/to/run --no-train
      # a user's trainer run (any preset, e.g. `paper`), read with its saved config
  python experiments/alpharl_table.py --preset paper --hf 0=/ckpt/base 100=/ckpt/s100 ...
      model.path=/ckpt/base data.path=/data/train.jsonl     # local HF checkpoint directories

Prints each table with the paper's numbers beside ours and writes alpharl.json, the figures
and dw_final.npz (for `bench/svd.py --dw`) to `<run dir>/alpharl`. The logic lives in
`grpo_jax.studies.alpharl`; this file is intentionally kept short.
"""

from __future__ import annotations

import argparse

from grpo_jax.studies import alpharl


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='cpu-tiny', help="trainer preset ('cpu-tiny', 'paper')")
  parser.add_argument('--every', type=int, default=20, help='keep and evaluate every k-th step')
  parser.add_argument('--quick', action='store_true', help='a tiny configuration (smoke test)')
  parser.add_argument('--run-dir', help="the run directory (default: the preset's)")
  parser.add_argument('--no-train', action='store_true', help='analyse --run-dir as it is')
  parser.add_argument('--hf', nargs='+', metavar='STEP=PATH', help='local HF checkpoints')
  parser.add_argument('--out', help='output directory (default: <run dir>/alpharl)')
  parser.add_argument('--method', choices=('power', 'svd'), default='power', help='top-1 SVD')
  parser.add_argument('overrides', nargs='*', help='trainer config overrides, field=value')
  args = parser.parse_args(argv)

  if args.quick:
    cfg = alpharl.quick_config(args.run_dir or 'runs/alpharl-quick', *args.overrides)
  elif args.run_dir and args.no_train:
    cfg = None  # read from the run's checkpoints
  else:
    cfg = alpharl.study_config(preset=args.preset, every=args.every, overrides=args.overrides)
  hf = None
  if args.hf:
    hf = {int(s): p for s, p in (item.split('=', 1) for item in args.hf)}
  return alpharl.run(
    cfg,
    run_dir=args.run_dir,
    out_dir=args.out,
    hf_paths=hf,
    train=not args.no_train,
    method=args.method,
  )


if __name__ == '__main__':
  main()
