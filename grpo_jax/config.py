"""Typed run configuration: frozen dataclasses, named presets and `key=value` overrides.

A run is described by one `TrainConfig`, built from a preset (`cpu-tiny`, the default, or
`paper`) and command-line overrides such as `optim.lr=2e-4 batch.group_size=4`. Every
section validates itself in `__post_init__` and names the bad field. A resumed run compares
its config with the checkpointed one and refuses any change outside `RUN_LENGTH_FIELDS`
and the placement section `mesh` (`PLACEMENT_SECTIONS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

# Fields a resumed run may change: they only say how long to keep going.
RUN_LENGTH_FIELDS = frozenset({'steps', 'sft.max_steps'})
# Sections a resumed run may also change: they say where the run executes (mesh shape,
# processes), not what it computes; a checkpoint restores onto any mesh.
PLACEMENT_SECTIONS = frozenset({'mesh'})


def _fail(field: str, message: str) -> None:
  raise ValueError(f'config field `{field}`: {message}')


def _positive(section: str, **values: float) -> None:
  for name, value in values.items():
    if value is None or value <= 0:
      _fail(f'{section}.{name}', f'must be > 0, got {value!r}')


def _choice(section: str, name: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    _fail(f'{section}.{name}', f'must be one of {list(choices)}, got {value!r}')


@dataclasses.dataclass(frozen=True)
class ModelSection:
  """Which model to train.

  Attributes:
    preset: a `grpo_jax.models.model_preset` name for a model built from scratch.
    path: a local Hugging Face checkpoint directory (safetensors + config.json). When set,
      it wins over `preset` and its tokenizer is used.
    dtype: activation dtype of a preset model ('float32' or 'bfloat16'); parameters stay
      float32. A checkpoint loaded from `path` computes in its own dtype, with float32
      parameters.
  """

  preset: str = 'tiny'
  path: str | None = None
  dtype: str = 'float32'

  def __post_init__(self):
    _choice('model', 'dtype', self.dtype, ('float32', 'bfloat16'))
    if not self.preset and not self.path:
      _fail('model.preset', 'give a preset name or `model.path`')


@dataclasses.dataclass(frozen=True)
class DataSection:
  """The task: prompts, answers, held-out set and rewards.

  Attributes:
    task: 'addition' (in-house 3-digit addition), 'jsonl' (a local `{prompt, answer}`
      file at `path`) or 'reasoning_gym:<dataset name>'.
    path: the JSONL file for task 'jsonl'.
    held_out_size: held-out examples kept out of training.
    rewards: reward function names, combined with `reward_weights`.
    reward_weights: one weight per reward function (empty: all 1).
    overlong_cache: DAPO overlong shaping cache length L_cache (0: off; PAPERS.md §1).
  """

  task: str = 'addition'
  path: str | None = None
  held_out_size: int = 2048
  rewards: tuple[str, ...] = ('correct',)
  reward_weights: tuple[float, ...] = ()
  overlong_cache: int = 0

  def __post_init__(self):
    if self.task not in ('addition', 'jsonl') and not self.task.startswith('reasoning_gym:'):
      _fail(
        'data.task', f"must be 'addition', 'jsonl' or 'reasoning_gym:<name>', got {self.task!r}"
      )
    if self.task == 'jsonl' and not self.path:
      _fail('data.path', "task 'jsonl' needs a path to a JSONL file")
    _positive('data', held_out_size=self.held_out_size)
    if not self.rewards:
      _fail('data.rewards', 'needs at least one reward function')
    if self.reward_weights and len(self.reward_weights) != len(self.rewards):
      _fail(
        'data.reward_weights',
        f'has {len(self.reward_weights)} weights for {len(self.rewards)} rewards',
      )
    if self.overlong_cache < 0:
      _fail('data.overlong_cache', f'must be >= 0, got {self.overlong_cache}')


@dataclasses.dataclass(frozen=True)
class SamplerSection:
  """Rollout sampling."""

  max_new_tokens: int = 6
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    _positive('sampler', max_new_tokens=self.max_new_tokens, temperature=self.temperature)
    if self.top_k < 0:
      _fail('sampler.top_k', f'must be >= 0 (0: off), got {self.top_k}')
    if not 0 < self.top_p <= 1:
      _fail('sampler.top_p', f'must lie in (0, 1], got {self.top_p}')


@dataclasses.dataclass(frozen=True)
class LossSection:
  """The loss family member and the KL anchor (PAPERS.md §1).

  Attributes:
    preset: a `grpo_jax.presets.PRESETS` name.
    kl_coef: β of the KL anchor to the initial policy; 0 (the default) turns it off and no
      reference log-probs are computed.
    kl_estimator: 'k1', 'k2' or 'k3'; None keeps the preset's.

  The preset's own β is replaced by `kl_coef` (the 'grpo' preset's paper value 0.04 applies
  only when asked for), so no run pays for reference log-probs unless configured to.
  """

  preset: str = 'grpo'
  kl_coef: float = 0.0
  kl_estimator: str | None = None

  def __post_init__(self):
    from grpo_jax.presets import PRESETS as LOSS_PRESETS

    _choice('loss', 'preset', self.preset, sorted(LOSS_PRESETS))
    if self.kl_coef < 0:
      _fail('loss.kl_coef', f'must be >= 0, got {self.kl_coef}')
    if self.kl_estimator is not None:
      _choice('loss', 'kl_estimator', self.kl_estimator, ('k1', 'k2', 'k3'))


@dataclasses.dataclass(frozen=True)
class BatchGeometry:
  """Batch sizes, counted in prompts as verl counts them; each prompt brings G completions.

  Attributes:
    prompts_per_step: prompts sampled per rollout step.
    group_size: G, completions per prompt.
    mini_batch: prompts per optimizer update.
    micro_batch: prompts per forward/backward pass (gradient accumulation).
    epochs: passes over each rollout batch.
  """

  prompts_per_step: int = 64
  group_size: int = 8
  mini_batch: int = 64
  micro_batch: int = 64
  epochs: int = 1

  def __post_init__(self):
    _positive(
      'batch',
      prompts_per_step=self.prompts_per_step,
      group_size=self.group_size,
      mini_batch=self.mini_batch,
      micro_batch=self.micro_batch,
      epochs=self.epochs,
    )
    if self.group_size < 2:
      _fail('batch.group_size', f'group advantages need G >= 2, got {self.group_size}')
    if self.prompts_per_step % self.mini_batch:
      _fail(
        'batch.mini_batch',
        f'prompts_per_step={self.prompts_per_step} is not a multiple of '
        f'mini_batch={self.mini_batch}',
      )
    if self.mini_batch % self.micro_batch:
      _fail(
        'batch.micro_batch',
        f'mini_batch={self.mini_batch} is not a multiple of micro_batch={self.micro_batch}',
      )

  @property
  def sequences(self) -> int:
    """Completions per rollout step."""
    return self.prompts_per_step * self.group_size

  @property
  def updates_per_rollout(self) -> int:
    """Optimizer updates made on one rollout batch."""
    return self.epochs * self.prompts_per_step // self.mini_batch

  @property
  def micro_steps(self) -> int:
    """Micro-batches accumulated into one update."""
    return self.mini_batch // self.micro_batch

  @property
  def refresh_interval(self) -> int:
    """d: optimizer updates between two refreshes of the sampling policy."""
    return self.updates_per_rollout

  def table(self, *, prompt_len: int, max_new_tokens: int) -> str:
    """The one table printed at start (sizes per rollout step)."""
    rows = [
      ('prompts per rollout', self.prompts_per_step),
      ('group size G', self.group_size),
      ('sequences per rollout', self.sequences),
      ('tokens per rollout (max)', self.sequences * (prompt_len + max_new_tokens)),
      ('mini-batch (prompts / update)', self.mini_batch),
      ('micro-batch (prompts / pass)', self.micro_batch),
      ('micro-batches per update', self.micro_steps),
      ('epochs', self.epochs),
      ('updates per rollout', self.updates_per_rollout),
      ('refresh interval d (updates)', self.refresh_interval),
    ]
    width = max(len(name) for name, _ in rows)
    return '\n'.join(f'{name:<{width}}  {value:>8}' for name, value in rows)


@dataclasses.dataclass(frozen=True)
class OptimSection:
  """The inner optimizer and its schedule.

  Attributes:
    name: 'adamw' or 'sgd' (heavy-ball momentum; `momentum=0` gives plain SGD).
    lr: peak learning rate.
    schedule: 'constant', 'warmup' (linear warm-up, then constant) or 'cosine' (linear
      warm-up, then cosine decay to `min_lr_ratio * lr` at `decay_steps`).
    warmup_steps / decay_steps: in optimizer (inner) steps.
    weight_decay: decoupled (AdamW) or L2 (SGD) decay; never applied to norms and biases.
    max_grad_norm: global-norm clipping of the raw gradient, done by the update rule
      (issue 6: retention is computed from the clipped gradient); None turns it off.
  """

  name: str = 'adamw'
  lr: float = 1e-4
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.9
  weight_decay: float = 0.0
  schedule: str = 'constant'
  warmup_steps: int = 0
  decay_steps: int = 1000
  min_lr_ratio: float = 0.0
  max_grad_norm: float | None = 1.0

  def __post_init__(self):
    _choice('optim', 'name', self.name, ('adamw', 'sgd'))
    _choice('optim', 'schedule', self.schedule, ('constant', 'warmup', 'cosine'))
    _positive('optim', lr=self.lr, decay_steps=self.decay_steps)
    if self.warmup_steps < 0:
      _fail('optim.warmup_steps', f'must be >= 0, got {self.warmup_steps}')
    if self.schedule == 'cosine' and self.warmup_steps >= self.decay_steps:
      _fail(
        'optim.warmup_steps',
        f'warmup_steps={self.warmup_steps} must be < decay_steps={self.decay_steps}',
      )
    for name in ('b1', 'b2', 'momentum', 'min_lr_ratio'):
      value = getattr(self, name)
      if not 0 <= value <= 1:
        _fail(f'optim.{name}', f'must lie in [0, 1], got {value}')
    if self.weight_decay < 0:
      _fail('optim.weight_decay', f'must be >= 0, got {self.weight_decay}')
    if self.max_grad_norm is not None and self.max_grad_norm <= 0:
      _fail('optim.max_grad_norm', f'must be > 0 or None, got {self.max_grad_norm}')


@dataclasses.dataclass(frozen=True)
class RuleSection:
  """The update rule, an optax transformation wrapping the inner optimizer (PAPERS.md §2–3).

  Attributes:
    name: 'grpo' (one plain step), 'sfpo' or 'gxpo'.
    k, alpha: lookahead length and reposition factor (SFPO defaults K=3, α=0.8; GXPO K=10,
      α=0.3).
    tau, omega, delta: GXPO shutoff threshold, gate smoothing and retention floor.
    window: SFPO entropy-trigger window W; sfpo_tau is its z-score threshold.
  """

  name: str = 'grpo'
  k: int = 3
  alpha: float = 0.8
  tau: float = 2.0
  omega: float = 0.1
  delta: float = 1e-8
  window: int = 30
  sfpo_tau: float = 1.0

  def __post_init__(self):
    _choice('rule', 'name', self.name, ('grpo', 'sfpo', 'gxpo'))
    if self.k < 2:
      _fail('rule.k', f'must be >= 2, got {self.k}')
    if not 0 <= self.alpha <= 1:
      _fail('rule.alpha', f'must lie in [0, 1], got {self.alpha}')
    _positive('rule', tau=self.tau, omega=self.omega, delta=self.delta, window=self.window)


@dataclasses.dataclass(frozen=True)
class EvalSection:
  """Held-out evaluation: greedy accuracy and sampled avg@k (temperature of the sampler).

  Attributes:
    every: rollout steps between evaluations (also done at each checkpoint step).
    size: held-out examples evaluated (<= data.held_out_size; the first ones).
    avg_k: samples per prompt for avg@k; 0 turns it off.
  """

  every: int = 25
  size: int = 2048
  avg_k: int = 4

  def __post_init__(self):
    _positive('eval', every=self.every, size=self.size)
    if self.avg_k < 0:
      _fail('eval.avg_k', f'must be >= 0, got {self.avg_k}')


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
  """Checkpoint cadence and retention (last N + best by held-out accuracy + every k-th).

  Attributes:
    every: rollout steps between checkpoints (step 0, the starting weights, is always kept).
    keep_last: the N most recent checkpoints kept.
    keep_best: checkpoints kept by best `eval/greedy_acc` (0: none).
    keep_every: steps that are multiples of this are kept for good (0: none).
  """

  every: int = 25
  keep_last: int = 2
  keep_best: int = 1
  keep_every: int = 100

  def __post_init__(self):
    _positive('checkpoint', every=self.every, keep_last=self.keep_last)
    if self.keep_best < 0:
      _fail('checkpoint.keep_best', f'must be >= 0, got {self.keep_best}')
    if self.keep_every < 0:
      _fail('checkpoint.keep_every', f'must be >= 0, got {self.keep_every}')


@dataclasses.dataclass(frozen=True)
class SFTSection:
  """Teacher-forced warm start on the task's answers (issue 5 "SFT warm start").

  SFT stops at the first evaluation (every `eval_every` steps) whose held-out greedy
  accuracy lies in [acc_low, acc_high], or at `max_steps`.

  Attributes:
    enabled: run SFT before RL (its checkpoint lives in `<output_dir>/sft`).
    init_from: reuse the params of an earlier SFT run's directory instead of training.
  """

  enabled: bool = True
  init_from: str | None = None
  lr: float = 1e-3
  batch: int = 128
  max_steps: int = 3000
  eval_every: int = 25
  eval_size: int = 512
  acc_low: float = 0.25
  acc_high: float = 0.40

  def __post_init__(self):
    _positive(
      'sft',
      lr=self.lr,
      batch=self.batch,
      max_steps=self.max_steps,
      eval_every=self.eval_every,
      eval_size=self.eval_size,
    )
    if not 0 <= self.acc_low <= self.acc_high <= 1:
      _fail(
        'sft.acc_low', f'need 0 <= acc_low <= acc_high <= 1, got {self.acc_low}, {self.acc_high}'
      )


@dataclasses.dataclass(frozen=True)
class MeshSection:
  """Where the run executes: the device mesh and, optionally, several processes.

  The mesh has axes ('data', 'fsdp', 'tensor') (`grpo_jax.sharding.make_mesh`): batches are
  split over data x fsdp, parameters and optimizer state over fsdp (ZeRO-3) and tensor
  (heads, MLP units, vocabulary). All sizes 1 (the default) runs on one device without a
  mesh, exactly as before meshes existed; -1 on one axis takes every device left over.

  Attributes:
    data, fsdp, tensor: mesh axis sizes (positive, or -1 on at most one axis).
    distributed: join a multi-process run (`grpo_jax.sharding.initialize_distributed`)
      before building the mesh, which then spans every process's devices.
    coordinator_address: 'host:port' of process 0; None lets JAX detect the cluster.
    num_processes, process_id: the run's process count and this process's index.
    local_device_ids: this process's devices (empty: all local devices).
    cpu_collectives: 'gloo' or 'mpi' for multi-process CPU runs; None on TPU/GPU.
    initialization_timeout: seconds to wait for every process to join.
  """

  data: int = 1
  fsdp: int = 1
  tensor: int = 1
  distributed: bool = False
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] = ()
  cpu_collectives: str | None = None
  initialization_timeout: int = 300

  def __post_init__(self):
    for name in ('data', 'fsdp', 'tensor'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        _fail(f'mesh.{name}', f'must be a positive int or -1, got {value!r}')
    free = [name for name in ('data', 'fsdp', 'tensor') if getattr(self, name) == -1]
    if len(free) > 1:
      _fail(f'mesh.{free[1]}', f'at most one mesh axis may be -1, got {free}')
    if not self.distributed:
      for name in ('coordinator_address', 'num_processes', 'process_id', 'cpu_collectives'):
        if getattr(self, name) is not None:
          _fail(f'mesh.{name}', 'is a multi-process setting; set mesh.distributed=true')
      if self.local_device_ids:
        _fail('mesh.local_device_ids', 'is a multi-process setting; set mesh.distributed=true')
    _positive('mesh', initialization_timeout=self.initialization_timeout)
    try:
      self.distributed_config()
    except ValueError as e:
      # DistributedConfig names its own field ('DistributedConfig.<name> ...'); say which
      # config field that is.
      name, _, message = str(e).removeprefix('DistributedConfig.').partition(' ')
      _fail(f'mesh.{name}', message)

  @property
  def enabled(self) -> bool:
    """True when the run uses a mesh (any axis size other than 1, or several processes)."""
    return self.distributed or (self.data, self.fsdp, self.tensor) != (1, 1, 1)

  @property
  def batch_ways(self) -> int | None:
    """data x fsdp, the number of batch shards; None while an axis is -1 (device count)."""
    if -1 in (self.data, self.fsdp):
      return None
    return self.data * self.fsdp

  def distributed_config(self):
    """The `grpo_jax.sharding.DistributedConfig` of these fields."""
    from grpo_jax.sharding import DistributedConfig

    return DistributedConfig(
      enabled=self.distributed,
      coordinator_address=self.coordinator_address,
      num_processes=self.num_processes,
      process_id=self.process_id,
      local_device_ids=tuple(self.local_device_ids) or None,
      cpu_collectives=self.cpu_collectives,
      initialization_timeout=self.initialization_timeout,
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole run.

  Attributes:
    steps: rollout steps of RL (a run-length field).
    seed: the one seed: model init, data order and sampling keys derive from it.
    output_dir: checkpoints, metrics.jsonl, TensorBoard events and figures.
    dynamic_sampling: DAPO dynamic sampling (drop groups with equal rewards, sample more).
    max_extra_rollouts: cap on extra rollout rounds per step for dynamic sampling.
    recompute_old_logp: recompute π_old with a training forward pass instead of the
      sampler's log-probs (and log their mismatch).
  """

  model: ModelSection = dataclasses.field(default_factory=ModelSection)
  data: DataSection = dataclasses.field(default_factory=DataSection)
  sampler: SamplerSection = dataclasses.field(default_factory=SamplerSection)
  loss: LossSection = dataclasses.field(default_factory=LossSection)
  batch: BatchGeometry = dataclasses.field(default_factory=BatchGeometry)
  optim: OptimSection = dataclasses.field(default_factory=OptimSection)
  rule: RuleSection = dataclasses.field(default_factory=RuleSection)
  eval: EvalSection = dataclasses.field(default_factory=EvalSection)
  checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
  sft: SFTSection = dataclasses.field(default_factory=SFTSection)
  mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
  steps: int = 400
  seed: int = 0
  output_dir: str = 'runs/cpu-tiny'
  dynamic_sampling: bool = False
  max_extra_rollouts: int = 4
  recompute_old_logp: bool = False

  def __post_init__(self):
    for f in dataclasses.fields(self):
      expected = _SECTIONS.get(f.name)
      if expected is not None and not isinstance(getattr(self, f.name), expected):
        _fail(f.name, f'must be a {expected.__name__}, got {type(getattr(self, f.name))}')
    if self.steps < 0:
      _fail('steps', f'must be >= 0, got {self.steps}')
    if self.max_extra_rollouts < 0:
      _fail('max_extra_rollouts', f'must be >= 0, got {self.max_extra_rollouts}')
    if not self.output_dir:
      _fail('output_dir', 'must be a directory path')
    if self.eval.size > self.data.held_out_size:
      _fail('eval.size', f'{self.eval.size} > data.held_out_size={self.data.held_out_size}')
    if self.sft.enabled and self.sft.eval_size > self.data.held_out_size:
      _fail('sft.eval_size', f'{self.sft.eval_size} > data.held_out_size={self.data.held_out_size}')
    ways = self.mesh.batch_ways
    rows = self.batch.micro_batch * self.batch.group_size
    if ways is not None and rows % ways:
      # Each micro-batch's rows are split evenly over the batch shards (data x fsdp).
      _fail(
        'mesh.fsdp',
        f'batch.micro_batch x batch.group_size = {rows} rows do not split over '
        f'mesh.data x mesh.fsdp = {ways} batch shards',
      )

  def to_dict(self) -> dict[str, Any]:
    """A JSON-ready nested dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(self)))

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
    """Inverse of `to_dict`; an unknown key raises naming it."""
    return _from_dict(cls, d, prefix='')


_SECTIONS = {
  'model': ModelSection,
  'data': DataSection,
  'sampler': SamplerSection,
  'loss': LossSection,
  'batch': BatchGeometry,
  'optim': OptimSection,
  'rule': RuleSection,
  'eval': EvalSection,
  'checkpoint': CheckpointSection,
  'sft': SFTSection,
  'mesh': MeshSection,
}


def _from_dict(cls, d: dict[str, Any], *, prefix: str):
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in d.items():
    if key not in names:
      raise ValueError(f'unknown config field `{prefix}{key}`')
    if key in _SECTIONS and cls is TrainConfig:
      kwargs[key] = _from_dict(_SECTIONS[key], value, prefix=f'{key}.')
    else:
      kwargs[key] = _coerce(value, hints[key], f'{prefix}{key}')
  return cls(**kwargs)


def _coerce(value: Any, hint: Any, field: str) -> Any:
  """Converts a JSON or command-line value to the field's declared type."""
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    if value is None or (isinstance(value, str) and value.lower() in ('none', 'null')):
      if type(None) in args:
        return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _coerce(value, arg, field)
      except ValueError as e:
        errors.append(str(e))
    raise ValueError(errors[0] if errors else f'config field `{field}`: bad value {value!r}')
  if origin is Literal:
    if value not in args:
      _fail(field, f'must be one of {list(args)}, got {value!r}')
    return value
  if origin is tuple:
    if isinstance(value, str):
      value = [v for v in value.split(',') if v.strip()] if value.strip() else []
    if not isinstance(value, list | tuple):
      _fail(field, f'expected a list, got {value!r}')
    return tuple(_coerce(v, args[0], field) for v in value)
  if hint is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ('true', '1', 'yes', 'false', '0', 'no'):
      return value.lower() in ('true', '1', 'yes')
    _fail(field, f'expected true/false, got {value!r}')
  if hint is int:
    if isinstance(value, bool):
      _fail(field, f'expected an int, got {value!r}')
    try:
      as_float = float(value)
    except (TypeError, ValueError):
      _fail(field, f'expected an int, got {value!r}')
    if as_float != int(as_float):
      _fail(field, f'expected an int, got {value!r}')
    return int(as_float)
  if hint is float:
    try:
      return float(value)
    except (TypeError, ValueError):
      _fail(field, f'expected a float, got {value!r}')
  if hint is str:
    if not isinstance(value, str):
      _fail(field, f'expected a string, got {value!r}')
    return value
  raise TypeError(f'config field `{field}` has an unsupported type {hint}')


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
  """Applies `section.field=value` (or `field=value`) overrides.

  Args:
    config: the base config (usually a preset).
    overrides: strings such as 'optim.lr=2e-4', 'batch.group_size=4', 'steps=100',
      'data.rewards=correct,format'.

  Returns:
    A new validated `TrainConfig`.

  Raises:
    ValueError: naming an unknown field, a malformed override or a bad value.
  """
  d = config.to_dict()
  for item in overrides:
    if '=' not in item:
      raise ValueError(f'override {item!r} is not of the form field=value')
    key, value = item.split('=', 1)
    key = key.strip().removeprefix('--')
    parts = key.split('.')
    if len(parts) == 1:
      if parts[0] not in d or parts[0] in _SECTIONS:
        raise ValueError(f'unknown config field `{key}`')
      d[parts[0]] = value
    elif len(parts) == 2:
      section, name = parts
      if section not in _SECTIONS:
        raise ValueError(f'unknown config field `{key}` (no section `{section}`)')
      if name not in d[section]:
        raise ValueError(f'unknown config field `{key}`')
      d[section][name] = value
    else:
      raise ValueError(f'unknown config field `{key}`')
  return TrainConfig.from_dict(d)


def cpu_tiny() -> TrainConfig:
  """The default: SFT then GRPO on 3-digit addition with a ~100k-parameter decoder.

  Recipe from issue 5's prototypes: d=64, 2 layers, 4 heads; SFT batch 128 at Adam 1e-3,
  stopped in the 25–40 % accuracy window; GRPO 64 prompts × 8 at temperature 1, Adam 1e-4,
  one update per rollout.
  """
  return TrainConfig(
    model=ModelSection(preset='tiny'),
    batch=BatchGeometry(prompts_per_step=64, group_size=8, mini_batch=64, micro_batch=64),
    optim=OptimSection(name='adamw', lr=1e-4, max_grad_norm=1.0),
    sampler=SamplerSection(max_new_tokens=6, temperature=1.0),
    eval=EvalSection(every=25, size=1024, avg_k=4),
    steps=400,
    output_dir='runs/cpu-tiny',
  )


def paper() -> TrainConfig:
  """GPU/TPU preset (PAPERS.md §3, issue 5): Qwen2.5-Math-1.5B-Instruct on JSONL math data.

  64 prompts × 8, mini-batch 16, AdamW 1e-6, clip 0.2, no KL, mean-only advantages
  (the 'dr_grpo' loss preset, whose aggregation is Dr. GRPO's). Point `model.path` and
  `data.path` at local copies. Not given by the sources, and ours: weight decay 0.01
  (verl's AdamW default), a 3,072-token generation budget, micro-batch 4 prompts.
  """
  return TrainConfig(
    model=ModelSection(path='checkpoints/Qwen2.5-Math-1.5B-Instruct', dtype='bfloat16'),
    data=DataSection(task='jsonl', path='data/train.jsonl', held_out_size=500),
    sampler=SamplerSection(max_new_tokens=3072, temperature=1.0),
    loss=LossSection(preset='dr_grpo'),
    batch=BatchGeometry(prompts_per_step=64, group_size=8, mini_batch=16, micro_batch=4),
    optim=OptimSection(name='adamw', lr=1e-6, weight_decay=0.01, max_grad_norm=1.0),
    eval=EvalSection(every=25, size=500, avg_k=4),
    sft=SFTSection(enabled=False),
    steps=400,
    output_dir='runs/paper',
  )


CONFIG_PRESETS = {'cpu-tiny': cpu_tiny, 'paper': paper}


def config_preset(name: str) -> TrainConfig:
  """The named preset's config."""
  if name not in CONFIG_PRESETS:
    raise ValueError(f'unknown preset {name!r}; choose from {sorted(CONFIG_PRESETS)}')
  return CONFIG_PRESETS[name]()


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
  """`--preset NAME [field=value ...]` -> a validated `TrainConfig`."""
  parser = argparse.ArgumentParser(
    description='GRPO-family training. Overrides are field=value, e.g. optim.lr=2e-4.'
  )
  parser.add_argument('--preset', default='cpu-tiny', choices=sorted(CONFIG_PRESETS))
  parser.add_argument('overrides', nargs='*', help='section.field=value')
  args = parser.parse_args(argv)
  return apply_overrides(config_preset(args.preset), args.overrides)


def config_diff(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
  """Dotted field name -> (old, new) for every field that differs."""

  def flat(d, prefix=''):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f'{prefix}{k}.'))
      else:
        out[f'{prefix}{k}'] = v
    return out

  a, b = flat(old.to_dict()), flat(new.to_dict())
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_compatible(saved: TrainConfig, current: TrainConfig) -> None:
  """Raises if `current` changes anything but `RUN_LENGTH_FIELDS` relative to `saved`."""
  # output_dir is the run's identity, not part of its recipe (it may be spelled differently);
  # placement (mesh shape, processes) may change: a checkpoint restores onto any mesh.
  allowed = RUN_LENGTH_FIELDS | {'output_dir'}
  changed = {
    k: v
    for k, v in config_diff(saved, current).items()
    if k not in allowed and k.split('.', 1)[0] not in PLACEMENT_SECTIONS
  }
  if changed:
    listing = ', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in changed.items())
    raise ValueError(
      f'cannot resume: the config changed fields other than the run length ({listing}); '
      'use a new output_dir or restore the old values'
    )
