"""The GRPO-family trainer: SFT warm start, rollouts, rule-driven updates, eval, resume.

One rollout step (PAPERS.md §1, issue 5):
  1. draw `prompts_per_step` prompts at the data cursor and sample G completions each with
     `grpo_jax.sampling.sample` (per-sample keys from run key, step, prompt draw, sample);
  2. score them (`reward_fn(prompts, completions, **columns)`), shape, and compute group
     advantages with the loss preset; DAPO dynamic sampling draws more prompts until every
     kept group has unequal rewards (at most `max_extra_rollouts` extra rounds);
  3. for each epoch and mini-batch, one optimizer update: the gradient is accumulated over
     micro-batches through the preset's (num, den), grad = Σ ∇num_i / Σ den_i, and the
     update rule (`plain` for grpo, `sfpo`, `gxpo`; an optax transformation chosen by
     config) gets `grad_fn` for its extra passes on the same mini-batch.

Schedules count *inner* optimizer steps. SFPO and GXPO (state_mode 'advance') step the
inner optimizer K+1 and 3 times per update while active, so their schedules advance that
much faster; size `optim.warmup_steps`/`decay_steps` in inner steps.

Usage (overrides are `section.field=value`, see `grpo_jax.config`)::

  python -m grpo_jax.train                                   # cpu-tiny: SFT, then GRPO
  python -m grpo_jax.train rule.name=gxpo rule.k=3 rule.alpha=0.5 output_dir=runs/gxpo
  python -m grpo_jax.train --preset paper model.path=/ckpt/Qwen2.5-Math-1.5B-Instruct \
      data.path=/data/dapo_math.jsonl output_dir=runs/qwen mesh.fsdp=-1   # FSDP over all devices
  # multi-host: the same command on every host, plus e.g.
  #   mesh.distributed=true mesh.coordinator_address=host0:1234 mesh.num_processes=4 \
  #   mesh.process_id=<i> mesh.fsdp=-1 mesh.tensor=4

A run writes `<output_dir>/{checkpoints/, metrics.jsonl, tb/, curves.png, summary.json}`
(layout: `grpo_jax.checkpoint`; metric keys: `grpo_jax.metrics`) and `sft/checkpoints/`
for its warm start; started again with the same `output_dir` it resumes.

Randomness is a function of (seed, step, draw index, sample index) only and every update
is a deterministic jitted function, so CPU runs are bitwise reproducible and a run resumed
from its latest checkpoint ends with the same params as an uninterrupted one.

Meshes (`cfg.mesh`, `grpo_jax.sharding`): with any mesh axis other than 1 the trainer builds
a ('data', 'fsdp', 'tensor') mesh (after joining a multi-process run when
`mesh.distributed`), places the params on their role's shardings (a checkpoint's are
loaded straight onto them; a preset model is built as on one device, then placed),
creates the optimizer state with the same per-leaf shardings (Adam moments sharded like
their params, counters replicated), splits rollout prompts and learner micro-batches over
the batch axes ('data', 'fsdp'), runs every jitted call under `jax.set_mesh(mesh)` (so the
models' activation hints apply) and restores checkpoints onto the same shardings. Every
process holds the whole (small) rollout batch on the host and places its own shards, so
rewards and metrics are computed identically everywhere; process 0 writes the logs. The
default (all sizes 1) uses no mesh and runs exactly as a single-device run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax import metrics as metrics_lib
from grpo_jax import presets as loss_presets
from grpo_jax import rewards as rewards_lib
from grpo_jax import sharding as sharding_lib
from grpo_jax import tasks as tasks_lib
from grpo_jax import transforms
from grpo_jax.checkpoint import CheckpointStore
from grpo_jax.config import TrainConfig, check_resume_compatible, parse_args
from grpo_jax.logprobs import token_logprobs
from grpo_jax.models import Decoder, left_padded_positions, model_preset
from grpo_jax.sampling import SamplerConfig, sample
from grpo_jax.tokenizer import TextTokenizer, char_tokenizer
from grpo_jax.validation import validate_batch

# fold_in tags separating the streams derived from the run key.
# Jitted learner functions, shared by every Trainer of a process with the same static
# pieces (a resumed or repeated run in one process compiles nothing again).
_JIT_CACHE: dict[tuple, Callable] = {}

_ROLLOUT_TAG = 1
_EVAL_TAG = 2
_INIT_TAG = 3

# `jax.distributed.initialize` may run once per process; later Trainers reuse the run.
_DISTRIBUTED_JOINED = False


# --------------------------------------------------------------------------------------
# Mesh and placement.
# --------------------------------------------------------------------------------------


def build_mesh(cfg: TrainConfig) -> Mesh | None:
  """The run's mesh from `cfg.mesh` (joining a multi-process run first); None for one device.

  Raises:
    ValueError: when the devices do not fit the mesh sizes, or a micro-batch's rows do not
      split over the batch axes.
  """
  global _DISTRIBUTED_JOINED
  m = cfg.mesh
  if not m.enabled:
    return None
  if m.distributed and not _DISTRIBUTED_JOINED:
    sharding_lib.initialize_distributed(m.distributed_config())
    _DISTRIBUTED_JOINED = True
  try:
    mesh = sharding_lib.make_mesh(data=m.data, fsdp=m.fsdp, tensor=m.tensor)
  except ValueError as e:
    raise ValueError(f'config section `mesh`: {e}') from None
  ways = mesh.shape['data'] * mesh.shape['fsdp']
  rows = cfg.batch.micro_batch * cfg.batch.group_size
  if rows % ways:
    raise ValueError(
      f'config field `mesh`: batch.micro_batch x batch.group_size = {rows} rows do not split '
      f"over the mesh's data x fsdp = {ways} batch shards"
    )
  return mesh


def mesh_context(mesh: Mesh | None):
  """`jax.set_mesh(mesh)`, or a no-op context without a mesh."""
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def batch_spec(mesh: Mesh, shape: Sequence[int], *, axis: int = 0) -> PartitionSpec:
  """Dimension `axis` split over ('data', 'fsdp'), replicated when they do not divide it."""
  ways = mesh.shape['data'] * mesh.shape['fsdp']
  spec: list = [None] * len(shape)
  if ways > 1 and shape[axis] % ways == 0:
    spec[axis] = sharding_lib.BATCH_AXES
  return PartitionSpec(*spec)


def place_batch(tree: Any, mesh: Mesh | None, *, axis: int = 0) -> Any:
  """Host arrays as global arrays split over the batch axes along `axis` (no mesh: as is).

  Every process passes the same host values and keeps only its own shards
  (`grpo_jax.sharding.host_to_global`), which also serves multi-process runs.
  """
  if mesh is None:
    return tree

  def put(x):
    x = np.asarray(x)
    return sharding_lib.host_to_global(x, NamedSharding(mesh, batch_spec(mesh, x.shape, axis=axis)))

  return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
  """Numpy copies of a pytree of (possibly multi-process, sharded) arrays, whole on every host."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(get, tree)


def init_opt_state(tx: optax.GradientTransformation, params: Any, mesh: Mesh | None = None):
  """`tx.init(params)`, each leaf created on its role's sharding when there is a mesh.

  A plain `tx.init` (or `jax.jit(tx.init)`) of sharded params would leave state that does not
  inherit their shardings (e.g. replicated Adam moments); one jit with `out_shardings` from
  the same path-based roles as the params places moments like their params and replicates
  counters and hyper-parameters.
  """
  if mesh is None:
    return tx.init(params)
  abstract = jax.eval_shape(tx.init, params)
  with jax.set_mesh(mesh):
    return jax.jit(tx.init, out_shardings=sharding_lib.param_shardings(abstract, mesh))(params)


# --------------------------------------------------------------------------------------
# Model, optimizer and update rule.
# --------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, tokenizer: TextTokenizer, *, mesh: Mesh | None = None):
  """(graphdef, params, model_cfg): a preset decoder built from the seed, or a local HF one.

  With a `mesh`, every parameter ends on its role's sharding
  (`grpo_jax.sharding.param_shardings`): checkpoint tensors are loaded straight onto it, and
  a (small) preset model is initialised exactly as without a mesh, so one seed gives the same
  model on every mesh, then each process keeps its own shards. Without a mesh, on the default
  device.
  """
  if cfg.model.path:
    from grpo_jax.models import hf

    # float32 master weights (updates of lr ~1e-6 vanish in bfloat16); the checkpoint's
    # own dtype stays the compute dtype.
    model, model_cfg = hf.load_hf(cfg.model.path, param_dtype='float32', mesh=mesh)
  else:
    model_cfg = model_preset(
      cfg.model.preset,
      vocab_size=tokenizer.vocab_size,
      eos_token_ids=tuple(tokenizer.eos_ids),
      pad_token_id=tokenizer.pad_id,
      bos_token_id=tokenizer.bos_id,
      dtype=cfg.model.dtype,
    )
    seed = int(jax.random.randint(_run_key(cfg, _INIT_TAG), (), 0, 2**31 - 1))
    model = Decoder(model_cfg, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  if mesh is not None and not cfg.model.path:
    # Presets are small: the same eager init as a single-device run (so a seed gives the
    # same model on every mesh), then each process places its own shards of every weight.
    params = jax.tree.map(
      lambda x, s: sharding_lib.host_to_global(np.asarray(x), s),
      params,
      sharding_lib.param_shardings(params, mesh),
    )
  return graphdef, params, model_cfg


def build_task(cfg: TrainConfig, *, tokenizer_dir: str | None = None):
  """(task, tokenizer) for `cfg.data`; a model checkpoint's own tokenizer when it has one."""
  d = cfg.data
  if d.task == 'addition':
    task = tasks_lib.AdditionTask(held_out_size=d.held_out_size)
  elif d.task == 'jsonl':
    task = tasks_lib.JsonlTask(d.path, held_out_size=d.held_out_size)
  else:
    task = tasks_lib.ReasoningGymTask(d.task.split(':', 1)[1], held_out_size=d.held_out_size)
  if cfg.model.path:
    tokenizer = TextTokenizer.load(cfg.model.path)
  elif d.task == 'addition':
    tokenizer = tasks_lib.AdditionTask.tokenizer(tokenizer_dir)
  else:
    # A model built from scratch on text data gets a character tokenizer over the data.
    rows = task.held_out() + [task.train_row(k) for k in range(task.num_train)]
    chars = sorted({c for r in rows for c in r['prompt'] + r['answer']})
    tokenizer = TextTokenizer(char_tokenizer(''.join(chars), path=tokenizer_dir))
  return task, tokenizer


def build_rewards(cfg: TrainConfig, task):
  """(combined reward of `data.rewards` with `data.reward_weights`, correctness function)."""
  available = {r.name: r for r in task.rewards()}
  if 'correct' not in available:
    raise ValueError(f'task {task.name!r} has no `correct` reward for evaluation')
  chosen = []
  weights = cfg.data.reward_weights or (1.0,) * len(cfg.data.rewards)
  for name, weight in zip(cfg.data.rewards, weights):
    if name not in available:
      raise ValueError(
        f'config field `data.rewards`: task {task.name!r} has no reward {name!r}; '
        f'choose from {sorted(available)}'
      )
    chosen.append(rewards_lib.Reward(name, available[name].fn, weight))
  return rewards_lib.combine_rewards(chosen), available['correct'].fn


def _run_key(cfg: TrainConfig, tag: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(cfg.seed), tag)


def make_schedule(o) -> optax.Schedule:
  """constant | warmup (linear, then constant) | cosine (linear warm-up, cosine decay)."""
  if o.schedule == 'constant':
    return optax.constant_schedule(o.lr)
  if o.schedule == 'warmup':
    return optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
  return optax.warmup_cosine_decay_schedule(
    0.0, o.lr, o.warmup_steps, o.decay_steps, end_value=o.lr * o.min_lr_ratio
  )


def weight_decay_mask(params: Any) -> Any:
  """True on matrices; False on norms and biases (1-D leaves), which are never decayed."""

  def decay(path, leaf):
    names = '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path).lower()
    return leaf.ndim >= 2 and 'norm' not in names and 'bias' not in names

  return jax.tree_util.tree_map_with_path(decay, params)


def make_optimizer(o) -> optax.GradientTransformation:
  """The inner optimizer: AdamW or SGD with heavy-ball momentum, masked weight decay.

  The learning rate is injected (`optax.inject_hyperparams`), so `opt/lr` is read from the
  state. Clipping is not here: the update rule clips (`max_grad_norm`), see issue 6.
  """
  schedule = make_schedule(o)
  if o.name == 'adamw':
    return optax.inject_hyperparams(optax.adamw)(
      learning_rate=schedule,
      b1=o.b1,
      b2=o.b2,
      eps=o.eps,
      weight_decay=o.weight_decay,
      mask=weight_decay_mask,
    )

  def sgd_with_decay(learning_rate):
    return optax.chain(
      optax.add_decayed_weights(o.weight_decay, mask=weight_decay_mask),
      optax.sgd(learning_rate, momentum=o.momentum or None),
    )

  return optax.inject_hyperparams(sgd_with_decay)(learning_rate=schedule)


def make_rule(cfg: TrainConfig, inner: optax.GradientTransformation):
  """The update rule named by `cfg.rule.name`, wrapping `inner` (never a branch in the loop)."""
  r, clip = cfg.rule, cfg.optim.max_grad_norm
  rules: dict[str, Callable[[], optax.GradientTransformationExtraArgs]] = {
    'grpo': lambda: transforms.plain(inner, max_grad_norm=clip),
    'sfpo': lambda: transforms.sfpo(
      inner, k=r.k, alpha=r.alpha, max_grad_norm=clip, tau=r.sfpo_tau, window=r.window
    ),
    'gxpo': lambda: transforms.gxpo(
      inner, k=r.k, alpha=r.alpha, tau=r.tau, omega=r.omega, delta=r.delta, max_grad_norm=clip
    ),
  }
  return rules[r.name]()


def loss_preset(cfg: TrainConfig) -> loss_presets.LossPreset:
  """The configured preset with the run's KL coefficient (off by default)."""
  overrides: dict[str, Any] = {'kl_coef': cfg.loss.kl_coef}
  if cfg.loss.kl_estimator is not None:
    overrides['kl_estimator'] = cfg.loss.kl_estimator
  if cfg.data.overlong_cache:
    overrides['overlong_max_len'] = cfg.sampler.max_new_tokens
    overrides['overlong_cache_len'] = cfg.data.overlong_cache
  return loss_presets.get_preset(cfg.loss.preset, **overrides)


def _learning_rate(opt_state: Any) -> jax.Array:
  hyperparams = optax.tree_utils.tree_get(opt_state, 'hyperparams', default={})
  return jnp.asarray(hyperparams.get('learning_rate', jnp.nan), jnp.float32)


# --------------------------------------------------------------------------------------
# Log-probs and the learner step.
# --------------------------------------------------------------------------------------


def completion_logprobs(
  graphdef, params, tokens_BT, valid_BT, *, prompt_len: int, temperature: float
) -> tuple[jax.Array, jax.Array]:
  """(logp_BN, entropy_BN) of the completion tokens (columns prompt_len:) of each row.

  Rows are a left-padded prompt followed by a right-padded completion; positions follow
  the sampler's (`max(cumsum(valid) - 1, 0)`), and log-probs use logits / temperature.
  """
  model = nnx.merge(graphdef, params)
  hidden_BTD, _ = model(tokens_BT, left_padded_positions(valid_BT), valid_BT=valid_BT)
  # Hidden state t predicts token t + 1.
  return token_logprobs(
    hidden_BTD[:, prompt_len - 1 : -1],
    model.output_weights(),
    tokens_BT[:, prompt_len:],
    temperature=temperature,
  )


_MEAN_METRICS = ('clip_frac', 'ratio_mean', 'kl', 'ppo_kl', 'pg_loss')


def make_grad_fn(graphdef, preset, *, prompt_len: int, temperature: float):
  """`grad_and_aux(params, batch) -> (grads, aux)` over a mini-batch of micro-batches.

  `batch` holds arrays with a leading micro-batch axis: tokens [S, R, T], valid [S, R, T],
  old_logp / mask [S, R, N], adv [S, R], optional ref_logp [S, R, N]. The loss is
  Σ_i num_i / Σ_i den_i (the preset's accumulation contract); den does not depend on
  params, so the gradient is Σ_i ∇num_i / Σ_i den_i exactly as for the whole mini-batch.
  """

  def micro_loss(params, mb):
    logp_BN, ent_BN = completion_logprobs(
      graphdef, params, mb['tokens'], mb['valid'], prompt_len=prompt_len, temperature=temperature
    )
    num, den, m = preset.objective(
      logp_BN, mb['old_logp'], mb['adv'], mb['mask'], ref_logp_BT=mb.get('ref_logp')
    )
    mask = mb['mask'] > 0
    ent_sum = jnp.sum(jnp.where(mask, jax.lax.stop_gradient(ent_BN), 0.0))
    return num, (den, m, ent_sum)

  def grad_and_aux(params, batch):
    zero = jnp.zeros((), jnp.float32)
    init = (
      jax.tree.map(jnp.zeros_like, params),
      zero,
      {k: zero for k in (*_MEAN_METRICS, 'tokens', 'entropy', 'num')},
      jnp.full((), -jnp.inf, jnp.float32),
    )

    def body(carry, mb):
      g_sum, den_sum, sums, ratio_max = carry
      (num, (den, m, ent_sum)), g = jax.value_and_grad(micro_loss, has_aux=True)(params, mb)
      tokens = m['tokens']
      sums = dict(sums)
      for k in _MEAN_METRICS:
        sums[k] = sums[k] + m[k] * tokens
      sums['tokens'] = sums['tokens'] + tokens
      sums['entropy'] = sums['entropy'] + ent_sum
      sums['num'] = sums['num'] + num
      g_sum = jax.tree.map(jnp.add, g_sum, g)
      return (g_sum, den_sum + den, sums, jnp.maximum(ratio_max, m['ratio_max'])), None

    (g_sum, den, sums, ratio_max), _ = jax.lax.scan(body, init, batch)
    safe_den = jnp.where(den > 0, den, 1.0)
    grads = jax.tree.map(lambda g: g / safe_den, g_sum)
    tokens = jnp.maximum(sums['tokens'], 1.0)
    aux = {k: sums[k] / tokens for k in _MEAN_METRICS}
    aux['ratio_max'] = ratio_max
    aux['entropy'] = sums['entropy'] / tokens
    aux['loss'] = sums['num'] / safe_den
    return grads, aux

  return grad_and_aux


def make_update_fn(
  graphdef,
  preset,
  tx,
  *,
  prompt_len: int,
  temperature: float,
  shardings: tuple[Any, Any] | None = None,
  donate: bool = False,
):
  """A jitted `update(params, opt_state, batch) -> (params, opt_state, metrics)`.

  Args:
    graphdef: the model's graph definition.
    preset: the loss preset.
    tx: the update rule.
    prompt_len: the padded prompt width of the batch's rows.
    temperature: the sampling temperature the log-probs use.
    shardings: optional (param shardings, opt-state shardings) pytrees. Given (mesh runs),
      gradients are constrained to the params' shardings (a reduce-scatter over the batch
      axes rather than an all-reduce) and the new params and state keep their shardings
      from step to step instead of whatever the partitioner picks.
    donate: donate the `params` and `opt_state` buffers to the update's outputs, so an
      update holds one copy of them instead of two (on an accelerator, params + AdamW state
      are 3x the parameter bytes); the caller must not use the inputs afterwards.
  """
  grad_and_aux = make_grad_fn(graphdef, preset, prompt_len=prompt_len, temperature=temperature)
  if shardings is not None:
    param_sh, opt_sh = shardings
    grad_and_aux_unconstrained = grad_and_aux

    def grad_and_aux(params, batch):
      g, aux = grad_and_aux_unconstrained(params, batch)
      return jax.lax.with_sharding_constraint(g, param_sh), aux

  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
  def update(params, opt_state, batch):
    g0, aux = grad_and_aux(params, batch)
    grad_fn = lambda p: grad_and_aux(p, batch)[0]  # noqa: E731 - same mini-batch, raw grads
    updates, opt_state = tx.update(g0, opt_state, params, grad_fn=grad_fn, entropy=aux['entropy'])
    new_params = optax.apply_updates(params, updates)
    if shardings is not None:
      new_params = jax.lax.with_sharding_constraint(new_params, param_sh)
      opt_state = jax.lax.with_sharding_constraint(opt_state, opt_sh)
    out = {f'train/{k}': v for k, v in aux.items() if k != 'loss'}
    out['opt/grad_norm'] = optax.tree.norm(g0)
    out['opt/update_norm'] = optax.tree.norm(updates)
    out['opt/lr'] = _learning_rate(opt_state)
    out.update(transforms.rule_metrics(opt_state))
    return new_params, opt_state, out

  return update


# --------------------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------------------


def _prompt_bucket(n: int) -> int:
  """Padded prompt width: exact for short prompts, multiples of 64 beyond (fewer compiles)."""
  return n if n <= 32 else 64 * math.ceil(n / 64)


def _rows(examples: Sequence[dict], key: str) -> list:
  return [e[key] for e in examples]


class Trainer:
  """Runs (or resumes) the run described by a `TrainConfig` in `cfg.output_dir`.

  Attributes set at construction that experiments read: `mesh` (None on one device),
  `graphdef`, `init_params` (on their shardings), `param_shardings` / `opt_shardings`
  (None without a mesh), `tx`, `preset`, `geometry`, `task`, `tokenizer`.
  """

  def __init__(self, cfg: TrainConfig, *, progress: bool = True, log=print):
    self.cfg = cfg
    self.log = log
    self.show_progress = progress
    self.out = os.path.abspath(cfg.output_dir)
    os.makedirs(self.out, exist_ok=True)
    self.task, self.tokenizer = build_task(cfg, tokenizer_dir=os.path.join(self.out, 'tokenizer'))
    self.reward, self.correct = build_rewards(cfg, self.task)
    self.mesh = build_mesh(cfg)
    self.graphdef, params, self.model_cfg = build_model(cfg, self.tokenizer, mesh=self.mesh)
    self.init_params = params
    self.preset = loss_preset(cfg)
    self.dynamic_sampling = cfg.dynamic_sampling or self.preset.dynamic_sampling
    self.tx = make_rule(cfg, make_optimizer(cfg.optim))
    self.param_shardings = self.opt_shardings = None
    if self.mesh is not None:
      self.param_shardings = sharding_lib.param_shardings(params, self.mesh)
      self.opt_shardings = sharding_lib.param_shardings(
        jax.eval_shape(self.tx.init, params), self.mesh
      )
    self.geometry = cfg.batch
    self.sampler_cfg = SamplerConfig(
      max_new_tokens=cfg.sampler.max_new_tokens,
      eos_token_ids=tuple(self.tokenizer.eos_ids),
      pad_token_id=self.tokenizer.pad_id,
      temperature=cfg.sampler.temperature,
      top_k=cfg.sampler.top_k,
      top_p=cfg.sampler.top_p,
    )
    self.greedy_cfg = dataclasses.replace(self.sampler_cfg, greedy=True)
    self.rollout_key = _run_key(cfg, _ROLLOUT_TAG)
    self.eval_key = _run_key(cfg, _EVAL_TAG)
    self.held_out = self.task.held_out()

  # ---- pieces -----------------------------------------------------------------------

  def train_examples(self, position: int, n: int) -> list[dict]:
    """`n` training rows from data position `position` (a pure function of seed and position)."""
    return self.task.take(tasks_lib.Cursor(self.cfg.seed, position), n)[0]

  def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    # The task's system prompt (e.g. reasoning-gym's answer-tag instruction) leads every prompt.
    ids = self.tokenizer.encode_prompts(list(prompts), system_prompt=self.task.system_prompt)
    return self.tokenizer.pad_left(ids, length=_prompt_bucket(max(len(x) for x in ids)))

  def update_fn(self, prompt_len: int, *, donate: bool = False) -> Callable:
    """The jitted learner update for rows of `prompt_len` prompt tokens (`make_update_fn`)."""
    cfg = self.cfg
    key = (
      'update',
      self.graphdef,
      self.preset,
      cfg.optim,
      cfg.rule,
      prompt_len,
      cfg.sampler.temperature,
      self.mesh,
      donate,
    )
    if key not in _JIT_CACHE:
      _JIT_CACHE[key] = make_update_fn(
        self.graphdef,
        self.preset,
        self.tx,
        prompt_len=prompt_len,
        temperature=cfg.sampler.temperature,
        shardings=None if self.mesh is None else (self.param_shardings, self.opt_shardings),
        donate=donate,
      )
    return _JIT_CACHE[key]

  def init_opt_state(self, params) -> Any:
    """The update rule's initial state, on `opt_shardings` when there is a mesh."""
    return init_opt_state(self.tx, params, self.mesh)

  def logp_fn(self, prompt_len: int) -> Callable:
    temperature = self.cfg.sampler.temperature
    key = ('logp', self.graphdef, prompt_len, temperature, self.mesh)
    if key not in _JIT_CACHE:
      graphdef = self.graphdef
      _JIT_CACHE[key] = jax.jit(
        lambda p, tokens, valid: completion_logprobs(
          graphdef, p, tokens, valid, prompt_len=prompt_len, temperature=temperature
        )[0]
      )
    return _JIT_CACHE[key]

  def batched_logprobs(self, params, tokens_BT, valid_BT, prompt_len) -> np.ndarray:
    """Completion log-probs by a training forward pass, one micro-batch of rows at a time."""
    rows = self.geometry.micro_batch * self.geometry.group_size
    fn = self.logp_fn(prompt_len)
    parts = []
    with mesh_context(self.mesh):
      for i in range(0, tokens_BT.shape[0], rows):
        chunk = place_batch((tokens_BT[i : i + rows], valid_BT[i : i + rows]), self.mesh)
        parts.append(to_host(fn(params, *chunk)))
    return np.concatenate(parts)

  def generate(self, params, examples, *, group: int, key, step: int, draw_ids, config):
    """Samples `group` completions per example; returns (SampleOutput as numpy, prompt arrays)."""
    prompts_BP, valid_BP = self.encode_prompts(_rows(examples, 'prompt'))
    prompts_BP = np.repeat(prompts_BP, group, axis=0)
    valid_BP = np.repeat(valid_BP, group, axis=0)
    rows = (
      prompts_BP,
      valid_BP,
      np.repeat(np.asarray(draw_ids, np.int64), group).astype(np.uint32),
      np.tile(np.arange(group, dtype=np.uint32), len(examples)),
    )
    # With a mesh, the rows are split over the batch axes (replicated when they do not divide).
    prompts, valid, prompt_ids_B, sample_ids_B = place_batch(rows, self.mesh)
    with mesh_context(self.mesh):
      out = sample(
        (self.graphdef, params),
        prompts,
        valid,
        key=key,
        step=step,
        prompt_ids_B=prompt_ids_B,
        sample_ids_B=sample_ids_B,
        config=config,
      )
    return to_host(out), prompts_BP, valid_BP

  def score(self, examples, out, group: int):
    """RewardScores of the completions (columns repeated per sample)."""
    completions = self.tokenizer.decode_completions(out.tokens_BN, out.lengths_B)
    columns = {
      k: [v for v in _rows(examples, k) for _ in range(group)] for k in examples[0] if k != 'prompt'
    }
    prompts = [p for p in _rows(examples, 'prompt') for _ in range(group)]
    return self.reward.score(
      prompts, completions, completion_lengths=out.lengths_B.tolist(), **columns
    )

  def evaluate(self, params, *, step: int, size: int, avg_k: int, batch: int = 1024) -> dict:
    """Held-out greedy accuracy and avg@k (k samples per prompt at the sampler temperature)."""
    examples = self.held_out[:size]
    result = {}
    for name, k, cfg in (('eval/greedy_acc', 1, self.greedy_cfg), ('eval/avg_at_k', avg_k, None)):
      if k == 0:
        continue
      cfg = cfg or self.sampler_cfg
      scores = []
      per = max(batch // k, 1)
      for i in range(0, len(examples), per):
        chunk = examples[i : i + per]
        out, _, _ = self.generate(
          params,
          chunk,
          group=k,
          key=self.eval_key,
          step=step,
          draw_ids=np.arange(i, i + len(chunk)),
          config=cfg,
        )
        completions = self.tokenizer.decode_completions(out.tokens_BN, out.lengths_B)
        columns = {
          c: [v for v in _rows(chunk, c) for _ in range(k)] for c in chunk[0] if c != 'prompt'
        }
        prompts = [p for p in _rows(chunk, 'prompt') for _ in range(k)]
        scores.append(np.asarray(self.correct(prompts, completions, **columns), np.float64))
      result[name] = float(np.mean(np.concatenate(scores)))
    return result

  def sft_step_fn(self, tx) -> Callable:
    """The jitted teacher-forced step (mean negative log-likelihood of answer tokens)."""
    key = ('sft', self.graphdef, self.cfg.sft.lr, self.mesh)
    if key in _JIT_CACHE:
      return _JIT_CACHE[key]
    graphdef = self.graphdef

    @functools.partial(jax.jit, static_argnames='prompt_len')
    def sft_step(params, opt_state, tokens, valid, mask, prompt_len):
      def loss_fn(p):
        logp_BN, _ = completion_logprobs(
          graphdef, p, tokens, valid, prompt_len=prompt_len, temperature=1.0
        )
        return -jnp.sum(jnp.where(mask, logp_BN, 0.0)) / jnp.maximum(mask.sum(), 1)

      loss, g = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(g, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    _JIT_CACHE[key] = sft_step
    return sft_step

  # ---- SFT warm start -----------------------------------------------------------------

  def sft(self, params):
    """Teacher-forced warm start; stops in the [acc_low, acc_high] accuracy window.

    The first evaluation (every `eval_every` steps) inside the window ends SFT. When an
    evaluation overshoots the window, the interval since the previous evaluation is
    replayed (training is deterministic) with an evaluation after every step, and the
    first step inside the window is kept (or the one closest to it).
    """
    s = self.cfg.sft
    tx = optax.adam(s.lr)
    opt_state = init_opt_state(tx, params, self.mesh)
    sft_step = self.sft_step_fn(tx)
    n_new = self.cfg.sampler.max_new_tokens

    def batch_at(step):
      examples = self.train_examples(step * s.batch, s.batch)
      prompts_BP, valid_BP = self.encode_prompts(_rows(examples, 'prompt'))
      answers = self.tokenizer.encode_completions(_rows(examples, 'answer'))
      if max(len(a) for a in answers) > n_new:
        raise ValueError(
          f'an SFT answer has {max(len(a) for a in answers)} tokens (with eos), more than '
          f'sampler.max_new_tokens={n_new}'
        )
      comp_BN = np.full((len(answers), n_new), self.tokenizer.pad_id, np.int32)
      mask_BN = np.zeros((len(answers), n_new), bool)
      for b, a in enumerate(answers):
        comp_BN[b, : len(a)] = a
        mask_BN[b, : len(a)] = True
      tokens = np.concatenate([prompts_BP, comp_BN], axis=1)
      valid = np.concatenate([valid_BP, mask_BN], axis=1)
      return tokens, valid, mask_BN, prompts_BP.shape[1]

    def train_step(params, opt_state, step):
      tokens, valid, mask, prompt_len = batch_at(step)
      tokens, valid, mask = place_batch((tokens, valid, mask), self.mesh)
      with mesh_context(self.mesh):
        return sft_step(params, opt_state, tokens, valid, mask, prompt_len=prompt_len)

    def acc_of(params, step):
      return self.evaluate(params, step=step, size=s.eval_size, avg_k=0)['eval/greedy_acc']

    def distance(acc):
      return max(s.acc_low - acc, acc - s.acc_high, 0.0)

    snapshot = (params, opt_state, 0)
    acc, step, loss = acc_of(params, 0), 0, float('nan')
    self.writer.write({'sft/step': 0, 'sft/greedy_acc': acc})
    while not s.acc_low <= acc <= s.acc_high and step < s.max_steps:
      step += 1
      params, opt_state, loss = train_step(params, opt_state, step - 1)
      if step % s.eval_every and step != s.max_steps:
        continue
      acc = acc_of(params, step)
      self.writer.write({'sft/step': step, 'sft/loss': loss, 'sft/greedy_acc': acc})
      self.log(f'sft step {step}: loss {float(loss):.4f}, held-out greedy acc {acc:.3f}')
      if acc > s.acc_high:
        # Overshoot: replay the interval with an evaluation after every step.
        params, opt_state, start = snapshot
        best = (distance(acc), step, None)
        for replay in range(start + 1, step + 1):
          params, opt_state, loss = train_step(params, opt_state, replay - 1)
          a = acc_of(params, replay)
          if distance(a) < best[0]:
            best = (distance(a), replay, (params, a))
          if distance(a) == 0.0:
            break
        if best[2] is not None:
          step, (params, acc) = best[1], best[2]
        self.writer.write({'sft/step': step, 'sft/loss': loss, 'sft/greedy_acc': acc})
        self.log(f'sft replay: stopping at step {step}, held-out greedy acc {acc:.3f}')
        break
      snapshot = (params, opt_state, step)
    return params, step, acc

  def warm_start(self, params):
    """SFT params: reused from `sft.init_from` or `<output_dir>/sft`, else trained."""
    s = self.cfg.sft
    source = os.path.join(s.init_from, 'sft') if s.init_from else os.path.join(self.out, 'sft')
    ckpt_dir = os.path.join(source, 'checkpoints')
    if os.path.isdir(ckpt_dir):
      with CheckpointStore(ckpt_dir, read_only=True) as store:
        if store.latest_step() is not None:
          self.log(f'sft: reusing {ckpt_dir} (step {store.latest_step()})')
          return store.restore_params(target=params)
    if s.init_from:
      raise FileNotFoundError(f'sft.init_from={s.init_from!r} holds no SFT checkpoint')
    params, step, acc = self.sft(params)
    with CheckpointStore(ckpt_dir, keep_last=1, keep_best=0) as store:
      store.save(
        step,
        params=params,
        opt_state={'sft_step': self._replicated(np.asarray(step, np.int32))},
        rng=self._rng_for_store(jax.random.key(self.cfg.seed)),
        progress={'sft_step': step},
        config=self.cfg.to_dict(),
        metrics={'eval/greedy_acc': acc},
      )
    return params

  # ---- RL ---------------------------------------------------------------------------

  def rollout(self, params, step: int, cursor: int):
    """Samples and scores one step's batch (with DAPO dynamic sampling when on)."""
    P, G = self.geometry.prompts_per_step, self.geometry.group_size
    kept: list[dict] = []
    dropped: list[dict] = []
    extra = -1
    stats = {'zero_std_groups': 0, 'groups': 0}
    while len(kept) < P and extra < (self.cfg.max_extra_rollouts if self.dynamic_sampling else 0):
      extra += 1
      examples = self.train_examples(cursor, P)
      draw_ids = np.arange(cursor, cursor + P)
      cursor += P
      out, prompts_BP, valid_BP = self.generate(
        params,
        examples,
        group=G,
        key=self.rollout_key,
        step=step,
        draw_ids=draw_ids,
        config=self.sampler_cfg,
      )
      scores = self.score(examples, out, G)
      shaped = np.asarray(
        self.preset.shape_rewards(jnp.asarray(scores.total), lengths_B=jnp.asarray(out.lengths_B)),
        np.float64,
      )
      for p in range(P):
        rows = slice(p * G, (p + 1) * G)
        group = {
          'rewards': shaped[rows],
          'per_fn': {k: v[rows] for k, v in scores.per_fn.items()},
          'prompts': prompts_BP[rows],
          'prompt_valid': valid_BP[rows],
          **{k: getattr(out, k)[rows] for k in ('tokens_BN', 'completion_mask_BN', 'logp_BN')},
          'truncated': out.truncated_B[rows],
          'lengths': out.lengths_B[rows],
        }
        zero_std = bool(np.all(group['rewards'] == group['rewards'][0]))
        stats['zero_std_groups'] += zero_std
        stats['groups'] += 1
        if zero_std and self.dynamic_sampling:
          dropped.append(group)
        else:
          kept.append(group)
    # Cap reached: fill with dropped groups (their advantages are 0, so they only add to
    # token counts), keeping shapes static.
    groups = (kept + dropped)[:P]
    return groups, cursor, extra, stats

  def learner_batch(self, params, groups):
    """Advantages and the learner's arrays for one rollout batch (rows grouped by prompt)."""
    rewards_BG = np.stack([g['rewards'] for g in groups])
    adv_B = np.asarray(self.preset.advantages(jnp.asarray(rewards_BG, jnp.float32))).reshape(-1)
    width = max(g['prompts'].shape[1] for g in groups)

    def left_pad(x, fill):
      pad = width - x.shape[1]
      return np.pad(x, ((0, 0), (pad, 0)), constant_values=fill) if pad else x

    prompts = np.concatenate([left_pad(g['prompts'], self.tokenizer.pad_id) for g in groups])
    prompt_valid = np.concatenate([left_pad(g['prompt_valid'], False) for g in groups])
    tokens_BN = np.concatenate([g['tokens_BN'] for g in groups])
    mask_BN = np.concatenate([g['completion_mask_BN'] for g in groups])
    truncated_B = np.concatenate([g['truncated'] for g in groups])
    batch = {
      'tokens': np.concatenate([prompts, tokens_BN], axis=1).astype(np.int32),
      'valid': np.concatenate([prompt_valid, mask_BN], axis=1),
      'old_logp': np.concatenate([g['logp_BN'] for g in groups]).astype(np.float32),
      'adv': adv_B.astype(np.float32),
    }
    loss_mask = mask_BN & ~truncated_B[:, None] if self.preset.overlong_filter else mask_BN
    batch['mask'] = loss_mask.astype(np.float32)
    extra = {}
    if self.cfg.recompute_old_logp:
      recomputed = self.batched_logprobs(params, batch['tokens'], batch['valid'], width)
      diff = np.abs(recomputed - batch['old_logp'])[mask_BN]
      extra['train/old_logp_mismatch'] = float(diff.mean()) if diff.size else 0.0
      batch['old_logp'] = np.where(mask_BN, recomputed, 0.0).astype(np.float32)
    if self.preset.kl_coef > 0:
      batch['ref_logp'] = self.batched_logprobs(
        self.ref_params, batch['tokens'], batch['valid'], width
      ).astype(np.float32)
    # Data-dependent problems the jitted loss cannot report (issue 3): a non-finite reward,
    # a row left without loss tokens where the preset's aggregation divides by its length.
    validate_batch(
      rewards=rewards_BG,
      mask_BT=batch['mask'],
      old_logp_BT=batch['old_logp'],
      ref_logp_BT=batch.get('ref_logp'),
      adv=batch['adv'],
      group_size=self.cfg.batch.group_size,
      preset=self.preset,
    )
    return batch, width, rewards_BG, extra

  def train_on(self, params, opt_state, batch, prompt_len: int, step: int, *, donate: bool = False):
    """All optimizer updates on one rollout batch; returns averaged metrics.

    With `donate`, the buffers of `params` and `opt_state` are reused for the results (one
    copy of the training state in memory); the caller must not use the inputs afterwards.
    """
    geo = self.geometry
    G, S = geo.group_size, geo.micro_steps
    update = self.update_fn(prompt_len, donate=donate)
    collected = []
    for epoch in range(geo.epochs):
      order = np.arange(geo.prompts_per_step)
      if geo.epochs > 1 or geo.prompts_per_step > geo.mini_batch:
        order = np.random.default_rng([self.cfg.seed, step, epoch]).permutation(order)
      for u in range(geo.prompts_per_step // geo.mini_batch):
        prompts = order[u * geo.mini_batch : (u + 1) * geo.mini_batch]
        rows = (prompts[:, None] * G + np.arange(G)[None]).reshape(-1)
        mb = {k: v[rows].reshape(S, -1, *v.shape[1:]) for k, v in batch.items()}
        # Rows of each micro-batch are split over the batch axes.
        mb = place_batch(mb, self.mesh, axis=1)
        with mesh_context(self.mesh):
          params, opt_state, m = update(params, opt_state, mb)
        collected.append(m)
    collected = to_host(collected)
    out = {}
    for key in collected[0]:
      values = np.asarray([c[key] for c in collected], np.float64)
      if key.startswith('rule/') or key == 'opt/lr':
        out[key] = float(values[-1])
      elif key == 'train/ratio_max':
        out[key] = float(values.max())
      else:
        out[key] = float(values.mean())
    return params, opt_state, out, len(collected)

  def run(self) -> dict[str, Any]:
    """Trains (resuming when `output_dir` holds checkpoints); returns a summary."""
    cfg = self.cfg
    t_start = time.perf_counter()
    # One process writes the logs; every process computes the same rows.
    self.writer = metrics_lib.MetricsWriter(self.out) if jax.process_index() == 0 else _NoLog()
    store = CheckpointStore(
      os.path.join(self.out, 'checkpoints'),
      keep_last=cfg.checkpoint.keep_last,
      keep_best=cfg.checkpoint.keep_best,
      keep_every=cfg.checkpoint.keep_every,
    )
    try:
      with mesh_context(self.mesh):
        return self._run(store, t_start)
    finally:
      store.close()
      self.writer.close()

  def _run(self, store: CheckpointStore, t_start: float) -> dict[str, Any]:
    cfg = self.cfg
    params = self.init_params
    opt_state = self.init_opt_state(params)
    latest = store.latest_step()
    if latest is not None:
      check_resume_compatible(TrainConfig.from_dict(store.restore_item('config', step=latest)), cfg)
      # The targets carry the params' and state's shardings, so orbax restores every array
      # straight onto them (on whatever mesh this run uses).
      restored = store.restore(
        step=latest,
        params=params,
        opt_state=opt_state,
        rng=self._rng_for_store(self.rollout_key),
      )
      params, opt_state, progress = restored['params'], restored['opt_state'], restored['progress']
      self.ref_params = (
        store.restore_params(step=0, target=params) if self.preset.kl_coef > 0 else None
      )
      self.log(f'resuming {self.out} from step {latest}')
    else:
      if cfg.sft.enabled:
        params = self.warm_start(params)
      self.ref_params = params if self.preset.kl_coef > 0 else None
      progress = {
        'step': 0,
        'updates': 0,
        'cursor': 0,
        'cum/samples': 0,
        'cum/tokens': 0,
        'cum/time_s': 0.0,
        'before_acc': None,
      }
      evals = self.evaluate(params, step=0, size=cfg.eval.size, avg_k=cfg.eval.avg_k)
      progress['before_acc'] = evals['eval/greedy_acc']
      self.writer.write({'step': 0, **evals})
      self._save(store, 0, params, opt_state, progress, evals)

    prompt_len = self.encode_prompts(_rows(self.train_examples(0, 1), 'prompt'))[0].shape[1]
    self.log(
      self.geometry.table(prompt_len=prompt_len, max_new_tokens=self.sampler_cfg.max_new_tokens)
    )
    self.log(f'held-out greedy accuracy before RL: {progress["before_acc"]:.4f}')
    # The loop's updates donate their inputs. Fresh copies keep `init_params` and
    # `ref_params` (which `params` may still be) alive for the caller and the KL term, and
    # give every state leaf its own buffer (an optimizer's init may share one between leaves,
    # e.g. two zero counters, and a buffer cannot be donated twice).
    params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))
    time_base = progress['cum/time_s'] - (time.perf_counter() - t_start)
    bar = metrics_lib.progress_bar(
      cfg.steps, initial=progress['step'], disable=not self.show_progress
    )
    for step in range(progress['step'] + 1, cfg.steps + 1):
      t0 = time.perf_counter()
      groups, cursor, extra_rounds, stats = self.rollout(params, step, progress['cursor'])
      batch, width, rewards_BG, extra = self.learner_batch(params, groups)
      t1 = time.perf_counter()
      params, opt_state, learner, n_updates = self.train_on(
        params, opt_state, batch, width, step, donate=True
      )
      jax.block_until_ready(params)
      t2 = time.perf_counter()
      lengths = np.concatenate([g['lengths'] for g in groups])
      truncated = np.concatenate([g['truncated'] for g in groups])
      tokens = int(lengths.sum())
      progress.update(
        step=step,
        updates=progress['updates'] + n_updates,
        cursor=cursor,
      )
      progress['cum/samples'] += len(lengths)
      progress['cum/tokens'] += tokens
      progress['cum/time_s'] = time_base + (time.perf_counter() - t_start)
      row = {
        'step': step,
        'updates': progress['updates'],
        'train/reward_mean': rewards_BG.mean(),
        'train/reward_std': rewards_BG.std(),
        **{
          f'train/reward/{k}': np.mean(np.concatenate([g['per_fn'][k] for g in groups]))
          for k in groups[0]['per_fn']
        },
        'train/zero_std_frac': stats['zero_std_groups'] / stats['groups'],
        'train/len_mean': lengths.mean(),
        'train/truncated_frac': truncated.mean(),
        'train/extra_rollouts': extra_rounds,
        **extra,
        **{
          k: v for k, v in learner.items() if k in metrics_lib.METRIC_KEYS or k.startswith('rule/')
        },
        'cum/backward_passes': learner['rule/backward_passes_total'],
        'cum/samples': progress['cum/samples'],
        'cum/tokens': progress['cum/tokens'],
        'cum/time_s': progress['cum/time_s'],
        'time/rollout_s': t1 - t0,
        'time/update_s': t2 - t1,
        'time/tokens_per_s': tokens / max(t2 - t0, 1e-9),
      }
      self.writer.write(row)
      evals = None
      checkpoint_now = step % cfg.checkpoint.every == 0 or step == cfg.steps
      if step % cfg.eval.every == 0 or checkpoint_now:
        evals = self.evaluate(params, step=step, size=cfg.eval.size, avg_k=cfg.eval.avg_k)
        self.writer.write({'step': step, **evals})
      if checkpoint_now:
        self._save(store, step, params, opt_state, progress, evals)
      bar.update(1)
      postfix = {'reward': f'{row["train/reward_mean"]:.3f}'}
      if evals:
        postfix['acc'] = f'{evals["eval/greedy_acc"]:.3f}'
      bar.set_postfix(postfix)
    bar.close()
    self.params, self.opt_state = params, opt_state
    return self.summary(progress)

  def _replicated(self, x) -> jax.Array:
    """A small host value as an array: replicated over the mesh when there is one."""
    if self.mesh is None:
      return jnp.asarray(x)
    return sharding_lib.host_to_global(np.asarray(x), sharding_lib.replicated(self.mesh))

  def _rng_for_store(self, key: jax.Array) -> jax.Array:
    """Key data as the checkpoint holds it: replicated over the mesh when there is one."""
    data = jax.random.key_data(key)
    return data if self.mesh is None else self._replicated(data)

  def _save(self, store, step, params, opt_state, progress, evals):
    store.save(
      step,
      params=params,
      opt_state=opt_state,
      rng=self._rng_for_store(self.rollout_key),
      progress=progress,
      config=self.cfg.to_dict(),
      metrics=None if evals is None else {'eval/greedy_acc': evals['eval/greedy_acc']},
    )

  def summary(self, progress) -> dict[str, Any]:
    before = progress['before_acc']
    after, error = before, None
    if jax.process_index() == 0:  # the metrics file (a resumed run's evaluations too)
      try:
        evals = [r for r in metrics_lib.read_metrics(self.out, kind='eval') if r['step'] > 0]
        after = metrics_lib.summarize(evals) if evals else before
      except (OSError, ValueError) as e:
        if jax.process_count() == 1:
          raise
        after, error = math.nan, e  # raised below on every process, not here alone
    if jax.process_count() > 1:  # other processes need not see process 0's files
      after = _broadcast_float(after)
      if math.isnan(after):
        message = f'summary: process 0 could not read the evaluations in {self.out}'
        raise RuntimeError(message) from error
    figure = metrics_lib.plot_run(self.out) if jax.process_index() == 0 else None
    result = {
      'before_acc': before,
      'after_acc': after,
      'gain_points': 100 * (after - before),
      'steps': progress['step'],
      'updates': progress['updates'],
      'time_s': progress['cum/time_s'],
      'figure': figure,
    }
    if jax.process_index() == 0:
      with open(os.path.join(self.out, 'summary.json'), 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=2)
    return result


def _broadcast_float(value: float) -> float:
  """Process 0's float64 on every process, bit for bit (as two uint32 words: JAX's
  collectives run without x64)."""
  words = np.asarray([value], np.float64).view(np.uint32)
  return float(np.asarray(multihost_utils.broadcast_one_to_all(words)).view(np.float64)[0])


class _NoLog:
  """The metrics writer of processes other than 0 in a multi-process run."""

  def write(self, row) -> None:
    del row

  def close(self) -> None:
    pass


def train(cfg: TrainConfig, *, progress: bool = True, log=print) -> dict[str, Any]:
  """Runs `cfg` (resuming from `cfg.output_dir` if it holds checkpoints); returns a summary."""
  return Trainer(cfg, progress=progress, log=log).run()


def main(argv: Sequence[str] | None = None) -> None:
  cfg = parse_args(argv)
  result = train(cfg, progress=sys.stderr.isatty())
  print(json.dumps(result))


if __name__ == '__main__':
  main()
