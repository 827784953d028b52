"""Fit table of the reduced-order model on GRPO runs of the trainer's default task.

Trains AdamW (default, no validated mapping) and SGD + heavy-ball momentum with a KL anchor
(exact mapping) at G = 4 and 16 over three seeds, fits the oscillator closed form and the
single exponential to the seed-averaged training reward and held-out accuracy, overlays the
mean curves across G, measures Var*G and runs the diagnostics (PAPERS.md §5, issue 8 item 2).

  python experiments/rom_fit.py [--quick] [--out runs/rom] [--seeds 0 1 2] [--steps 200]
                                [--sgd-lr 1e-3]

Re-running resumes; the logic lives in `grpo_jax.studies.dynamics`.
"""

from __future__ import annotations

from grpo_jax.studies import dynamics as study


def main(argv: list[str] | None = None) -> dict:
  return study.main('fit', argv, description=__doc__.splitlines()[0])


if __name__ == '__main__':
  main()
