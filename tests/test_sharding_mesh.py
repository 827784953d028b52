"""The mesh builder."""

import jax
import pytest
from jax.sharding import AxisType

from grpo_jax import sharding


def test_mesh_uses_eight_fake_devices_with_auto_axes():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  assert jax.device_count() == 8


def test_mesh_fills_the_free_axis():
  mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=2)
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 4, 'tensor': 2}


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(data=3), 'need 3 devices'),
    (dict(data=-1, fsdp=-1), 'at most one'),
    (dict(tensor=0), '`tensor`'),
    (dict(data=3, fsdp=-1), 'do not divide'),
  ],
)
def test_mesh_rejects_bad_sizes(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sharding.make_mesh(**kwargs)
