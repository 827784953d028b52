"""Learner-step benchmark on a fixed Qwen2-shaped config (issue 5); JSON on the last line.

Config: V=512, D=256, 4 layers, 4 heads, 2 KV heads, MLP 704, tied embeddings, fp32;
16 prompts × G=4, prompt 32 + completion 64 tokens. Reports, as medians over interleaved
rounds: rollout, reference log-prob, update and total time; train-step tokens/s (loss +
grad + global norm + AdamW in one jitted step over all 64 rows × 96 tokens, no
micro-batching); MFU = 6·N·tokens / time over a same-round 2048² float32 matmul probe;
and sampler generated tokens/s (64 new tokens per row, KV cache 96, temperature 1, no
early stop).

  python bench/learner.py            # full run
  python bench/learner.py --quick    # smoke size: 2 rounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from grpo_jax import presets
from grpo_jax.models import Decoder, ModelConfig
from grpo_jax.sampling import SamplerConfig, sample
from grpo_jax.train import completion_logprobs, make_update_fn
from grpo_jax.transforms import plain

PROMPTS, G, PROMPT_LEN, NEW = 16, 4, 32, 64
PROBE_N = 2048


def model_config() -> ModelConfig:
  return ModelConfig(
    vocab_size=512,
    d_model=256,
    n_layers=4,
    n_heads=4,
    n_kv_heads=2,
    head_dim=64,
    d_ff=704,
    tie_embeddings=True,
    qkv_bias=True,
    architecture='Qwen2ForCausalLM',
  )


def _timed(fn, *args):
  t = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - t, out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='2 rounds (smoke size)')
  parser.add_argument('--rounds', type=int, default=10)
  args = parser.parse_args(argv)
  rounds = 2 if args.quick else args.rounds

  cfg = model_config()
  graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  ref_params = params
  rows = PROMPTS * G
  rng = np.random.default_rng(0)
  prompts_BP = rng.integers(4, cfg.vocab_size, size=(rows, PROMPT_LEN)).astype(np.int32)
  valid_BP = np.ones((rows, PROMPT_LEN), bool)
  sampler_cfg = SamplerConfig(max_new_tokens=NEW, eos_token_ids=(), temperature=1.0)
  key = jax.random.key(0)
  ids_B = np.repeat(np.arange(PROMPTS), G).astype(np.uint32)
  sample_ids_B = np.tile(np.arange(G), PROMPTS).astype(np.uint32)

  def rollout(params, step):
    return sample(
      (graphdef, params),
      prompts_BP,
      valid_BP,
      key=key,
      step=step,
      prompt_ids_B=ids_B,
      sample_ids_B=sample_ids_B,
      config=sampler_cfg,
    )

  ref_logp = jax.jit(
    lambda p, tokens, valid: completion_logprobs(
      graphdef, p, tokens, valid, prompt_len=PROMPT_LEN, temperature=1.0
    )[0]
  )
  tx = plain(optax.adamw(1e-4), max_grad_norm=1.0)
  opt_state = tx.init(params)
  update = make_update_fn(
    graphdef, presets.get_preset('grpo', kl_coef=0.0), tx, prompt_len=PROMPT_LEN, temperature=1.0
  )
  probe_a = jnp.asarray(rng.normal(size=(PROBE_N, PROBE_N)), jnp.float32)
  probe = jax.jit(lambda a: a @ a)

  def batch_of(out):
    tokens = np.concatenate([prompts_BP, np.asarray(out.tokens_BN)], axis=1)
    valid = np.concatenate([valid_BP, np.asarray(out.completion_mask_BN)], axis=1)
    return tokens, valid

  # Compile everything once.
  out = rollout(params, 0)
  tokens, valid = batch_of(out)
  jax.block_until_ready(ref_logp(ref_params, tokens, valid))
  learner_batch = {
    'tokens': tokens[None],
    'valid': valid[None],
    'old_logp': np.asarray(out.logp_BN)[None],
    'mask': np.asarray(out.completion_mask_BN, np.float32)[None],
    'adv': rng.normal(size=(1, rows)).astype(np.float32),
  }
  jax.block_until_ready(update(params, opt_state, learner_batch))
  jax.block_until_ready(probe(probe_a))

  times = {'rollout_s': [], 'ref_logp_s': [], 'update_s': [], 'probe_s': []}
  for r in range(rounds):
    t, _ = _timed(probe, probe_a)
    times['probe_s'].append(t)
    t, out = _timed(rollout, params, r + 1)
    times['rollout_s'].append(t)
    t, _ = _timed(ref_logp, ref_params, tokens, valid)
    times['ref_logp_s'].append(t)
    t, (params, opt_state, _) = _timed(update, params, opt_state, learner_batch)
    times['update_s'].append(t)
  med = {k: statistics.median(v) for k, v in times.items()}
  train_tokens = rows * (PROMPT_LEN + NEW)
  flops_per_s = 2 * PROBE_N**3 / med['probe_s']
  train_flops = 6 * cfg.num_params() * train_tokens
  result = {
    'bench': 'learner',
    'rounds': rounds,
    'params': cfg.num_params(),
    **{k: round(v, 6) for k, v in med.items()},
    'total_s': round(med['rollout_s'] + med['ref_logp_s'] + med['update_s'], 6),
    'train_tokens_per_s': round(train_tokens / med['update_s'], 1),
    'mfu': round(train_flops / med['update_s'] / flops_per_s, 4),
    'probe_gflops': round(flops_per_s / 1e9, 2),
    'sampler_tokens_per_s': round(rows * NEW / med['rollout_s'], 1),
  }
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()
