"""`rule/*` diagnostics of an update rule's state, for the trainer's metrics."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from grpo_jax.transforms.gxpo import GxpoState
from grpo_jax.transforms.plain import PlainState
from grpo_jax.transforms.sfpo import LookaheadState, SfpoState

_RULE_STATES = (PlainState, GxpoState, SfpoState, LookaheadState)


def find_rule_state(state: Any) -> Any:
  """The rule's own state inside `state` (searched through optax wrappers such as
  `inject_hyperparams` and chains), or None."""
  if isinstance(state, _RULE_STATES):
    return state
  inner = getattr(state, 'inner_state', None)
  if inner is not None:
    found = find_rule_state(inner)
    if found is not None:
      return found
  if isinstance(state, (tuple, list)):
    for item in state:
      found = find_rule_state(item)
      if found is not None:
        return found
  return None


def rule_metrics(state: Any) -> dict[str, jax.Array]:
  """The `rule/*` metrics of the last call, as scalars (works under `jax.jit`).

  Keys common to every rule: `rule/active` (1.0 while the rule's extrapolation or lookahead
  runs), `rule/backward_passes` (last call), `rule/backward_passes_total`, `rule/g0_norm`.
  GXPO adds the PAPERS.md §3 diagnostics (`rule/g1_norm`, `rule/g_slow_norm`,
  `rule/cos_g0_g1`, `rule/cos_g0_g_slow`, `rule/r_mean`, `rule/r_std`, `rule/scale_mean`,
  `rule/scale_max`, `rule/reposition_ratio`, `rule/gate_z`, `rule/gate_mu`,
  `rule/gate_sigma`); SFPO adds `rule/entropy_z`. A value the last call did not measure
  (e.g. `rule/cos_g0_g1` after shutoff) is NaN.

  Args:
    state: the state of `plain`, `sfpo`, `gxpo` or `lookahead`, possibly wrapped.

  Returns:
    A dict of float32 scalars.
  """
  rule = find_rule_state(state)
  if rule is None:
    raise TypeError(
      f'rule_metrics: no plain/sfpo/gxpo/lookahead state found in {type(state).__name__}'
    )
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
  out = {
    'rule/backward_passes': f32(rule.step_backward_passes),
    'rule/backward_passes_total': f32(rule.backward_passes),
  }
  if isinstance(rule, PlainState):
    out['rule/active'] = f32(0.0)
    out['rule/skipped'] = f32(rule.skipped)
  elif isinstance(rule, LookaheadState):
    out['rule/active'] = f32(1.0)
  else:
    out['rule/active'] = f32(rule.active)
  if not isinstance(rule, PlainState):
    out['rule/fallbacks'] = f32(rule.fallbacks)
    out['rule/fallback_code'] = f32(rule.fallback_code)
  if isinstance(rule, GxpoState):
    out['rule/gate_mu'] = f32(rule.gate.mu)
    out['rule/gate_sigma'] = f32(rule.gate.sigma)
  for name, value in rule.diagnostics._asdict().items():
    out[f'rule/{name}'] = f32(value)
  return out
