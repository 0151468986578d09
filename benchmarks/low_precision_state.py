"""Low-precision optimizer state: bytes per parameter and step time, mpnn_opt against optax.adam, in one process.

Run: ``python benchmarks/low_precision_state.py`` (10.4M params in 200 leaves), or ``--small`` (about 100k
params in 200 leaves, a smoke run of seconds). Issue 15's target: the 8-bit state's step at most 1.5x the float32
state's (``mpnn_opt.adam``) on CPU.

Each row times one Adam step, params, grads, state -> new params, new state (``lr = 1e-3``, no weight decay):
jitted with the params and the state donated, ``block_until_ready``, after warm-up, the median over interleaved
rounds (each variant takes turns, so that load on a shared machine falls on all of them alike). Columns:

* ``state B/param``: ``mpnn_opt.per_device_nbytes`` of the state after ``init``, over the parameter count
  (8 for two float32 moments; counters and, for the 8-bit state, the block scales included);
* ``step``: median wall time of one step;
* ``/ ours f32``: over ``mpnn_opt.adam``'s with float32 state; ``/ optax f32``: over ``optax.adam``'s.

The model mixes shapes: an embedding (1000 x 768), eight 768 x 768 and two 768 x 3072 kernels, and 189 small
leaves cycling through vectors of 768, 3x3x16x16 convolution kernels, vectors of 1000 and scalars, so that the
8-bit state meets tensors whose sizes are not multiples of its blocks.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mpnn_opt

LR = 1e-3
BF16 = jnp.bfloat16


def model_shapes(width: int, vocabulary: int, channels: int, odd: int) -> dict[str, tuple[int, ...]]:
    """200 leaves: an embedding, 8 square and 2 MLP kernels of ``width``, then 189 small leaves of four kinds."""
    shapes: dict[str, tuple[int, ...]] = {"embed": (vocabulary, width)}
    shapes.update({f"attention{i}": (width, width) for i in range(8)})
    shapes.update({"mlp_in": (width, 4 * width), "mlp_out": (4 * width, width)})
    small = [(width,), (3, 3, channels, channels), (odd,), ()]
    shapes.update({f"small{i:03d}": small[i % 4] for i in range(189)})
    return shapes


MODELS = {
    "10M x200": lambda: model_shapes(768, 1000, 16, 1000),  # 10,397,383 params
    "100k x200": lambda: model_shapes(72, 100, 4, 100),  # 105,115 params
}


def variants() -> dict[str, tuple[Any, Callable]]:
    """name -> (transformation, its apply_updates)."""
    return {
        "optax.adam f32": (optax.adam(LR), optax.apply_updates),
        "optax.adam mu bf16": (optax.adam(LR, mu_dtype=BF16), optax.apply_updates),
        "mpnn_opt.adam f32": (mpnn_opt.adam(LR, None), mpnn_opt.apply_updates),
        "mpnn_opt.adam mu bf16": (mpnn_opt.adam(LR, None, mu_dtype=BF16), mpnn_opt.apply_updates),
        "mpnn_opt.adam mu+nu bf16": (mpnn_opt.adam(LR, None, mu_dtype=BF16, nu_dtype=BF16), mpnn_opt.apply_updates),
        "mpnn_opt 8-bit": (
            mpnn_opt.chain(mpnn_opt.scale_by_adam_8bit(), mpnn_opt.scale_by_learning_rate(LR)),
            mpnn_opt.apply_updates,
        ),
    }


def random_tree(shapes: dict[str, tuple[int, ...]], seed: int, scale: float = 1.0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {name: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32) for name, shape in shapes.items()}


def jax_runner(tx, apply_updates: Callable, params: Any, grads: Any) -> tuple[Callable[[], None], float, float]:
    """(one-step callable, state bytes, compile seconds) for a jitted step with params and state donated."""

    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    state = jax.jit(tx.init)(params)
    nbytes = float(sum(mpnn_opt.per_device_nbytes(state).values()))
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 2)).lower(params, grads, state).compile()
    compile_seconds = time.perf_counter() - start
    box = [params, state]

    def run_step() -> None:
        box[0], box[1] = compiled(box[0], grads, box[1])
        jax.block_until_ready(box)

    return run_step, nbytes, compile_seconds


def interleaved_medians(runners: dict[str, Callable[[], None]], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each runner, run in turn, ``steps // rounds`` timed steps per turn."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run_step in runners.values():  # warm-up: first executions allocate and fault in pages
        for _ in range(3):
            run_step()
    for _ in range(rounds):
        for name, run_step in runners.items():
            run_step()  # untimed: let the previous runner's threads go idle first
            for _ in range(max(1, steps // rounds)):
                start = time.perf_counter()
                run_step()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = jax.devices()[0]
    return (
        f"{cpu}, {cores} usable cores, jax {jax.__version__} on {device.platform} ({device.device_kind}), "
        f"optax {optax.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--small", action="store_true", help="the 100k-parameter model: a smoke run of seconds")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant (default 60; 400 with --small)"
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds the timed steps are split into")
    args = parser.parse_args()
    model = "100k x200" if args.small else "10M x200"
    steps = args.steps or (400 if args.small else 60)
    shapes = MODELS[model]()
    n_params = sum(int(np.prod(shape)) for shape in shapes.values())
    params, grads = random_tree(shapes, 0), random_tree(shapes, 1, scale=1e-2)

    runners, nbytes, compile_seconds = {}, {}, {}
    for name, (tx, apply_updates) in variants().items():
        # donation consumes the params: each variant gets its own copy
        copy = jax.tree.map(jnp.copy, params)
        runners[name], nbytes[name], compile_seconds[name] = jax_runner(tx, apply_updates, copy, grads)
    seconds = interleaved_medians(runners, steps, args.rounds)

    print(f"# Low-precision Adam state: {model} ({n_params:,} params in {len(shapes)} leaves)\n")
    print(f"Date: {datetime.date.today().isoformat()}. Machine: {machine()}.")
    print(f"Command: `python benchmarks/low_precision_state.py {' '.join(sys.argv[1:])}`".rstrip() + ".")
    print(f"Median of {steps} steps per variant in {args.rounds} interleaved rounds.\n")
    print("| variant | state B/param | step (ms) | / ours f32 | / optax f32 | compile (s) |")
    print("|---|---|---|---|---|---|")
    ours, theirs = seconds["mpnn_opt.adam f32"], seconds["optax.adam f32"]
    for name, time_taken in seconds.items():
        print(
            f"| {name} | {nbytes[name] / n_params:.3f} | {time_taken * 1e3:.3f} | {time_taken / ours:.2f} | "
            f"{time_taken / theirs:.2f} | {compile_seconds[name]:.2f} |"
        )


if __name__ == "__main__":
    main()
