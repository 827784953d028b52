"""Token log-probs and entropy from hidden states, chunked so [B, T, V] fp32 never exists.

The output projection is applied one sequence chunk at a time inside a `lax.scan`; each
chunk is wrapped in `jax.checkpoint`, so the backward pass recomputes that chunk's logits
instead of storing them. Peak logits memory is one [B, chunk, V] float32 block, forward and
backward. Log-probs are taken from logits divided by the sampling temperature (PAPERS.md §1).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _check_inputs(hidden_BTD, w_DV, targets_BT, temperature):
  hidden_BTD = jnp.asarray(hidden_BTD)
  w_DV = jnp.asarray(w_DV)
  targets_BT = jnp.asarray(targets_BT)
  if hidden_BTD.ndim != 3:
    raise ValueError(f'`hidden_BTD` must be 3-D [B, T, D], got shape {hidden_BTD.shape}')
  if w_DV.ndim != 2 or w_DV.shape[0] != hidden_BTD.shape[2]:
    raise ValueError(f'`w_DV` must be 2-D [D={hidden_BTD.shape[2]}, V], got shape {w_DV.shape}')
  if targets_BT.shape != hidden_BTD.shape[:2]:
    raise ValueError(
      f'`targets_BT` must have shape {hidden_BTD.shape[:2]} (B, T of `hidden_BTD`), '
      f'got {targets_BT.shape}'
    )
  if not jnp.issubdtype(targets_BT.dtype, jnp.integer):
    raise ValueError(f'`targets_BT` must be integer token ids, got dtype {targets_BT.dtype}')
  if not isinstance(temperature, jax.Array) and not temperature > 0:
    raise ValueError(f'`temperature` must be > 0, got {temperature!r}')
  return hidden_BTD, w_DV, targets_BT


def _chunk_stats(hidden_BCD, w_DV, targets_BC, temperature):
  # Matmul in the input dtype with float32 accumulation; softmax statistics in float32.
  logits_BCV = jnp.einsum('BCD,DV->BCV', hidden_BCD, w_DV, preferred_element_type=jnp.float32)
  logits_BCV = logits_BCV / jnp.asarray(temperature, jnp.float32)
  lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
  target_logit_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
  logp_BC = target_logit_BC - lse_BC
  probs_BCV = jnp.exp(logits_BCV - lse_BC[..., None])
  entropy_BC = lse_BC - jnp.sum(probs_BCV * logits_BCV, axis=-1)
  return logp_BC, entropy_BC


def token_logprobs(
  hidden_BTD: jax.Array,
  w_DV: jax.Array,
  targets_BT: jax.Array,
  *,
  temperature: float | jax.Array = 1.0,
  chunk_size: int = 128,
) -> tuple[jax.Array, jax.Array]:
  """Log-prob of each target token and the entropy of each next-token distribution.

  logits = hidden @ w / temperature; logp = logits[target] - logsumexp(logits);
  entropy = logsumexp(logits) - Σ softmax(logits) · logits. Both are differentiable
  with respect to `hidden_BTD` and `w_DV`.

  Args:
    hidden_BTD: final hidden states (after the final norm), any float dtype.
    w_DV: output projection (the tied embedding transposed, or the LM head).
    targets_BT: the token whose log-prob is taken at each position.
    temperature: sampling temperature, > 0 (a Python float or a traced scalar).
    chunk_size: sequence positions per chunk; T is padded up to a multiple of it.

  Returns:
    (logp_BT, entropy_BT), float32.
  """
  if not (isinstance(chunk_size, int) and chunk_size >= 1):
    raise ValueError(f'`chunk_size` must be a positive int, got {chunk_size!r}')
  hidden_BTD, w_DV, targets_BT = _check_inputs(hidden_BTD, w_DV, targets_BT, temperature)
  B, T, D = hidden_BTD.shape
  C = min(chunk_size, T)
  n_chunks = -(-T // C)
  pad = n_chunks * C - T
  if pad:
    hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
    targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
  # [n, B, C, ...]: scan over the leading chunk axis.
  hidden_NBCD = hidden_BTD.reshape(B, n_chunks, C, D).transpose(1, 0, 2, 3)
  targets_NBC = targets_BT.reshape(B, n_chunks, C).transpose(1, 0, 2)

  # prevent_cse=False is safe (and faster) inside scan, per the jax.checkpoint docs.
  chunk_fn = jax.checkpoint(
    functools.partial(_chunk_stats, temperature=temperature), prevent_cse=False
  )

  def body(carry, xs):
    h_BCD, t_BC = xs
    return carry, chunk_fn(h_BCD, w_DV, t_BC)

  _, (logp_NBC, entropy_NBC) = jax.lax.scan(body, None, (hidden_NBCD, targets_NBC))
  logp_BT = logp_NBC.transpose(1, 0, 2).reshape(B, n_chunks * C)[:, :T]
  entropy_BT = entropy_NBC.transpose(1, 0, 2).reshape(B, n_chunks * C)[:, :T]
  return logp_BT, entropy_BT


def naive_token_logprobs(
  hidden_BTD: jax.Array,
  w_DV: jax.Array,
  targets_BT: jax.Array,
  *,
  temperature: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """Reference for `token_logprobs` that materialises the full [B, T, V] float32 logits.

  Same maths, no chunking or remat: for tests and the memory benchmark only.
  """
  hidden_BTD, w_DV, targets_BT = _check_inputs(hidden_BTD, w_DV, targets_BT, temperature)
  return _chunk_stats(hidden_BTD, w_DV, targets_BT, temperature)
