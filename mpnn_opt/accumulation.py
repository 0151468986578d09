"""Gradient accumulation: one real optimizer step every ``k`` micro-steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mpnn_opt import _checks
from mpnn_opt._numerics import zero_count
from mpnn_opt._tree import as_arrays, check_same_structure, check_state, tree_map, zeros_like_tree
from mpnn_opt.base import AnyTransformation, GradientTransformation, OptState, Params, with_extra_args

__all__ = ["AccumulateState", "accumulate"]


class AccumulateState(NamedTuple):
    """The state of :func:`accumulate`."""

    micro_step: jax.Array  # int32 in [0, every_k): micro-steps folded into ``gradient_sum`` so far
    gradient_sum: Any  # sum of this window's gradients, mirrors params
    inner_state: OptState


def accumulate(inner: AnyTransformation, every_k: int) -> GradientTransformation:
    """Sums ``every_k`` micro-batch gradients and runs ``inner`` once on their mean.

    On micro-steps ``1..k-1`` the updates are zeros (in the dtypes ``inner``'s updates have) and ``inner``
    does not run at all (a ``lax.cond``:
    its clipping, moments and weight decay are computed once per real step, unlike a wrapper that runs
    them every micro-step). On micro-step ``k`` the updates are ``inner(mean of the k gradients)``.
    The extra memory is one params-sized sum. Equals optax ``MultiSteps(inner, k)`` in its numbers.
    """
    _checks.integer("every_k", every_k, minimum=1)

    def init_fn(params: Params) -> AccumulateState:
        return AccumulateState(zero_count(), zeros_like_tree(params, None), inner.init(params))

    inner = with_extra_args(inner)

    def update_fn(updates, state, params=None, **extra_args):
        check_state(state, AccumulateState, "accumulate")
        updates = as_arrays(updates)
        check_same_structure(state.gradient_sum, updates, expected_name="the accumulated gradients", got_name="updates")
        gradient_sum = tree_map(lambda s, g: s + g.astype(s.dtype), state.gradient_sum, updates)
        micro_step = state.micro_step + 1

        def real_step(operands):
            gradient_sum, inner_state = operands
            mean = tree_map(lambda s, g: (s / every_k).astype(g.dtype), gradient_sum, updates)
            new_updates, inner_state = inner.update(mean, inner_state, params, **extra_args)
            return new_updates, inner_state, tree_map(jnp.zeros_like, gradient_sum)

        def micro(operands):
            gradient_sum, inner_state = operands
            # zeros of the real step's update dtypes, which may differ from the gradients' (master_weights
            # gives float32 updates for bfloat16 gradients): both branches of the cond must agree
            real_updates = jax.eval_shape(real_step, operands)[0]
            return jax.tree.map(lambda u: jnp.zeros(u.shape, u.dtype), real_updates), inner_state, gradient_sum

        new_updates, inner_state, gradient_sum = jax.lax.cond(
            micro_step >= every_k, real_step, micro, (gradient_sum, state.inner_state)
        )
        return new_updates, AccumulateState(jnp.where(micro_step >= every_k, 0, micro_step), gradient_sum, inner_state)

    return GradientTransformation(init_fn, update_fn)
