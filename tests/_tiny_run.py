"""The tiny trainer run shared by the trainer tests: a trivially learnable 'format' reward
(the completion is digits only), 8 prompts x G=4, two updates of two micro-batches each."""

from grpo_jax import config as C

TINY = (
  'sft.enabled=false',
  'data.rewards=format',
  'data.held_out_size=64',
  'batch.prompts_per_step=8',
  'batch.group_size=4',
  'batch.mini_batch=4',
  'batch.micro_batch=2',
  'sampler.max_new_tokens=4',
  'optim.lr=1e-2',
  'eval.size=16',
  'eval.avg_k=2',
  'eval.every=4',
  'checkpoint.every=4',
)
QUIET = dict(progress=False, log=lambda *_: None)


def tiny_cfg(path, *extra: str) -> C.TrainConfig:
  """`cpu-tiny` with the tiny overrides, writing to `path`; later overrides win."""
  return C.apply_overrides(C.cpu_tiny(), [*TINY, f'output_dir={path}', *extra])
