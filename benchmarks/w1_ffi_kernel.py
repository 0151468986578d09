"""W1 (one 16M float32 leaf): can a single-pass Adam kernel, called through ``jax.ffi``, match torch's fused Adam?

XLA:CPU compiles mpnn_opt.adam (and optax.adam) into three loops over the parameter (m, then v, then p
re-reading m and v: 10 words of memory traffic per parameter); torch's fused Adam makes one pass (7 words).
``benchmarks/w1_single_pass.py`` shows that nothing expressible in jax.numpy / lax gets XLA to one pass.
This script tries the remaining tool JAX offers: a C++ kernel registered with ``jax.ffi`` (XLA's FFI),
compiled here with the system's C++ compiler against ``jax.ffi.include_dir()``, called inside the
jitted step with its outputs aliased to its inputs, so p, m and v are updated in place in one pass,
split over the CPU's cores with ``std::thread``.

The kernel computes mpnn_opt.adam(regularization=None)'s formula (``m / (1 - b1^t)`` over
``sqrt(v) / sqrt(1 - b2^t) + eps``, bias corrections from mpnn_opt's own ``bias_correction``); the
script checks that it agrees with mpnn_opt.adam after 3 steps, then times one donated, jitted step of
each variant in interleaved rounds, all in one process. It is a measurement, not a feature of the
library: mpnn_opt ships no compiled code. Run: ``python benchmarks/w1_ffi_kernel.py`` (needs g++;
torch row when torch is installed).
"""

from __future__ import annotations

import ctypes
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mpnn_opt
from mpnn_opt._numerics import bias_correction

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from update_step import _format_seconds, interleaved_medians, jax_runner, torch_runner  # noqa: E402

KERNEL = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static int64_t copies_made = 0;  // calls where XLA did not alias an output to its input
extern "C" int64_t CopiesMade() { return copies_made; }

// scalars: lr, beta1, beta2, eps, bias_correction1 = 1 - b1^t, bias_correction2 = 1 - b2^t
static void adam_range(float* p, const float* g, float* m, float* v, const float* s, int64_t begin, int64_t end) {
  const float lr = s[0], b1 = s[1], b2 = s[2], eps = s[3], bc1 = s[4], sqrt_bc2 = std::sqrt(s[5]);
  const float one_minus_b1 = 1.0f - b1, one_minus_b2 = 1.0f - b2;
  for (int64_t i = begin; i < end; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + one_minus_b1 * gi;
    const float vi = b2 * v[i] + one_minus_b2 * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] + (-lr) * ((mi / bc1) / (std::sqrt(vi) / sqrt_bc2 + eps));
  }
}

static ffi::Error AdamStepImpl(ffi::Buffer<ffi::F32> p, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> m,
                               ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> scalars,
                               ffi::ResultBuffer<ffi::F32> p_out, ffi::ResultBuffer<ffi::F32> m_out,
                               ffi::ResultBuffer<ffi::F32> v_out) {
  const int64_t n = static_cast<int64_t>(p.element_count());
  float* po = p_out->typed_data();
  float* mo = m_out->typed_data();
  float* vo = v_out->typed_data();
  // aliased outputs are the inputs' buffers; copy only if XLA gave us separate ones
  if (po != p.typed_data() || mo != m.typed_data() || vo != v.typed_data()) ++copies_made;
  if (po != p.typed_data()) std::copy(p.typed_data(), p.typed_data() + n, po);
  if (mo != m.typed_data()) std::copy(m.typed_data(), m.typed_data() + n, mo);
  if (vo != v.typed_data()) std::copy(v.typed_data(), v.typed_data() + n, vo);
  const int64_t threads = n < (1 << 16) ? 1 : std::max(1u, std::thread::hardware_concurrency());
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    workers.emplace_back(adam_range, po, g.typed_data(), mo, vo, scalars.typed_data(), begin, end);
  }
  adam_range(po, g.typed_data(), mo, vo, scalars.typed_data(), 0, std::min(n, chunk));
  for (auto& worker : workers) worker.join();
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdamStep, AdamStepImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
"""

LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8


def build_kernel(workdir: pathlib.Path) -> ctypes.CDLL:
    source, library = workdir / "adam_step.cc", workdir / "adam_step.so"
    source.write_text(KERNEL)
    # -fno-math-errno: a sqrt that may set errno keeps the loop from being vectorized
    command = [
        "g++",
        "-O3",
        "-march=native",
        "-fno-math-errno",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-pthread",
        "-w",
        f"-I{jax.ffi.include_dir()}",
        str(source),
        "-o",
        str(library),
    ]
    subprocess.run(command, check=True)
    return ctypes.cdll.LoadLibrary(str(library))


def ffi_adam_step(params, grads, state):
    """One step with the kernel: ``state = (count, m, v)`` for the single leaf ``params['w']``."""
    count, m, v = state
    count = count + 1
    scalars = jnp.stack(
        [
            jnp.float32(LR),
            jnp.float32(BETA1),
            jnp.float32(BETA2),
            jnp.float32(EPS),
            bias_correction(BETA1, count),
            bias_correction(BETA2, count),
        ]
    )
    shape = jax.ShapeDtypeStruct(params["w"].shape, jnp.float32)
    call = jax.ffi.ffi_call("mpnn_opt_adam_step", (shape, shape, shape), input_output_aliases={0: 0, 2: 1, 3: 2})
    p, m, v = call(params["w"], grads["w"], m, v, scalars)
    return {"w": p}, (count, m, v)


def main() -> None:
    if shutil.which("g++") is None:
        print("g++ not found: nothing to measure")
        return
    with tempfile.TemporaryDirectory() as workdir:
        library = build_kernel(pathlib.Path(workdir))
        jax.ffi.register_ffi_target("mpnn_opt_adam_step", jax.ffi.pycapsule(library.AdamStep), platform="cpu")
        n = 1 << 24
        rng = np.random.default_rng(0)
        params = {"w": jnp.asarray(rng.standard_normal(n, np.float32))}
        grads = {"w": jnp.asarray(rng.standard_normal(n, np.float32))}

        # agreement with mpnn_opt.adam after 3 steps
        tx = mpnn_opt.adam(LR, None, beta1=BETA1, beta2=BETA2, epsilon=EPS)
        ref, ref_state = params, tx.init(params)
        mine, mine_state = params, (jnp.int32(0), jnp.zeros(n), jnp.zeros(n))
        for _ in range(3):
            updates, ref_state = tx.update(grads, ref_state, ref)
            ref = mpnn_opt.apply_updates(ref, updates)
            mine, mine_state = jax.jit(ffi_adam_step)(mine, grads, mine_state)
        error = float(jnp.max(jnp.abs(mine["w"] - ref["w"])) / jnp.max(jnp.abs(ref["w"])))
        print(f"kernel vs mpnn_opt.adam after 3 steps: max|diff| / max|ref| = {error:.1e}")

        runners = {}
        for label, transform in (("optax.adam", optax.adam(LR)), ("mpnn_opt.adam (XLA, 3 loops)", tx)):
            runners[label], _ = jax_runner(transform, optax.apply_updates, jax.tree.map(jnp.copy, params), grads)
        compiled = jax.jit(ffi_adam_step, donate_argnums=(0, 2)).lower(params, grads, mine_state).compile()
        box = [jax.tree.map(jnp.copy, params), (jnp.int32(0), jnp.zeros(n), jnp.zeros(n))]

        def run_ffi():
            box[0], box[1] = compiled(box[0], grads, box[1])
            jax.block_until_ready(box)

        runners["jax.ffi single-pass kernel"] = run_ffi
        torch_labelled = torch_runner("adam", {"dense": {"weights": (n,)}})
        if torch_labelled is not None:
            runners[torch_labelled[0]] = torch_labelled[1]
        times = interleaved_medians(runners, 40)
        library.CopiesMade.restype = ctypes.c_int64
        print(f"kernel calls whose outputs were not aliased to their inputs: {library.CopiesMade()}")
        base = times["optax.adam"]
        print(f"\nW1, one leaf of {n:,} float32, one adam step (median; jax {jax.__version__}):")
        print("| variant | time | /optax |\n|---|---|---|")
        for label, seconds in times.items():
            print(f"| {label} | {_format_seconds(seconds)} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
