"""Jitted autoregressive sampling: prefill + `lax.while_loop` decode over a static-size KV cache.

Shapes: B batch, P prompt length (left-padded), N new tokens, S cache slots (= P + N),
V vocabulary.

One call samples one completion per row. Row b's randomness is a key derived only from
(run key, step, prompt id, sample index) by `fold_in` (`sample_keys`), so a completion does
not depend on what else is in the batch, its padding, or the batch size.

Two log-probabilities are returned per token (PAPERS.md §1: "log-probs are taken from logits
divided by the sampling temperature"):
  * `logp_BN`: log softmax(logits / temperature) at the sampled token. This is what the loss
    recomputes as π_old, so it is the quantity to compare with the learner.
  * `logp_sampling_BN`: the log-probability under the distribution actually sampled from,
    i.e. after top-k and top-p truncation and renormalisation. It equals `logp_BN` when
    neither truncation is on, and is >= `logp_BN` otherwise (the truncated mass is
    redistributed). Greedy decoding samples from a point mass, so it is 0 there.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from grpo_jax.models import init_cache, left_padded_positions
from grpo_jax.sharding import BATCH_AXES, constrain

__all__ = [
  'SampleOutput',
  'SamplerConfig',
  'filter_logits',
  'sample',
  'sample_keys',
]


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """How to sample completions.

  Attributes:
    max_new_tokens: N, the completion length limit; a row that has not emitted an EOS token
      after N tokens is truncated.
    eos_token_ids: tokens that end a completion (the EOS token is part of the completion and
      of its mask). Empty: every row runs to `max_new_tokens`.
    pad_token_id: written after a row has finished.
    temperature: softmax temperature; 0 means greedy (argmax).
    top_k: keep only the k most likely tokens (ties with the k-th are kept); 0 disables.
    top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
      (after top-k) reaches top_p; 1 disables.
    greedy: argmax decoding whatever the temperature; `logp_BN` is then still taken at
      `temperature` (or 1 when the temperature is 0).
    cache_dtype: dtype of the KV cache; None uses the model's default.
  """

  max_new_tokens: int
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  cache_dtype: Any = None

  def __post_init__(self):
    if not isinstance(self.max_new_tokens, int | np.integer) or self.max_new_tokens < 1:
      raise ValueError(
        f'SamplerConfig.max_new_tokens must be a positive int, got {self.max_new_tokens!r}'
      )
    if isinstance(self.eos_token_ids, int | np.integer):
      object.__setattr__(self, 'eos_token_ids', (int(self.eos_token_ids),))
    object.__setattr__(self, 'eos_token_ids', tuple(int(t) for t in self.eos_token_ids))
    if any(t < 0 for t in self.eos_token_ids):
      raise ValueError(f'SamplerConfig.eos_token_ids must be >= 0, got {self.eos_token_ids}')
    if not isinstance(self.pad_token_id, int | np.integer) or self.pad_token_id < 0:
      raise ValueError(f'SamplerConfig.pad_token_id must be an int >= 0, got {self.pad_token_id!r}')
    if not np.isfinite(self.temperature) or self.temperature < 0:
      raise ValueError(
        f'SamplerConfig.temperature must be finite and >= 0, got {self.temperature!r}'
      )
    if not isinstance(self.top_k, int | np.integer) or self.top_k < 0:
      raise ValueError(f'SamplerConfig.top_k must be an int >= 0 (0 = off), got {self.top_k!r}')
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'SamplerConfig.top_p must be in (0, 1] (1 = off), got {self.top_p!r}')

  @property
  def is_greedy(self) -> bool:
    """True when tokens are chosen by argmax (the `greedy` flag or temperature 0)."""
    return self.greedy or self.temperature == 0.0

  @property
  def logp_temperature(self) -> float:
    """The temperature of the plain softmax behind `logp_BN`."""
    return self.temperature if self.temperature > 0 else 1.0

  def _program_key(self) -> SamplerConfig:
    """This config with the float knobs replaced by canonical values.

    Temperature and top-p travel into the jitted program as arrays, so changing them does
    not recompile; only whether they are active (greedy, nucleus on) shapes the program.
    """
    return dataclasses.replace(
      self, greedy=self.is_greedy, temperature=1.0, top_p=1.0 if self.top_p == 1.0 else 0.5
    )


@flax.struct.dataclass
class SampleOutput:
  """Completions of one `sample` call; position n of a row is its n-th new token.

  Attributes:
    tokens_BN: sampled tokens, `pad_token_id` after a row's EOS.
    completion_mask_BN: True on the completion's tokens, including its EOS token.
    truncated_B: True where the row emitted no EOS within `max_new_tokens`.
    logp_sampling_BN: log-prob under the distribution actually sampled (after top-k/top-p);
      0 outside the mask.
    logp_BN: log-prob under softmax(logits / temperature); 0 outside the mask.
    lengths_B: number of completion tokens (`completion_mask_BN.sum(-1)`).
  """

  tokens_BN: jax.Array
  completion_mask_BN: jax.Array
  truncated_B: jax.Array
  logp_sampling_BN: jax.Array
  logp_BN: jax.Array
  lengths_B: jax.Array


@flax.struct.dataclass
class _DecodeState:
  """Carry of the decode `lax.while_loop`."""

  step: jax.Array  # index n of the next token to write into the [B, N] buffers
  tokens_BN: jax.Array
  logp_sampling_BN: jax.Array
  logp_BN: jax.Array
  last_B: jax.Array  # the token sampled at step - 1, the next decoder input
  positions_B: jax.Array  # its RoPE position
  done_B: jax.Array  # row has emitted an EOS token
  keys_B: jax.Array  # per-row RNG, split once per token
  cache: Any


def sample_keys(
  key: jax.Array, step: jax.Array | int, prompt_ids_B: jax.Array, sample_ids_B: jax.Array
) -> jax.Array:
  """Per-row keys: fold_in(fold_in(fold_in(key, step), prompt_id), sample_id).

  Args:
    key: the run key (typed or raw uint32).
    step: the training step.
    prompt_ids_B: a stable id of each row's prompt (e.g. its dataset index).
    sample_ids_B: the index of each row's sample within its group.

  Returns:
    One key per row, a function of those four values only.
  """
  step_key = jax.random.fold_in(key, jnp.asarray(step, jnp.uint32))
  per_row = lambda p, s: jax.random.fold_in(jax.random.fold_in(step_key, p), s)
  return jax.vmap(per_row)(
    jnp.asarray(prompt_ids_B, jnp.uint32), jnp.asarray(sample_ids_B, jnp.uint32)
  )


def filter_logits(
  logits_BV: jax.Array, *, top_k: int = 0, top_p: float | jax.Array = 1.0
) -> jax.Array:
  """Sets logits outside the top-k / top-p support to -inf (nucleus sampling, Holtzman 2020).

  top-k keeps the tokens whose logit is >= the k-th largest (ties with the k-th are kept).
  top-p then keeps, in descending probability order, every token whose preceding mass
  (of the top-k renormalised distribution) is < top_p, so the most likely token is always
  kept, plus any token tied with the least likely kept one. Apply to logits already divided
  by the temperature.

  Args:
    logits_BV: float logits.
    top_k: static; 0 disables.
    top_p: in (0, 1]; a Python 1.0 disables (an array value is always applied).

  Returns:
    float32 logits, -inf outside the support.
  """
  logits_BV = logits_BV.astype(jnp.float32)
  vocab = logits_BV.shape[-1]
  use_top_k = 0 < top_k < vocab
  use_top_p = not (isinstance(top_p, float | int) and top_p >= 1.0)
  if not (use_top_k or use_top_p):
    return logits_BV
  # Sorted candidates: the top-k if set (cheap, k static), else the whole vocabulary.
  sorted_BK, _ = jax.lax.top_k(logits_BV, top_k if use_top_k else vocab)
  threshold_B = sorted_BK[:, -1]
  if use_top_p:
    probs_BK = jax.nn.softmax(sorted_BK, axis=-1)
    mass_before_BK = jnp.cumsum(probs_BK, axis=-1) - probs_BK
    keep_BK = mass_before_BK < top_p
    # The smallest kept logit; the first candidate is always kept.
    threshold_B = jnp.min(jnp.where(keep_BK, sorted_BK, jnp.inf), axis=-1)
  return jnp.where(logits_BV >= threshold_B[:, None], logits_BV, -jnp.inf)


def _choose_tokens(
  keys_B: jax.Array,
  logits_BV: jax.Array,
  temperature: jax.Array,
  top_p: jax.Array,
  config: SamplerConfig,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Picks one token per row; returns (tokens_B, logp_sampling_B, logp_B)."""
  scaled_BV = logits_BV.astype(jnp.float32) / temperature
  logp_BV = jax.nn.log_softmax(scaled_BV, axis=-1)
  if config.is_greedy:
    tokens_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    logp_sampling_B = jnp.zeros(tokens_B.shape, jnp.float32)
  else:
    filtered_BV = filter_logits(
      scaled_BV, top_k=config.top_k, top_p=top_p if config.top_p < 1.0 else 1.0
    )
    tokens_B = jax.vmap(jax.random.categorical)(keys_B, filtered_BV).astype(jnp.int32)
    logp_sampling_B = jnp.take_along_axis(
      jax.nn.log_softmax(filtered_BV, axis=-1), tokens_B[:, None], axis=-1
    )[:, 0]
  logp_B = jnp.take_along_axis(logp_BV, tokens_B[:, None], axis=-1)[:, 0]
  return tokens_B, logp_sampling_B, logp_B


def _is_eos(tokens: jax.Array, eos_token_ids: tuple[int, ...]) -> jax.Array:
  if not eos_token_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.isin(tokens, jnp.asarray(eos_token_ids, tokens.dtype))


def _constrain_cache(cache: Any) -> Any:
  """Shards the cache like the activations that fill it: rows over the batch axes, keys and
  values [L, B, S, N, K] also over 'tensor' along heads (a no-op without a mesh)."""
  specs = {2: (BATCH_AXES, None), 5: (None, BATCH_AXES, None, 'tensor', None)}
  return jax.tree.map(lambda x: constrain(x, specs[x.ndim]) if x.ndim in specs else x, cache)


def _set_column(buffer_BN: jax.Array, column_B: jax.Array, n: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_slice(
    buffer_BN, column_B[:, None].astype(buffer_BN.dtype), (jnp.zeros_like(n), n)
  )


@functools.partial(jax.jit, static_argnames=('config',))
def _sample_jit(
  graphdef: nnx.GraphDef,
  states: tuple[Any, ...],
  prompts_BP: jax.Array,
  prompt_valid_BP: jax.Array,
  key: jax.Array,
  step: jax.Array,
  prompt_ids_B: jax.Array,
  sample_ids_B: jax.Array,
  temperature: jax.Array,
  top_p: jax.Array,
  *,
  config: SamplerConfig,
) -> SampleOutput:
  batch, prompt_len = prompts_BP.shape
  n_new = config.max_new_tokens
  model = nnx.merge(graphdef, *states)
  keys_B = sample_keys(key, step, prompt_ids_B, sample_ids_B)

  # Prefill: the whole prompt in one call writes cache slots [0, P).
  cache = _constrain_cache(
    init_cache(model.cfg, batch, prompt_len + n_new, dtype=config.cache_dtype)
  )
  hidden_BPD, cache = model(
    prompts_BP,
    left_padded_positions(prompt_valid_BP),
    valid_BT=prompt_valid_BP,
    cache=cache,
    cache_index=jnp.int32(0),
  )
  # Left padding puts every row's last prompt token in the last column.
  logits_BV = model.logits(hidden_BPD[:, -1:])[:, 0]
  keys_B, subkeys_B = _split_rows(keys_B)
  first_B, logp_sampling_B, logp_B = _choose_tokens(
    subkeys_B, logits_BV, temperature, top_p, config
  )

  zeros_BN = jnp.zeros((batch, n_new), jnp.float32)
  state = _DecodeState(
    step=jnp.int32(1),
    tokens_BN=_set_column(jnp.full((batch, n_new), config.pad_token_id, jnp.int32), first_B, 0),
    logp_sampling_BN=_set_column(zeros_BN, logp_sampling_B, 0),
    logp_BN=_set_column(zeros_BN, logp_B, 0),
    last_B=first_B,
    positions_B=prompt_valid_BP.sum(axis=-1, dtype=jnp.int32),
    done_B=_is_eos(first_B, config.eos_token_ids),
    keys_B=keys_B,
    cache=cache,
  )

  def cond_fn(state: _DecodeState) -> jax.Array:
    return (state.step < n_new) & ~jnp.all(state.done_B)

  def body_fn(state: _DecodeState) -> _DecodeState:
    step_model = nnx.merge(graphdef, *states)
    # The token sampled at step - 1 goes into slot P + step - 1. Finished rows still run (the
    # batch is one matmul) but are marked invalid, so they never attend to their padding.
    hidden_B1D, cache = step_model(
      state.last_B[:, None],
      state.positions_B[:, None],
      valid_BT=~state.done_B[:, None],
      cache=state.cache,
      cache_index=prompt_len + state.step - 1,
    )
    logits_BV = step_model.logits(hidden_B1D)[:, 0]
    keys_B, subkeys_B = _split_rows(state.keys_B)
    tokens_B, logp_sampling_B, logp_B = _choose_tokens(
      subkeys_B, logits_BV, temperature, top_p, config
    )
    tokens_B = jnp.where(state.done_B, config.pad_token_id, tokens_B)
    logp_sampling_B = jnp.where(state.done_B, 0.0, logp_sampling_B)
    logp_B = jnp.where(state.done_B, 0.0, logp_B)
    return _DecodeState(
      step=state.step + 1,
      tokens_BN=_set_column(state.tokens_BN, tokens_B, state.step),
      logp_sampling_BN=_set_column(state.logp_sampling_BN, logp_sampling_B, state.step),
      logp_BN=_set_column(state.logp_BN, logp_B, state.step),
      last_B=tokens_B,
      positions_B=state.positions_B + 1,
      done_B=state.done_B | _is_eos(tokens_B, config.eos_token_ids),
      keys_B=keys_B,
      cache=cache,
    )

  state = jax.lax.while_loop(cond_fn, body_fn, state)

  # A token is in the completion iff no EOS precedes it; buffers a row never reached were
  # initialised to pad / 0.
  eos_BN = _is_eos(state.tokens_BN, config.eos_token_ids)
  eos_before_BN = (jnp.cumsum(eos_BN, axis=-1) - eos_BN) > 0
  mask_BN = ~eos_before_BN
  return SampleOutput(
    tokens_BN=state.tokens_BN,
    completion_mask_BN=mask_BN,
    truncated_B=~jnp.any(eos_BN & mask_BN, axis=-1),
    logp_sampling_BN=jnp.where(mask_BN, state.logp_sampling_BN, 0.0),
    logp_BN=jnp.where(mask_BN, state.logp_BN, 0.0),
    lengths_B=mask_BN.sum(axis=-1, dtype=jnp.int32),
  )


def _split_rows(keys_B: jax.Array) -> tuple[jax.Array, jax.Array]:
  pairs_B2 = jax.vmap(jax.random.split)(keys_B)
  return pairs_B2[:, 0], pairs_B2[:, 1]


def _check_inputs(prompts_BP, prompt_valid_BP, prompt_ids_B, sample_ids_B) -> None:
  if prompts_BP.ndim != 2:
    raise ValueError(f'`prompts_BP` must be [batch, prompt_len], got shape {prompts_BP.shape}')
  if not jnp.issubdtype(prompts_BP.dtype, jnp.integer):
    raise ValueError(f'`prompts_BP` must hold integer token ids, got dtype {prompts_BP.dtype}')
  if prompt_valid_BP.shape != prompts_BP.shape:
    raise ValueError(
      f'`prompt_valid_BP` has shape {prompt_valid_BP.shape}, but `prompts_BP` has '
      f'{prompts_BP.shape}'
    )
  if prompt_valid_BP.dtype != jnp.bool_:
    raise ValueError(f'`prompt_valid_BP` must be bool, got dtype {prompt_valid_BP.dtype}')
  batch = prompts_BP.shape[0]
  for name, ids in (('prompt_ids_B', prompt_ids_B), ('sample_ids_B', sample_ids_B)):
    if ids.shape != (batch,):
      raise ValueError(f'`{name}` must have shape ({batch},), got {ids.shape}')
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f'`{name}` must hold integers, got dtype {ids.dtype}')
  if isinstance(prompt_valid_BP, jax.core.Tracer):
    return
  empty, not_left = [], []
  for first_row, valid in _local_rows(prompt_valid_BP):
    empty += (first_row + np.flatnonzero(~valid.any(axis=-1))).tolist()
    steps_down = (np.diff(valid.astype(np.int8), axis=-1) < 0).any(axis=-1)
    not_left += (first_row + np.flatnonzero(steps_down)).tolist()
  n_empty, n_not_left = len(empty), len(not_left)
  if not prompt_valid_BP.is_fully_addressable:
    # Every process raises together: one raising alone would leave the others waiting in
    # the sampler's collectives. Each names the rows it holds.
    counts = multihost_utils.process_allgather(np.array([n_empty, n_not_left], np.int32))
    n_empty, n_not_left = np.asarray(counts).reshape(-1, 2).sum(axis=0).tolist()

  def rows(local):
    return f'rows {sorted(set(local))}' if local else 'rows held by another process'

  if n_empty:
    raise ValueError(f'`prompt_valid_BP`: {rows(empty)} have no valid prompt token')
  if n_not_left:
    raise ValueError(
      f'`prompt_valid_BP`: {rows(not_left)} are not left-padded (a valid token is followed by '
      'padding)'
    )


def _local_rows(x_BP: jax.Array) -> list[tuple[int, np.ndarray]]:
  """`(first row, rows)` blocks of `x_BP` this process holds, whole along the last axis.

  In a multi-process run a batch spans devices of other processes and cannot be fetched;
  each process checks the rows it holds. Blocks split along the prompt axis are skipped
  (the left-padding check needs whole rows); batches are split along rows only.
  """
  if x_BP.is_fully_addressable:
    return [(0, np.asarray(x_BP))]
  blocks = {}
  for shard in x_BP.addressable_shards:
    rows, cols = shard.index[0], shard.index[-1]
    if cols != slice(None) and (cols.start, cols.stop) != (0, x_BP.shape[-1]):
      continue  # split along the prompt: the left-padding check needs whole rows
    blocks.setdefault(rows.start or 0, np.asarray(shard.data))
  return sorted(blocks.items(), key=lambda kv: kv[0])


def sample(
  model: nnx.Module | Sequence[Any],
  prompts_BP: jax.Array,
  prompt_valid_BP: jax.Array,
  *,
  key: jax.Array,
  step: jax.Array | int,
  prompt_ids_B: jax.Array,
  sample_ids_B: jax.Array,
  config: SamplerConfig,
) -> SampleOutput:
  """Samples one completion per row of left-padded prompts (jitted prefill + decode loop).

  Args:
    model: a `grpo_jax.models.Decoder`, or `(graphdef, state, ...)` as from `nnx.split`
      (params may be sharded; the computation follows their shardings).
    prompts_BP: left-padded prompt tokens.
    prompt_valid_BP: True on real prompt tokens; every row needs at least one.
    key: the run key.
    step: the training step (folded into the keys).
    prompt_ids_B: a stable id per row's prompt (folded into the keys).
    sample_ids_B: each row's sample index within its group (folded into the keys).
    config: static sampling configuration; temperature and top_p changes do not recompile.

  Returns:
    A `SampleOutput`; see there for the fields.
  """
  if isinstance(model, nnx.Module):
    graphdef, *states = nnx.split(model)
  else:
    if len(model) < 2 or not isinstance(model[0], nnx.GraphDef):
      raise TypeError(
        '`model` must be an nnx.Module or a (graphdef, state, ...) tuple from nnx.split, got '
        f'{type(model).__name__}'
      )
    graphdef, *states = model
  if not isinstance(config, SamplerConfig):
    raise TypeError(f'`config` must be a SamplerConfig, got {type(config).__name__}')
  prompts_BP = jnp.asarray(prompts_BP)
  prompt_valid_BP = jnp.asarray(prompt_valid_BP)
  prompt_ids_B = jnp.asarray(prompt_ids_B)
  sample_ids_B = jnp.asarray(sample_ids_B)
  _check_inputs(prompts_BP, prompt_valid_BP, prompt_ids_B, sample_ids_B)
  return _sample_jit(
    graphdef,
    tuple(states),
    prompts_BP.astype(jnp.int32),
    prompt_valid_BP,
    key,
    jnp.asarray(step, jnp.uint32),
    prompt_ids_B,
    sample_ids_B,
    jnp.float32(config.logp_temperature),
    jnp.float32(config.top_p),
    config=config._program_key(),
  )
