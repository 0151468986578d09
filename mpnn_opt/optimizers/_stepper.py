"""The machinery of ``step(layers)``: one compiled transformation step for a list of mpneuralnetwork layers.

:class:`Stepper` is shared by :class:`~mpnn_opt.optimizers.Transform` and the seed's classes
(:class:`~mpnn_opt.optimizers.SGD`, :class:`~mpnn_opt.optimizers.RMSprop`, :class:`~mpnn_opt.optimizers.Adam`).
They differ only in the :class:`Program` they run and in where a step's state comes from; every step:

1. gathers the layers' ``(param, grad)`` pairs (:mod:`mpnn_opt.optimizers._staging`) and copies them into
   two aligned host buffers per dtype, ``'regularized'`` and ``'unregularized'`` (kept from step to step,
   wrapped by JAX without a copy);
2. runs one jit-compiled call for the whole model: the program's transformation updates either that
   two-leaf packed tree (``view = "packed"``: one fused loop per buffer, for elementwise rules) or the
   tree ``{"layer_{i}": {name: array}}`` sliced out of it (``view = "named"``: what a functional loop would
   see, so masks by name, per-leaf clipping and global norms mean what they say). The call reads the live
   state, the transformation's own state, and writes the new state and params into spare buffers of the
   same shapes (last step's state and new params, donated), so outputs reuse memory while the live state
   survives until the step commits;
3. copies the new values into the layers' own arrays and commits the new state in one assignment, all or
   nothing (:func:`mpnn_opt.optimizers._staging.write_back`: on any exception, ``KeyboardInterrupt``
   included, the layers get their old values back and nothing is committed).

Hyperparameters may enter the compiled call as one traced vector (``Program.transformation(hyper)`` builds
the transformation from it inside the trace), so new values reuse the compiled code. A state handed out to
the caller (``Transform.state``) is never donated later.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_opt.base import GradientTransformation, apply_updates
from mpnn_opt.compiler_options import cpu_compiler_options
from mpnn_opt.optimizers import _staging

__all__ = ["Compiled", "Program", "Stepper", "compiled"]


class Program(Protocol):
    """What a :class:`Stepper` runs: hashable (compiled code is shared by equal programs)."""

    view: str  # "packed" (the group buffers) or "named" ({"layer_{i}": {name: array}})

    def transformation(self, hyper: Any) -> GradientTransformation:
        """The transformation, built from the traced hyperparameter vector ``hyper`` (which it may ignore)."""
        ...

    def prepare(self, state: Any, count: Any) -> Any:
        """``state`` as the update reads it, given the traced step count ``count`` (which it may ignore)."""
        ...


def unpack(flat: dict, layout: _staging.Layout) -> dict:
    """The packed group buffers as the tree ``{"layer_{i}": {name: array}}`` (slices, fused by XLA)."""
    tree: dict[str, dict[str, Any]] = {}
    for (layer_key, name, shape), (group, start, stop) in zip(layout.leaves, layout.spans):
        tree.setdefault(layer_key, {})[name] = flat[group][start:stop].reshape(shape)
    return tree


def pack(tree: dict, layout: _staging.Layout) -> dict:
    """The tree ``{"layer_{i}": {name: array}}`` packed into the group buffers of ``layout``."""
    pieces: dict[str, list] = {group: [] for group in layout.sizes}
    for (layer_key, name, _), (group, _, _) in zip(layout.leaves, layout.spans):
        pieces[group].append(tree[layer_key][name].reshape(-1))  # within a group, spans follow the leaves' order
    return {group: jnp.concatenate(parts) if parts else jnp.zeros(0, layout.dtype) for group, parts in pieces.items()}


class Compiled(NamedTuple):
    """A program's jitted functions for one layout.

    * ``init(params, hyper) -> state``;
    * ``update(params, grads, state, spare_params, spare_state, count, hyper) -> (new params, new state)``,
      the spares donated (their memory takes the outputs);
    * ``masked_update(params, grads, state, count, hyper, mask) -> (new params, new state)``: only the spans
      marked in ``mask`` (a boolean tree like the packed params) and their state change; nothing donated.
      For rounds of tied parameters (packed programs only).
    """

    init: Any
    update: Any
    masked_update: Any


def compiled(program: Program, layout: _staging.Layout, options: tuple) -> Compiled:
    """The :class:`Compiled` functions of ``program`` for ``layout``, shared by equal programs when hashable."""
    try:
        hash(program)
    except TypeError:  # a transformation holding unhashable values: compiled for this optimizer only
        return _build(program, layout, options)
    return _cached(program, layout.dtype, layout.leaves, options)


@functools.lru_cache(maxsize=32)
def _cached(program: Program, dtype: str, leaves: tuple, options: tuple) -> Compiled:
    spans, sizes = _staging.layout_spans(tuple((name, shape) for _, name, shape in leaves))
    return _build(program, _staging.Layout(dtype, leaves, spans, sizes), options)


def _build(program: Program, layout: _staging.Layout, options: tuple) -> Compiled:
    named = program.view == "named"

    def view(flat: dict) -> dict:
        return unpack(flat, layout) if named else flat

    def step(params, grads, state, count, hyper):
        tree = view(params)
        updates, new_state = program.transformation(hyper).update(view(grads), program.prepare(state, count), tree)
        new_params = apply_updates(tree, updates)
        return pack(new_params, layout) if named else new_params, new_state

    def init(params, hyper):
        return program.transformation(hyper).init(view(params))

    def update(params, grads, state, spare_params, spare_state, count, hyper):
        del spare_params, spare_state  # donated only, so that the outputs reuse their memory instead of fresh pages
        # outputs in the order of the donated inputs (params, then state), so that each output takes its own
        # input's buffer: jit pairs donations with outputs by position and shape (another order cost Adam two copies)
        return step(params, grads, state, count, hyper)

    def masked_update(params, grads, state, count, hyper, mask):
        new_params, new_state = step(params, grads, state, count, hyper)
        old = _per_group_leaves(state)

        def keep_unmasked(path, new):
            group = _group_of(path)
            if group is None:
                return new
            return jnp.where(mask[group], new, old[path])

        kept = jax.tree_util.tree_map_with_path(keep_unmasked, new_state)
        return {group: jnp.where(mask[group], new_params[group], params[group]) for group in params}, kept

    return Compiled(
        jax.jit(init),
        jax.jit(update, donate_argnums=(3, 4), keep_unused=True, compiler_options=dict(options)),
        jax.jit(masked_update),
    )


def _group_of(path: tuple) -> str | None:
    """The packed group a state leaf mirrors (its path holds ``'regularized'`` or ``'unregularized'``), or None."""
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey) and entry.key in _staging.GROUPS:
            return entry.key
    return None


def _per_group_leaves(state: Any) -> dict:
    return {path: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0] if _group_of(path) is not None}


def precision(layout: _staging.Layout) -> contextlib.AbstractContextManager:
    """float64 models run under ``jax.enable_x64(True)`` for the call; others under the process's setting."""
    return jax.enable_x64(True) if layout.dtype == "float64" else contextlib.nullcontext()


class _Host(NamedTuple):
    """A layout's host staging buffers, kept from step to step."""

    layout: _staging.Layout
    params: dict[str, np.ndarray]  # aligned buffers, one per group
    grads: dict[str, np.ndarray]
    options: tuple  # the compiler options for these buffers (:func:`mpnn_opt.cpu_compiler_options`)
    param_spans: list[np.ndarray]  # each leaf's view of the buffers (:func:`_staging.spans_of`)
    grad_spans: list[np.ndarray]


class _Spare(NamedTuple):
    """Device buffers shaped like a layout's params and state whose values are no longer needed: the next update's outputs."""

    key: tuple  # (layout, program): equal keys, equal shapes
    params: dict[str, jax.Array]
    state: Any
    forwards: bool | None = None  # whether the update returns some state leaves as they are (None: not known yet)


class Stepper:
    """``step(layers)`` for a :class:`Program`; subclasses say which program and where a step's state comes from.

    Subclass hooks: :meth:`_program`, :meth:`_hyper`, :meth:`_count`, :meth:`_gather`, :meth:`_live_state`,
    :meth:`_settings_after_step`. Attributes committed by a step: ``_state`` (the transformation's state, on
    the device), ``_layout`` (the layout it is for), ``_spare``, ``_pending`` (set to None), and what
    :meth:`_live_state` returns to commit with it.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # one step, state read or setting at a time
        self._state: Any = None
        self._layout: _staging.Layout | None = None
        self._spare: _Spare | None = None
        self._shared: Any = None  # a state handed out to the caller: never donated
        self._host: _Host | None = None

    # --- hooks ------------------------------------------------------------------------------------

    def _program(self) -> Program:
        raise NotImplementedError

    def _hyper(self, dtype: str) -> np.ndarray:
        """The traced hyperparameter vector (empty unless the program reads one)."""
        del dtype
        return np.zeros(0, np.float32)

    def _count(self) -> int:
        """The step count handed to ``Program.prepare`` (0 unless the program reads one)."""
        return 0

    def _gather(self, layers: list) -> tuple[list[_staging.Entry], list]:
        """The layers' entries, one per distinct array, and the rounds of tied entries (see ``_staging.untie``)."""
        return _staging.gather(layers), []

    def _live_state(
        self, entries: list[_staging.Entry], layout: _staging.Layout, params: dict, functions: Compiled, hyper: Any
    ) -> tuple[Any, dict]:
        """The state this step reads (not yet committed) and the attributes to commit with the step."""
        raise NotImplementedError

    def _settings_after_step(self) -> dict:
        """Attributes a step commits besides the state (Adam's ``t``); also committed by a step without parameters."""
        return {}

    # --- the step ---------------------------------------------------------------------------------

    def step(self, layers: list) -> None:
        """Updates every parameter of ``layers`` in place from the gradients the layers hold: all or nothing."""
        with self._lock:
            entries, rounds = self._gather(layers)
            committed = self._settings_after_step()
            if not entries:
                vars(self).update(committed)  # the seed's Adam counts a step without parameters too
                return
            layout = _staging.Layout.of(entries)
            with precision(layout):
                new_params, old_params, state, spare, bound = self._compute(entries, rounds, layout)
            committed.update(_state=state, _layout=layout, _spare=spare, _pending=None, **bound)
            # the commit is one C call: no signal handler or exception can run half-way through it
            _staging.write_back(
                entries, layout, new_params, old_params, functools.partial(vars(self).update, committed)
            )

    def _compute(self, entries: list, rounds: list, layout: _staging.Layout) -> tuple:
        """Runs the compiled update: ``(new params, old params, new state, next spare, attributes to commit)``.

        Params are flat host arrays. Changes no layer and no state: the live state is an input only, and
        the outputs go to the donated spare buffers (taken from ``self``; a failed step leaves fresh ones
        to the next).
        """
        host = self._buffers(layout)
        params, grads = host.params, host.grads
        program = self._program()
        functions = self._functions(layout, host.options)
        _staging.stage(entries, host.param_spans, "param")
        hyper = self._hyper(layout.dtype)
        state, bound = self._live_state(entries, layout, params, functions, hyper)
        count = self._count()
        spare = None  # tied parameters run in rounds and use no spare buffers
        if not rounds:
            _staging.stage(entries, host.grad_spans, "grad")
            spare = self._take_spare((layout, program), state)
        try:
            if spare is None:
                new_flat, new_state = self._rounds(functions, entries, rounds, layout, params, state, count, hyper)
            else:
                new_flat, new_state = functions.update(params, grads, state, spare.params, spare.state, count, hyper)
            host = {group: np.asarray(flat) for group, flat in new_flat.items()}
        except Exception as error:
            raise RuntimeError(f"{type(self).__name__}.step failed and changed no layer: {error}") from error
        next_spare = None if spare is None else self._next_spare(spare, new_flat, state, new_state)
        return host, params, new_state, next_spare, bound

    @staticmethod
    def _rounds(
        functions: Compiled, entries: list, rounds: list, layout: _staging.Layout, params: dict, state, count, hyper
    ) -> tuple:
        """Applies each array's first entry, then each later round of tied entries, each round from the last one's results."""
        for pairs in [list(enumerate(entries)), *rounds]:
            grads, mask = _staging.stage_round(pairs, layout)
            params, state = functions.masked_update(params, grads, state, count, hyper, mask)
        return params, state

    # --- buffers ----------------------------------------------------------------------------------

    def _functions(self, layout: _staging.Layout, options: tuple) -> Compiled:
        """The program's compiled functions for ``layout`` (see :func:`compiled`)."""
        return compiled(self._program(), layout, options)

    def _buffers(self, layout: _staging.Layout) -> _Host:
        """Aligned host buffers for ``layout``'s params and grads, kept from step to step (``self._host``)."""
        if self._host is None or self._host.layout != layout:
            params, grads = (
                {group: _staging.aligned_empty(size, layout.dtype) for group, size in layout.sizes.items()}
                for _ in range(2)
            )
            options = tuple(sorted(cpu_compiler_options(params).items()))
            spans = (_staging.spans_of(layout, params), _staging.spans_of(layout, grads))
            self._host = _Host(layout, params, grads, options, *spans)
        return self._host

    def _take_spare(self, key: tuple, state: Any) -> _Spare:
        """Last step's spare buffers (taken: a failed update consumes them), or fresh ones for a new layout or program.

        ``key`` is ``(layout, program)``: the state's shapes follow from them (a state of other shapes is
        refused before it gets here).
        """
        spare, self._spare = self._spare, None
        if spare is None or spare.key != key:
            layout = key[0]
            params = {group: _zeros((size,), layout.dtype) for group, size in layout.sizes.items()}
            spare = _Spare(key, params, jax.tree.map(_zeros_like, state))
        return spare

    def _next_spare(self, spare: _Spare, new_params: dict, old_state: Any, new_state: Any) -> _Spare | None:
        """The buffers the next step may donate: this step's new params and this step's input state.

        Not a state handed out to the caller. A leaf the update passed through unchanged (jit then returns
        the input array itself) lives on in the new state: it gets a fresh buffer instead. Whether the
        update forwards leaves is checked at the first steps of a layout and program (jit forwards the
        same leaves at every call).
        """
        if old_state is self._shared:
            return None
        forwards = spare.forwards
        if forwards is not False:
            living = {id(leaf) for leaf in jax.tree.leaves(new_state)}
            forwards = any(id(leaf) in living for leaf in jax.tree.leaves(old_state))
            if forwards:
                old_state = jax.tree.map(lambda leaf: _zeros_like(leaf) if id(leaf) in living else leaf, old_state)
        return _Spare(spare.key, new_params, old_state, forwards)


def _zeros(shape: tuple, dtype: Any) -> jax.Array:
    """Zeros on the default device, uncommitted like the staged params (so that the update's signature stays
    the same from the first step on), placed from the host: ``jnp.zeros`` would compile one small XLA
    program per shape at the first step."""
    return jax.device_put(np.zeros(shape, dtype))


def _zeros_like(leaf: Any) -> jax.Array:
    return _zeros(np.shape(leaf), leaf.dtype)
