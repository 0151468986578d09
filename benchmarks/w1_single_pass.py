"""Can one Adam step on a single 16M-float leaf (W1) beat XLA:CPU's three loops from inside JAX?

XLA emits three loops for Adam (m, then v, then p re-reading m and v): 10 words of memory traffic per
parameter where torch's fused kernel moves 7. Each formulation below runs mpnn_opt.adam's own
``update`` (no re-implemented math) in a different loop shape, checks one step against the plain
step, and reports the median step time. Results: ``update_step_results.md``. Run: ``python benchmarks/w1_single_pass.py`` (about two minutes; the fori_loop variant takes about 10 s a step).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import mpnn_opt

N = 1 << 24
TX = mpnn_opt.adam(1e-3, None)


def _is_vector(x) -> bool:
    return jnp.ndim(x) == 1


def plain(params, grads, state):
    updates, state = TX.update(grads, state, params)
    return mpnn_opt.apply_updates(params, updates), state


def fori_chunks(chunk: int):
    """A fori_loop over chunks: slice p, g, m, v; update; write back with dynamic_update_slice."""

    def step(params, grads, state):
        def body(i, carry):
            p_all, s_all = carry
            cut = lambda x: lax.dynamic_slice_in_dim(x, i * chunk, chunk) if _is_vector(x) else x  # noqa: E731
            # per-parameter state from the carry (this chunk still holds old values), counters from the old state
            s_chunk = jax.tree.map(lambda new, old: cut(new) if _is_vector(new) else old, s_all, state)
            p_chunk = cut(p_all)
            updates, s_chunk = TX.update(cut(grads), s_chunk, p_chunk)
            p_chunk = mpnn_opt.apply_updates(p_chunk, updates)
            put = lambda full, part: (
                lax.dynamic_update_slice_in_dim(full, part, i * chunk, 0) if _is_vector(full) else part
            )  # noqa: E731
            return put(p_all, p_chunk), jax.tree.map(put, s_all, s_chunk)

        return lax.fori_loop(0, N // chunk, body, (params, state))

    return step


def scan_rows(chunk: int):
    """A scan over the rows of an (N / chunk, chunk) view of p, g, m and v."""

    def step(params, grads, state):
        rows = lambda x: x.reshape(-1, chunk) if _is_vector(x) else None  # noqa: E731
        counters = jax.tree.map(lambda x: None if _is_vector(x) else x, state)

        def body(new_counters, xs):
            p_row, g_row, s_rows = xs
            s_row = jax.tree.map(lambda r, old: old if r is None else r, s_rows, state, is_leaf=lambda x: x is None)
            updates, s_new = TX.update(g_row, s_row, p_row)
            split = lambda keep_vectors: jax.tree.map(lambda x: x if _is_vector(x) == keep_vectors else None, s_new)  # noqa: E731
            return split(False), (mpnn_opt.apply_updates(p_row, updates), split(True))

        new_counters, (p_rows, s_rows) = lax.scan(
            body, counters, (rows(params), rows(grads), jax.tree.map(rows, state))
        )
        merge = lambda r, c: c if r is None else r.reshape(-1)  # noqa: E731
        return p_rows.reshape(-1), jax.tree.map(merge, s_rows, new_counters, is_leaf=lambda x: x is None)

    return step


def _median_seconds(compiled, args, steps: int) -> float:
    box = list(args)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        box[0], box[2] = compiled(*box)
        jax.block_until_ready(box)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    rng = np.random.default_rng(0)
    p0 = jnp.asarray(rng.standard_normal(N, np.float32))
    grads = jnp.asarray(rng.standard_normal(N, np.float32))
    runs = {"plain (three loops)": (plain, 10)}
    runs.update({f"scan over rows of {c}": (scan_rows(c), 3) for c in (16384, 65536, 1 << 20)})
    runs["fori_loop, 64K chunks, dynamic_update_slice"] = (fori_chunks(65536), 1)
    reference = None
    for name, (step, steps) in runs.items():
        compiled = jax.jit(step, donate_argnums=(0, 2)).lower(p0, grads, TX.init(p0)).compile()
        p_one, state = compiled(jnp.copy(p0), grads, TX.init(p0))  # one step from p0, to check the numbers
        reference = jnp.copy(p_one) if reference is None else reference  # p_one is donated below
        error = float(jnp.max(jnp.abs(p_one - reference)))
        seconds = _median_seconds(compiled, (p_one, grads, state), steps)
        print(f"{name}: {seconds * 1e3:.1f} ms per step (one step differs from plain by at most {error:.1e})")


if __name__ == "__main__":
    main()
