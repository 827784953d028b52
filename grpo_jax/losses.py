"""The GRPO policy-loss family: PPO clip, GSPO, KL estimators, (num, den) aggregation.

Every function is pure and jit-compatible and returns *per-token losses* (negated
objectives, to be minimised); `aggregate` reduces them to a numerator and a denominator
so that micro-batches accumulate exactly: loss = sum(num_i) / sum(den_i). Equations:
PAPERS.md §1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

AGG_MODES = (
  'token-mean',
  'seq-mean-token-mean',
  'seq-mean-token-sum',
  'seq-mean-token-sum-norm',
)
KL_ESTIMATORS = ('k1', 'k2', 'k3')

# A log-ratio clamp: None (off), c (symmetric [-c, c]) or (low, high) with None for open.
LogRatioClamp = float | tuple[float | None, float | None] | None


class Surrogate(NamedTuple):
  """Per-token policy loss and what the metrics need.

  Attributes:
    loss_BT: per-token loss (the negated clipped surrogate); aggregate it with `aggregate`.
    ratio_BT: the importance ratio the surrogate used (token or sequence level).
    clipped_BT: True where the PPO clip is active, i.e. the token gets no gradient.
    dual_clipped_BT: True where the dual clip (A < 0, ratio > c) is active.
  """

  loss_BT: jax.Array
  ratio_BT: jax.Array
  clipped_BT: jax.Array
  dual_clipped_BT: jax.Array


def _check_2d(name: str, x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  if x.ndim != 2:
    raise ValueError(f'`{name}` must be 2-D [B, T], got shape {x.shape}')
  return x


def _check_same_shape(name: str, x: jax.Array, ref_name: str, ref: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  if x.shape != ref.shape:
    raise ValueError(f'`{name}` has shape {x.shape}, but `{ref_name}` has shape {ref.shape}')
  return x


def _broadcast_adv(adv: jax.Array, ref_BT: jax.Array, name: str = 'adv_B') -> jax.Array:
  """Accepts one advantage per sequence [B] or per token [B, T]; returns [B, T]-broadcastable."""
  adv = jnp.asarray(adv)
  B, T = ref_BT.shape
  if adv.ndim == 1 and adv.shape[0] == B:
    return adv[:, None]
  if adv.ndim == 2 and adv.shape == (B, T):
    return adv
  raise ValueError(f'`{name}` must have shape ({B},) or ({B}, {T}), got {adv.shape}')


def _check_clip_range(eps_low: float, eps_high: float) -> None:
  if not eps_low >= 0:
    raise ValueError(f'`eps_low` must be >= 0, got {eps_low!r}')
  if not eps_high >= 0:
    raise ValueError(f'`eps_high` must be >= 0, got {eps_high!r}')


def _clamp(x: jax.Array, clamp: LogRatioClamp, name: str = 'log_ratio_clamp') -> jax.Array:
  if clamp is None:
    return x
  if isinstance(clamp, tuple):
    if len(clamp) != 2:
      raise ValueError(f'`{name}` must be None, a float or a (low, high) pair, got {clamp!r}')
    low, high = clamp
    if low is not None and high is not None and not low < high:
      raise ValueError(f'`{name}` needs low < high, got {clamp!r}')
    return jnp.clip(x, low, high)
  if not clamp > 0:
    raise ValueError(f'`{name}` must be > 0, got {clamp!r}')
  return jnp.clip(x, -clamp, clamp)


def _clip_surrogate(
  ratio_BT: jax.Array,
  adv_BT: jax.Array,
  *,
  eps_low: float,
  eps_high: float,
  dual_clip: float | None,
  ratio_cap: float | None,
) -> Surrogate:
  # PPO: loss = max(-A ρ, -A clip(ρ, 1 - ε_low, 1 + ε_high)) (PAPERS.md §1, clip-higher).
  unclipped_ratio = ratio_BT if ratio_cap is None else jnp.minimum(ratio_BT, ratio_cap)
  loss1 = -adv_BT * unclipped_ratio
  loss2 = -adv_BT * jnp.clip(ratio_BT, 1.0 - eps_low, 1.0 + eps_high)
  loss_BT = jnp.maximum(loss1, loss2)
  clipped_BT = loss2 > loss1
  if dual_clip is not None:
    # Dual clip (Ye et al. 2020): for A < 0 the loss is capped at -A c, so a huge ratio on a
    # bad token cannot dominate the batch.
    loss3 = -adv_BT * dual_clip
    dual_clipped_BT = (adv_BT < 0) & (loss_BT > loss3)
    loss_BT = jnp.where(adv_BT < 0, jnp.minimum(loss_BT, loss3), loss_BT)
  else:
    dual_clipped_BT = jnp.zeros(loss_BT.shape, bool)
  ratio_BT = jnp.broadcast_to(ratio_BT, loss_BT.shape)
  return Surrogate(loss_BT, ratio_BT, clipped_BT, dual_clipped_BT)


def _check_dual_clip(dual_clip: float | None) -> None:
  if dual_clip is not None and not dual_clip > 1.0:
    raise ValueError(f'`dual_clip` must be > 1 (or None), got {dual_clip!r}')


def _check_ratio_cap(ratio_cap: float | None) -> None:
  if ratio_cap is not None and not ratio_cap > 1.0:
    raise ValueError(f'`ratio_cap` must be > 1 (or None), got {ratio_cap!r}')


def clipped_surrogate(
  logp_BT: jax.Array,
  old_logp_BT: jax.Array,
  adv_B: jax.Array,
  *,
  eps_low: float = 0.2,
  eps_high: float = 0.2,
  dual_clip: float | None = None,
  log_ratio_clamp: LogRatioClamp = 20.0,
  ratio_cap: float | None = None,
) -> Surrogate:
  """Token-level PPO clipped surrogate with clip-higher and optional dual clip.

  ρ = exp(clamp(logp - old_logp)); loss = max(-A ρ, -A clip(ρ, 1 - eps_low, 1 + eps_high)),
  then for A < 0 and `dual_clip` = c: min(loss, -A c). The log-ratio is clamped *before*
  `exp` so a stale token cannot overflow (verl clamps to [-20, 20]).

  Args:
    logp_BT: log-probs of the sampled tokens under the current policy (differentiated).
    old_logp_BT: log-probs under the policy that sampled them (treated as constants).
    adv_B: one advantage per sequence [B], or per token [B, T].
    eps_low: lower clip range, >= 0.
    eps_high: upper clip range, >= 0 (DAPO clip-higher: 0.28).
    dual_clip: c > 1 caps the loss of negative-advantage tokens at -A c; None disables.
    log_ratio_clamp: None, c for [-c, c], or a (low, high) pair.
    ratio_cap: TRL's `delta` (two-sided GRPO): caps ρ in the unclipped term; None disables.

  Returns:
    A `Surrogate` of [B, T] arrays.
  """
  _check_clip_range(eps_low, eps_high)
  _check_dual_clip(dual_clip)
  _check_ratio_cap(ratio_cap)
  logp_BT = _check_2d('logp_BT', logp_BT)
  old_logp_BT = _check_same_shape('old_logp_BT', old_logp_BT, 'logp_BT', logp_BT)
  adv_BT = _broadcast_adv(adv_B, logp_BT)
  log_ratio_BT = _clamp(logp_BT - jax.lax.stop_gradient(old_logp_BT), log_ratio_clamp)
  ratio_BT = jnp.exp(log_ratio_BT)
  return _clip_surrogate(
    ratio_BT,
    adv_BT,
    eps_low=eps_low,
    eps_high=eps_high,
    dual_clip=dual_clip,
    ratio_cap=ratio_cap,
  )


def sequence_log_ratio(logp_BT: jax.Array, old_logp_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """GSPO's length-normalised sequence log-ratio (1/|o_i|) Σ_t log ρ_{i,t}; 0 for empty rows."""
  logp_BT = _check_2d('logp_BT', logp_BT)
  old_logp_BT = _check_same_shape('old_logp_BT', old_logp_BT, 'logp_BT', logp_BT)
  mask_BT = _check_same_shape('mask_BT', mask_BT, 'logp_BT', logp_BT).astype(logp_BT.dtype)
  n_B = jnp.maximum(jnp.sum(mask_BT, axis=1), 1.0)
  delta_BT = logp_BT - jax.lax.stop_gradient(old_logp_BT)
  return jnp.sum(jnp.where(mask_BT > 0, delta_BT, 0.0), axis=1) / n_B


def gspo_surrogate(
  logp_BT: jax.Array,
  old_logp_BT: jax.Array,
  adv_B: jax.Array,
  mask_BT: jax.Array,
  *,
  eps_low: float = 3e-4,
  eps_high: float = 4e-4,
  token_level: bool = False,
  log_ratio_clamp: LogRatioClamp = None,
) -> Surrogate:
  """GSPO clipped surrogate with the sequence-level ratio (PAPERS.md §1, GSPO).

  s_i = exp((1/|o_i|) Σ_t log ρ_{i,t}); the per-sequence loss max(-A s, -A clip(s)) is
  broadcast to every token of the row, so 'seq-mean-token-mean' aggregation gives GSPO's
  1/G Σ_i exactly. With `token_level` (GSPO-token) the ratio is
  s_{i,t} = sg[s_i] π_θ(o_{i,t}) / sg[π_θ(o_{i,t})]: the same value, but the gradient of
  token t carries its own advantage when `adv_B` is per token.

  Args:
    logp_BT: current log-probs (differentiated).
    old_logp_BT: sampling-policy log-probs (constants).
    adv_B: advantages [B] (or [B, T] for GSPO-token).
    mask_BT: 1 on completion tokens, 0 on padding.
    eps_low: lower clip range (GSPO: 3e-4).
    eps_high: upper clip range (GSPO: 4e-4).
    token_level: GSPO-token instead of GSPO.
    log_ratio_clamp: clamp on the (sequence or combined) log-ratio before exp; verl clamps
      the combined GSPO-token log-ratio at (None, 10).

  Returns:
    A `Surrogate` of [B, T] arrays.
  """
  _check_clip_range(eps_low, eps_high)
  logp_BT = _check_2d('logp_BT', logp_BT)
  seq_log_ratio_B = sequence_log_ratio(logp_BT, old_logp_BT, mask_BT)
  adv_BT = _broadcast_adv(adv_B, logp_BT)
  if token_level:
    log_ratio_BT = (
      jax.lax.stop_gradient(seq_log_ratio_B)[:, None] + logp_BT - jax.lax.stop_gradient(logp_BT)
    )
  else:
    log_ratio_BT = jnp.broadcast_to(seq_log_ratio_B[:, None], logp_BT.shape)
  ratio_BT = jnp.exp(_clamp(log_ratio_BT, log_ratio_clamp))
  return _clip_surrogate(
    ratio_BT, adv_BT, eps_low=eps_low, eps_high=eps_high, dual_clip=None, ratio_cap=None
  )


def kl_penalty(
  logp_BT: jax.Array,
  ref_logp_BT: jax.Array,
  *,
  estimator: str = 'k3',
  clamp: float | None = None,
  log_ratio_clamp: float | None = None,
) -> jax.Array:
  """Per-token KL estimators at the sampled token (PAPERS.md §1; Schulman 2020).

  With ℓ = logp - ref_logp: k1 = ℓ, k2 = ℓ²/2, k3 = e^{-ℓ} - 1 + ℓ (≥ 0). As a loss,
  E[∇k2] is the gradient of KL(π_θ‖π_ref) and E[∇k3] that of KL(π_ref‖π_θ).

  Args:
    logp_BT: current-policy log-probs.
    ref_logp_BT: reference-policy log-probs.
    estimator: 'k1', 'k2' or 'k3'.
    clamp: clip the estimate to [-clamp, clamp] (verl's low_var_kl uses 10); None: off.
    log_ratio_clamp: for k3, clip ref_logp - logp to [-c, c] before exp (verl: 20).

  Returns:
    kl_BT, same shape as `logp_BT`.
  """
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f'`estimator` must be one of {KL_ESTIMATORS}, got {estimator!r}')
  if clamp is not None and not clamp > 0:
    raise ValueError(f'`clamp` must be > 0 (or None), got {clamp!r}')
  logp_BT = jnp.asarray(logp_BT)
  ref_logp_BT = _check_same_shape('ref_logp_BT', ref_logp_BT, 'logp_BT', logp_BT)
  log_ratio = logp_BT - ref_logp_BT
  if estimator == 'k1':
    kl = log_ratio
  elif estimator == 'k2':
    kl = 0.5 * jnp.square(log_ratio)
  else:
    neg = _clamp(-log_ratio, log_ratio_clamp, 'log_ratio_clamp')
    kl = jnp.exp(neg) - neg - 1.0
  if clamp is not None:
    kl = jnp.clip(kl, -clamp, clamp)
  return kl


def kl_reward_penalty(
  rewards_B: jax.Array,
  logp_BT: jax.Array,
  ref_logp_BT: jax.Array,
  mask_BT: jax.Array,
  *,
  coef: float,
  estimator: str = 'k1',
  clamp: float | None = None,
  log_ratio_clamp: float | None = None,
) -> jax.Array:
  """KL subtracted from the reward instead of added to the loss (verl `use_kl_in_reward`).

  r_i ← r_i - coef Σ_t mask_{i,t} KL_{i,t}: the per-token penalty summed over the
  completion, as verl's outcome-reward GRPO sums its token-level rewards. Pass the
  sampling policy's log-probs as `logp_BT`; no gradient flows through the result.
  """
  if not coef >= 0:
    raise ValueError(f'`coef` must be >= 0, got {coef!r}')
  rewards_B = jnp.asarray(rewards_B)
  logp_BT = _check_2d('logp_BT', logp_BT)
  if rewards_B.shape != logp_BT.shape[:1]:
    raise ValueError(f'`rewards_B` must have shape ({logp_BT.shape[0]},), got {rewards_B.shape}')
  mask_BT = _check_same_shape('mask_BT', mask_BT, 'logp_BT', logp_BT)
  kl_BT = kl_penalty(
    logp_BT, ref_logp_BT, estimator=estimator, clamp=clamp, log_ratio_clamp=log_ratio_clamp
  )
  kl_B = jnp.sum(jnp.where(mask_BT > 0, kl_BT, 0.0), axis=1)
  return jax.lax.stop_gradient(rewards_B - coef * kl_B)


def aggregate(
  loss_BT: jax.Array,
  mask_BT: jax.Array,
  *,
  mode: str,
  max_len: int | None = None,
  skip_empty_rows: bool = False,
  rows_in_norm: bool = True,
  seq_len_eps: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Reduces per-token losses to (num, den); the loss is num / den.

  Over micro-batches, sum(num_i) / sum(den_i) is exactly the full-batch loss, and since den
  never depends on parameters, sum(grad num_i) / sum(den_i) is the full-batch gradient.

  | mode                       | num                      | den            |
  | token-mean (DAPO)          | Σ_{i,t} m l              | Σ_{i,t} m      |
  | seq-mean-token-mean (GRPO) | Σ_i (Σ_t m l) / |o_i|    | B              |
  | seq-mean-token-sum         | Σ_{i,t} m l              | B              |
  | seq-mean-token-sum-norm    | Σ_{i,t} m l              | B · max_len    |

  'seq-mean-token-sum-norm' is Dr. GRPO's constant normaliser; `max_len` defaults to the
  padded width T, so pass the generation budget to make it independent of padding.

  Args:
    loss_BT: per-token losses.
    mask_BT: 1 (or True) on tokens that count, 0 on padding.
    mode: one of `AGG_MODES`.
    max_len: the Dr. GRPO constant; None uses T = loss_BT.shape[1].
    skip_empty_rows: seq-mean modes count only rows with a token in den (recent verl).
    rows_in_norm: False makes 'seq-mean-token-sum-norm' divide by max_len only, not
      B · max_len (verl's `agg_loss`).
    seq_len_eps: added to |o_i| in 'seq-mean-token-mean' (verl adds 1e-8); empty rows
      always contribute 0 to num.

  Returns:
    (num, den), float scalars.
  """
  if mode not in AGG_MODES:
    raise ValueError(f'`mode` must be one of {AGG_MODES}, got {mode!r}')
  if max_len is not None and not max_len >= 1:
    raise ValueError(f'`max_len` must be >= 1 (or None), got {max_len!r}')
  if not seq_len_eps >= 0:
    raise ValueError(f'`seq_len_eps` must be >= 0, got {seq_len_eps!r}')
  loss_BT = _check_2d('loss_BT', loss_BT)
  mask_BT = _check_same_shape('mask_BT', mask_BT, 'loss_BT', loss_BT)
  B, T = loss_BT.shape
  mask_BT = mask_BT.astype(loss_BT.dtype)
  # jnp.where, not loss * mask: a non-finite loss on a padding token must not leak (inf*0).
  masked_BT = jnp.where(mask_BT > 0, loss_BT * mask_BT, 0.0)
  n_B = jnp.sum(mask_BT, axis=1)
  if skip_empty_rows:
    rows = jnp.sum((n_B > 0).astype(loss_BT.dtype))
  else:
    rows = jnp.asarray(B, loss_BT.dtype)
  if mode == 'token-mean':
    return jnp.sum(masked_BT), jnp.sum(n_B)
  if mode == 'seq-mean-token-mean':
    per_row_B = jnp.sum(masked_BT, axis=1) / jnp.where(n_B > 0, n_B + seq_len_eps, 1.0)
    return jnp.sum(per_row_B), rows
  if mode == 'seq-mean-token-sum':
    return jnp.sum(masked_BT), rows
  norm = float(T if max_len is None else max_len)
  den = rows * norm if rows_in_norm else jnp.asarray(norm, loss_BT.dtype)
  return jnp.sum(masked_BT), den


def masked_mean(x_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """Mean of x over mask (0 when the mask is empty)."""
  mask_BT = jnp.broadcast_to(jnp.asarray(mask_BT), x_BT.shape).astype(jnp.float32)
  total = jnp.sum(mask_BT)
  num = jnp.sum(jnp.where(mask_BT > 0, x_BT.astype(jnp.float32), 0.0))
  return num / jnp.maximum(total, 1.0)


def masked_max(x_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
  """Max of x over mask (-inf when the mask is empty)."""
  mask_BT = jnp.broadcast_to(jnp.asarray(mask_BT), x_BT.shape)
  return jnp.max(jnp.where(mask_BT > 0, x_BT.astype(jnp.float32), -jnp.inf))
