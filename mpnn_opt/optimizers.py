"""mpneuralnetwork's optimizer classes, driven by the functional aliases: change one import.

``from mpnn_opt.optimizers import Adam`` in place of ``from mpneuralnetwork.optimizers import Adam``:
same constructor arguments, defaults, attributes, ``get_config()``, ``apply_regularization`` and
``params``, and ``step(layers)`` as ``Model.train`` calls it. The math is :func:`mpnn_opt.sgd`,
:func:`mpnn_opt.rmsprop` and :func:`mpnn_opt.adam`; see them for the exact update rules.

``step(layers)`` names layer ``i``'s parameter ``name`` as ``("layer_{i}", name)`` (the names
mpneuralnetwork's serialization uses) and packs every parameter, and every gradient, into two flat
buffers, ``'regularized'`` and ``'unregularized'``, split by the seed's name rule (regularize unless
the name contains 'bias', 'beta' or 'gamma'). One jit-compiled call of the alias updates the
two-leaf tree for the whole model; the new values are then copied into the layers' own arrays
(``np.copyto``: layers keep their array objects). The optimizer state stays on the JAX device between
steps, in the same packed layout, and is keyed by name and ``id(param)``. Hyperparameters enter the
compiled function as traced arguments, so assigning ``optimizer.learning_rate`` (or any other
hyperparameter) between steps takes effect without recompiling; changing ``regularization``, or the
set or shapes of the parameters, compiles once more.

Importing this module (``import mpnn_opt`` alone does not) sets ``jax_cpu_enable_async_dispatch`` to
False unless the environment variable ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` is set: ``step`` waits for
its result, so asynchronous dispatch would only add two thread hand-offs (35-45 us) to every step. It
takes effect only if JAX has not yet started its CPU backend. Models whose buffers are under 2^20
floats compile with :func:`mpnn_opt.cpu_compiler_options` (no thread splitting of their loops).

Differences from mpneuralnetwork 1.1.1:

* the gradients are left untouched (the seed adds the regularization term into them in place);
* ``regularization=None`` turns regularization off (in the seed only ``weight_decay=0`` does; its
  SGD and RMSprop treat anything but ``'L2'`` as L1);
* all or nothing: a bad gradient (wrong shape, non-float dtype) or any failure raises an error naming
  the layer and parameter, and no layer has changed (the seed stops half-way through the layers);
* hyperparameters are float32 inside the update (the seed's scalars are float64 until they meet a
  float32 array); results agree to float32 rounding;
* ``params`` returns the same dicts every time, keyed by ``id(param)`` as in the seed, and reading it
  fills them from the device state; what is written into them (``restore_model_weights``) is used by
  the next step. But a step does not write into arrays handed out earlier, as the seed's in-place
  updates do: read ``params`` again after a step;
* every parameter must have the same floating dtype (mpneuralnetwork uses float32 throughout);
* ``Model.train(model_checkpoint=True)`` resets the seed Adam's ``t`` when it restores the best
  weights, because it tests ``isinstance(optimizer, mpneuralnetwork.optimizers.Adam)``; ours keeps
  counting. ``serialization.load_model`` rebuilds the seed's class of the same name: use
  :meth:`Optimizer.from_seed` to continue with ours.
"""

from __future__ import annotations

import collections
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_opt import _checks, _layer_tree
from mpnn_opt.aliases import adam, rmsprop, sgd
from mpnn_opt.base import apply_updates
from mpnn_opt.compiler_options import cpu_compiler_options
from mpnn_opt.regularization import add_regularization, is_regularized_name

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam"]

# A step waits for its result anyway, so JAX's asynchronous CPU dispatch only adds two thread
# hand-offs to every call: 35-45 us on a 2-core machine, as much as the seed's whole step on a
# small model. Turned off here, where it costs NumPy users nothing, unless the environment chose
# (JAX_CPU_ENABLE_ASYNC_DISPATCH); it takes effect only if JAX has not started its CPU backend yet.
if "JAX_CPU_ENABLE_ASYNC_DISPATCH" not in os.environ:
    jax.config.update("jax_cpu_enable_async_dispatch", False)

# How many times each compiled update has been traced, keyed by (alias name, regularization).
TRACE_COUNTS: collections.Counter = collections.Counter()


def _fill(state: Any, slots: dict, count: Any) -> Any:
    """``state`` with every named-tuple field named in ``slots`` replaced, and every ``count`` set."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        fields = {}
        for field in state._fields:
            value = getattr(state, field)
            fields[field] = slots[field] if field in slots else count if field == "count" else _fill(value, slots, count)
        return type(state)(**fields)
    if isinstance(state, tuple):
        return tuple(_fill(inner, slots, count) for inner in state)
    return state


def _slots_of(state: Any, names: tuple[str, ...]) -> dict:
    """The named-tuple fields named ``names`` found anywhere in ``state``."""
    found = {}
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        found.update({field: getattr(state, field) for field in state._fields if field in names})
    if isinstance(state, tuple):
        for inner in state:
            found.update(_slots_of(inner, names))
    return found


@functools.lru_cache(maxsize=None)
def _compiled_update(
    alias: Callable,
    regularization: str | None,
    slot_names: tuple[str, ...],
    hyper_names: tuple[str, ...],
    compiler_options: tuple[tuple[str, str], ...],
) -> Callable:
    """One jitted ``(params, grads, slots, scratch, count, hyper) -> (new_slots, new_params)`` per alias and mode.

    ``params`` and ``grads`` are ``{'regularized': flat, 'unregularized': flat}`` trees, ``slots``
    maps each state name to such a tree, ``hyper`` is one vector of the ``hyper_names`` values (one
    argument to transfer instead of one per value). The alias is built inside the traced function
    from the traced values, so new hyperparameter values reuse the compiled code. ``slots`` and
    ``scratch`` (last step's new params, already copied out) are donated: the outputs reuse their memory.
    ``compiler_options`` (:func:`mpnn_opt.cpu_compiler_options` of the buffers) keep XLA:CPU from
    splitting a small model's loops across threads.
    """

    def update(params, grads, slots, scratch, count, hyper):
        del scratch  # donated only, so that the new params reuse its memory instead of fresh pages
        TRACE_COUNTS[(alias.__name__, regularization)] += 1
        values = {name: hyper[index] for index, name in enumerate(hyper_names)}
        transform = alias(regularization=regularization, mask=_layer_tree.GROUP_MASK, **values)
        updates, new_state = transform.update(grads, _fill(transform.init(params), slots, count), params)
        # outputs in the order of the donated inputs (slots, then scratch), so that each output takes its own
        # input's buffer: jit pairs donations with outputs by position and shape (the other order cost Adam two copies)
        return _slots_of(new_state, slot_names), apply_updates(params, updates)

    return jax.jit(update, donate_argnums=(2, 3), keep_unused=True, compiler_options=dict(compiler_options))


class Optimizer:
    """The seed's ``Optimizer`` base: holds ``learning_rate``, ``regularization``, ``weight_decay``.

    Subclasses name their functional alias, their per-parameter state (the seed's names) and their
    hyperparameters; ``step`` is shared. The base class itself has no update rule.
    """

    _alias: Callable | None = None
    _slot_names: tuple[str, ...] = ()
    _hyperparameters: tuple[str, ...] = ("learning_rate", "weight_decay")
    _counts_steps = False

    def __init__(self, learning_rate: float, regularization: str | None, weight_decay: float) -> None:
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.weight_decay = weight_decay
        self._slots: dict[str, dict[int, Any]] = {name: {} for name in self._slot_names}
        self._validated: tuple | None = None
        self._device: tuple | None = None  # ((layout, param ids), {slot name: flat jax array})
        self._host: tuple | None = None  # ((dtype, group sizes), params buffers, grads buffers, compiler options)
        self._last_params: dict | None = None  # last step's new params on device, donated next step
        self._validate()

    def _hyper(self, dtype: Any) -> np.ndarray:
        """The hyperparameters as one vector (float64 for float64 params, else float32): one traced signature."""
        return np.array([float(getattr(self, name)) for name in self._hyperparameters], np.float64 if dtype == "float64" else np.float32)

    def _validate(self) -> None:
        """Builds the alias once from the current values, so bad ones raise naming the argument."""
        values = {name: getattr(self, name) for name in self._hyperparameters}
        key = (self.regularization, *values.values())
        if key == self._validated:
            return
        _checks.regularization(self.regularization)
        if self._alias is not None:
            type(self)._alias(regularization=self.regularization, **values)
        self._validated = key

    def step(self, layers: list) -> None:
        """Updates every parameter of ``layers`` in place from the gradients the layers hold.

        Layers without ``params`` are skipped. A parameter not seen before starts from zero state.
        Raises ``TypeError`` / ``ValueError`` / ``RuntimeError`` naming the layer and parameter, with
        no layer changed, when a gradient or the update is bad.
        """
        if self._alias is None:
            raise NotImplementedError("Optimizer is the base class: use SGD, RMSprop or Adam")
        self._validate()
        entries = _layer_tree.gather(layers)
        count = getattr(self, "t", 0)
        if entries:
            layout = _layer_tree.Layout.of(entries)
            new_params = self._compute(entries, layout, count)
            _layer_tree.unstage(entries, layout, new_params)
        if self._counts_steps:
            self.t = count + 1

    def _compute(self, entries: list, layout: _layer_tree.Layout, count: int) -> dict[str, np.ndarray]:
        """Runs the compiled update; returns the new parameters as flat host arrays. Changes no layer."""
        slots = self._device_slots(entries, layout)
        params, grads, options = self._staging(layout)
        _layer_tree.stage(entries, layout, params, "param")
        _layer_tree.stage(entries, layout, grads, "grad")
        update = _compiled_update(type(self)._alias, self.regularization, self._slot_names, self._hyperparameters, options)
        try:
            new_slots, new_params = update(params, grads, slots, self._scratch(layout), count, self._hyper(layout.dtype))
            host = {group: np.asarray(flat) for group, flat in new_params.items()}
        except Exception as error:
            if any(flat.is_deleted() for flat in jax.tree.leaves(slots)):
                self._device = None
            raise RuntimeError(f"{type(self).__name__}.step failed and changed no layer: {error}") from error
        self._device = ((layout, tuple(id(entry.param) for entry in entries)), new_slots)
        self._last_params = new_params
        return host

    def _scratch(self, layout: _layer_tree.Layout) -> dict[str, jax.Array]:
        """Last step's new params (their values are in the layers by now), or fresh buffers."""
        scratch, self._last_params = self._last_params, None
        if scratch is None or {group: flat.shape[0] for group, flat in scratch.items()} != layout.sizes:
            scratch = {group: jnp.zeros(size, layout.dtype) for group, size in layout.sizes.items()}
        return scratch

    def _staging(self, layout: _layer_tree.Layout) -> tuple[dict, dict, tuple]:
        """Aligned host buffers for ``layout``'s params and grads, kept from step to step, and the compiler options for them."""
        if self._host is None or self._host[0] != (layout.dtype, layout.sizes):
            params, grads = ({group: _layer_tree.aligned_empty(size, layout.dtype) for group, size in layout.sizes.items()} for _ in range(2))
            self._host = ((layout.dtype, layout.sizes), params, grads, tuple(sorted(cpu_compiler_options(params).items())))
        return self._host[1:]

    def _device_slots(self, entries: list, layout: _layer_tree.Layout) -> dict[str, dict[str, jax.Array]]:
        """The state as flat device buffers in ``layout``'s order: last step's, or rebuilt from ``params``."""
        key = (layout, tuple(id(entry.param) for entry in entries))
        if self._device is not None and self._device[0] == key:
            return self._device[1]
        self._materialize()
        slots = {}
        for name in self._slot_names:
            host = {group: np.zeros(size, layout.dtype) for group, size in layout.sizes.items()}
            for entry, (group, start, stop) in zip(entries, layout.spans):
                value = self._slots[name].get(id(entry.param))
                if value is not None and np.shape(value) != entry.param.shape:
                    raise ValueError(
                        f"{entry.where}: the optimizer state {name!r} has shape {np.shape(value)}, "
                        f"but the parameter has shape {entry.param.shape}"
                    )
                if value is not None:
                    host[group][start:stop] = np.ravel(value)
            slots[name] = {group: jnp.array(flat, copy=True) for group, flat in host.items()}
        return slots

    def _materialize(self) -> None:
        """Moves the device state into the ``params`` dicts as writable NumPy arrays."""
        if self._device is None:
            return
        (layout, ids), slots = self._device
        for name, flats in slots.items():
            host = {group: np.array(flat) for group, flat in flats.items()}
            for param_id, (_, _, shape), (group, start, stop) in zip(ids, layout.leaves, layout.spans):
                self._slots[name][param_id] = host[group][start:stop].reshape(shape)
        self._device = None

    def get_config(self) -> dict:
        """The constructor's arguments and ``"type"`` (the class name, which ``load_model`` looks up)."""
        return {"type": type(self).__name__, **{name: getattr(self, name) for name in self._config_names()}}

    @classmethod
    def _config_names(cls) -> tuple[str, ...]:
        return ("learning_rate", "regularization", *cls._hyperparameters[1:])

    def apply_regularization(self, param_name: str, param: Any) -> Any:
        """The penalty's gradient for ``param``: ``weight_decay * param`` ('L2'), ``weight_decay * sign(param)`` ('L1').

        ``0`` when the name contains 'bias', 'beta' or 'gamma', or when ``regularization`` is None
        (the seed has no off mode and returns the L1 term for anything but 'L2').
        """
        if self.regularization is None or not is_regularized_name(param_name):
            return 0
        penalty = add_regularization(self.regularization, self.weight_decay)
        param = np.asarray(param)
        gradient, _ = penalty.update({param_name: np.zeros_like(param)}, penalty.init(None), {param_name: param})
        return np.asarray(gradient[param_name])

    @property
    def params(self) -> dict:
        """The state under the seed's names, as live dicts ``{id(param): writable NumPy array}``.

        ``serialization`` reads these and ``restore_model_weights`` writes into them; the next
        ``step`` uses what it finds there.
        """
        self._materialize()
        return ({"t": self.t} if self._counts_steps else {}) | self._slots

    @classmethod
    def from_seed(cls, seed_optimizer: Any) -> "Optimizer":
        """Ours, with the settings and state (copied) of an mpneuralnetwork optimizer of the same class.

        For a model from ``serialization.load_model``:
        ``model.optimizer = Adam.from_seed(model.optimizer)``.
        """
        config = dict(seed_optimizer.get_config())
        kind = config.pop("type")
        if kind != cls.__name__:
            raise TypeError(f"{cls.__name__}.from_seed: got a {kind} optimizer")
        optimizer = cls(**config)
        for name, value in seed_optimizer.params.items():
            if isinstance(value, dict):
                optimizer._slots[name].update({key: np.array(array, copy=True) for key, array in value.items()})
            else:
                setattr(optimizer, name, value)
        return optimizer


class SGD(Optimizer):
    """SGD with momentum: ``v = momentum * v - lr * (g + reg(w))``, ``w = w + v`` (:func:`mpnn_opt.sgd`).

    Defaults: learning_rate 0.01, 'L2', weight_decay 0.001, momentum 0.1. State: ``velocities``.
    """

    _alias = staticmethod(sgd)
    _slot_names = ("velocities",)
    _hyperparameters = ("learning_rate", "weight_decay", "momentum")

    def __init__(
        self, learning_rate: float = 0.01, regularization: str | None = "L2", weight_decay: float = 0.001, momentum: float = 0.1
    ) -> None:
        self.momentum = momentum
        super().__init__(learning_rate, regularization, weight_decay)

    @property
    def velocities(self) -> dict:
        return self.params["velocities"]


class RMSprop(Optimizer):
    """RMSprop: ``c = d * c + (1 - d) * g'^2``, ``w = w - lr * g' / (sqrt(c) + eps)``, ``g' = g + reg(w)``.

    See :func:`mpnn_opt.rmsprop`. Defaults: learning_rate 0.001, 'L2', weight_decay 0.001,
    decay_rate 0.9, epsilon 1e-8. State: ``cache``.
    """

    _alias = staticmethod(rmsprop)
    _slot_names = ("cache",)
    _hyperparameters = ("learning_rate", "weight_decay", "decay_rate", "epsilon")

    def __init__(
        self,
        learning_rate: float = 0.001,
        regularization: str | None = "L2",
        weight_decay: float = 0.001,
        decay_rate: float = 0.9,
        epsilon: float = 1e-8,
    ) -> None:
        self.decay_rate = decay_rate
        self.epsilon = epsilon
        super().__init__(learning_rate, regularization, weight_decay)

    @property
    def cache(self) -> dict:
        return self.params["cache"]


class Adam(Optimizer):
    """Adam with the seed's decoupled decay under 'L2' and coupled penalty under 'L1' (:func:`mpnn_opt.adam`).

    Defaults: learning_rate 0.001, 'L2', weight_decay 0.001, beta1 0.9, beta2 0.999, epsilon 1e-8.
    State: ``t`` (steps taken, shared by all parameters as in the seed), ``momentums``, ``velocities``.
    """

    _alias = staticmethod(adam)
    _slot_names = ("momentums", "velocities")
    _hyperparameters = ("learning_rate", "weight_decay", "beta1", "beta2", "epsilon")
    _counts_steps = True

    def __init__(
        self,
        learning_rate: float = 0.001,
        regularization: str | None = "L2",
        weight_decay: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
    ) -> None:
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.t = 0
        super().__init__(learning_rate, regularization, weight_decay)

    @property
    def momentums(self) -> dict:
        return self.params["momentums"]

    @property
    def velocities(self) -> dict:
        return self.params["velocities"]
