"""One optimizer update step: mpnn_opt against optax and torch, in one process.

Run: ``python benchmarks/update_step.py`` (about 6 minutes on 2 CPU cores), or ``--quick``.

Each row times one update step, params, grads, state -> new params, new state: jitted with the
params and state donated, ``block_until_ready``, after warm-up, the median over many steps.
Columns:

* ``time``: median wall time of one step;
* ``/optax``: that time over optax's on the same workload and optimizer (below 1 is faster);
* ``GB/s``: the bytes the update must move (read params, grads and state, write params and
  state, once each) over the time; ``copy GB/s`` in the header is a measured in-place
  ``a += s * b`` on 16M float32, for scale;
* ``compile``: trace + lower + compile of the jitted step, seconds (torch: none).

Variants: ``ours`` is the per-leaf alias with ``regularization=None`` (optax's math);
``ours L2`` the seed's default (decoupled decay for adam, coupled L2 for sgd / rmsprop) under the
seed's name mask; ``packed`` is ``ours`` on params and grads packed into one buffer (``pack(tree, mask=False)``:
without regularization the groups do not matter); ``packed L2`` is ``ours L2`` on the default
packing (two buffers: regularized and not). torch uses ``fused=True`` where it has it on CPU, else ``foreach=True``.
On W3 and W4, where every leaf (and every packed buffer) is under 2^20 elements, each JAX variant also
runs jitted with ``compiler_options=mpnn_opt.cpu_compiler_options(params)`` (rows ``..., no split``):
XLA:CPU then keeps each loop on one thread instead of splitting it across the cores. Ratios stay
relative to optax with XLA's default options.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mpnn_opt
from mpnn_opt.packed import pack

try:
    import torch
except ImportError:  # torch columns are optional
    torch = None

LR = 1e-3
OPTIMIZERS = ("adam", "sgd", "rmsprop")
# words of memory traffic per parameter: reads of p, g and each state buffer, writes of p and state
WORDS_MOVED = {"adam": 7, "sgd": 5, "rmsprop": 5}


def _w2_shapes() -> dict:
    """10,350,336 params in 200 leaves: an embedding, 8 attention and 2 MLP kernels, 189 vectors of 768."""
    tree = {"embed": {"weights": (1000, 768)}}
    for i in range(8):
        tree[f"attn{i}"] = {"weights": (768, 768)}
    tree["mlp_in"] = {"weights": (768, 3072)}
    tree["mlp_out"] = {"weights": (3072, 768)}
    for i in range(189):
        tree[f"vec{i:03d}"] = {("bias", "gamma", "beta")[i % 3]: (768,)}
    return tree


WORKLOADS: dict[str, Callable[[], dict]] = {
    "W1 16M x1": lambda: {"dense": {"weights": (4096, 4096)}},
    "W2 10.35M x200": _w2_shapes,
    "W3 MLP 100k x6": lambda: {
        f"dense{i}": {"weights": (n_in, n_out), "bias": (n_out,)}
        for i, (n_in, n_out) in enumerate([(256, 256), (256, 128), (128, 10)])
    },
    "W4 100 x1000": lambda: {f"layer{i:04d}": {("weights" if i % 2 else "bias"): (100,)} for i in range(1000)},
}


def _random_tree(shapes: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: {n: jnp.asarray(rng.standard_normal(s, np.float32)) for n, s in v.items()} for k, v in shapes.items()}


def _ours(name: str, regularization: str | None) -> mpnn_opt.GradientTransformation:
    kwargs = {"adam": {}, "sgd": {"momentum": 0.9}, "rmsprop": {}}[name]
    return getattr(mpnn_opt, name)(LR, regularization, **kwargs)


def _optax(name: str) -> optax.GradientTransformation:
    return {
        "adam": lambda: optax.adam(LR),
        "sgd": lambda: optax.sgd(LR, momentum=0.9),
        "rmsprop": lambda: optax.rmsprop(LR, eps_in_sqrt=False),
    }[name]()


def _timed(run_step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run_step()
    return time.perf_counter() - start


_SETTLE_STEPS = 5


def interleaved_medians(runners: dict[str, Callable[[], Any]], steps: int, rounds: int = 10) -> dict[str, float]:
    """Median seconds per step of each runner, run in turn, ``steps // rounds`` steps per turn.

    The machine is shared, so load comes and goes; taking turns spreads it over all the variants
    instead of charging whoever happened to run during a busy second.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run_step in runners.values():  # warm-up: first executions allocate and fault in pages
        for _ in range(3):
            run_step()
    for _ in range(rounds):
        for name, run_step in runners.items():
            getattr(run_step, "relocate", lambda: None)()
            for _ in range(_SETTLE_STEPS):  # untimed: let the previous runner's threads go idle first
                run_step()
            times[name] += [_timed(run_step) for _ in range(max(1, steps // rounds))]
    return {name: statistics.median(samples) for name, samples in times.items()}


def jax_runner(tx, apply_updates, params, grads, compiler_options=None) -> tuple[Callable[[], Any], float]:
    """(one-step callable, compile seconds) for a jitted update step with params and state donated."""

    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    state = tx.init(params)
    start = time.perf_counter()
    compiled = (
        jax.jit(step, donate_argnums=(0, 2), compiler_options=compiler_options).lower(params, grads, state).compile()
    )
    compile_seconds = time.perf_counter() - start
    box = [params, state]

    def run_step():
        box[0], box[1] = compiled(box[0], grads, box[1])
        jax.block_until_ready(box)

    def relocate():
        # fresh buffers for params and state each round: on small workloads where the buffers happen
        # to sit (cache sets, page offsets) moves a step's time by 20-30%; rounds average over it
        box[:] = jax.tree.map(jnp.copy, box)
        jax.block_until_ready(box)

    run_step.relocate = relocate
    return run_step, compile_seconds


def torch_runner(name: str, shapes: dict) -> tuple[str, Callable[[], Any]] | None:
    """(label, one ``optimizer.step()``) of torch's fused implementation, else foreach; None without torch."""
    if torch is None:
        return None
    torch.manual_seed(0)
    params = [torch.randn(s) for layer in shapes.values() for s in layer.values()]
    for p in params:
        p.grad = torch.randn_like(p)
    make = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "rmsprop": torch.optim.RMSprop}[name]
    extra = {"sgd": {"momentum": 0.9}}.get(name, {})
    try:
        optimizer, label = make(params, lr=LR, fused=True, **extra), "torch fused"
        optimizer.step()
    except (RuntimeError, TypeError, ValueError):
        optimizer, label = make(params, lr=LR, foreach=True, **extra), "torch foreach"

    def run_step():
        with torch.no_grad():
            optimizer.step()

    return label, run_step


def copy_bandwidth(steps: int) -> float:
    """Bytes per second of a jitted, donated in-place ``a += s * b`` on 16M float32."""
    n = 1 << 24
    a, b = jnp.ones(n, jnp.float32), jnp.ones(n, jnp.float32)
    axpy = jax.jit(lambda a, b: a + 1e-3 * b, donate_argnums=0)
    box = [a]

    def run_step():
        box[0] = axpy(box[0], b)
        box[0].block_until_ready()

    return 3 * 4 * n / interleaved_medians({"axpy": run_step}, steps)["axpy"]


def _steps_for(n_params: int, n_leaves: int, quick: bool) -> int:
    """Steps per variant: about a second of work each, so that a 100 us step is not timed on 10 ms of samples."""
    steps = 20 if n_params > 1_000_000 else 100 if n_leaves > 100 else 2000
    return steps // 4 if quick else steps


def bench_workload(label: str, shapes: dict, optimizers: tuple[str, ...], quick: bool) -> list[dict]:
    params, grads = _random_tree(shapes, 0), _random_tree(shapes, 1)
    n_params = sum(int(np.prod(s)) for layer in shapes.values() for s in layer.values())
    steps = _steps_for(n_params, sum(len(layer) for layer in shapes.values()), quick)
    rows = []
    for name in optimizers:
        variants = {
            "optax": (_optax(name), optax.apply_updates, params, grads),
            "ours": (_ours(name, None), mpnn_opt.apply_updates, params, grads),
            "ours L2": (_ours(name, "L2"), mpnn_opt.apply_updates, params, grads),
            # without regularization the groups do not matter: one buffer (mask=False) for all leaves
            "packed": (_ours(name, None), mpnn_opt.apply_updates, pack(params, False), pack(grads, False)),
            "packed L2": (_ours(name, "L2"), mpnn_opt.apply_updates, pack(params), pack(grads)),
        }
        runners, compile_seconds = {}, {}
        options = mpnn_opt.cpu_compiler_options(params)  # {} on W1 / W2: their loops are worth splitting
        for variant, (tx, apply, p, g) in variants.items():
            # donation consumes the params: give each variant its own copy
            runners[variant], compile_seconds[variant] = jax_runner(tx, apply, jax.tree.map(jnp.copy, p), g)
            if options:
                unsplit = f"{variant}, no split"
                runners[unsplit], compile_seconds[unsplit] = jax_runner(
                    tx, apply, jax.tree.map(jnp.copy, p), g, options
                )
        torch_labelled = torch_runner(name, shapes)
        if torch_labelled is not None:
            label_torch, runners[label_torch] = torch_labelled
            compile_seconds[label_torch] = None
        for variant, seconds in interleaved_medians(runners, steps).items():
            rows.append(
                dict(
                    workload=label,
                    optimizer=name,
                    variant=variant,
                    seconds=seconds,
                    compile=compile_seconds[variant],
                    n=n_params,
                )
            )
    return rows


def _format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def print_table(rows: list[dict], bandwidth: float) -> None:
    baseline = {(r["workload"], r["optimizer"]): r for r in rows if r["variant"] == "optax"}
    print(f"\ncopy bandwidth (a += s*b, 16M f32): {bandwidth / 1e9:.1f} GB/s")
    print("| workload | optimizer | variant | time | /optax | GB/s | compile s | compile /optax |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = baseline[(r["workload"], r["optimizer"])]
        gbps = WORDS_MOVED[r["optimizer"]] * 4 * r["n"] / r["seconds"] / 1e9
        compiled = "-" if r["compile"] is None else f"{r['compile']:.2f}"
        compile_ratio = "-" if r["compile"] is None else f"{r['compile'] / base['compile']:.2f}"
        print(
            f"| {r['workload']} | {r['optimizer']} | {r['variant']} | {_format_seconds(r['seconds'])} | "
            f"{r['seconds'] / base['seconds']:.2f} | {gbps:.1f} | {compiled} | {compile_ratio} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="adam only, fewer steps: a smoke run of about a minute")
    parser.add_argument("--workloads", default="W1,W2,W3,W4", help="comma-separated subset, e.g. W3,W4")
    parser.add_argument(
        "--sync-dispatch",
        action="store_true",
        help="run each step on the calling thread (jax_cpu_enable_async_dispatch=False): no thread hand-off per call",
    )
    args = parser.parse_args()
    if args.sync_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    optimizers = ("adam",) if args.quick else OPTIMIZERS
    wanted = args.workloads.split(",")
    print(
        f"jax {jax.__version__}, optax {optax.__version__}, torch {torch.__version__ if torch else 'absent'}, {jax.devices()[0].platform}"
    )
    bandwidth = copy_bandwidth(10 if args.quick else 30)
    rows = []
    for label, shapes in WORKLOADS.items():
        if label.split()[0] in wanted:
            rows += bench_workload(label, shapes(), optimizers, args.quick)
    print_table(rows, bandwidth)


if __name__ == "__main__":
    main()
