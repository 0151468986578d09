"""Data-parallel plus model-parallel training of an MLP on a ('data', 'model') mesh, with sharded Adam state.

The batch is split over 'data'; each hidden layer's weights are split over 'model' (the first layer
by columns, the second by rows, as in Megatron-LM), so every device holds a slice of the model and
of the batch. ``mpnn_opt.state_shardings`` lays the optimizer state out like the params; with
``--zero`` it also splits the state over 'data' (ZeRO-1), so each device keeps a quarter of Adam's
moments on a 4x2 mesh. The script prints the loss, the sharding of each param and state leaf, the
bytes of optimizer state per device, and the same training run unsharded on one device.

On a CPU it simulates 8 devices (it sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
before importing jax unless you set XLA_FLAGS yourself)::

    python examples/sharded_training.py          # state laid out like the params
    python examples/sharded_training.py --zero   # ZeRO-1: state also split over 'data'

On real accelerators nothing changes: on one machine with several GPUs the mesh is built from
``jax.devices()`` (the flag above only affects the CPU backend), using 2-way model parallelism when
the device count is even. On several hosts, start the same script on every host with
``--multi-host``: it calls ``jax.distributed.initialize()`` first (which reads the coordinator,
process count and process id from SLURM / Open MPI / Cloud TPU environments, or from
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``), the mesh then spans the
devices of every host, and data and params are created with ``jax.make_array_from_callback`` /
``jit(out_shardings=...)`` so each host only materializes its own shards. Only process 0 prints.
"""

from __future__ import annotations

import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402  (XLA_FLAGS must be set first)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

import mpnn_opt  # noqa: E402
from mpnn_opt.sharding import per_device_nbytes, state_shardings  # noqa: E402

SIZES = (16, 64, 64, 1)
BATCH = 256
STEPS = 60


def make_mesh() -> jax.sharding.Mesh:
    count = jax.device_count()
    model = 2 if count % 2 == 0 else 1
    # Auto axes: XLA propagates the layout through the model, which needs no sharding annotations.
    # (jax.make_mesh defaults to Explicit axes, where the row-split matmul would need an out_sharding.)
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((count // model, model), ("data", "model"), axis_types=(auto, auto))


def param_specs() -> dict:
    return {
        "layer0": {"weights": P(None, "model"), "bias": P("model")},  # columns split over 'model'
        "layer1": {"weights": P("model", None), "bias": P()},  # rows split: one all-reduce after the matmul
        "layer2": {"weights": P(), "bias": P()},
    }


def init_mlp(key: jax.Array) -> dict:
    keys = jax.random.split(key, len(SIZES) - 1)
    return {
        f"layer{i}": {"weights": jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(1.0 / n_in), "bias": jnp.zeros(n_out)}
        for i, (k, n_in, n_out) in enumerate(zip(keys, SIZES[:-1], SIZES[1:]))
    }


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    for i in range(len(SIZES) - 1):
        layer = params[f"layer{i}"]
        x = x @ layer["weights"] + layer["bias"]
        if i < len(SIZES) - 2:
            x = jnp.tanh(x)
    return jnp.mean((x - y) ** 2)


def make_data(sharding=None) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, (BATCH, SIZES[0])).astype(np.float32)
    y = (np.sin(x.sum(axis=1, keepdims=True)) + 0.5 * x[:, :1] * x[:, 1:2]).astype(np.float32)
    if sharding is None:
        return jnp.asarray(x), jnp.asarray(y)
    return tuple(jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in (x, y))


def train(tx, mesh=None, zero: bool = False) -> tuple[dict, object, list[float]]:
    """Full-batch training; sharded over ``mesh`` when given, else on one device."""
    key = jax.random.key(0)
    if mesh is None:
        params, (x, y) = init_mlp(key), make_data()
        p_shard = s_shard = None
        step_jit = jax.jit
    else:
        p_shard = jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs())
        params = jax.jit(init_mlp, out_shardings=p_shard)(key)
        x, y = make_data(NamedSharding(mesh, P("data")))
        s_shard = state_shardings(tx, params, p_shard, zero_axis="data" if zero else None)
        step_jit = lambda f: jax.jit(f, out_shardings=(p_shard, s_shard, None))  # noqa: E731

    @step_jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return mpnn_opt.apply_updates(params, updates), state, loss

    state = tx.init(params) if mesh is None else jax.jit(tx.init, out_shardings=s_shard)(params)
    losses = []
    for _ in range(STEPS):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return params, state, losses


def describe(params: dict, state) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        print(f"  param {jax.tree_util.keystr(path):30s} {str(leaf.shape):10s} {leaf.sharding.spec}")
    adam_state = state[0]  # adam('L2') = chain(scale_by_adam, scale_by_learning_rate, decoupled decay)
    for field in ("momentums", "velocities"):
        for path, leaf in jax.tree_util.tree_leaves_with_path(getattr(adam_state, field)):
            print(f"  state {field}{jax.tree_util.keystr(path):21s} {str(leaf.shape):10s} {leaf.sharding.spec}")
    print(f"  state count {adam_state.count.sharding.spec} (replicated)")
    moments = (adam_state.momentums, adam_state.velocities)
    per_device = per_device_nbytes(moments)
    total = sum(leaf.nbytes for leaf in jax.tree.leaves(moments))
    print(
        f"  Adam moments: {total} bytes in all, per device min {min(per_device.values())} max {max(per_device.values())}"
    )


def main(zero: bool = False) -> tuple[list[float], list[float]]:
    mesh = make_mesh()
    tx = mpnn_opt.adam(0.01)  # the seed's Adam: 'L2' decoupled weight decay 0.001
    params, state, losses = train(tx, mesh, zero=zero)
    _, _, single_losses = train(tx)
    if jax.process_index() == 0:
        print(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} devices, ZeRO-1: {zero}")
        describe(params, state)
        for i in range(0, STEPS, 10):
            print(f"step {i:3d}  loss sharded {losses[i]:.6f}  one device {single_losses[i]:.6f}")
        print(f"final loss sharded {losses[-1]:.6f}, one device {single_losses[-1]:.6f}")
    return losses, single_losses


if __name__ == "__main__":
    if "--multi-host" in sys.argv:
        jax.distributed.initialize()
    main(zero="--zero" in sys.argv)
