"""The GXPO tables (paper Tables 1 and 2, PAPERS.md §2-3): GRPO vs SFPO vs GXPO on one task.

A study trains every method for every seed with the trainer (`grpo_jax.train`), then reads
the runs' metrics and builds:

* Table 1: final sampled avg@k (mean ± std over seeds) and greedy accuracy, the gain over
  GRPO, backward passes, and the wall-clock and backward-pass speedups to GRPO's peak;
* Table 2: steps, rollouts, tokens, backward passes and wall-clock to reach GRPO's peak
  greedy accuracy, and the speedups;
* a figure of greedy accuracy against steps, backward passes and wall-clock.

Single evaluations are noisy (±3-4 points), so the peak and the reach points are read on
the seed-averaged curve smoothed by a centred moving average (`common.smooth`); a method
whose curve never gets to GRPO's peak is "not reached". Both are read after step 0, the
starting point all methods share. The final accuracies are each seed's mean of its last
`final_evals` evaluations (never one noisy evaluation).

Layout of a study directory::

  <out>/study.json                the spec (refuses a different spec on resume)
  <out>/sft/seed<s>/sft/          the one SFT warm start shared by every method of seed s
  <out>/runs/<method>/seed<s>/    one trainer run each (checkpoints, metrics.jsonl)
  <out>/gxpo_table.json           the tables and curves; <out>/gxpo_table.png the figure

Resume: a finished run (its `summary.json` records the configured steps) is skipped, an
unfinished one resumes from its latest checkpoint (the trainer's resume), and a finished
SFT warm start is reused, so re-running the same command continues where it stopped.

Wall-clock is the training time of a run: the sum over rollout steps of rollout + update
seconds (`time/rollout_s + time/update_s`), so evaluations and checkpoints, which every
method does on the same schedule, are not counted. A step that holds a one-off jit
compilation (the first steps of each process) is an outlier of more than `COMPILE_FACTOR`
times the median time of the run's steps with the same backward-pass count; its time is
replaced by that median and the number of such steps is recorded as `compile_steps`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from grpo_jax import config as config_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax.studies import common

COMPILE_FACTOR = 5.0

# The paper's numbers, as PAPERS.md states them (§3 for GXPO, §2 for SFPO). They are claims
# over the paper's models and benchmarks ("up to", ranges), so they are printed as such and
# never as a value of our task; every other cell prints "n/a".
PAPER_GXPO_GAIN = '+1.65 to +5.00'  # sampled pass@1 over GRPO (§3)
PAPER_GXPO_STEP_SPEEDUP = 'up to 4.00x'  # to GRPO's peak (§3)
PAPER_GXPO_TIME_SPEEDUP = 'up to 2.33x'
PAPER_GXPO_BP_SPEEDUP = 'up to 1.33x'
PAPER_SFPO_ROLLOUT_SPEEDUP = '3.2-4.9x'  # fewer rollouts to GRPO's best (SFPO paper, §2)
PAPER_SFPO_TIME_SPEEDUP = '2.6-4.2x'

PAPER_NOTES = (
  'paper (PAPERS.md §3): Qwen2.5-Math-1.5B/7B-Instruct and Llama-3.2-3B-Instruct, six math '
  'benchmarks; GXPO +1.65 to +5.00 sampled pass@1 over GRPO and +0.14 to +1.28 over the best '
  "SFPO; up to 4.00x step, 2.33x wall-clock and 1.33x backward-pass speedup to GRPO's peak.",
  "SFPO paper (PAPERS.md §2): 3.2-4.9x fewer rollouts and 2.6-4.2x less time to GRPO's best.",
  "Our task and model differ from the paper's: absolute accuracies are not comparable.",
)


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the tables: a name, a directory key and the `rule.*` config overrides."""

  key: str
  label: str
  rule: config_lib.RuleSection

  @property
  def active_passes(self) -> int:
    """Backward passes per update while the rule is active (PAPERS.md §2-3 accounting)."""
    return {'grpo': 1, 'sfpo': self.rule.k + 1, 'gxpo': 3}[self.rule.name]


def default_methods() -> tuple[Method, ...]:
  """GRPO; SFPO (K=3, α=0.8); GXPO (K=3, α=0.5) and (K=10, α=0.3, τ=2) (issue 6)."""
  R = config_lib.RuleSection
  return (
    Method('grpo', 'GRPO', R(name='grpo')),
    Method('sfpo_k3', 'SFPO (K=3, α=0.8)', R(name='sfpo', k=3, alpha=0.8)),
    Method('gxpo_k3', 'GXPO (K=3, α=0.5)', R(name='gxpo', k=3, alpha=0.5, tau=2.0)),
    Method('gxpo_k10', 'GXPO (K=10, α=0.3, τ=2)', R(name='gxpo', k=10, alpha=0.3, tau=2.0)),
  )


@dataclasses.dataclass(frozen=True)
class StudySpec:
  """What a study trains and how its tables are read.

  Attributes:
    name: the preset's name (recorded in the JSON).
    base: the trainer config every run starts from; `rule`, `seed` and `output_dir` are
      set per run.
    methods: the table rows; the first must be GRPO (the baseline of every speedup).
    seeds: at least one; the tables want >= 3.
    smooth_window: odd width, in evaluations, of the centred moving average.
    final_evals: evaluations averaged into each seed's final accuracy.
  """

  name: str
  base: config_lib.TrainConfig
  methods: tuple[Method, ...] = dataclasses.field(default_factory=default_methods)
  seeds: tuple[int, ...] = (0, 1, 2)
  smooth_window: int = 5
  final_evals: int = 3

  def __post_init__(self):
    if not self.methods or self.methods[0].rule.name != 'grpo':
      raise ValueError('StudySpec.methods: the first method must be GRPO (the baseline)')
    keys = [m.key for m in self.methods]
    if len(set(keys)) != len(keys):
      raise ValueError(f'StudySpec.methods: duplicate keys {keys}')
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f'StudySpec.seeds: need distinct seeds, got {self.seeds}')
    if self.smooth_window < 1 or self.smooth_window % 2 == 0:
      raise ValueError(f'StudySpec.smooth_window: must be odd and >= 1, got {self.smooth_window}')
    if self.final_evals < 1:
      raise ValueError(f'StudySpec.final_evals: must be >= 1, got {self.final_evals}')
    if self.base.batch.epochs * self.base.batch.prompts_per_step < self.base.batch.mini_batch:
      raise ValueError('StudySpec.base.batch: no optimizer update per rollout step')

  @property
  def share_sft(self) -> bool:
    return self.base.sft.enabled

  def to_dict(self) -> dict[str, Any]:
    return {
      'name': self.name,
      'base': self.base.to_dict(),
      'methods': [
        {'key': m.key, 'label': m.label, 'rule': dataclasses.asdict(m.rule)} for m in self.methods
      ],
      'seeds': list(self.seeds),
      'smooth_window': self.smooth_window,
      'final_evals': self.final_evals,
    }


# ----------------------------------------------------------------------------- presets


def cpu_spec(*, seeds: Sequence[int] = (0, 1, 2), steps: int = 300) -> StudySpec:
  """The CPU preset: the trainer's `cpu-tiny` run (3-digit addition, ~100k-parameter model).

  Sized for <= 60 minutes on 2 cores for 4 methods x 3 seeds: every method of a seed starts
  from the same SFT checkpoint; greedy and avg@4 on 1,024 held-out sums every 10 steps.
  """
  base = config_lib.apply_overrides(
    config_lib.cpu_tiny(),
    [
      f'steps={steps}',
      'eval.every=10',
      'eval.size=1024',
      'eval.avg_k=4',
      'checkpoint.every=40',
      'checkpoint.keep_every=0',
    ],
  )
  return StudySpec(name='cpu', base=base, seeds=tuple(seeds))


def paper_spec(
  *,
  model_path: str = 'checkpoints/Qwen2.5-Math-1.5B-Instruct',
  data_path: str = 'data/train.jsonl',
  seeds: Sequence[int] = (0, 1, 2),
  steps: int = 400,
) -> StudySpec:
  """The paper's protocol (PAPERS.md §3), sized for GPU/TPU, from local paths only.

  The trainer's `paper` preset: Qwen2.5-Math-1.5B-Instruct, 64 prompts x 8, mini-batch 16,
  AdamW 1e-6, clip 0.2, no KL, mean-only advantages (`dr_grpo` loss preset), no SFT;
  400 steps with greedy validation every 5 steps as in the paper.
  """
  base = config_lib.apply_overrides(
    config_lib.paper(),
    [
      f'model.path={model_path}',
      f'data.path={data_path}',
      f'steps={steps}',
      'eval.every=5',
      'checkpoint.every=25',
    ],
  )
  return StudySpec(name='paper', base=base, seeds=tuple(seeds))


def quick_spec(*, seeds: Sequence[int] = (0, 1, 2), steps: int = 6) -> StudySpec:
  """A smoke-size study (tests, notebook data): a few steps of tiny batches.

  The 'format' reward (digits only) varies within groups from the first step, so no update
  sees an all-zero advantage (which would send GXPO to its ‖g0‖ fallback); the SFT warm start
  is two steps, enough to exercise its sharing.
  """
  base = config_lib.apply_overrides(
    config_lib.cpu_tiny(),
    [
      f'steps={steps}',
      *common.SMOKE_OVERRIDES,
      'batch.group_size=4',
      'eval.avg_k=2',
      'eval.every=2',
      'checkpoint.every=3',
      'sft.max_steps=2',
      'sft.eval_every=1',
      'sft.eval_size=16',
      'sft.batch=16',
    ],
  )
  return StudySpec(name='quick', base=base, seeds=tuple(seeds), smooth_window=3, final_evals=2)


SPECS: dict[str, Callable[..., StudySpec]] = {
  'cpu': cpu_spec,
  'paper': paper_spec,
  'quick': quick_spec,
}


# ----------------------------------------------------------------------------- running


def sft_dir(out: str, seed: int) -> str:
  return os.path.join(os.path.abspath(out), 'sft', f'seed{seed}')


def run_dir(out: str, method: Method, seed: int) -> str:
  return os.path.join(os.path.abspath(out), 'runs', method.key, f'seed{seed}')


def run_config(spec: StudySpec, out: str, method: Method, seed: int) -> config_lib.TrainConfig:
  """The trainer config of one run: the base with this method's rule and this seed."""
  sft = spec.base.sft
  if spec.share_sft:
    sft = dataclasses.replace(sft, init_from=sft_dir(out, seed))
  return dataclasses.replace(
    spec.base, rule=method.rule, seed=seed, output_dir=run_dir(out, method, seed), sft=sft
  )


def _finished(directory: str, steps: int) -> bool:
  path = os.path.join(directory, 'summary.json')
  return os.path.exists(path) and common.read_json(path).get('steps') == steps


def _check_spec(spec: StudySpec, out: str) -> None:
  """Records `spec` in `<out>/study.json`, refusing one whose runs would not be comparable.

  The run recipe (`base`, steps aside: a longer or shorter study is a resume) must match,
  and a method key must keep its rule. Seeds and methods may be added or left out; the file
  keeps the union, so every run in the directory stays described.
  """
  path = os.path.join(out, 'study.json')
  current = common.json_ready(spec.to_dict())
  if os.path.exists(path):
    saved = common.read_json(path)
    saved_base = dict(saved['base'], steps=current['base']['steps'])
    if saved_base != current['base']:
      diff = sorted(k for k in current['base'] if saved_base.get(k) != current['base'].get(k))
      raise ValueError(
        f'{path} describes a different study (the run config differs in {diff}); '
        'use a new output directory'
      )
    rules = {m['key']: m['rule'] for m in saved['methods']}
    for m in current['methods']:
      if m['key'] in rules and rules[m['key']] != m['rule']:
        raise ValueError(
          f'{path}: method {m["key"]!r} had rule {rules[m["key"]]}, now {m["rule"]}; '
          'use a new output directory'
        )
    keys = [m['key'] for m in current['methods']]
    current['methods'] += [m for m in saved['methods'] if m['key'] not in keys]
    current['seeds'] = sorted(set(current['seeds']) | set(saved['seeds']))
  common.write_json(path, current)


def ensure_sft(spec: StudySpec, out: str, seed: int, *, log=print) -> str:
  """Trains seed `seed`'s shared SFT warm start once (a 0-step trainer run); returns its dir."""
  from grpo_jax.checkpoint import CheckpointStore
  from grpo_jax.train import train

  directory = sft_dir(out, seed)
  ckpt = os.path.join(directory, 'sft', 'checkpoints')
  if os.path.isdir(ckpt):
    with CheckpointStore(ckpt, read_only=True) as store:
      if store.latest_step() is not None:
        return directory
  cfg = dataclasses.replace(spec.base, steps=0, seed=seed, output_dir=directory)
  log(f'[sft seed {seed}] warm start -> {directory}')
  train(cfg, progress=False, log=lambda m: log(f'[sft seed {seed}] {m}'))
  return directory


def run_study(spec: StudySpec, out: str, *, log=print, progress: bool = False) -> None:
  """Trains (or resumes) every method x seed of `spec` under `out`."""
  from grpo_jax.train import train

  for field, path in (('model.path', spec.base.model.path), ('data.path', spec.base.data.path)):
    # Local paths only (the paper preset): fail before any run starts, naming the field.
    if path and not os.path.exists(path):
      raise FileNotFoundError(f'study {spec.name!r}: `{field}` {path!r} does not exist')
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  _check_spec(spec, out)
  for seed in spec.seeds:
    if spec.share_sft:
      ensure_sft(spec, out, seed, log=log)
    for method in spec.methods:
      cfg = run_config(spec, out, method, seed)
      if _finished(cfg.output_dir, cfg.steps):
        log(f'[{method.key} seed {seed}] finished, skipped')
        continue
      log(f'[{method.key} seed {seed}] training {cfg.steps} steps -> {cfg.output_dir}')
      tag = f'[{method.key} seed {seed}]'
      train(cfg, progress=progress, log=lambda m, tag=tag: log(f'{tag} {m}'))


# ----------------------------------------------------------------------------- analysis


def step_times(train_rows: Sequence[dict]) -> tuple[np.ndarray, int]:
  """Per-step training seconds (rollout + update), compile outliers replaced by a median.

  A step is compared with the median of the steps that took as many backward passes (an
  active SFPO/GXPO step is legitimately several times slower than one after shutoff).

  Returns:
    `(seconds_N, compile_steps)` for the rows in step order.
  """
  t = np.asarray([r['time/rollout_s'] + r['time/update_s'] for r in train_rows], np.float64)
  if t.size == 0:
    return t, 0
  cum = np.asarray([r['cum/backward_passes'] for r in train_rows], np.float64)
  passes = np.diff(np.concatenate([[0.0], cum]))
  median = np.empty_like(t)
  for p in np.unique(passes):
    median[passes == p] = np.median(t[passes == p])
  outlier = t > COMPILE_FACTOR * median
  return np.where(outlier, median, t), int(outlier.sum())


def backward_pass_audit(train_rows: Sequence[dict], method: Method, *, updates_per_step: int):
  """Per-step backward passes against the rule's accounting (PAPERS.md §2-3).

  A step's passes are the increase of `cum/backward_passes`. Expected: GRPO 1 per update;
  SFPO K+1 per update while active (its trigger decides before the step, so a step is
  active iff `rule/active` is 1 after it); GXPO 3 per update while active (the gate decides
  after the step, so a step is active iff `rule/active` was 1 before it). Steps with a
  rule fallback (`rule/fallbacks` rose) are listed apart.

  Returns:
    dict with `passes` (per step), `expected`, `active_steps`, `fallback_steps`, and `ok`.
  """
  cum = np.asarray([r['cum/backward_passes'] for r in train_rows], np.float64)
  passes = np.diff(np.concatenate([[0.0], cum]))
  active_after = np.asarray([r.get('rule/active', 0.0) for r in train_rows], np.float64) > 0.5
  fallbacks = np.asarray([r.get('rule/fallbacks', 0.0) for r in train_rows], np.float64)
  fallback = np.diff(np.concatenate([[0.0], fallbacks])) > 0
  name = method.rule.name
  if name == 'grpo':
    active = np.zeros_like(active_after)
  elif name == 'sfpo':
    active = active_after
  else:
    active = np.concatenate([[True], active_after[:-1]])
  expected = np.where(active, method.active_passes, 1) * updates_per_step
  check = ~fallback
  ok = bool(np.all(passes[check] == expected[check]))
  return {
    'passes': passes.tolist(),
    'expected': expected.tolist(),
    'active_steps': int(active.sum()),
    'fallback_steps': int(fallback.sum()),
    'ok': ok,
  }


def _load_run(directory: str) -> dict[str, Any]:
  rows = metrics_lib.read_metrics(directory)
  train = [r for r in rows if 'sft/step' not in r and 'train/reward_mean' in r]
  evals = [r for r in rows if 'eval/greedy_acc' in r]
  train.sort(key=lambda r: r['step'])
  evals.sort(key=lambda r: r['step'])
  if not train or not evals:
    raise ValueError(f'{directory}: metrics.jsonl holds no training or evaluation rows')
  return {'train': train, 'evals': evals}


def _cumulative_at(run: dict[str, Any], steps: Sequence[float]) -> dict[str, np.ndarray]:
  """Rollouts, tokens, backward passes and training seconds after each of `steps`."""
  train = run['train']
  seconds, _ = step_times(train)
  by_step = {
    'step': np.asarray([0.0] + [r['step'] for r in train]),
    'rollouts': np.asarray([0.0] + [r['cum/samples'] for r in train]),
    'tokens': np.asarray([0.0] + [r['cum/tokens'] for r in train]),
    'backward_passes': np.asarray([0.0] + [r['cum/backward_passes'] for r in train]),
    'time_s': np.concatenate([[0.0], np.cumsum(seconds)]),
  }
  out = {}
  for key in ('rollouts', 'tokens', 'backward_passes', 'time_s'):
    out[key] = np.asarray([common.interp_at(by_step['step'], by_step[key], s) for s in steps])
  return out


def analyze(spec: StudySpec, out: str) -> dict[str, Any]:
  """Reads every run of `spec` under `out` and builds the tables, curves and audits."""
  out = os.path.abspath(out)
  geo = spec.base.batch
  runs = {
    m.key: {s: _load_run(run_config(spec, out, m, s).output_dir) for s in spec.seeds}
    for m in spec.methods
  }
  k_eval = spec.base.eval.avg_k
  methods: dict[str, Any] = {}
  for m in spec.methods:
    per_seed = runs[m.key]
    greedy = [common.curve(r['evals'], 'eval/greedy_acc') for r in per_seed.values()]
    x, smoothed, mean, std = common.smoothed_seed_curve(greedy, window=spec.smooth_window)
    cum = [_cumulative_at(r, x) for r in per_seed.values()]
    curves = {
      'step': x,
      'greedy_smoothed': smoothed,
      'greedy_mean': mean,
      'greedy_std': std,
      **{k: np.mean([c[k] for c in cum], axis=0) for k in cum[0]},
    }
    if k_eval:
      avg = [common.curve(r['evals'], 'eval/avg_at_k') for r in per_seed.values()]
      _, curves['avg_at_k_mean'], _ = common.seed_average(avg)
    final_greedy = [
      _final(r['evals'], 'eval/greedy_acc', spec.final_evals) for r in per_seed.values()
    ]
    final_avg = (
      [_final(r['evals'], 'eval/avg_at_k', spec.final_evals) for r in per_seed.values()]
      if k_eval
      else []
    )
    audits = {
      s: backward_pass_audit(r['train'], m, updates_per_step=geo.updates_per_rollout)
      for s, r in per_seed.items()
    }
    methods[m.key] = {
      'label': m.label,
      'rule': dataclasses.asdict(m.rule),
      'final_greedy': common.mean_std(final_greedy),
      'final_avg_at_k': common.mean_std(final_avg) if final_avg else None,
      'final_greedy_per_seed': final_greedy,
      'final_avg_at_k_per_seed': final_avg,
      'steps_run': [r['train'][-1]['step'] for r in per_seed.values()],
      'backward_passes_total': common.mean_std(
        [r['train'][-1]['cum/backward_passes'] for r in per_seed.values()]
      ),
      'time_s_total': common.mean_std(
        [float(np.sum(step_times(r['train'])[0])) for r in per_seed.values()]
      ),
      'compile_steps': [step_times(r['train'])[1] for r in per_seed.values()],
      'active_steps': [a['active_steps'] for a in audits.values()],
      'backward_pass_audit_ok': all(a['ok'] for a in audits.values()),
      'fallback_steps': [a['fallback_steps'] for a in audits.values()],
      'curves': curves,
    }
  base = methods[spec.methods[0].key]
  # The peak and the reach points are read on the RL curve (steps > 0): step 0 is the shared
  # starting point of every method, not something a method reaches.
  rl = np.asarray(base['curves']['step']) > 0
  if not rl.any():
    raise ValueError('GRPO has no evaluation after step 0: the runs are too short')
  smoothed = np.where(rl, base['curves']['greedy_smoothed'], -np.inf)
  peak_i = int(np.argmax(smoothed))
  peak = {
    'greedy_acc': float(base['curves']['greedy_smoothed'][peak_i]),
    'step': float(base['curves']['step'][peak_i]),
  }
  for m in spec.methods:
    c = methods[m.key]['curves']
    after = np.asarray(c['step']) > 0
    step = common.first_reach(
      np.asarray(c['step'])[after], np.asarray(c['greedy_smoothed'])[after], peak['greedy_acc']
    )
    reach = {'step': step}
    if step is not None:
      i = int(np.nonzero(c['step'] == step)[0][0])
      for key in ('rollouts', 'tokens', 'backward_passes', 'time_s'):
        reach[key] = float(c[key][i])
    else:
      reach.update(dict.fromkeys(('rollouts', 'tokens', 'backward_passes', 'time_s')))
    methods[m.key]['reach'] = reach
  base_reach = methods[spec.methods[0].key]['reach']
  for m in spec.methods:
    reach = methods[m.key]['reach']
    methods[m.key]['speedup'] = {
      key: common.speedup(base_reach[key], reach[key])
      for key in ('step', 'rollouts', 'tokens', 'backward_passes', 'time_s')
    }
  results = {
    'spec': spec.to_dict(),
    'grpo_peak': peak,
    'avg_k': k_eval,
    'methods': methods,
  }
  results['tables'] = {'table1': table1(spec, results), 'table2': table2(spec, results)}
  return common.json_ready(results)


def _final(evals: Sequence[dict], key: str, n: int) -> float:
  values = [r[key] for r in evals if key in r and r['step'] > 0]
  if not values:
    raise ValueError(f'no evaluation after step 0 holds {key!r}')
  return float(np.mean(values[-n:]))


def _pct(ms: dict | None) -> str:
  if ms is None:
    return common.NA
  return f'{100 * ms["mean"]:.2f} ± {100 * ms["std"]:.2f}'


def _count(value: float | None, digits: int = 0) -> str:
  if value is None:
    return common.NOT_REACHED
  return f'{value:,.{digits}f}'


def table1(spec: StudySpec, results: dict[str, Any]) -> dict[str, Any]:
  """Paper Table 1 layout: accuracy per method, gain over GRPO, cost and speedups."""
  k = results['avg_k']
  columns = [
    f'avg@{k} (%)',
    'greedy (%)',
    f'gain avg@{k} (pts)',
    'BP/step active',
    'BP total',
    'time (s)',
    'time speedup',
    'BP speedup',
  ]
  methods = results['methods']
  base = methods[spec.methods[0].key]
  rows, paper = [], {}
  for m in spec.methods:
    r = methods[m.key]
    reached = r['reach']['step'] is not None
    gain = (
      common.NA
      if r['final_avg_at_k'] is None
      else f'{100 * (r["final_avg_at_k"]["mean"] - base["final_avg_at_k"]["mean"]):+.2f}'
    )
    rows.append(
      (
        m.label,
        [
          _pct(r['final_avg_at_k']),
          _pct(r['final_greedy']),
          gain,
          str(m.active_passes * spec.base.batch.updates_per_rollout),
          _count(r['backward_passes_total']['mean']),
          _count(r['time_s_total']['mean'], 1),
          common.fmt_speedup(r['speedup']['time_s'], reached=reached),
          common.fmt_speedup(r['speedup']['backward_passes'], reached=reached),
        ],
      )
    )
    if m.rule.name == 'gxpo':
      paper[m.label] = [
        None, None, PAPER_GXPO_GAIN, '3', None, None, PAPER_GXPO_TIME_SPEEDUP,
        PAPER_GXPO_BP_SPEEDUP,
      ]  # fmt: skip
    elif m.rule.name == 'sfpo':
      paper[m.label] = [
        None,
        None,
        None,
        f'{m.rule.k + 1}',
        None,
        None,
        PAPER_SFPO_TIME_SPEEDUP,
        None,
      ]
    else:
      paper[m.label] = [None, None, None, '1', None, None, None, None]
  return {'columns': columns, 'rows': rows, 'paper': paper}


def table2(spec: StudySpec, results: dict[str, Any]) -> dict[str, Any]:
  """Paper Table 2 layout: cost to reach GRPO's peak greedy accuracy, and the speedups."""
  columns = [
    'steps',
    'rollouts',
    'tokens',
    'backward passes',
    'time (s)',
    'step speedup',
    'rollout speedup',
    'BP speedup',
    'time speedup',
  ]
  rows, paper = [], {}
  for m in spec.methods:
    r = results['methods'][m.key]
    reach, sp = r['reach'], r['speedup']
    reached = reach['step'] is not None
    rows.append(
      (
        m.label,
        [
          _count(reach['step']),
          _count(reach['rollouts']),
          _count(reach['tokens']),
          _count(reach['backward_passes']),
          _count(reach['time_s'], 1),
          common.fmt_speedup(sp['step'], reached=reached),
          common.fmt_speedup(sp['rollouts'], reached=reached),
          common.fmt_speedup(sp['backward_passes'], reached=reached),
          common.fmt_speedup(sp['time_s'], reached=reached),
        ],
      )
    )
    if m.rule.name == 'gxpo':
      paper[m.label] = [None] * 5 + [
        PAPER_GXPO_STEP_SPEEDUP, None, PAPER_GXPO_BP_SPEEDUP, PAPER_GXPO_TIME_SPEEDUP,
      ]  # fmt: skip
    elif m.rule.name == 'sfpo':
      paper[m.label] = [None] * 6 + [PAPER_SFPO_ROLLOUT_SPEEDUP, None, PAPER_SFPO_TIME_SPEEDUP]
  return {'columns': columns, 'rows': rows, 'paper': paper}


def format_tables(results: dict[str, Any]) -> str:
  """Both tables as printed text, the paper's claims beside our cells."""
  peak = results['grpo_peak']
  spec = results['spec']
  seeds = len(spec['seeds'])
  t1, t2 = results['tables']['table1'], results['tables']['table2']
  head = (
    f"study '{spec['name']}': {seeds} seeds, {spec['base']['steps']} steps; "
    f"final = mean of each seed's last {spec['final_evals']} evaluations, mean ± std over seeds"
  )
  audit = ', '.join(
    f'{m["label"]}: {"ok" if m["backward_pass_audit_ok"] else "MISMATCH"}'
    for m in results['methods'].values()
  )
  one = common.format_table(
    "Table 1 (paper Table 1 layout): final accuracy, cost, speedups to GRPO's peak",
    t1['columns'],
    [(label, cells) for label, cells in t1['rows']],
    paper=t1['paper'],
    notes=[f'backward passes per step vs accounting: {audit}'],
  )
  two = common.format_table(
    f"Table 2 (paper Table 2 layout): cost to reach GRPO's peak greedy accuracy "
    f'{100 * peak["greedy_acc"]:.2f}% (step {peak["step"]:.0f}, seed-averaged curve smoothed '
    f'over {spec["smooth_window"]} evaluations)',
    t2['columns'],
    [(label, cells) for label, cells in t2['rows']],
    paper=t2['paper'],
    notes=(
      ["GRPO's curve peaks at its last evaluation (still rising): longer runs may raise it"]
      if peak['step'] == max(results['methods'][spec['methods'][0]['key']]['curves']['step'])
      else []
    )
    + list(PAPER_NOTES),
  )
  return '\n\n'.join([head, one, two])


def plot(results: dict[str, Any], path: str) -> str:
  """Greedy accuracy against steps, backward passes and wall-clock (seed mean, smoothed)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
  peak = results['grpo_peak']['greedy_acc']
  for i, m in enumerate(results['methods'].values()):
    c = {k: np.asarray(v, np.float64) for k, v in m['curves'].items()}
    for ax, xkey in zip(axes, ('step', 'backward_passes', 'time_s')):
      ax.plot(c[xkey], 100 * c['greedy_smoothed'], color=f'C{i}', label=m['label'])
      ax.plot(c[xkey], 100 * c['greedy_mean'], 'o', color=f'C{i}', ms=2, alpha=0.5)
      ax.fill_between(
        c[xkey],
        100 * (c['greedy_mean'] - c['greedy_std']),
        100 * (c['greedy_mean'] + c['greedy_std']),
        color=f'C{i}',
        alpha=0.12,
        lw=0,
      )
  for ax, xlabel in zip(axes, ('rollout step', 'backward passes', 'training wall-clock (s)')):
    ax.axhline(100 * peak, color='k', ls='--', lw=0.8)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel('held-out greedy accuracy (%)')
  axes[0].legend(fontsize=8)
  fig.suptitle(
    "GXPO vs SFPO vs GRPO (dashed: GRPO's peak; dots: raw seed mean; band: ± std over seeds)"
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
