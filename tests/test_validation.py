"""Host-side batch validation."""

import numpy as np
import pytest

from grpo_jax.presets import PRESETS
from grpo_jax.validation import BatchError, validate_batch

MASK = np.array([[1, 1, 0], [1, 0, 0]], np.int32)
LOGP = np.array([[-0.1, -2.0, 0.0], [-0.5, 0.0, 0.0]], np.float32)


def test_good_batch_passes():
  validate_batch(
    rewards=np.array([[1.0, 0.0]]),
    mask_BT=MASK,
    logp_BT=LOGP,
    old_logp_BT=LOGP,
    ref_logp_BT=LOGP,
    adv=np.array([0.5, -0.5]),
    lengths_B=np.array([2, 1]),
    mode='seq-mean-token-mean',
    group_size=2,
  )


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_nonfinite_reward_is_named_with_its_index(bad):
  rewards = np.array([[1.0, 0.0], [0.5, bad]])
  with pytest.raises(BatchError, match=r'`rewards`.*index \(1, 1\)'):
    validate_batch(rewards=rewards)


@pytest.mark.parametrize('mode', ['seq-mean-token-mean', 'seq-mean-token-sum'])
def test_empty_row_rejected_for_seq_mean_modes(mode):
  mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]])
  with pytest.raises(BatchError, match=r'`mask_BT` rows \[1\]'):
    validate_batch(mask_BT=mask, mode=mode)


def test_empty_row_allowed_where_no_mode_needs_it():
  mask = np.array([[1, 1, 0], [0, 0, 0]])
  validate_batch(mask_BT=mask, mode='token-mean')
  validate_batch(mask_BT=mask, mode='seq-mean-token-sum-norm')
  # verl's aggregation skips empty rows, so its preset accepts them.
  validate_batch(mask_BT=mask, preset=PRESETS['verl'].replace(loss_agg_mode='seq-mean-token-mean'))


def test_empty_row_rejected_for_sequence_level_ratio():
  mask = np.array([[1, 1, 0], [0, 0, 0]])
  with pytest.raises(BatchError, match='sequence-level'):
    validate_batch(mask_BT=mask, preset=PRESETS['gspo'].replace(loss_agg_mode='token-mean'))


def test_all_empty_batch_rejected_for_token_mean():
  with pytest.raises(BatchError, match='no token'):
    validate_batch(mask_BT=np.zeros((2, 3)), mode='token-mean')


def test_mask_must_be_binary_and_2d():
  with pytest.raises(BatchError, match='0/1'):
    validate_batch(mask_BT=np.array([[1, 2]]))
  with pytest.raises(BatchError, match='2-D'):
    validate_batch(mask_BT=np.array([1, 0]))


def test_logp_shape_and_values():
  with pytest.raises(BatchError, match='`old_logp_BT` has shape'):
    validate_batch(mask_BT=MASK, old_logp_BT=np.zeros((2, 4)))
  bad = LOGP.copy()
  bad[0, 1] = np.nan
  with pytest.raises(BatchError, match=r'`logp_BT` is non-finite.*\(0, 1\)'):
    validate_batch(mask_BT=MASK, logp_BT=bad)
  bad = LOGP.copy()
  bad[1, 0] = 0.5
  with pytest.raises(BatchError, match='`ref_logp_BT` must be <= 0'):
    validate_batch(mask_BT=MASK, ref_logp_BT=bad)


def test_nonfinite_on_padding_is_fine():
  logp = LOGP.copy()
  logp[1, 2] = np.nan
  validate_batch(mask_BT=MASK, logp_BT=logp)


def test_advantage_checks():
  with pytest.raises(BatchError, match='`adv` is non-finite'):
    validate_batch(adv=np.array([0.0, np.nan]))
  with pytest.raises(BatchError, match='`adv` has shape'):
    validate_batch(mask_BT=MASK, adv=np.zeros(3))


def test_rewards_consistent_with_batch():
  with pytest.raises(BatchError, match='expected \\[B, 4\\]'):
    validate_batch(rewards=np.zeros((2, 3)), group_size=4)
  with pytest.raises(BatchError, match='not a multiple'):
    validate_batch(rewards=np.zeros(7), group_size=4)
  with pytest.raises(BatchError, match='3 entries'):
    validate_batch(rewards=np.zeros(3), mask_BT=MASK)
  with pytest.raises(BatchError, match='`lengths_B`'):
    validate_batch(mask_BT=MASK, lengths_B=np.array([2, 2]))


def test_unknown_mode_named():
  with pytest.raises(BatchError, match='`mode`'):
    validate_batch(mask_BT=MASK, mode='mean')
