"""Device meshes and sharding helpers: the one place a `jax.sharding.Mesh` is built.

Axis types. `jax.make_mesh` defaults to Explicit axes in jax 0.10, under which
`with_sharding_constraint`, an embedding gather and `jnp.linalg.svd` of a sharded matrix
all fail without hand-written `reshard` calls. grpo_jax builds every mesh with Auto axes:
partition specs on parameters and `constrain` hints on activations tell XLA's partitioner
what we want, and it inserts the collectives.

Mesh axes, outermost first:
  data:   pure data parallelism (parameters replicated);
  fsdp:   data parallelism with parameters and optimizer state sharded (ZeRO-3);
  tensor: model parallelism inside attention heads and MLP hidden units.
The batch dimension of activations is sharded over ('data', 'fsdp').
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def make_mesh(
  data: int = 1,
  fsdp: int = 1,
  tensor: int = 1,
  *,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a ('data', 'fsdp', 'tensor') mesh with Auto axis types.

  Args:
    data: size of the data-parallel axis; -1 takes all devices left over.
    fsdp: size of the fully-sharded data-parallel axis; -1 takes all devices left over.
    tensor: size of the tensor-parallel axis; -1 takes all devices left over.
    devices: the devices to use, all of `jax.devices()` (every process's) by default.

  Returns:
    A mesh whose axis sizes multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = {'data': data, 'fsdp': fsdp, 'tensor': tensor}
  for name, size in sizes.items():
    if not isinstance(size, int) or size == 0 or size < -1:
      raise ValueError(f'mesh axis `{name}` must be a positive int or -1, got {size!r}')
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {free}')
  known = 1
  for size in sizes.values():
    known *= max(size, 1)
  if free:
    if len(devices) % known:
      raise ValueError(
        f'{len(devices)} devices do not divide into mesh axes {sizes} (the fixed axes need '
        f'a multiple of {known})'
      )
    sizes[free[0]] = len(devices) // known
  total = sizes['data'] * sizes['fsdp'] * sizes['tensor']
  if total != len(devices):
    raise ValueError(f'mesh axes {sizes} need {total} devices, but {len(devices)} are available')
  shape = tuple(sizes[a] for a in MESH_AXES)
  return jax.make_mesh(
    shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def named(mesh: Mesh, *spec) -> NamedSharding:
  """`NamedSharding(mesh, PartitionSpec(*spec))`."""
  return NamedSharding(mesh, PartitionSpec(*spec))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Shards the leading (batch) dimension over ('data', 'fsdp'); the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  """A fully replicated sharding on `mesh`."""
  return NamedSharding(mesh, PartitionSpec())
