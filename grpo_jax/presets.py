"""Named loss presets: every convention of a GRPO-family objective pinned in one object.

Our own presets follow the papers (PAPERS.md §1); the framework-compatible ones reproduce
verl's and TRL's conventions exactly, documented field by field beside each preset. In our
own presets a group whose rewards are all equal gets exactly zero advantage.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from grpo_jax import advantages as adv_lib
from grpo_jax import losses

POLICY_LOSSES = ('ppo', 'gspo', 'gspo_token')


@dataclasses.dataclass(frozen=True)
class LossPreset:
  """All conventions of one policy objective; hashable, so it can be a static jit argument.

  Attributes:
    name: preset name.
    reference: the paper or source file the conventions come from.
    normalize: advantage normalisation, see `group_advantages` ('std', 'mean', 'batch_std').
    ddof: std degrees of freedom (0 population, 1 as torch.std).
    adv_eps: added to the std before dividing.
    singleton: advantage of a one-completion group: 'zero' or 'raw' (verl).
    policy_loss: 'ppo' (token ratio), 'gspo' (sequence ratio) or 'gspo_token'.
    eps_low: lower clip range.
    eps_high: upper clip range.
    dual_clip: dual-clip constant c > 1 for negative advantages, or None.
    log_ratio_clamp: clamp of the log-ratio before exp: None, c, or (low, high).
    ratio_cap: TRL's `delta`, a cap on the unclipped ratio, or None.
    kl_coef: β; 0 disables the KL term.
    kl_estimator: 'k1', 'k2' or 'k3'.
    kl_clamp: clamp of the KL estimate (verl low_var_kl: 10), or None.
    kl_log_ratio_clamp: k3's clamp of ref_logp - logp before exp (verl: 20), or None.
    kl_in_reward: subtract β Σ_t KL from the reward instead of adding β KL to the loss.
    loss_agg_mode: one of `losses.AGG_MODES`.
    max_len: Dr. GRPO constant for 'seq-mean-token-sum-norm'; None uses the padded width.
    skip_empty_rows: seq-mean denominators count only rows with a token.
    rows_in_norm: 'seq-mean-token-sum-norm' divides by B · max_len (True) or max_len (verl).
    seq_len_eps: added to each row's token count in 'seq-mean-token-mean'.
    overlong_max_len: DAPO L_max for overlong reward shaping, or None (off).
    overlong_cache_len: DAPO L_cache.
    overlong_filter: mask the loss of truncated completions (DAPO).
    dynamic_sampling: drop groups whose rewards are all equal (DAPO).
  """

  name: str
  reference: str
  normalize: str = 'std'
  ddof: int = 0
  adv_eps: float = 1e-6
  singleton: str = 'zero'
  policy_loss: str = 'ppo'
  eps_low: float = 0.2
  eps_high: float = 0.2
  dual_clip: float | None = None
  log_ratio_clamp: losses.LogRatioClamp = 20.0
  ratio_cap: float | None = None
  kl_coef: float = 0.0
  kl_estimator: str = 'k3'
  kl_clamp: float | None = None
  kl_log_ratio_clamp: float | None = 20.0
  kl_in_reward: bool = False
  loss_agg_mode: str = 'seq-mean-token-mean'
  max_len: int | None = None
  skip_empty_rows: bool = False
  rows_in_norm: bool = True
  seq_len_eps: float = 0.0
  overlong_max_len: int | None = None
  overlong_cache_len: int | None = None
  overlong_filter: bool = False
  dynamic_sampling: bool = False

  def __post_init__(self):
    def bad(field, why):
      raise ValueError(f'LossPreset {self.name!r}: `{field}` {why}, got {getattr(self, field)!r}')

    if self.normalize not in adv_lib.NORMALIZE_MODES:
      bad('normalize', f'must be one of {adv_lib.NORMALIZE_MODES}')
    if self.ddof not in (0, 1):
      bad('ddof', 'must be 0 or 1')
    if not self.adv_eps >= 0:
      bad('adv_eps', 'must be >= 0')
    if self.singleton not in adv_lib.SINGLETON_MODES:
      bad('singleton', f'must be one of {adv_lib.SINGLETON_MODES}')
    if self.policy_loss not in POLICY_LOSSES:
      bad('policy_loss', f'must be one of {POLICY_LOSSES}')
    if not self.eps_low >= 0:
      bad('eps_low', 'must be >= 0')
    if not self.eps_high >= 0:
      bad('eps_high', 'must be >= 0')
    if self.dual_clip is not None and not self.dual_clip > 1:
      bad('dual_clip', 'must be > 1 or None')
    if self.dual_clip is not None and self.policy_loss != 'ppo':
      bad('dual_clip', "is only defined for policy_loss='ppo'")
    if self.ratio_cap is not None and not self.ratio_cap > 1:
      bad('ratio_cap', 'must be > 1 or None')
    if not self.kl_coef >= 0:
      bad('kl_coef', 'must be >= 0')
    if self.kl_estimator not in losses.KL_ESTIMATORS:
      bad('kl_estimator', f'must be one of {losses.KL_ESTIMATORS}')
    if self.loss_agg_mode not in losses.AGG_MODES:
      bad('loss_agg_mode', f'must be one of {losses.AGG_MODES}')
    if self.max_len is not None and not self.max_len >= 1:
      bad('max_len', 'must be >= 1 or None')
    if (self.overlong_max_len is None) != (self.overlong_cache_len is None):
      bad('overlong_cache_len', 'and `overlong_max_len` must be both set or both None')
    if self.overlong_max_len is not None and not (
      0 < self.overlong_cache_len <= self.overlong_max_len
    ):
      bad('overlong_cache_len', 'must be in (0, overlong_max_len]')

  def replace(self, **changes) -> LossPreset:
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  def advantages(self, rewards_BG: jax.Array) -> jax.Array:
    """Group advantages [B, G] under this preset's conventions."""
    return adv_lib.group_advantages(
      rewards_BG,
      normalize=self.normalize,
      ddof=self.ddof,
      eps=self.adv_eps,
      singleton=self.singleton,
    )

  def shape_rewards(
    self,
    rewards_B: jax.Array,
    *,
    lengths_B: jax.Array | None = None,
    sampling_logp_BT: jax.Array | None = None,
    ref_logp_BT: jax.Array | None = None,
    mask_BT: jax.Array | None = None,
  ) -> jax.Array:
    """Reward-side terms: DAPO overlong shaping and, with `kl_in_reward`, -β Σ_t KL."""
    rewards_B = jnp.asarray(rewards_B, jnp.float32)
    if self.overlong_max_len is not None:
      if lengths_B is None:
        raise ValueError(f'preset {self.name!r} shapes overlong rewards: pass `lengths_B`')
      rewards_B = rewards_B + adv_lib.overlong_reward_shaping(
        lengths_B, max_len=self.overlong_max_len, cache_len=self.overlong_cache_len
      )
    if self.kl_in_reward and self.kl_coef > 0:
      if sampling_logp_BT is None or ref_logp_BT is None or mask_BT is None:
        raise ValueError(
          f'preset {self.name!r} puts KL in the reward: pass `sampling_logp_BT`, '
          '`ref_logp_BT` and `mask_BT`'
        )
      rewards_B = losses.kl_reward_penalty(
        rewards_B,
        sampling_logp_BT,
        ref_logp_BT,
        mask_BT,
        coef=self.kl_coef,
        estimator=self.kl_estimator,
        clamp=self.kl_clamp,
        log_ratio_clamp=self.kl_log_ratio_clamp,
      )
    return rewards_B

  def surrogate(
    self, logp_BT: jax.Array, old_logp_BT: jax.Array, adv_B: jax.Array, mask_BT: jax.Array
  ) -> losses.Surrogate:
    """The per-token policy loss of this preset (no KL, not aggregated)."""
    if self.policy_loss == 'ppo':
      return losses.clipped_surrogate(
        logp_BT,
        old_logp_BT,
        adv_B,
        eps_low=self.eps_low,
        eps_high=self.eps_high,
        dual_clip=self.dual_clip,
        log_ratio_clamp=self.log_ratio_clamp,
        ratio_cap=self.ratio_cap,
      )
    return losses.gspo_surrogate(
      logp_BT,
      old_logp_BT,
      adv_B,
      mask_BT,
      eps_low=self.eps_low,
      eps_high=self.eps_high,
      token_level=self.policy_loss == 'gspo_token',
      log_ratio_clamp=self.log_ratio_clamp,
    )

  def objective(
    self,
    logp_BT: jax.Array,
    old_logp_BT: jax.Array,
    adv_B: jax.Array,
    mask_BT: jax.Array,
    *,
    ref_logp_BT: jax.Array | None = None,
  ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Loss numerator, denominator and metrics for one (micro-)batch.

    loss = num / den; over micro-batches loss = Σ num_i / Σ den_i exactly (den does not
    depend on parameters). The per-token loss is the clipped surrogate plus β·KL (unless
    the KL goes into the reward), aggregated by `loss_agg_mode`.

    Args:
      logp_BT: current-policy log-probs of the sampled tokens (differentiated).
      old_logp_BT: sampling-policy log-probs.
      adv_B: one advantage per completion (or [B, T] per token).
      mask_BT: 1 on completion tokens that count, 0 elsewhere.
      ref_logp_BT: reference-policy log-probs; required when the KL is a loss term.

    Returns:
      (num, den, metrics); metrics are masked means over this batch's tokens ('clip_frac',
      'dual_clip_frac', 'ratio_mean', 'ppo_kl' = mean(old_logp - logp), 'kl' = mean KL to
      the reference, 0 without `ref_logp_BT`, 'pg_loss' = policy part of num / den),
      'ratio_max' and 'tokens' (mask count, to weight means across micro-batches).
    """
    logp_BT = jnp.asarray(logp_BT)
    mask_BT = losses._check_same_shape('mask_BT', mask_BT, 'logp_BT', logp_BT)
    kl_term = self.kl_coef > 0 and not self.kl_in_reward
    if kl_term and ref_logp_BT is None:
      raise ValueError(f'preset {self.name!r} has a KL loss term: pass `ref_logp_BT`')
    sur = self.surrogate(logp_BT, old_logp_BT, adv_B, mask_BT)
    agg = dict(
      mode=self.loss_agg_mode,
      max_len=self.max_len,
      skip_empty_rows=self.skip_empty_rows,
      rows_in_norm=self.rows_in_norm,
      seq_len_eps=self.seq_len_eps,
    )
    pg_num, den = losses.aggregate(sur.loss_BT, mask_BT, **agg)
    num = pg_num
    if ref_logp_BT is not None:
      kl_BT = losses.kl_penalty(
        logp_BT,
        ref_logp_BT,
        estimator=self.kl_estimator,
        clamp=self.kl_clamp,
        log_ratio_clamp=self.kl_log_ratio_clamp,
      )
      kl_mean = losses.masked_mean(jax.lax.stop_gradient(kl_BT), mask_BT)
      if kl_term:
        # Same aggregation as the policy term, as verl's agg_loss(kld) and TRL's
        # per_token_loss + beta * per_token_kl both do.
        num = num + self.kl_coef * losses.aggregate(kl_BT, mask_BT, **agg)[0]
    else:
      kl_mean = jnp.zeros((), jnp.float32)
    stats_mask = mask_BT > 0
    metrics = {
      'clip_frac': losses.masked_mean(sur.clipped_BT, stats_mask),
      'dual_clip_frac': losses.masked_mean(sur.dual_clipped_BT, stats_mask),
      'ratio_mean': losses.masked_mean(jax.lax.stop_gradient(sur.ratio_BT), stats_mask),
      'ratio_max': losses.masked_max(jax.lax.stop_gradient(sur.ratio_BT), stats_mask),
      'ppo_kl': losses.masked_mean(
        jax.lax.stop_gradient(jnp.asarray(old_logp_BT) - logp_BT), stats_mask
      ),
      'kl': kl_mean,
      'pg_loss': jax.lax.stop_gradient(pg_num / den),
      'tokens': jnp.sum(stats_mask.astype(jnp.float32)),
    }
    return num, den, metrics


_DEEPSEEKMATH = 'DeepSeekMath, arXiv 2402.03300 (GRPO)'
_DR_GRPO = 'Understanding R1-Zero-Like Training, arXiv 2503.20783 (Dr. GRPO)'
_DAPO = 'DAPO, arXiv 2503.14476'
_GSPO = 'Group Sequence Policy Optimization, arXiv 2507.18071 (GSPO)'
_VERL = 'verl, verl/trainer/ppo/core_algos.py (compute_grpo_outcome_advantage, agg_loss)'
_TRL = 'TRL, trl/trainer/grpo_trainer.py (GRPOTrainer._compute_loss)'

# --- Our presets, from the papers (PAPERS.md §1). Population std (ddof 0) is [ours]: the
# papers write std(r) without choosing. The log-ratio is clamped to [-20, 20] before exp.

# GRPO: A = (r - mean) / (std + 1e-6); token-ratio PPO clip 0.2; per-token k3 KL with β = 0.04
# as a loss term; 1/G Σ_i 1/|o_i| Σ_t (seq-mean-token-mean).
GRPO = LossPreset(name='grpo', reference=_DEEPSEEKMATH, kl_coef=0.04)

# Dr. GRPO: A = r - mean (no std); no KL; Σ_{i,t} / (G · MAX_TOKENS): set `max_len` to the
# generation budget (None divides by the padded width, which equals it when completions are
# padded to the budget).
DR_GRPO = LossPreset(
  name='dr_grpo', reference=_DR_GRPO, normalize='mean', loss_agg_mode='seq-mean-token-sum-norm'
)

# DAPO: clip-higher (0.2, 0.28); token-level mean over the batch's tokens; no KL; overlong
# shaping with the paper's L_max = 20480, L_cache = 4096 (override for short tasks);
# dynamic sampling on; overlong filtering off (the paper uses shaping instead).
DAPO = LossPreset(
  name='dapo',
  reference=_DAPO,
  eps_low=0.2,
  eps_high=0.28,
  loss_agg_mode='token-mean',
  overlong_max_len=20480,
  overlong_cache_len=4096,
  dynamic_sampling=True,
)

# GSPO: sequence ratio exp(mean_t log ρ) clipped to (1 - 3e-4, 1 + 4e-4); 1/G Σ_i; no KL.
GSPO = LossPreset(name='gspo', reference=_GSPO, policy_loss='gspo', eps_low=3e-4, eps_high=4e-4)
# GSPO-token: same value, per-token gradient through sg[s_i] π/sg[π].
GSPO_TOKEN = GSPO.replace(name='gspo_token', policy_loss='gspo_token')

# --- verl (recent main; read from verl/trainer/ppo/core_algos.py).
# Advantages (compute_grpo_outcome_advantage): torch.std -> ddof 1; eps = 1e-6 added to the
#   std; a singleton group gets mean 0, std 1, i.e. A = r / (1 + eps) ('raw').
# Policy (compute_policy_loss_vanilla): log-ratio clamped to [-20, 20] before exp; clip_ratio
#   0.2 both sides; dual clip with clip_ratio_c = 3.0 always on for A < 0.
# KL (kl_penalty 'low_var_kl' = k3): ref - logp clamped to [-20, 20], estimate clamped to
#   [-10, 10]; as a loss it is agg_loss(kld) * kl_loss_coef with the same agg mode.
# Aggregation (agg_loss): token-mean = Σ / #tokens; seq-mean-* count only non-empty rows and
#   seq-mean-token-mean divides each row by (#tokens + 1e-8); seq-mean-token-sum-norm is
#   Σ / loss_scale_factor with the padded width by default, not divided by the row count
#   (set `max_len` to a configured loss_scale_factor).
#   Accumulating k equal micro-batches through (num, den) then divides by k·T, as verl's
#   gradient accumulation (loss / k per micro-batch) does.
# Defaults of ppo_trainer.yaml: loss_agg_mode token-mean, use_kl_loss off.
VERL = LossPreset(
  name='verl',
  reference=_VERL,
  ddof=1,
  adv_eps=1e-6,
  singleton='raw',
  dual_clip=3.0,
  log_ratio_clamp=20.0,
  kl_estimator='k3',
  kl_clamp=10.0,
  kl_log_ratio_clamp=20.0,
  loss_agg_mode='token-mean',
  skip_empty_rows=True,
  rows_in_norm=False,
  seq_len_eps=1e-8,
)
# verl's GRPO example scripts: use_kl_loss=True, kl_loss_coef=0.001, kl_loss_type=low_var_kl.
VERL_GRPO = VERL.replace(name='verl_grpo', kl_coef=0.001)
# verl Dr. GRPO recipe: norm_adv_by_std_in_grpo=False, loss_agg_mode=seq-mean-token-sum-norm.
VERL_DR_GRPO = VERL.replace(
  name='verl_dr_grpo', normalize='mean', loss_agg_mode='seq-mean-token-sum-norm'
)
# verl policy_loss 'gspo': GSPO-token form, combined log-ratio clamped above at 10 (no lower
# clamp), no dual clip, aggregation forced to seq-mean-token-mean; recipe clip 3e-4 / 4e-4.
VERL_GSPO = VERL.replace(
  name='verl_gspo',
  policy_loss='gspo_token',
  dual_clip=None,
  log_ratio_clamp=(None, 10.0),
  eps_low=3e-4,
  eps_high=4e-4,
  loss_agg_mode='seq-mean-token-mean',
)

# --- TRL (GRPOTrainer, recent main).
# Advantages: group mean; scale_rewards='group' divides by the group torch.std (ddof 1) + 1e-4;
#   'batch' by the whole batch's std (ddof 1) + 1e-4; 'none' does not divide. A singleton
#   group has r - mean = 0.
# Policy: coef_1 = exp(logp - old_logp) with no log-ratio clamp; coef_2 = clamp(coef_1,
#   1 - epsilon, 1 + epsilon_high); loss = -min(coef_1 A, coef_2 A); no dual clip; optional
#   `delta` caps coef_1 (ratio_cap).
# KL: beta * (exp(ref - logp) - (ref - logp) - 1) (k3, unclamped) added per token.
# Aggregation (loss_type): 'grpo' = mean over all rows of Σ_t / clamp(#tokens, 1);
#   'bnpo' and 'dapo' = Σ / #tokens ('dapo' normalises by the global token count, which is
#   (num, den) accumulation); 'dr_grpo' = Σ / (B · max_completion_length).
# Defaults (GRPOConfig): loss_type 'dapo', beta 0.0, epsilon 0.2, scale_rewards 'group'.
TRL = LossPreset(
  name='trl',
  reference=_TRL,
  ddof=1,
  adv_eps=1e-4,
  singleton='zero',
  log_ratio_clamp=None,
  kl_estimator='k3',
  kl_log_ratio_clamp=None,
  loss_agg_mode='token-mean',
)
TRL_GRPO = TRL.replace(name='trl_grpo', loss_agg_mode='seq-mean-token-mean')
# max_completion_length defaults to 256 in GRPOConfig; set `max_len` to yours.
TRL_DR_GRPO = TRL.replace(
  name='trl_dr_grpo', normalize='mean', loss_agg_mode='seq-mean-token-sum-norm', max_len=256
)
# TRL's GSPO recipe: importance_sampling_level='sequence' (gradient through the sequence
# ratio), loss_type='grpo', epsilon 3e-4, epsilon_high 4e-4, beta 0.
TRL_GSPO = TRL.replace(
  name='trl_gspo',
  policy_loss='gspo',
  eps_low=3e-4,
  eps_high=4e-4,
  loss_agg_mode='seq-mean-token-mean',
)

PRESETS: dict[str, LossPreset] = {
  p.name: p
  for p in (
    GRPO,
    DR_GRPO,
    DAPO,
    GSPO,
    GSPO_TOKEN,
    VERL,
    VERL_GRPO,
    VERL_DR_GRPO,
    VERL_GSPO,
    TRL,
    TRL_GRPO,
    TRL_DR_GRPO,
    TRL_GSPO,
  )
}


def get_preset(name: str, **overrides) -> LossPreset:
  """The preset called `name`, with fields overridden."""
  if name not in PRESETS:
    raise ValueError(f'unknown loss preset {name!r}; known: {sorted(PRESETS)}')
  preset = PRESETS[name]
  return preset.replace(**overrides) if overrides else preset
