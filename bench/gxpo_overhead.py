"""GXPO's overhead on the trainer's cpu-tiny update step (issue 6); JSON on the last line.

Times one jitted learner update (`grpo_jax.train.make_update_fn`, the trainer's own step)
on a cpu-tiny rollout batch (64 prompts x 8 of 3-digit addition, the ~100k-parameter
decoder, AdamW, clip 1.0) for three rules, interleaved in rotating order every round and
always from the same inputs:

* GRPO (`plain`): one backward pass;
* GXPO (K=10, α=0.3) while active: three backward passes (PAPERS.md §3);
* GXPO after shutoff (the same state with `active=False`): one plain step.

Ratios are of the medians over rounds. Targets: active <= 3.1x GRPO (the transformation
adds <= 3 % over its three backward passes), after shutoff <= 1.05x. Advantages are random
normal (the untrained model scores 0 everywhere, and an all-zero gradient would send GXPO
to its fallback); each rule's last call is checked to have taken the intended branch.

  python bench/gxpo_overhead.py            # 50 rounds
  python bench/gxpo_overhead.py --quick    # smoke size: 3 rounds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import config as config_lib
from grpo_jax import train as train_lib
from grpo_jax.transforms import rule_metrics

TARGET_ACTIVE = 3.1
TARGET_OFF = 1.05


def learner_batch(cfg: config_lib.TrainConfig):
  """(trainer, params, mini-batch, prompt_len) of one real cpu-tiny rollout."""
  trainer = train_lib.Trainer(cfg, progress=False, log=lambda m: None)
  params = trainer.init_params
  groups, _, _, _ = trainer.rollout(params, 1, 0)
  batch, width, _, _ = trainer.learner_batch(params, groups)
  batch['adv'] = np.random.default_rng(0).normal(size=batch['adv'].shape).astype(np.float32)
  geo = cfg.batch
  rows = np.arange(geo.prompts_per_step * geo.group_size)[: geo.mini_batch * geo.group_size]
  mb = {k: v[rows].reshape(geo.micro_steps, -1, *v.shape[1:]) for k, v in batch.items()}
  return trainer, params, mb, width


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='3 rounds (smoke size)')
  parser.add_argument('--rounds', type=int, default=50)
  parser.add_argument('--out', default='/tmp/gxpo_overhead', help='scratch run directory')
  args = parser.parse_args(argv)
  rounds = 3 if args.quick else args.rounds

  cfg = config_lib.apply_overrides(
    config_lib.cpu_tiny(), ['sft.enabled=false', f'output_dir={args.out}']
  )
  trainer, params, mb, prompt_len = learner_batch(cfg)
  device = jax.devices()[0]
  # Committed inputs throughout, so each function compiles once.
  params, mb = jax.device_put((params, mb), device)

  def build(rule: config_lib.RuleSection):
    rule_cfg = dataclasses.replace(cfg, rule=rule)
    tx = train_lib.make_rule(rule_cfg, train_lib.make_optimizer(cfg.optim))
    update = train_lib.make_update_fn(
      trainer.graphdef, trainer.preset, tx, prompt_len=prompt_len, temperature=1.0
    )
    return update, jax.device_put(tx.init(params), device)

  grpo, grpo_state = build(config_lib.RuleSection(name='grpo'))
  gxpo, gxpo_state = build(config_lib.RuleSection(name='gxpo', k=10, alpha=0.3, tau=2.0))
  off_state = gxpo_state._replace(active=jnp.zeros_like(gxpo_state.active))
  cases = {
    'grpo': (grpo, grpo_state),
    'gxpo_active': (gxpo, gxpo_state),
    'gxpo_off': (gxpo, off_state),
  }
  expected_passes = {'grpo': 1, 'gxpo_active': 3, 'gxpo_off': 1}
  for name, (fn, state) in cases.items():
    for _ in range(2):  # compile, then one warm call
      _, new_state, _ = jax.block_until_ready(fn(params, state, mb))
    passes = int(rule_metrics(new_state)['rule/backward_passes'])
    if passes != expected_passes[name]:
      raise RuntimeError(
        f'{name}: the step took {passes} backward passes, expected {expected_passes[name]}'
      )

  times: dict[str, list[float]] = {name: [] for name in cases}
  names = list(cases)
  for r in range(rounds):
    for name in names[r % 3 :] + names[: r % 3]:  # rotate the order every round
      fn, state = cases[name]
      t = time.perf_counter()
      jax.block_until_ready(fn(params, state, mb))
      times[name].append(time.perf_counter() - t)
  med = {name: statistics.median(v) for name, v in times.items()}
  ratio_active = med['gxpo_active'] / med['grpo']
  ratio_off = med['gxpo_off'] / med['grpo']
  print(f'GRPO update step          {1e3 * med["grpo"]:8.2f} ms   (1 backward pass)')
  print(f'GXPO step while active    {1e3 * med["gxpo_active"]:8.2f} ms   (3 backward passes)')
  print(f'GXPO step after shutoff   {1e3 * med["gxpo_off"]:8.2f} ms   (1 backward pass)')
  print(f'active / GRPO  = {ratio_active:.3f}x   (target <= {TARGET_ACTIVE}x)')
  print(f'shutoff / GRPO = {ratio_off:.3f}x   (target <= {TARGET_OFF}x)')
  result = {
    'bench': 'gxpo_overhead',
    'rounds': rounds,
    'grpo_s': round(med['grpo'], 6),
    'gxpo_active_s': round(med['gxpo_active'], 6),
    'gxpo_off_s': round(med['gxpo_off'], 6),
    'ratio_active': round(ratio_active, 4),
    'ratio_off': round(ratio_off, 4),
    'target_active': TARGET_ACTIVE,
    'target_off': TARGET_OFF,
    'active_ok': ratio_active <= TARGET_ACTIVE,
    'off_ok': ratio_off <= TARGET_OFF,
  }
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()
