"""Prediction check of the reduced-order model: held-out reward curves from hyper-parameters.

Measures kappa on short SGD runs with a KL anchor (the beta = 0 log-decay route and the AR(2)
route of PAPERS.md §5), then predicts the seed-averaged reward curve of held-out runs at
other beta, lr and G with the exact heavy-ball map (continuous model beside it) and reports
the error (issue 8 item 3). The targets are the SGD runs of `experiments/rom_fit.py` when
both use the same --out (runs are shared, never trained twice).

  python experiments/rom_predict.py [--quick] [--out runs/rom] [--seeds 0 1 2] [--sgd-lr 1e-3]

The logic lives in `grpo_jax.studies.dynamics`.
"""

from __future__ import annotations

from grpo_jax.studies import dynamics as study


def main(argv: list[str] | None = None) -> dict:
  return study.main('predict', argv, description=__doc__.splitlines()[0])


if __name__ == '__main__':
  main()
