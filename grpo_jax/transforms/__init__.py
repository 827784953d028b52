"""Update rules as optax transformations: plain (GRPO), SFPO, GXPO and the exact lookahead.

Each rule is the outermost transformation around any optax optimizer, receives raw
gradients and is called as `update(g0, state, params, *, grad_fn, entropy=None, **extra)`
(PAPERS.md §2-3).
"""

from grpo_jax.transforms.gxpo import GateState as GateState
from grpo_jax.transforms.gxpo import GxpoDiagnostics as GxpoDiagnostics
from grpo_jax.transforms.gxpo import GxpoPoint as GxpoPoint
from grpo_jax.transforms.gxpo import GxpoState as GxpoState
from grpo_jax.transforms.gxpo import extrapolation_scale as extrapolation_scale
from grpo_jax.transforms.gxpo import gate_init as gate_init
from grpo_jax.transforms.gxpo import gate_update as gate_update
from grpo_jax.transforms.gxpo import gxpo as gxpo
from grpo_jax.transforms.gxpo import gxpo_point as gxpo_point
from grpo_jax.transforms.gxpo import partial_sum as partial_sum
from grpo_jax.transforms.gxpo import retention as retention
from grpo_jax.transforms.metrics import find_rule_state as find_rule_state
from grpo_jax.transforms.metrics import rule_metrics as rule_metrics
from grpo_jax.transforms.plain import PlainDiagnostics as PlainDiagnostics
from grpo_jax.transforms.plain import PlainState as PlainState
from grpo_jax.transforms.plain import plain as plain
from grpo_jax.transforms.sfpo import EntropyTrigger as EntropyTrigger
from grpo_jax.transforms.sfpo import LookaheadDiagnostics as LookaheadDiagnostics
from grpo_jax.transforms.sfpo import LookaheadState as LookaheadState
from grpo_jax.transforms.sfpo import SfpoState as SfpoState
from grpo_jax.transforms.sfpo import entropy_trigger_init as entropy_trigger_init
from grpo_jax.transforms.sfpo import entropy_trigger_update as entropy_trigger_update
from grpo_jax.transforms.sfpo import lookahead as lookahead
from grpo_jax.transforms.sfpo import lookahead_point as lookahead_point
from grpo_jax.transforms.sfpo import sfpo as sfpo
