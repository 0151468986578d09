"""Import time of ``mpnn_opt.optimizers`` and the first ``step(layers)``, each in a fresh interpreter.

For each class on the 100k MLP of ``legacy_step.py``: the import (and, for comparison in the same interpreter
kind, ``import jax`` and ``import optax`` alone), the first step (which starts JAX's CPU backend, traces and
compiles the update) and the second step, with JAX's default (asynchronous) dispatch and after
``mpnn_opt.optimizers.use_synchronous_dispatch()``. Then the first step again with JAX's persistent compilation cache
(``jax_compilation_cache_dir``) filled by an earlier interpreter: what a user who turns the cache on gets from
the second run of a script on. Median of ``RUNS`` interpreters per row.
Run: ``JAX_PLATFORMS=cpu python benchmarks/first_step.py`` on an idle machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

RUNS = 5
CLASSES = ("SGD", "RMSprop", "Adam", "Transform")

_CHILD = r"""
import json, sys, time
cache = sys.argv[2]
if cache:
    import jax
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
from mpnn_opt import optimizers as ours
if sys.argv[4] == "synchronous":
    ours.use_synchronous_dispatch()
sys.path.insert(0, sys.argv[3])
import legacy_step
name = sys.argv[1]
if name == "Transform":
    import mpnn_opt
    optimizer = ours.Transform(mpnn_opt.chain(mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.adam(1e-3)))
else:
    optimizer = getattr(ours, name)()
model, shape = legacy_step.build(legacy_step.mlp_100k, optimizer)
x, y = legacy_step.data(shape, 256)
legacy_step.numpy_pass(model, x, y)
times = []
for _ in range(2):
    start = time.perf_counter()
    optimizer.step(model.layers)
    times.append(time.perf_counter() - start)
print(json.dumps({"first": times[0], "second": times[1]}))
"""

_IMPORT_ONLY = "import sys, time; start = time.perf_counter(); import {module}; print(time.perf_counter() - start)"


def _child(name: str, cache: str, dispatch: str) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, name, cache, here, dispatch], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _import_only(module: str) -> float:
    code = _IMPORT_ONLY.format(module=module)
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def _ms(values: list[float]) -> str:
    values = sorted(1000 * value for value in values)
    digits = 2 if values[-1] < 10 else 0
    return f"{statistics.median(values):.{digits}f} ({values[0]:.{digits}f}-{values[-1]:.{digits}f})"


def main() -> None:
    import jax
    import numpy as np

    cores = len(os.sched_getaffinity(0))
    print(
        f"# first step and import, fresh interpreters ({platform.machine()}, {cores} usable cores, jax "
        f"{jax.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}); median (min-max) of {RUNS}\n"
    )
    print("| import | ms |")
    print("|---|---|")
    for module in ("jax", "optax", "mpnn_opt.optimizers"):
        print(f"| `import {module}` | {_ms([_import_only(module) for _ in range(RUNS)])} |")
    print()
    print("| class | dispatch | first step (ms) | second step (ms) | first step, persistent cache filled (ms) |")
    print("|---|---|---|---|---|")
    for name in CLASSES:
        for dispatch in ("default", "synchronous"):
            cold = [_child(name, "", dispatch) for _ in range(RUNS)]
            with tempfile.TemporaryDirectory() as cache:
                _child(name, cache, dispatch)  # fills the cache
                cached = [_child(name, cache, dispatch) for _ in range(RUNS)]
            print(
                f"| {name} | {dispatch} | {_ms([run['first'] for run in cold])} | "
                f"{_ms([run['second'] for run in cold])} | {_ms([run['first'] for run in cached])} |"
            )


if __name__ == "__main__":
    main()
