"""Where the time of one ``step(layers)`` goes, and why a step right after the NumPy pass is slower.

For each model of ``legacy_step.py`` and each class, the median time of the phases of our ``step``
(measured by wrapping the functions the step calls, so the real step runs): gathering and checking the
layers' arrays, copying them into the staging buffers, the compiled call (synchronous dispatch: it
returns when the update is done), and the write-back into the layers with the commit; "rest" is the step's time minus those phases (Python
bookkeeping: the lock, the layout, the hyperparameter vector). Next to it, the floor of any JAX-based
step: one jitted call on the same two packed buffers (``p - 0.01 * g``, numpy in, numpy out).

Then the "after" experiment of issue 13: the seed's step, ours and the bare jitted call, each timed right after
(a) nothing (back to back), (b) a 1 ms sleep, (c) reading 16 MiB of unrelated memory (evicts the caches,
no sleep), (d) the model's NumPy forward/backward pass (what ``Model.train`` does between steps).
Run: ``JAX_PLATFORMS=cpu python benchmarks/legacy_step_breakdown.py`` on an idle machine.
"""

from __future__ import annotations

import collections
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from mpneuralnetwork import optimizers as seed

from mpnn_opt import optimizers as ours
from mpnn_opt.optimizers import _staging, _stepper

sys.path.insert(0, os.path.dirname(__file__))
import legacy_step  # noqa: E402  # the benchmark's models and data

PHASES = ("gather", "stage", "compiled call", "write-back + commit")
SIZES = {factory.__name__: (batch, steps) for factory, batch, steps in legacy_step.MODELS.values()}
_times: dict[str, float] = collections.defaultdict(float)


def _timed(phase: str, function: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _times[phase] += time.perf_counter() - start

    return wrapper


def _instrument() -> None:
    """Wraps the functions the step calls (module attributes looked up at call time)."""
    _staging.gather = _timed("gather", _staging.gather)
    _staging.stage = _timed("stage", _staging.stage)
    _staging.write_back = _timed("write-back + commit", _staging.write_back)
    real_compiled = _stepper.compiled

    def compiled(*key):
        functions = real_compiled(*key)
        return functions._replace(update=_timed("compiled call", functions.update))

    _stepper.compiled = compiled


_EVICT = np.ones(4 * 2**20, np.float32)  # 16 MiB


def _before(kind: str, model, x, y) -> None:
    if kind == "sleep 1 ms":
        time.sleep(0.001)
    elif kind == "read 16 MiB":
        float(_EVICT.sum())
    elif kind == "NumPy pass":
        legacy_step.numpy_pass(model, x, y)


def _bare_call(model) -> Callable[[], None]:
    """One jitted call on the model's two packed buffers: numpy in (zero-copy), numpy out."""
    entries = _staging.gather(model.layers)
    layout = _staging.Layout.of(entries)
    params = {g: _staging.aligned_empty(n, layout.dtype) for g, n in layout.sizes.items()}
    grads = {g: _staging.aligned_empty(n, layout.dtype) for g, n in layout.sizes.items()}
    for buffers in (params, grads):
        for flat in buffers.values():
            flat[:] = 0.5
    update = jax.jit(lambda p, g: {k: p[k] - 0.01 * g[k] for k in p})

    def call() -> None:
        for flat in update(params, grads).values():
            np.asarray(flat)

    return call


def _samples(model, x, y, bare: Callable[[], None], kind: str, steps: int):
    """``(step seconds, bare call seconds, {phase: seconds})`` of each timed step, each call right after ``kind``."""
    for i in range(steps + 3):  # the first three warm up (compilation)
        _before(kind, model, x, y)
        _times.clear()
        start = time.perf_counter()
        model.optimizer.step(model.layers)
        step_time = time.perf_counter() - start
        phases = dict(_times)
        _before(kind, model, x, y)
        start = time.perf_counter()
        bare()
        if i >= 3:
            yield step_time, time.perf_counter() - start, phases


def _setup(module, name: str, factory, batch: int):
    model, input_shape = legacy_step.build(factory, getattr(module, name)())
    x, y = legacy_step.data(input_shape, batch)
    legacy_step.numpy_pass(model, x, y)
    return model, x, y, _bare_call(model)


def breakdown(factory, batch: int, steps: int) -> None:
    for name in legacy_step.CLASSES:
        model, x, y, bare = _setup(ours, name, factory, batch)
        samples = list(_samples(model, x, y, bare, "NumPy pass", steps))
        phases = {p: [s[2].get(p, 0.0) for s in samples] for p in PHASES}
        phases["rest"] = [s[0] - sum(s[2].get(p, 0.0) for p in PHASES) for s in samples]
        cells = " | ".join(f"{statistics.median(phases[p]) * 1e3:.3f}" for p in (*PHASES, "rest"))
        print(
            f"| {factory.__name__} | {name} | {statistics.median(s[0] for s in samples) * 1e3:.3f} | {cells} | "
            f"{statistics.median(s[1] for s in samples) * 1e3:.3f} |",
            flush=True,
        )


def after(factory, batch: int, steps: int) -> None:
    for name in ("SGD", "Adam"):
        sides = {side: _setup(module, name, factory, batch) for side, module in (("seed", seed), ("ours", ours))}
        for kind in ("nothing", "sleep 1 ms", "read 16 MiB", "NumPy pass"):
            medians = {}
            for side, (model, x, y, bare) in sides.items():
                samples = list(_samples(model, x, y, bare, kind, steps))
                medians[side] = statistics.median(s[0] for s in samples)
                medians["bare"] = statistics.median(s[1] for s in samples)
            print(
                f"| {factory.__name__} | {name} | {kind} | {medians['seed'] * 1e6:.0f} | {medians['ours'] * 1e6:.0f} | "
                f"{medians['bare'] * 1e6:.0f} |",
                flush=True,
            )


def main() -> None:
    ours.use_synchronous_dispatch()  # as legacy_step.main: before JAX starts
    quick = "--quick" in sys.argv
    cores = len(os.sched_getaffinity(0))
    print(
        f"# step(layers) breakdown ({platform.machine()}, {cores} usable cores, jax {jax.__version__}, "
        f"numpy {np.__version__}, python {sys.version.split()[0]}; load {os.getloadavg()[0]:.2f})\n"
    )
    print("Median ms per step, each phase timed inside the real step (right after the model's NumPy pass).\n")
    print(f"| model | optimizer | step | {' | '.join(PHASES)} | rest | bare jitted call |")
    print("|---|---|---|---|---|---|---|---|---|")
    _instrument()
    models = [legacy_step.small_cnn, legacy_step.mlp_100k] + ([] if quick else [legacy_step.mlp_10m])
    for factory in models:
        breakdown(factory, *SIZES[factory.__name__])
    print("\nMedian us of the same step and of the bare jitted call, right after each kind of preceding work.\n")
    print("| model | optimizer | right after | seed step (us) | ours step (us) | bare jitted call (us) |")
    print("|---|---|---|---|---|---|")
    for factory in (legacy_step.small_cnn, legacy_step.mlp_100k):
        after(factory, *SIZES[factory.__name__])


if __name__ == "__main__":
    main()
