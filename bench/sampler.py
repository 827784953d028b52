"""Sampler throughput: KV-cache decoding against recomputing the prefix every step (issue 4).

Both routes are one jitted program each, sample 128 new tokens per row (temperature 1, no
EOS, so every row runs to the limit) with the same per-row keys, and are timed after a
compile-and-warm-up call; reported times are medians over interleaved rounds.
  cached     `grpo_jax.sampling.sample`: prefill the prompt once, then one token per step
             against the static KV cache.
  recompute  no cache: each step runs the decoder over the whole static [B, P + N] buffer
             (prompt + tokens so far, the rest masked as padding) and reads the logits at
             the newest position. This is what a jitted sampler without a cache does; a
             shape-polymorphic one would touch (P + N/2)/(P + N) of that work on average.
Generated tokens/s = B * N / time. The ratio target is >= 5x. The last line is one JSON object.

  python bench/sampler.py --quick   # smoke size: 'tiny' model, B=4, P=16
  python bench/sampler.py           # 'small' model, B=16, P=64 (minutes of CPU)
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grpo_jax.models import Decoder, left_padded_positions, model_preset
from grpo_jax.sampling import SamplerConfig, filter_logits, sample, sample_keys

NEW_TOKENS = 128
TARGET = 5.0
SIZES = {
  'quick': dict(preset='tiny', vocab=256, batch=4, prompt_len=16, rounds=3),
  'full': dict(preset='small', vocab=2048, batch=16, prompt_len=64, rounds=5),
}


@functools.partial(jax.jit, static_argnames=('config',))
def recompute_sample(graphdef, state, prompts_BP, valid_BP, keys_B, *, config: SamplerConfig):
  """Samples like `sample` (same keys, same per-row key splits) but with no KV cache."""
  model = nnx.merge(graphdef, state)
  batch, prompt_len = prompts_BP.shape
  n_new = config.max_new_tokens
  tokens_BT = jnp.concatenate(
    [prompts_BP, jnp.full((batch, n_new), config.pad_token_id, jnp.int32)], axis=1
  )
  valid_BT = jnp.concatenate([valid_BP, jnp.zeros((batch, n_new), bool)], axis=1)

  def body(n, carry):
    tokens_BT, valid_BT, keys_B = carry
    hidden_BTD, _ = model(tokens_BT, left_padded_positions(valid_BT), valid_BT=valid_BT)
    last_B1D = jax.lax.dynamic_slice_in_dim(hidden_BTD, prompt_len + n - 1, 1, axis=1)
    scaled_BV = model.logits(last_B1D)[:, 0] / config.temperature
    pairs_B2 = jax.vmap(jax.random.split)(keys_B)
    filtered_BV = filter_logits(scaled_BV, top_k=config.top_k, top_p=config.top_p)
    new_B = jax.vmap(jax.random.categorical)(pairs_B2[:, 1], filtered_BV).astype(jnp.int32)
    tokens_BT = jax.lax.dynamic_update_slice(tokens_BT, new_B[:, None], (0, prompt_len + n))
    valid_BT = jax.lax.dynamic_update_slice(
      valid_BT, jnp.ones((batch, 1), bool), (0, prompt_len + n)
    )
    return tokens_BT, valid_BT, pairs_B2[:, 0]

  tokens_BT, _, _ = jax.lax.fori_loop(0, n_new, body, (tokens_BT, valid_BT, keys_B))
  return tokens_BT[:, prompt_len:]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='smoke size (seconds)')
  args = parser.parse_args(argv)
  size = SIZES['quick' if args.quick else 'full']

  cfg = model_preset(size['preset'], vocab_size=size['vocab'])
  graphdef, state = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
  batch, prompt_len = size['batch'], size['prompt_len']
  rng = np.random.default_rng(0)
  prompts_BP = rng.integers(1, size['vocab'], (batch, prompt_len)).astype(np.int32)
  # Left padding of different lengths, as in a real rollout batch.
  valid_BP = np.arange(prompt_len)[None, :] >= rng.integers(0, prompt_len // 2, (batch, 1))
  prompts_BP = np.where(valid_BP, prompts_BP, 0)
  config = SamplerConfig(max_new_tokens=NEW_TOKENS, eos_token_ids=(), temperature=1.0)
  key, step = jax.random.key(0), 0
  prompt_ids_B, sample_ids_B = np.arange(batch), np.zeros(batch, np.int32)

  def cached():
    out = sample(
      (graphdef, state),
      prompts_BP,
      valid_BP,
      key=key,
      step=step,
      prompt_ids_B=prompt_ids_B,
      sample_ids_B=sample_ids_B,
      config=config,
    )
    return out.tokens_BN

  keys_B = sample_keys(key, step, jnp.asarray(prompt_ids_B), jnp.asarray(sample_ids_B))

  def recompute():
    return recompute_sample(
      graphdef, state, jnp.asarray(prompts_BP), jnp.asarray(valid_BP), keys_B, config=config
    )

  routes = {'cached': cached, 'recompute': recompute}
  tokens = {name: np.asarray(jax.block_until_ready(fn())) for name, fn in routes.items()}
  times = {name: [] for name in routes}
  for _ in range(size['rounds']):
    for name, fn in routes.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)

  generated = batch * NEW_TOKENS
  tps = {name: generated / statistics.median(ts) for name, ts in times.items()}
  ratio = tps['cached'] / tps['recompute']
  # Same keys and the same logits up to float rounding: the routes should agree token for token.
  agreement = float((tokens['cached'] == tokens['recompute']).mean())
  print(
    f'model {size["preset"]} (V={size["vocab"]}, D={cfg.d_model}, L={cfg.n_layers}), '
    f'B={batch}, P={prompt_len}, N={NEW_TOKENS}, {jax.device_count()} device(s)'
  )
  for name in routes:
    median_ms = statistics.median(times[name]) * 1e3
    print(f'{name:>10}: {tps[name]:10.1f} generated tokens/s  (median {median_ms:.1f} ms)')
  print(f'speedup cached/recompute: {ratio:.1f}x (target >= {TARGET:g}x)')
  print(f'token agreement between routes: {agreement:.4f}')
  result = {
    'bench': 'sampler',
    'quick': args.quick,
    'preset': size['preset'],
    'batch': batch,
    'prompt_len': prompt_len,
    'new_tokens': NEW_TOKENS,
    'cached_tokens_per_s': round(tps['cached'], 1),
    'recompute_tokens_per_s': round(tps['recompute'], 1),
    'speedup': round(ratio, 2),
    'target': TARGET,
    'meets_target': ratio >= TARGET,
    'token_agreement': agreement,
  }
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()
