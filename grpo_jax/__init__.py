"""grpo_jax: GRPO-family RL fine-tuning of language models in JAX.

The top level re-exports the pure, jitted pieces a user composes into their own training
code: the loss family (PAPERS.md §1), the update rules (§2-3) and the sampler. Larger
areas are subpackages: `grpo_jax.models`, `grpo_jax.rank1` (AlphaRL, §4),
`grpo_jax.dynamics` (the reduced-order model, §5) and `grpo_jax.train`.
"""

from grpo_jax.advantages import dynamic_sampling_mask as dynamic_sampling_mask
from grpo_jax.advantages import group_advantages as group_advantages
from grpo_jax.advantages import overlong_filter_mask as overlong_filter_mask
from grpo_jax.advantages import overlong_reward_shaping as overlong_reward_shaping
from grpo_jax.logprobs import naive_token_logprobs as naive_token_logprobs
from grpo_jax.logprobs import token_logprobs as token_logprobs
from grpo_jax.losses import AGG_MODES as AGG_MODES
from grpo_jax.losses import Surrogate as Surrogate
from grpo_jax.losses import aggregate as aggregate
from grpo_jax.losses import clipped_surrogate as clipped_surrogate
from grpo_jax.losses import gspo_surrogate as gspo_surrogate
from grpo_jax.losses import kl_penalty as kl_penalty
from grpo_jax.losses import kl_reward_penalty as kl_reward_penalty
from grpo_jax.losses import sequence_log_ratio as sequence_log_ratio
from grpo_jax.presets import PRESETS as PRESETS
from grpo_jax.presets import LossPreset as LossPreset
from grpo_jax.presets import get_preset as get_preset
from grpo_jax.sampling import SampleOutput as SampleOutput
from grpo_jax.sampling import SamplerConfig as SamplerConfig
from grpo_jax.sampling import sample as sample
from grpo_jax.transforms import gxpo as gxpo
from grpo_jax.transforms import lookahead as lookahead
from grpo_jax.transforms import plain as plain
from grpo_jax.transforms import rule_metrics as rule_metrics
from grpo_jax.transforms import sfpo as sfpo
from grpo_jax.validation import BatchError as BatchError
from grpo_jax.validation import validate_batch as validate_batch
