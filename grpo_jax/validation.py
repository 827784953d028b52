"""Host-side checks of a training batch: the data-dependent problems jit cannot raise on."""

from __future__ import annotations

import numpy as np

from grpo_jax import losses, presets

# Aggregations / policy losses that divide by each row's token count or count rows.
_NEEDS_NONEMPTY_ROWS = ('seq-mean-token-mean', 'seq-mean-token-sum')


class BatchError(ValueError):
  """A batch the loss cannot use; the message names the field and the offending index."""


def _first_index(bad: np.ndarray) -> tuple[int, ...]:
  return tuple(int(i) for i in np.argwhere(bad)[0])


def validate_batch(
  *,
  rewards: np.ndarray | None = None,
  mask_BT: np.ndarray | None = None,
  logp_BT: np.ndarray | None = None,
  old_logp_BT: np.ndarray | None = None,
  ref_logp_BT: np.ndarray | None = None,
  adv: np.ndarray | None = None,
  lengths_B: np.ndarray | None = None,
  mode: str | None = None,
  sequence_level: bool = False,
  group_size: int | None = None,
  preset: presets.LossPreset | None = None,
) -> None:
  """Raises `BatchError` if the batch would give a NaN, a silently wrong loss or a bad shape.

  Call it on host (numpy) arrays before the jitted step. Checks, each only for the fields
  given: rewards finite (and [B, G] with G = `group_size`, or [B·G]); masks 2-D and 0/1;
  log-prob arrays the mask's shape and finite (log-probs <= 0) on masked tokens; advantages
  finite; at least one token in the batch for 'token-mean'; no empty row for the seq-mean
  modes and for sequence-level (GSPO) ratios; `lengths_B` equal to the mask's row sums.

  Args:
    rewards: rewards, [B, G] or flat.
    mask_BT: completion mask.
    logp_BT: current log-probs. old_logp_BT, ref_logp_BT: sampling and reference log-probs.
    adv: advantages, [B] or [B, T].
    lengths_B: completion lengths.
    mode: the aggregation mode the batch will be reduced with.
    sequence_level: the policy loss uses a sequence ratio (GSPO).
    group_size: expected G.
    preset: takes `mode` and `sequence_level` from a `LossPreset`; a preset that skips
      empty rows (verl) accepts them.
  """
  allow_empty_rows = False
  if preset is not None:
    mode = preset.loss_agg_mode
    sequence_level = preset.policy_loss != 'ppo'
    allow_empty_rows = preset.skip_empty_rows
  if mode is not None and mode not in losses.AGG_MODES:
    raise BatchError(f'`mode` must be one of {losses.AGG_MODES}, got {mode!r}')
  if rewards is not None:
    rewards = np.asarray(rewards)
    if not np.issubdtype(rewards.dtype, np.number):
      raise BatchError(f'`rewards` must be numeric, got dtype {rewards.dtype}')
    bad = ~np.isfinite(rewards)
    if bad.any():
      idx = _first_index(bad)
      raise BatchError(
        f'`rewards` has {int(bad.sum())} non-finite value(s); first at index {idx}: '
        f'{rewards[idx]!r}'
      )
    if group_size is not None:
      if rewards.ndim == 2 and rewards.shape[1] != group_size:
        raise BatchError(f'`rewards` has shape {rewards.shape}, expected [B, {group_size}]')
      if rewards.ndim == 1 and rewards.shape[0] % group_size:
        raise BatchError(
          f'`rewards` has {rewards.shape[0]} entries, not a multiple of {group_size}'
        )
  mask = None
  if mask_BT is not None:
    mask = np.asarray(mask_BT)
    if mask.ndim != 2:
      raise BatchError(f'`mask_BT` must be 2-D [B, T], got shape {mask.shape}')
    if not np.isin(mask, (0, 1)).all():
      idx = _first_index(~np.isin(mask, (0, 1)))
      raise BatchError(f'`mask_BT` must be 0/1; index {idx} holds {mask[idx]!r}')
    mask = mask.astype(bool)
    n_B = mask.sum(axis=1)
    if mode == 'token-mean' and n_B.sum() == 0:
      raise BatchError("`mask_BT` has no token at all; 'token-mean' would divide by 0")
    needs_rows = mode in _NEEDS_NONEMPTY_ROWS or sequence_level
    if needs_rows and not allow_empty_rows and (n_B == 0).any():
      rows = np.flatnonzero(n_B == 0)
      why = f'mode {mode!r}' if mode in _NEEDS_NONEMPTY_ROWS else 'a sequence-level ratio'
      raise BatchError(
        f'`mask_BT` rows {rows[:8].tolist()} have no tokens; {why} needs every row non-empty'
      )
    if rewards is not None and np.asarray(rewards).size != mask.shape[0]:
      raise BatchError(
        f'`rewards` has {np.asarray(rewards).size} entries but `mask_BT` has {mask.shape[0]} rows'
      )
    if lengths_B is not None:
      lengths = np.asarray(lengths_B)
      if lengths.shape != n_B.shape or (lengths != n_B).any():
        raise BatchError('`lengths_B` does not match the row sums of `mask_BT`')
  for name, arr in (
    ('logp_BT', logp_BT),
    ('old_logp_BT', old_logp_BT),
    ('ref_logp_BT', ref_logp_BT),
  ):
    if arr is None:
      continue
    arr = np.asarray(arr)
    if mask is not None and arr.shape != mask.shape:
      raise BatchError(f'`{name}` has shape {arr.shape}, but `mask_BT` has shape {mask.shape}')
    where = mask if mask is not None else np.ones(arr.shape, bool)
    bad = where & ~np.isfinite(arr)
    if bad.any():
      raise BatchError(f'`{name}` is non-finite on a masked token at index {_first_index(bad)}')
    # float32 log-softmax can round to a hair above 0.
    bad = where & (arr > 1e-4)
    if bad.any():
      idx = _first_index(bad)
      raise BatchError(f'`{name}` must be <= 0 (a log-prob); index {idx} holds {arr[idx]!r}')
  if adv is not None:
    adv = np.asarray(adv)
    bad = ~np.isfinite(adv)
    if bad.any():
      raise BatchError(f'`adv` is non-finite at index {_first_index(bad)}')
    if mask is not None and adv.shape not in ((mask.shape[0],), mask.shape):
      raise BatchError(f'`adv` has shape {adv.shape}; expected ({mask.shape[0]},) or {mask.shape}')
