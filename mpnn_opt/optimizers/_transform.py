"""Any gradient transformation behind mpneuralnetwork's optimizer API: ``Transform(tx)``.

``Transform(tx)`` takes any ``GradientTransformation``, mpnn_opt's or optax's, chains, schedules and
``inject_hyperparams`` included, and is used as the seed's optimizers are: ``Model(layers, loss,
optimizer=Transform(tx))``, then ``model.train(...)`` calls ``step(layers)``.

``step(layers)`` names layer ``i``'s parameter ``name`` as ``("layer_{i}", name)`` and runs one
jit-compiled call for the whole model on the tree ``{"layer_{i}": {name: array}}``: the layers' arrays
travel packed in two flat buffers (as in :mod:`mpnn_opt.optimizers._staging`) and are viewed as that
tree inside the compiled call, so a transformation sees the model's parameters by name, as it would in
a functional loop (masks by name, per-leaf clipping and global norms all mean what they say). The new
values are copied into the layers' own arrays; the gradients are left untouched.

The state, :attr:`Transform.state`, is the transformation's own: ``tx.init`` of that tree, kept on the
JAX device between steps (``None`` before the first step). It is keyed by parameter names, not by
array identity, so one ``Transform`` serves one model (or models of the same structure). Hyperparameters
injected with :func:`mpnn_opt.inject_hyperparams` are state leaves: assigning
``optimizer.state = mpnn_opt.with_hyperparam(optimizer.state, "learning_rate", 1e-4)``, or calling
:meth:`Transform.set_hyperparameter`, takes effect at the next step without recompiling. A state of
another structure than ``tx.init`` gives for the model's parameters is refused at the next ``step``
(``ValueError`` naming the first difference); ``optimizer.state = None`` starts afresh.

Checkpointing: ``serialization.load_model`` rebuilds optimizers by class name from mpneuralnetwork's own
module, and :meth:`Transform.get_config` holds no transformation it could rebuild. Save the model's
weights as usual (``model.get_weights()`` or ``save_model``) and the state beside them:
``numpy.savez(path, **optimizer.state_dict())``, keyed by name as :mod:`mpnn_opt.checkpoint` keys it;
to resume, build the same ``Transform`` and call ``optimizer.load_state_dict(dict(np.load(path)))``
before the first step, which matches the entries to the layers' parameters (see
:mod:`mpnn_opt.optimizers._state_dict`). Or save the state tree itself, e.g.
``flax.serialization.to_bytes(optimizer.state)``; to resume, build the same ``Transform``, then
``optimizer.state = flax.serialization.from_bytes(optimizer.init(model.layers), data)``
(:meth:`Transform.init` gives the template). ``numpy.savez`` of ``jax.tree.leaves(optimizer.state)``
and ``jax.tree.unflatten(jax.tree.structure(optimizer.init(layers)), leaves)`` work as well. The run
then continues bit for bit.

Guarantees, as for :class:`mpnn_opt.optimizers.Adam`: all or nothing (when ``step`` raises, whatever
the cause, ``KeyboardInterrupt`` included, no layer and not the state has changed, and the next step
continues as if the failed one had never been called); errors name the layer and parameter; one step,
state read or assignment at a time (thread-safe); float64 parameters are updated under
``jax.enable_x64`` for that call. Differences: one array held by several layers (tied weights) is
refused, naming both places (a transformation's state has one entry per name); the parameter set and
shapes may not change under a live state; there is no ``params`` state view (``params`` is ``{}``, so
``save_model`` stores no optimizer state: save :attr:`Transform.state` instead).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_opt import checkpoint
from mpnn_opt.base import GradientTransformation, apply_updates
from mpnn_opt.compiler_options import cpu_compiler_options
from mpnn_opt.hyperparams import with_hyperparam
from mpnn_opt.optimizers import _staging, _state_dict

__all__ = ["Transform"]


def _unpack(flat: dict, layout: _staging.Layout) -> dict:
    """The packed group buffers as the tree ``{"layer_{i}": {name: array}}`` (slices, fused by XLA)."""
    tree: dict[str, dict[str, Any]] = {}
    for (layer_key, name, shape), (group, start, stop) in zip(layout.leaves, layout.spans):
        tree.setdefault(layer_key, {})[name] = flat[group][start:stop].reshape(shape)
    return tree


def _pack(tree: dict, layout: _staging.Layout) -> dict:
    """The tree ``{"layer_{i}": {name: array}}`` packed into the group buffers of ``layout``."""
    pieces: dict[str, list] = {group: [] for group in layout.sizes}
    for (layer_key, name, _), (group, _, _) in zip(layout.leaves, layout.spans):
        pieces[group].append(tree[layer_key][name].reshape(-1))  # within a group, spans follow the leaves' order
    return {group: jnp.concatenate(parts) if parts else jnp.zeros(0, layout.dtype) for group, parts in pieces.items()}


def _update_tree(transform: Any, params: dict, grads: dict, state: Any) -> tuple[dict, Any]:
    """The transformation's step on the model's tree: ``(new params, new state)``. The compiled call's body."""
    updates, new_state = transform.update(grads, state, params)
    return apply_updates(params, updates), new_state


def _compiled(transform: Any, layout: _staging.Layout, options: tuple) -> tuple:
    """``(init, update)`` jitted for ``layout``: ``init(flat params) -> state``, ``update(flat params, flat grads, state)``.

    Shared by every ``Transform`` of the same (hashable) transformation and model structure, so a
    new ``Transform`` of it does not compile again.
    """
    try:
        hash(transform)
    except TypeError:  # a transformation holding unhashable values: compiled for this Transform only
        return _build(transform, layout, options)
    return _cached(transform, layout.dtype, layout.leaves, options)


@functools.lru_cache(maxsize=32)
def _cached(transform: Any, dtype: str, leaves: tuple, options: tuple) -> tuple:
    spans, sizes = _staging.layout_spans(tuple((name, shape) for _, name, shape in leaves))
    return _build(transform, _staging.Layout(dtype, leaves, spans, sizes), options)


def _build(transform: Any, layout: _staging.Layout, options: tuple) -> tuple:
    def init(flat_params):
        return transform.init(_unpack(flat_params, layout))

    def update(flat_params, flat_grads, state):
        new_params, new_state = _update_tree(
            transform, _unpack(flat_params, layout), _unpack(flat_grads, layout), state
        )
        return _pack(new_params, layout), new_state

    return jax.jit(init), jax.jit(update, compiler_options=dict(options))


def _refuse_tied(entries: list[_staging.Entry]) -> None:
    first: dict[int, _staging.Entry] = {}
    for entry in entries:
        owner = first.setdefault(id(entry.param), entry)
        if owner is not entry:
            raise ValueError(
                f"{entry.where} is the array of {owner.where}; Transform keeps one state entry per name and "
                f"cannot update one array under two names (use Adam, SGD or RMSprop for tied weights)"
            )


def _on_device(state: Any, expected: Any) -> Any:
    """``state``'s leaves as fresh device arrays, when its structure, shapes and dtypes are ``expected``'s; else ValueError."""
    leaves, structure = jax.tree.flatten(state)
    expected_leaves, expected_structure = jax.tree_util.tree_flatten_with_path(expected)
    if structure != jax.tree.structure(expected):
        raise ValueError(
            f"Transform: the state has the structure {structure}, but the transformation's init gives "
            f"{jax.tree.structure(expected)} for this model's parameters; assign a state made for this model "
            f"(see Transform.init) or None to start afresh"
        )
    arrays = [jnp.array(leaf, copy=True) for leaf in leaves]
    for array, (path, want) in zip(arrays, expected_leaves):
        if array.shape != want.shape or array.dtype != want.dtype:
            raise ValueError(
                f"Transform: the state leaf {jax.tree_util.keystr(path)} has shape {array.shape} and dtype "
                f"{array.dtype}, but this model's parameters need shape {want.shape} and dtype {want.dtype}; "
                f"assign a state made for this model (see Transform.init) or None to start afresh"
            )
    return jax.tree.unflatten(structure, arrays)


def _precision(layout: _staging.Layout) -> contextlib.AbstractContextManager:
    return jax.enable_x64(True) if layout.dtype == "float64" else contextlib.nullcontext()


class Transform:
    """Any ``GradientTransformation`` as an mpneuralnetwork optimizer: ``step(layers)``, ``state``, ``get_config()``.

    ``Transform(mpnn_opt.chain(mpnn_opt.clip_by_global_norm(1.0), mpnn_opt.adam(schedule)))`` or
    ``Transform(optax.adamw(1e-3))``. See :mod:`mpnn_opt.optimizers._transform` for the guarantees and
    for checkpointing.
    """

    def __init__(self, transform: GradientTransformation | Any) -> None:
        if not (callable(getattr(transform, "init", None)) and callable(getattr(transform, "update", None))):
            raise TypeError(
                f"Transform expects a GradientTransformation (an object with init and update), "
                f"got {transform!r} of type {type(transform).__name__}"
            )
        self._transform = transform
        self._lock = threading.RLock()
        self._state: Any = None
        self._layout: _staging.Layout | None = None  # the layout the state was checked against
        self._host: tuple | None = None  # (layout, params buffers, grads buffers, init, update)
        self._pending: _state_dict.Pending | None = None  # load_state_dict's entries, for the next step

    @property
    def transform(self) -> Any:
        """The gradient transformation given to the constructor."""
        return self._transform

    @property
    def state(self) -> Any:
        """The transformation's state: ``tx.init`` of ``{"layer_{i}": {name: param}}`` after as many updates as steps; None before the first step."""
        with self._lock:
            return self._state

    @state.setter
    def state(self, state: Any) -> None:
        """A state to continue from (checked against the model at the next step), or None to start afresh.

        A state of the current one's structure, shapes and dtypes (e.g. from :func:`mpnn_opt.with_hyperparam`)
        is taken as it is for the current model: no recompilation, no new check.
        """
        with self._lock:
            if state is None or self._state is None:
                vars(self).update(_state=state, _layout=None, _pending=None)
                return
            current = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), self._state)
            try:
                checked = _on_device(state, current)
            except ValueError:
                vars(self).update(
                    _state=state, _layout=None, _pending=None
                )  # another model's: checked at the next step
                return
            vars(self).update(_state=checked, _pending=None)

    def set_hyperparameter(self, name: str, value: float) -> None:
        """Sets an injected hyperparameter for the next steps: ``state = with_hyperparam(state, name, value)``.

        The transformation must be (or contain) :func:`mpnn_opt.inject_hyperparams` or optax's, and have
        a state (after the first step or :meth:`init`). No recompilation.
        """
        with self._lock:
            if self._state is None:
                raise ValueError(f"Transform.set_hyperparameter({name!r}): no state yet; call step or init first")
            self.state = with_hyperparam(self._state, name, value)

    def init(self, layers: list) -> Any:
        """Sets ``state`` to the transformation's fresh state for ``layers``' parameters and returns it.

        The template for restoring a saved state: ``flax.serialization.from_bytes(optimizer.init(layers), data)``.
        """
        with self._lock:
            entries = self._entries(layers)
            layout = _staging.Layout.of(entries)
            with _precision(layout):
                params, _, init, _ = self._buffers(layout)
                _staging.stage(entries, layout, params, "param")
                state = init(params)
            vars(self).update(_state=state, _layout=layout, _pending=None)
            return state

    def step(self, layers: list) -> None:
        """Updates every parameter of ``layers`` in place from the gradients the layers hold: all or nothing.

        Layers without ``params`` are skipped. Errors name the layer and parameter; when ``step``
        raises, no layer and not the state has changed.
        """
        with self._lock:
            entries = self._entries(layers)
            if not entries:
                return
            layout = _staging.Layout.of(entries)
            with _precision(layout):
                params, grads, init, update = self._buffers(layout)
                _staging.stage(entries, layout, params, "param")
                _staging.stage(entries, layout, grads, "grad")
                state = self._live_state(layout, params, init)
                try:
                    new_flat, new_state = update(params, grads, state)
                    new_params = {group: np.asarray(flat) for group, flat in new_flat.items()}
                except Exception as error:
                    raise RuntimeError(f"Transform.step failed and changed no layer: {error}") from error
            # the commit is one C call: no signal handler or exception can run half-way through it
            committed = {"_state": new_state, "_layout": layout, "_pending": None}
            _staging.write_back(entries, layout, new_params, params, functools.partial(vars(self).update, committed))

    def _entries(self, layers: list) -> list[_staging.Entry]:
        entries = _staging.gather(layers)
        _refuse_tied(entries)
        return entries

    def _buffers(self, layout: _staging.Layout) -> tuple:
        """Host buffers for ``layout``'s params and grads, kept from step to step, and the compiled ``(init, update)``."""
        if self._host is None or self._host[0] != layout:
            params, grads = (
                {group: _staging.aligned_empty(size, layout.dtype) for group, size in layout.sizes.items()}
                for _ in range(2)
            )
            options = tuple(sorted(cpu_compiler_options(params).items()))
            self._host = (layout, params, grads, *_compiled(self._transform, layout, options))
        return self._host[1:]

    def _live_state(self, layout: _staging.Layout, params: dict, init: Any) -> Any:
        """The state for this step, not yet committed: the live one, a checked assigned one, or a fresh one."""
        if self._pending is not None:
            return self._loaded(self._pending, init(params))
        if self._state is None:
            return init(params)
        if self._layout == layout:
            return self._state
        return _on_device(self._state, jax.eval_shape(init, params))

    def _loaded(self, pending: _state_dict.Pending, template: Any) -> Any:
        """``template`` (``tx.init`` of this step's parameters) with the loaded entries; ``ValueError`` naming the keys that do not fit."""
        expected = {name: tuple(leaf.shape) for name, leaf in checkpoint.state_dict(template).items()}
        _state_dict.unmatched("Transform.step", pending, expected)
        state, report = checkpoint.load_state_dict(template, pending.entries, strict=False)
        if report.mismatched:  # shapes were checked above: another dtype
            raise ValueError(
                "Transform.step: the loaded state does not fit this model's parameters; nothing was changed:\n  "
                + "\n  ".join(f"{name!r}: {report.reasons[name]}" for name in report.mismatched)
            )
        return state

    # --- torch's state_dict -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as ``{key: NumPy copy}``, keyed by :func:`mpnn_opt.checkpoint.state_dict` over ``{"layer_{i}": {name}}``.

        E.g. ``"layer_0/weights:scale_by_adam.momentums"``, ``"scale_by_adam.count"``; injected
        hyperparameters are state (``"inject_hyperparams.hyperparams.learning_rate"``). ``{}`` before
        the first step; loaded entries not yet used by a step are returned as loaded.
        """
        with self._lock:
            if self._pending is not None:
                return {name: value.copy() for name, value in self._pending.entries.items()}
            if self._state is None:
                return {}
            return {name: np.array(value) for name, value in checkpoint.state_dict(self._state).items()}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Replaces the state with ``state_dict`` (from :meth:`state_dict`), matched by key at the next ``step``.

        The entries are copied and kept (:attr:`state` is None meanwhile); the next ``step`` loads them
        into ``tx.init`` of the layers' parameters with :func:`mpnn_opt.checkpoint.load_state_dict`. It
        raises ``ValueError`` naming the keys whose shape or dtype differs and, with ``strict=True``,
        those that are for no state of this model and the state entries without one; it then changes
        nothing. ``strict=False`` ignores unknown keys and keeps ``tx.init``'s values for missing ones.
        """
        entries = _state_dict.copies("Transform.load_state_dict", state_dict)
        with self._lock:
            vars(self).update(_state=None, _layout=None, _pending=_state_dict.Pending(entries, strict))

    # --- the seed's surface -----------------------------------------------------------------------

    @property
    def params(self) -> dict:
        """``{}``: the state is :attr:`state`, keyed by name, not the seed's dicts keyed by ``id(param)``."""
        return {}

    def get_config(self) -> dict:
        """``{"type": "Transform"}``: ``load_model`` cannot rebuild it from this (see the module docstring on checkpointing)."""
        return {"type": type(self).__name__}

    def apply_regularization(self, param_name: str, param: Any) -> int:
        """``0``: any regularization is part of the transformation itself."""
        del param_name, param
        return 0
