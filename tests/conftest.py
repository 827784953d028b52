"""Shared test harness: 8 fake CPU devices, small hypothesis budgets, the `slow` marker."""

# Must happen before the XLA backend starts: jax raises if it is set afterwards.
import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)

from hypothesis import settings  # noqa: E402

# Every new shape recompiles under jit, so property tests draw few examples and never time out.
settings.register_profile('grpo_jax', deadline=None, max_examples=15, derandomize=True)
settings.load_profile('grpo_jax')
