"""grpo_jax: GRPO-family RL fine-tuning of language models in JAX."""
