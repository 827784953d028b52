"""Device meshes and sharding: the one place a `jax.sharding.Mesh` is built.

Axis types. `jax.make_mesh` defaults to Explicit axes in jax 0.10, under which
`with_sharding_constraint`, an embedding gather and `jnp.linalg.svd` of a sharded matrix
all fail without hand-written `reshard` calls. grpo_jax builds every mesh with Auto axes:
partition specs on parameters and `constrain` hints on activations tell XLA's partitioner
what we want, and it inserts the collectives. The price of Auto is that shardings of
intermediates are XLA's choice rather than part of the types; the hints pin the ones that
matter (the residual stream, attention heads, MLP hidden units).

Mesh axes, outermost first:
  data:   pure data parallelism (parameters replicated);
  fsdp:   data parallelism with parameters and optimizer state sharded (ZeRO-3);
  tensor: model parallelism inside attention heads and MLP hidden units.
The batch dimension of activations is sharded over ('data', 'fsdp').

Usage: place parameters (and optimizer state) with `param_shardings` (roles in `PARAM_ROLES`,
looked up from each leaf's path, so the same call serves params, grads and optax state), jit
the step with those `in_shardings`/`out_shardings`, and run it under `jax.set_mesh(mesh)` so
the models' `constrain` hints apply (without a mesh they are no-ops). A dimension that the
mesh axis does not divide is replicated rather than padded. Multi-host runs call
`initialize_distributed` first; `make_mesh` then spans every process's devices.
"""

from __future__ import annotations

import dataclasses
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


def _fit_spec(spec: Sequence, shape: Sequence[int], mesh_shape: dict[str, int]) -> PartitionSpec:
  """Drops mesh axes that the mesh lacks or whose size does not divide the dimension."""
  fitted = []
  for dim, axes in zip(shape, spec):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    names = tuple(a for a in names if a in mesh_shape)
    size = 1
    for a in names:
      size *= mesh_shape[a]
    if not names or dim % size:
      # Uneven shards would need padding; a replicated dimension is always correct.
      fitted.append(None)
    else:
      fitted.append(names[0] if len(names) == 1 else names)
  return PartitionSpec(*fitted)


def constrain(x: jax.Array, spec: Sequence) -> jax.Array:
  """Activation sharding hint; a no-op unless a mesh is set with `jax.set_mesh(mesh)`.

  Args:
    x: the activation.
    spec: one entry per dimension of `x`: a mesh axis name, a tuple of names, or None. Axes
      that the current mesh lacks or whose size does not divide the dimension are dropped.

  Returns:
    `x`, with a `with_sharding_constraint` when a mesh is active.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  if len(spec) != x.ndim:
    raise ValueError(f'spec {spec} has {len(spec)} entries for an array of shape {x.shape}')
  return jax.lax.with_sharding_constraint(x, _fit_spec(spec, x.shape, dict(mesh.shape)))


# Role of each parameter, keyed by the last two names of its path, as mesh axes of its
# trailing dimensions (any leading dimension, e.g. the stacked-layer axis, is replicated).
# fsdp shards the model-width side of every matrix (ZeRO-3: gathered just before use);
# tensor shards heads, MLP hidden units and the vocabulary (Megatron-style column/row split).
PARAM_ROLES: dict[tuple[str, str], tuple] = {
  ('embed_tokens', 'embedding'): ('tensor', 'fsdp'),  # [V, D]
  ('q_proj', 'kernel'): ('fsdp', 'tensor', None),  # [D, H, K]
  ('k_proj', 'kernel'): ('fsdp', 'tensor', None),  # [D, N, K]
  ('v_proj', 'kernel'): ('fsdp', 'tensor', None),  # [D, N, K]
  ('q_proj', 'bias'): ('tensor', None),  # [H, K]
  ('k_proj', 'bias'): ('tensor', None),
  ('v_proj', 'bias'): ('tensor', None),
  ('o_proj', 'kernel'): ('tensor', None, 'fsdp'),  # [H, K, D]
  ('gate_proj', 'kernel'): ('fsdp', 'tensor'),  # [D, F]
  ('up_proj', 'kernel'): ('fsdp', 'tensor'),  # [D, F]
  ('down_proj', 'kernel'): ('tensor', 'fsdp'),  # [F, D]
  ('lm_head', 'kernel'): ('fsdp', 'tensor'),  # [D, V]
}


def _path_names(path) -> tuple[str, ...]:
  names = []
  for key in path:
    name = getattr(key, 'key', getattr(key, 'name', None))
    if isinstance(name, str) and name != 'value':
      names.append(name)
  return tuple(names)


def param_partition_spec(path, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """The partition spec of one parameter (or optimizer-state leaf) from its path's role.

  Args:
    path: a pytree key path (as from `jax.tree_util.tree_flatten_with_path`).
    shape: the leaf's shape.
    mesh: the target mesh.

  Returns:
    The role's spec (see `PARAM_ROLES`), fitted to `shape` and `mesh`; leaves without a role
    (norm scales, step counters) are replicated.
  """
  names = _path_names(path)
  role = PARAM_ROLES.get(names[-2:]) if len(names) >= 2 else None
  if role is None or len(shape) < len(role):
    return PartitionSpec()
  spec = (None,) * (len(shape) - len(role)) + tuple(role)
  return _fit_spec(spec, shape, dict(mesh.shape))


def param_partition_specs(tree, mesh: Mesh):
  """Partition specs for every array leaf of `tree` (params, grads or optax state)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: param_partition_spec(path, x.shape, mesh), tree
  )


def param_shardings(tree, mesh: Mesh):
  """`NamedSharding`s for every array leaf of `tree`, from `param_partition_specs`."""
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(mesh, param_partition_spec(path, x.shape, mesh)), tree
  )


def shard_model(model, mesh: Mesh):
  """Moves every variable of an `nnx.Module` onto its role's sharding on `mesh`, in place.

  Returns:
    The same module, for chaining.
  """
  from flax import nnx  # local: keeps the pure helpers above importable without flax

  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, param_shardings(state, mesh)))
  return model


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Multi-host (multi-process) setup; `enabled=False` (the default) runs one process.

  Attributes:
    enabled: call `jax.distributed.initialize` before anything touches the devices.
    coordinator_address: 'host:port' of process 0; None lets JAX auto-detect the cluster
      (Cloud TPU, SLURM, Open MPI, ...), in which case the other fields may stay None too.
    num_processes: number of processes.
    process_id: this process's index in [0, num_processes).
    local_device_ids: restrict this process to these local devices.
    cpu_collectives: 'gloo' (or 'mpi') for multi-process CPU runs; None on TPU/GPU.
    initialization_timeout: seconds to wait for all processes to join.
  """

  enabled: bool = False
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None
  cpu_collectives: str | None = None
  initialization_timeout: int = 300

  def __post_init__(self):
    if self.num_processes is not None and self.num_processes < 1:
      raise ValueError(f'DistributedConfig.num_processes must be >= 1, got {self.num_processes}')
    if self.process_id is not None and self.num_processes is not None:
      if not 0 <= self.process_id < self.num_processes:
        raise ValueError(
          f'DistributedConfig.process_id must be in [0, {self.num_processes}), '
          f'got {self.process_id}'
        )
    if self.cpu_collectives not in (None, 'gloo', 'mpi'):
      raise ValueError(
        f"DistributedConfig.cpu_collectives must be None, 'gloo' or 'mpi', "
        f'got {self.cpu_collectives!r}'
      )


def initialize_distributed(config: DistributedConfig) -> bool:
  """Joins a multi-process JAX run (`jax.distributed.initialize`) when `config.enabled`.

  Must run before the first use of devices. Afterwards `jax.devices()` lists every process's
  devices and `make_mesh` spans them all.

  Returns:
    True if this process joined a multi-process run.
  """
  if not config.enabled:
    return False
  if config.cpu_collectives is not None:
    jax.config.update('jax_cpu_collectives_implementation', config.cpu_collectives)
  jax.distributed.initialize(
    coordinator_address=config.coordinator_address,
    num_processes=config.num_processes,
    process_id=config.process_id,
    local_device_ids=None if config.local_device_ids is None else list(config.local_device_ids),
    initialization_timeout=config.initialization_timeout,
  )
  return True


def host_to_global(x, sharding: NamedSharding) -> jax.Array:
  """A global array from the same host value on every process, each keeping its own shards."""
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
