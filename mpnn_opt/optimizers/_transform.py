"""Any gradient transformation behind mpneuralnetwork's optimizer API: ``Transform(tx)``.

``Transform(tx)`` takes any ``GradientTransformation``, mpnn_opt's or optax's, chains, schedules and
``inject_hyperparams`` included, and is used as the seed's optimizers are: ``Model(layers, loss,
optimizer=Transform(tx))``, then ``model.train(...)`` calls ``step(layers)``.

``step(layers)`` names layer ``i``'s parameter ``name`` as ``("layer_{i}", name)`` and runs one
jit-compiled call for the whole model on the tree ``{"layer_{i}": {name: array}}``: the layers' arrays
travel packed in two flat buffers (as in :mod:`mpnn_opt.optimizers._staging`) and are viewed as that
tree inside the compiled call, so a transformation sees the model's parameters by name, as it would in
a functional loop (masks by name, per-leaf clipping and global norms all mean what they say). The new
values are copied into the layers' own arrays; the gradients are left untouched. The machinery (staging,
compiled call, spare output buffers, all-or-nothing commit) is :mod:`mpnn_opt.optimizers._stepper`, shared
with SGD, RMSprop and Adam.

The state, :attr:`Transform.state`, is the transformation's own: ``tx.init`` of that tree, kept on the
JAX device between steps (``None`` before the first step). A state read through :attr:`Transform.state`
stays valid: a step writes its outputs into the buffers of the step before last's state only when that
state was never handed out. It is keyed by parameter names, not by
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

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_opt import checkpoint
from mpnn_opt.base import GradientTransformation
from mpnn_opt.hyperparams import with_hyperparam
from mpnn_opt.optimizers import _staging, _state_dict
from mpnn_opt.optimizers._stepper import Compiled, Stepper, precision

__all__ = ["Transform"]


@dataclasses.dataclass(frozen=True)
class _Fixed:
    """The :class:`~mpnn_opt.optimizers._stepper.Program` of a ``Transform``: its transformation, on the named tree."""

    transform: Any
    view = "named"

    def transformation(self, hyper: Any) -> Any:
        del hyper  # hyperparameters are the transformation's own (or injected: state)
        return self.transform

    def prepare(self, state: Any, count: Any) -> Any:
        del count  # the transformation counts its own steps
        return state


def _refuse_tied(entries: list[_staging.Entry]) -> None:
    for entry, owner, _, _ in _staging.ties(entries):
        if owner is not None:
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


class Transform(Stepper):
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
        super().__init__()
        self._transform = transform
        self._fixed = _Fixed(transform)
        self._pending: _state_dict.Pending | None = None  # load_state_dict's entries, for the next step

    @property
    def transform(self) -> Any:
        """The gradient transformation given to the constructor."""
        return self._transform

    @property
    def state(self) -> Any:
        """The transformation's state: ``tx.init`` of ``{"layer_{i}": {name: param}}`` after as many updates as steps; None before the first step.

        The arrays handed out stay valid: later steps write their outputs elsewhere.
        """
        with self._lock:
            self._shared = self._state
            return self._state

    @state.setter
    def state(self, state: Any) -> None:
        """A state to continue from (checked against the model at the next step), or None to start afresh.

        A state of the current one's structure, shapes and dtypes (e.g. from :func:`mpnn_opt.with_hyperparam`)
        is taken (copied) as it is for the current model: no recompilation, no new check.
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
            entries, _ = self._gather(layers)
            layout = _staging.Layout.of(entries)
            with precision(layout):
                host = self._buffers(layout)
                functions = self._functions(layout, host.options)
                _staging.stage(entries, host.param_spans, "param")
                params = host.params
                state = functions.init(params, self._hyper(layout.dtype))
            vars(self).update(_state=state, _layout=layout, _pending=None, _shared=state)
            return state

    def step(self, layers: list) -> None:
        """Updates every parameter of ``layers`` in place from the gradients the layers hold: all or nothing.

        Layers without ``params`` are skipped. Errors name the layer and parameter; when ``step``
        raises, no layer and not the state has changed.
        """
        super().step(layers)

    # --- the machinery's hooks --------------------------------------------------------------------

    def _program(self) -> _Fixed:
        return self._fixed

    def _gather(self, layers: list) -> tuple[list[_staging.Entry], list]:
        entries = _staging.gather(layers)
        _refuse_tied(entries)
        return entries, []

    def _live_state(
        self, entries: list[_staging.Entry], layout: _staging.Layout, params: dict, functions: Compiled, hyper: Any
    ) -> tuple[Any, dict]:
        """The state for this step, not yet committed: the live one, a checked assigned one, or a fresh one."""
        del entries
        if self._pending is not None:
            return self._loaded(self._pending, functions.init(params, hyper)), {}
        if self._state is None:
            return functions.init(params, hyper), {}
        if self._layout == layout:
            return self._state, {}
        return _on_device(self._state, jax.eval_shape(functions.init, params, hyper)), {}

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
