"""XLA:CPU compiler options for a jitted training step, chosen from the sizes of its params.

XLA:CPU cuts every large elementwise loop of a compiled step into pieces that run on its worker
threads (its parallel task assigner writes ``outer_dimension_partitions`` into the HLO). For a
loop over millions of floats that is a win; for the loops of a small model it is a loss, because
waking another thread and waiting for it costs tens of microseconds on a few-core machine, more
than the loop itself. Measured on a 2-core CPU (one update step, jitted and donated, same
process; see ``benchmarks/update_step_results.md``):

=====================================  ==================  ===================
one leaf of n float32, mpnn_opt.adam   split (XLA default)  not split
=====================================  ==================  ===================
n = 131,072                            161 us              100 us
n = 1,048,576                          1.07 ms             1.00 ms
n = 4,194,304                          2.99 ms             5.44 ms
=====================================  ==================  ===================

:func:`cpu_compiler_options` returns the option that turns the splitting off when every leaf is
below :data:`PARALLEL_LOOP_MIN_ELEMENTS`, and nothing otherwise, so it can be passed to every
``jax.jit`` of a step. optax, torch and Keras have no counterpart: it is a property of XLA:CPU,
not of the update rule, and it changes no number.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.core import Tracer

__all__ = ["PARALLEL_LOOP_MIN_ELEMENTS", "cpu_compiler_options"]

# From the crossover measured above (between 1M and 2M float32 on 2 cores).
PARALLEL_LOOP_MIN_ELEMENTS = 1 << 20

_NO_THREAD_SPLIT = {"xla_disable_hlo_passes": "cpu-parallel-task-assigner"}


def cpu_compiler_options(
    params: Any, *, parallel_loop_min_elements: int = PARALLEL_LOOP_MIN_ELEMENTS
) -> dict[str, str]:
    """``compiler_options`` for ``jax.jit`` of a step over ``params``: no thread splitting for small leaves.

    ``{'xla_disable_hlo_passes': 'cpu-parallel-task-assigner'}`` when the step runs on CPU (the
    leaves' devices, or JAX's default backend for NumPy arrays and shape structs) and every leaf has
    fewer than ``parallel_loop_min_elements`` elements; ``{}`` otherwise. Use it as
    ``jax.jit(step, donate_argnums=..., compiler_options=cpu_compiler_options(params))``, e.g. with
    :func:`mpnn_opt.pack`, which turns a small model into one or two buffers of that size.
    """
    if (
        isinstance(parallel_loop_min_elements, bool)
        or not isinstance(parallel_loop_min_elements, int)
        or parallel_loop_min_elements < 1
    ):
        raise ValueError(f"parallel_loop_min_elements must be a positive int, got {parallel_loop_min_elements!r}")
    leaves = jax.tree.leaves(params)
    if not leaves or not all(_on_cpu(leaf) for leaf in leaves):
        return {}
    largest = max(math.prod(getattr(leaf, "shape", ())) for leaf in leaves)
    return dict(_NO_THREAD_SPLIT) if largest < parallel_loop_min_elements else {}


def _on_cpu(leaf: Any) -> bool:
    if isinstance(leaf, jax.Array) and not isinstance(leaf, Tracer):
        return all(device.platform == "cpu" for device in leaf.devices())
    return jax.default_backend() == "cpu"
