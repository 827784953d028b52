"""Group-relative advantages and DAPO reward-side helpers (PAPERS.md §1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALIZE_MODES = ('std', 'mean', 'batch_std')
SINGLETON_MODES = ('zero', 'raw')


def _as_float(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def group_advantages(
  rewards_BG: jax.Array,
  *,
  normalize: str = 'std',
  ddof: int = 0,
  eps: float = 1e-6,
  singleton: str = 'zero',
) -> jax.Array:
  """Group-relative advantages, one per completion (PAPERS.md §1).

  `A_i = (r_i - mean_group(r)) / (std(r) + eps)` with the std taken over the group
  ('std', GRPO), over the whole batch ('batch_std', TRL `scale_rewards='batch'`), or not
  divided at all ('mean', Dr. GRPO). `eps` is added to the std, as in DeepSeekMath, verl and
  TRL. A group whose rewards are all equal gets exactly 0 in every mode (never NaN, and no
  float rounding residue from the mean).

  Args:
    rewards_BG: rewards of B groups (prompts) of G completions each.
    normalize: 'std', 'mean' or 'batch_std'.
    ddof: 0 (population std) or 1 (torch's default, used by verl and TRL).
    eps: added to the std before dividing; >= 0.
    singleton: what a group of one completion (G == 1) gets: 'zero' (TRL; it has no
      baseline) or 'raw' (verl: mean 0 and std 1, so `A = r / (1 + eps)`, or `r` for 'mean').

  Returns:
    adv_BG, float, same shape as `rewards_BG`.
  """
  if normalize not in NORMALIZE_MODES:
    raise ValueError(f'`normalize` must be one of {NORMALIZE_MODES}, got {normalize!r}')
  if ddof not in (0, 1):
    raise ValueError(f'`ddof` must be 0 or 1, got {ddof!r}')
  if not eps >= 0:
    raise ValueError(f'`eps` must be >= 0, got {eps!r}')
  if singleton not in SINGLETON_MODES:
    raise ValueError(f'`singleton` must be one of {SINGLETON_MODES}, got {singleton!r}')
  rewards_BG = _as_float(rewards_BG)
  if rewards_BG.ndim != 2:
    raise ValueError(f'`rewards_BG` must be 2-D [B, G], got shape {rewards_BG.shape}')
  _, G = rewards_BG.shape
  if normalize == 'batch_std' and rewards_BG.size <= ddof:
    raise ValueError(f'`rewards_BG` needs more than ddof={ddof} rewards for a batch std')

  if G == 1:
    if singleton == 'zero':
      return jnp.zeros_like(rewards_BG)
    if normalize == 'std':
      return rewards_BG / (1.0 + eps)
    if normalize == 'mean':
      return rewards_BG
    std = jnp.std(rewards_BG, ddof=ddof)
    return rewards_BG / jnp.where(std + eps > 0, std + eps, 1.0)

  mean_B1 = jnp.mean(rewards_BG, axis=1, keepdims=True)
  centered_BG = rewards_BG - mean_B1
  # Exact zero for all-equal groups: r - mean(r) can be ~1 ulp off, which (std + eps)
  # would blow up to ~1e-10 instead of the 0 the formula means.
  equal_B1 = jnp.max(rewards_BG, axis=1, keepdims=True) == jnp.min(
    rewards_BG, axis=1, keepdims=True
  )
  if normalize == 'mean':
    adv_BG = centered_BG
  else:
    if normalize == 'std':
      std = jnp.std(rewards_BG, axis=1, ddof=ddof, keepdims=True)
    else:
      std = jnp.std(rewards_BG, ddof=ddof)
    denom = std + eps
    adv_BG = centered_BG / jnp.where(denom > 0, denom, 1.0)
  return jnp.where(equal_B1, 0.0, adv_BG)


def overlong_reward_shaping(lengths_B: jax.Array, *, max_len: int, cache_len: int) -> jax.Array:
  """DAPO's soft overlong punishment R_len, added to the reward (PAPERS.md §1, DAPO).

  0 for `|y| <= max_len - cache_len`, then linear down to -1 at `|y| = max_len`, and -1 beyond.

  Args:
    lengths_B: completion lengths in tokens.
    max_len: L_max, the generation budget.
    cache_len: L_cache, the width of the linear ramp; 0 < cache_len <= max_len.

  Returns:
    penalty_B, float32, in [-1, 0].
  """
  if max_len <= 0:
    raise ValueError(f'`max_len` must be > 0, got {max_len!r}')
  if not 0 < cache_len <= max_len:
    raise ValueError(f'`cache_len` must be in (0, max_len={max_len}], got {cache_len!r}')
  lengths_B = jnp.asarray(lengths_B)
  if lengths_B.ndim != 1:
    raise ValueError(f'`lengths_B` must be 1-D, got shape {lengths_B.shape}')
  lengths_B = lengths_B.astype(jnp.float32)
  free = max_len - cache_len
  ramp_B = (free - lengths_B) / cache_len
  return jnp.where(lengths_B <= free, 0.0, jnp.where(lengths_B <= max_len, ramp_B, -1.0))


def overlong_filter_mask(truncated_B: jax.Array) -> jax.Array:
  """DAPO overlong filtering: keep (True) the completions that were not truncated.

  Multiply the loss mask by `keep_B[:, None]` so truncated samples contribute no loss.
  """
  truncated_B = jnp.asarray(truncated_B)
  if truncated_B.ndim != 1:
    raise ValueError(f'`truncated_B` must be 1-D, got shape {truncated_B.shape}')
  return jnp.logical_not(truncated_B.astype(bool))


def dynamic_sampling_mask(rewards_BG: jax.Array) -> jax.Array:
  """DAPO dynamic sampling: keep (True) the groups whose rewards are not all equal.

  Such groups have zero advantage and so no policy gradient (PAPERS.md §1, DAPO).

  Returns:
    keep_B, bool, one entry per group.
  """
  rewards_BG = jnp.asarray(rewards_BG)
  if rewards_BG.ndim != 2:
    raise ValueError(f'`rewards_BG` must be 2-D [B, G], got shape {rewards_BG.shape}')
  return jnp.max(rewards_BG, axis=1) != jnp.min(rewards_BG, axis=1)
