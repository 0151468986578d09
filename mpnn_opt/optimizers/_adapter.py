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
(``np.copyto``: layers keep their array objects). The machinery is the one behind
:class:`~mpnn_opt.optimizers.Transform` (:mod:`mpnn_opt.optimizers._stepper`); each class only names its
alias, its hyperparameters and where the seed's names sit in the alias's state.

The optimizer state is the alias's own, ``alias.init`` of the packed tree (Adam's is
``ScaleByAdamState(count, momentums, velocities)`` with ``{'regularized', 'unregularized'}`` buffers), kept
on the JAX device between steps for the same parameter arrays (held, and compared by identity). The
seed's names (``velocities``, ``cache``, ``momentums``, ``t``) appear only in the ``params`` view and the
state dict, mapped through :func:`mpnn_opt.checkpoint.state_dict`'s keys (``_slot_keys``); a key the
alias's state no longer has raises ``RuntimeError`` at the next step instead of restarting from zeros.
Adam's ``t`` is the attribute; each step writes it into the state's count before the update.
The compiled call reads the live state and writes the new state and params into spare buffers of
the same shapes (last step's state and new params, donated), so outputs reuse memory and the live
state survives until the step commits; this costs one more copy of the state in memory.
Hyperparameters enter the compiled function as traced arguments, so assigning
``optimizer.learning_rate`` (or any other hyperparameter) between steps takes effect without
recompiling; changing ``regularization``, or the set or shapes of the parameters, compiles once more.

``state_dict()`` and ``load_state_dict(state_dict, strict=True)`` are torch's: the state keyed by layer
position and parameter name (``"layer_0/weights:velocities"``, and ``"t"``), so a model rebuilt in a
new process, whose arrays have new ids, resumes bit for bit; see :mod:`mpnn_opt.optimizers._state_dict`.

For any other transformation (optax's, chains, schedules, clipping) use
:class:`mpnn_opt.optimizers.Transform`: the same machinery and guarantees, run on the tree of parameter
names instead of the packed buffers (the seed's rules are elementwise, so they run on two buffers);
only the classes here update tied weights.

Importing it changes no setting of the process. ``step`` waits for its result, so JAX's asynchronous
CPU dispatch only adds two thread hand-offs (35-45 us) to every step: a NumPy program that uses JAX
for nothing else can call :func:`mpnn_opt.optimizers.use_synchronous_dispatch` once, before JAX
starts. Models whose buffers are under 2^20 floats compile with :func:`mpnn_opt.cpu_compiler_options`
(no thread splitting of their loops).

Guarantees (the seed gives none of them):

* all or nothing: when ``step`` raises, whatever the cause (a bad gradient, a failed update, any
  exception or ``KeyboardInterrupt`` before, during or after the compiled call or while the new
  values are copied into the layers), no layer, no state and not ``t`` has changed, and the next
  ``step`` continues bit for bit as if the failed one had never been called. The layers are written
  first, then state and ``t`` are committed in one assignment; meanwhile SIGINT is held back (main
  thread): a Ctrl-C there restores the layers and raises, and a second one cannot cut that short. A
  ``KeyboardInterrupt`` arriving in the few bytecodes after the commit surfaces with the step
  applied, as it would just after ``step`` returned;
* threads: one optimizer may serve several threads and models; ``step``, reading ``params`` and
  assigning a hyperparameter take a lock and run one at a time;
* reused ids: CPython gives a new array the ``id`` of a freed one. ``params`` keeps the seed's dicts
  keyed by ``id(param)``, but an entry this optimizer wrote for an array that has since been freed is
  dropped from them and never handed to a new array with the same id (the seed hands it the freed
  array's state); entries written by others (``restore_model_weights``, the user) are used as found;
* float64 parameters are updated in float64 (the compiled call runs under ``jax.enable_x64`` for
  that call only), with float32 state as the seed keeps it;
* one array held by several layers (tied weights) is updated once per layer, in layer order, sharing
  one state entry and one ``t``, as in the seed;
* hyperparameters are checked at construction and at every assignment: strings, booleans, None,
  NaN, infinities, arrays with elements and out-of-range values raise ``TypeError`` / ``ValueError``
  naming the attribute and the value, and the attribute keeps its old value (the seed checks
  nothing). Python and NumPy scalars and 0-d NumPy/JAX arrays are accepted and kept as Python numbers;
  Adam's ``t`` must be an integer >= 0.

Differences from mpneuralnetwork 1.1.1:

* the gradients are left untouched (the seed adds the regularization term into them in place);
* ``regularization=None`` turns regularization off (in the seed only ``weight_decay=0`` does; its
  SGD and RMSprop treat anything but ``'L2'`` as L1). :meth:`Optimizer.from_seed` maps a seed
  optimizer's setting to the mode the seed applies, so a converted optimizer continues as the seed;
* errors name the layer and parameter (the seed stops half-way through the layers);
* hyperparameters are float32 inside the update of a float32 model (the seed's scalars are float64
  until they meet a float32 array); results agree to float32 rounding. Adam's bias correction is
  float32 and its step count saturates at 2**31 - 1 inside the update, where ``1 - beta**t`` has long
  been 1.0 (``t`` itself keeps counting);
* ``params`` returns the same dicts every time, keyed by ``id(param)`` as in the seed, and reading it
  fills them from the device state; what is written into them (``restore_model_weights``) is used by
  the next step. But a step does not write into arrays handed out earlier, as the seed's in-place
  updates do: read ``params`` again after a step;
* every parameter must have the same floating dtype (mpneuralnetwork uses float32 throughout);
* the base class ``Optimizer`` is usable as the seed's: its ``step`` does nothing, ``params`` is empty;
* ``Model.train(model_checkpoint=True)`` resets the seed Adam's ``t`` when it restores the best
  weights, because it tests ``isinstance(optimizer, mpneuralnetwork.optimizers.Adam)``; ours keeps
  counting. ``serialization.load_model`` rebuilds the seed's class of the same name: use
  :meth:`Optimizer.from_seed` to continue with ours.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpnn_opt import _checks, checkpoint
from mpnn_opt.aliases import adam, rmsprop, sgd
from mpnn_opt.optimizers import _staging as _layer_tree
from mpnn_opt.optimizers import _state_dict
from mpnn_opt.optimizers._stepper import Compiled, Stepper
from mpnn_opt.regularization import add_regularization, is_regularized_name

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam"]


# The seed keeps every state array in its DTYPE, float32, whatever the parameter's dtype.
STATE_DTYPE = np.float32

# The largest step count jit takes as an int32: 1 - beta**t has been 1.0 in float32 for long by then.
_COUNT_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class _SeedProgram:
    """A seed class's :class:`~mpnn_opt.optimizers._stepper.Program`: its alias on the packed tree.

    The alias is built inside the trace from the traced hyperparameter vector (``hyper_names`` in order),
    so new values reuse the compiled code. ``count_key`` (Adam's ``"scale_by_adam.count"``) names the state's
    step count, set from the class's ``t`` at every step; a key the state does not have raises.
    """

    alias: Callable
    regularization: str | None
    hyper_names: tuple[str, ...]
    count_key: str | None
    view = "packed"

    def transformation(self, hyper: Any) -> Any:
        values = {name: hyper[index] for index, name in enumerate(self.hyper_names)}
        return self.alias(
            regularization=self.regularization, mask=_layer_tree.GROUP_MASK, state_dtype=STATE_DTYPE, **values
        )

    def prepare(self, state: Any, count: Any) -> Any:
        if self.count_key is None:
            return state
        found = []

        def set_count(key: str, leaf: Any) -> Any:
            if key != self.count_key:
                return leaf
            found.append(key)
            return jnp.asarray(count, leaf.dtype)

        prepared = checkpoint.map_state(set_count, state)
        if not found:
            raise RuntimeError(
                f"{self.alias.__name__}'s state has no {self.count_key!r} (its keys: "
                f"{sorted(checkpoint.state_dict(state))}); the adapter's names are out of date"
            )
        return prepared


def _real_number(where: str, value: Any) -> int | float:
    """``value`` as a Python int or float, if it is a real number: Python, NumPy, or a 0-d NumPy or JAX array.

    Raises ``TypeError`` for anything else (strings, booleans, None, arrays with elements) and
    ``ValueError`` for NaN and infinities, naming ``where`` and the value.
    """
    is_array = isinstance(value, (np.ndarray, jax.Array))
    if isinstance(value, (bool, np.bool_)) or not (
        isinstance(value, numbers.Real) or (is_array and value.shape == () and value.dtype.kind in "fiu")
    ):
        raise TypeError(f"{where} must be a real number, got {value!r} of type {type(value).__name__}")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return value if type(value) in (int, float) else float(value)  # pyright: ignore[reportReturnType]  # a checked real (np.float64 too)


def _step_count(where: str, value: Any) -> int:
    """``value`` as a Python int, if it is a non-negative integer (Python, NumPy or 0-d array); raises naming ``where`` otherwise."""
    try:
        count = operator.index(value) if not isinstance(value, (bool, np.bool_)) else None
    except TypeError:
        count = None
    if count is None:
        raise TypeError(
            f"{where} must be an integer (the number of steps taken), got {value!r} of type {type(value).__name__}"
        )
    if count < 0:
        raise ValueError(f"{where} must be >= 0, got {value!r}")
    return count


class Optimizer(Stepper):
    """The seed's ``Optimizer`` base: holds ``learning_rate``, ``regularization``, ``weight_decay``.

    Subclasses name their functional alias, their hyperparameters and where the seed's names sit in
    the alias's state (``_slot_keys``: seed name -> :func:`mpnn_opt.checkpoint.state_dict` key on the
    packed tree, ``_count_key`` for Adam's ``t``); ``step`` is :class:`~mpnn_opt.optimizers._stepper.Stepper`'s.
    The base class itself has no update rule: as in the seed, its ``step`` does nothing and its
    ``params`` is empty.
    """

    # set in __init__ through __setattr__'s checks; declared here for type checkers
    learning_rate: float
    regularization: str | None
    weight_decay: float
    t: int  # steps taken, on the classes that count them (_counts_steps)

    _alias: Callable | None = None
    _slot_keys: dict[str, str] = {}  # the seed's state name -> the alias's state key (checkpoint.state_dict)
    _slot_names: tuple[str, ...] = ()  # the seed's state names: _slot_keys' keys
    _count_key: str | None = None  # the alias's step count, set from ``t`` (classes that count steps)
    _hyperparameters: tuple[str, ...] = ("learning_rate", "weight_decay")
    _counts_steps = False

    def __init__(
        self, learning_rate: float, regularization: str | None, weight_decay: float, **hyperparameters: float
    ) -> None:
        settings = {
            "learning_rate": learning_rate,
            "regularization": regularization,
            "weight_decay": weight_decay,
            **hyperparameters,
        }
        checked = {name: self._checked(name, value) for name, value in settings.items()}
        self._check_together(checked)
        vars(self).update(checked)
        if self._counts_steps:
            vars(self)["t"] = 0
        super().__init__()
        self._slots: dict[str, dict[int, Any]] = {name: {} for name in self._slot_names}
        self._written: dict[
            tuple[str, int], tuple[weakref.ref, weakref.ref]
        ] = {}  # (slot, id) -> (param, value) we wrote
        self._ids: tuple[int, ...] = ()  # id() of each array the live state is for: compared at every step
        self._held: tuple[np.ndarray, ...] = ()  # those arrays, held so that no other array can take their ids
        self._names: tuple[tuple[str, weakref.ref], ...] | None = None  # ("layer_{i}/{name}", param) of the last state
        self._pending: _state_dict.Pending | None = None  # load_state_dict's entries, for the next step

    # --- settings ---------------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        """Assigning a setting (a constructor argument, or Adam's ``t``) checks the value first.

        A refused value raises ``TypeError`` / ``ValueError`` naming the attribute and the value, and
        the attribute keeps its old value. A NumPy or JAX scalar is kept as a Python float.
        """
        if name.startswith("_") or name not in self._setting_names():  # internal names first: they are set every step
            object.__setattr__(self, name, value)
            return
        with self._lock:
            value = self._checked(name, value)
            if name != "t":
                self._check_together({**{key: getattr(self, key) for key in self._config_names()}, name: value})
            object.__setattr__(self, name, value)

    @classmethod
    def _setting_names(cls) -> tuple[str, ...]:
        return (*cls._config_names(), "t") if cls._counts_steps else cls._config_names()

    def _checked(self, name: str, value: Any) -> Any:
        """``value`` for setting ``name`` on its own: a mode, a step count or a real number."""
        where = f"{type(self).__name__}.{name}"
        if name == "regularization":
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{where} must be 'L1', 'L2' or None, got {value!r} of type {type(value).__name__}")
            _checks.regularization(value)
            return value
        if name == "t":
            return _step_count(where, value)
        return _real_number(where, value)

    def _check_together(self, settings: dict) -> None:
        """Builds the alias from ``settings``, so that out-of-range values raise naming the argument."""
        alias = type(self)._alias
        if alias is not None:
            alias(regularization=settings["regularization"], **{name: settings[name] for name in self._hyperparameters})

    # --- the machinery's hooks --------------------------------------------------------------------

    def step(self, layers: list) -> None:
        """Updates every parameter of ``layers`` in place from the gradients the layers hold.

        Layers without ``params`` are skipped. A parameter not seen before starts from zero state;
        an array held by several layers (tied weights) is updated once per layer, in layer order, as
        in the seed. All or nothing: when ``step`` raises (a bad gradient, a failed update, a
        ``KeyboardInterrupt``), no layer, no state and not ``t`` has changed. Errors name the layer
        and parameter. Safe to call from several threads: one step runs at a time.
        """
        if self._alias is None:
            return  # the seed's base class has no update rule: its step does nothing
        super().step(layers)

    def _program(self) -> _SeedProgram:
        assert self._alias is not None  # step returns first on the base class
        return _SeedProgram(type(self)._alias, self.regularization, self._hyperparameters, self._count_key)  # pyright: ignore[reportArgumentType]  # the staticmethod-wrapped alias

    def _hyper(self, dtype: str) -> np.ndarray:
        """The hyperparameters as one vector (float64 for float64 params, else float32): one traced signature."""
        return np.array(
            [float(getattr(self, name)) for name in self._hyperparameters],
            np.float64 if dtype == "float64" else np.float32,
        )

    def _count(self) -> int:
        return min(self.t, _COUNT_LIMIT) if self._counts_steps else 0

    def _settings_after_step(self) -> dict:
        return {"t": self.t + 1} if self._counts_steps else {}

    def _gather(self, layers: list) -> tuple[list[_layer_tree.Entry], list]:
        entries = _layer_tree.gather(layers)
        if len({id(entry.param) for entry in entries}) < len(entries):
            return _layer_tree.untie(entries)
        return entries, []

    def _live_state(
        self, entries: list, layout: _layer_tree.Layout, params: dict, functions: Compiled, hyper: Any
    ) -> tuple[Any, dict]:
        """The alias's state for these arrays: last step's, or rebuilt from ``params`` or loaded entries (not yet committed)."""
        ids = tuple(id(entry.param) for entry in entries)
        if self._state is not None and self._ids == ids and self._layout == layout:
            return self._state, {}
        self._materialize()
        found = self._state_of if self._pending is None else self._loaded(self._pending, entries)
        template = jax.eval_shape(functions.init, params, hyper)
        saved: dict[str, Any] = {}
        for slot, key in self._slot_keys.items():
            saved.update(
                {f"{group}:{key}": flat for group, flat in self._gathered(slot, entries, layout, found).items()}
            )
        if self._count_key is not None:
            saved[self._count_key] = np.asarray(self._count(), np.int32)
        try:
            state, _ = checkpoint.load_state_dict(template, saved)
        except ValueError as error:  # the alias's state no longer has the names this class maps
            raise RuntimeError(f"{type(self).__name__}: the adapter's state names are out of date: {error}") from error
        return state, {"_ids": ids, "_held": tuple(entry.param for entry in entries)}

    def _gathered(
        self, name: str, entries: list, layout: _layer_tree.Layout, found: Callable[[str, Any], Any]
    ) -> dict[str, np.ndarray]:
        """The state ``name`` of every entry, as float32 host buffers in ``layout``'s groups (zeros where none)."""
        host = {group: np.zeros(size, STATE_DTYPE) for group, size in layout.sizes.items()}
        for entry, (group, start, stop) in zip(entries, layout.spans):
            value = found(name, entry)
            if value is not None and np.shape(value) != entry.param.shape:
                raise ValueError(
                    f"{entry.where}: the optimizer state {name!r} has shape {np.shape(value)}, "
                    f"but the parameter has shape {entry.param.shape}"
                )
            if value is not None:
                host[group][start:stop] = np.ravel(value)
        return host

    def _state_of(self, name: str, entry: _layer_tree.Entry) -> Any:
        return self._state_for(name, entry.param)

    def _loaded(self, pending: _state_dict.Pending, entries: list) -> Callable[[str, Any], Any]:
        """``load_state_dict``'s entries as a lookup ``(slot, entry) -> array or None``, checked against ``entries``.

        Raises ``ValueError`` naming the keys that do not fit (see :mod:`mpnn_opt.optimizers._state_dict`).
        """
        expected = {
            _state_dict.key(entry.layer_key, entry.name, slot): entry.param.shape
            for entry in entries
            for slot in self._slot_names
        }
        _state_dict.unmatched(f"{type(self).__name__}.step", pending, expected)
        return lambda slot, entry: pending.entries.get(_state_dict.key(entry.layer_key, entry.name, slot))

    def _state_for(self, name: str, param: np.ndarray) -> Any:
        """``params[name]``'s entry for ``param``, or None when there is none or it belongs to a freed array.

        CPython gives a new array the id of a freed one; an entry this optimizer wrote for an array
        that has since been freed is not handed to the new array (the seed would). Entries written by
        others (``restore_model_weights``, ``from_seed``, the user) are used as they are.
        """
        value = self._slots[name].get(id(param))
        written = self._written.get((name, id(param)))
        if value is not None and written is not None and written[1]() is value and written[0]() is not param:
            return None
        return value

    def _materialize(self) -> None:
        """Moves the device state into the ``params`` dicts as writable NumPy arrays, noting which array each is for."""
        state, layout = self._state, self._layout
        if state is None or layout is None:
            return
        arrays = checkpoint.state_dict(state)
        for name, key in self._slot_keys.items():
            host = {group: np.array(arrays[f"{group}:{key}"]) for group in layout.sizes}
            for param, (_, _, shape), (group, start, stop) in zip(self._held, layout.leaves, layout.spans):
                value = host[group][start:stop].reshape(shape)
                self._slots[name][id(param)] = value
                self._written[(name, id(param))] = (weakref.ref(param), weakref.ref(value))
        self._names = tuple(
            (f"{layer_key}/{param_name}", weakref.ref(param))
            for (layer_key, param_name, _), param in zip(layout.leaves, self._held)
        )
        vars(self).update(_state=None, _ids=(), _held=())
        self._forget_freed()

    def _forget_freed(self) -> None:
        """Drops the entries this optimizer wrote for arrays that have since been freed (see :meth:`_state_for`)."""
        for (name, param_id), (param_ref, value_ref) in list(self._written.items()):
            if param_ref() is not None:
                continue
            value = self._slots[name].get(param_id)
            if value is not None and value_ref() is value:
                del self._slots[name][param_id]
            del self._written[(name, param_id)]

    # --- the seed's surface -----------------------------------------------------------------------

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
        gradient, _ = penalty.update({param_name: np.zeros_like(param)}, penalty.init({}), {param_name: param})
        return np.asarray(gradient[param_name])  # pyright: ignore[reportIndexIssue]  # updates mirror the dict given

    @property
    def params(self) -> dict:
        """The state under the seed's names, as live dicts ``{id(param): writable NumPy array}``.

        ``serialization`` reads these and ``restore_model_weights`` writes into them; the next
        ``step`` uses what it finds there. Entries for arrays that have been freed are dropped.
        """
        with self._lock:
            self._materialize()
            self._forget_freed()
            return ({"t": self.t} if self._counts_steps else {}) | self._slots

    # --- torch's state_dict -----------------------------------------------------------------------

    def state_dict(self, layers: list | None = None) -> dict[str, np.ndarray]:
        """The state as ``{"layer_{i}/{name}:{slot}": array}`` (float32 copies), plus ``"t"`` (0-d int64) for Adam.

        Keyed by the layer's position and the parameter's name, so a model rebuilt in another process
        resumes with :meth:`load_state_dict`. The names are those of the last ``step``'s layers (an
        array held by several layers is named after its first); ``layers`` names the state by these
        layers instead, e.g. after :meth:`from_seed`, whose state is keyed by array only (a parameter
        without state then gets zeros, the state it would start from). Before any step, loaded entries
        not yet used are returned as loaded, whatever ``layers``. Hyperparameters are not state: save ``get_config()``.
        """
        with self._lock:
            counted = {"t": np.array(self.t, np.int64)} if self._counts_steps else {}
            if self._pending is not None:
                return {name: value.copy() for name, value in self._pending.entries.items()} | counted
            self._materialize()
            if layers is not None:
                named = [(f"{e.layer_key}/{e.name}", e.param) for e in _layer_tree.untie(_layer_tree.gather(layers))[0]]
            elif self._names is not None:
                named = [(prefix, param) for prefix, ref in self._names if (param := ref()) is not None]
            elif any(self._slots.values()):
                raise ValueError(
                    f"{type(self).__name__}.state_dict: the state is keyed by array only (from from_seed or params) "
                    f"until a step names it; pass the layers: state_dict(model.layers)"
                )
            else:
                named = []
            arrays = {}
            for prefix, param in named:
                for slot in self._slot_names:
                    value = self._state_for(slot, param)
                    value = np.zeros(param.shape, STATE_DTYPE) if value is None else value
                    arrays[f"{prefix}:{slot}"] = np.array(value, STATE_DTYPE, copy=True)
            return arrays | counted

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Replaces the state with ``state_dict`` (from :meth:`state_dict`, e.g. through ``numpy.savez``/``np.load``).

        Adam's ``t`` is set now; the other entries are kept (copied) and matched to the layers' parameters
        by key at the next ``step``, which raises ``ValueError`` naming the keys whose shape differs and,
        with ``strict=True``, those for parameters the model does not have and the parameters without an
        entry; it then changes nothing. ``strict=False`` ignores unknown keys and starts parameters without
        an entry from zero state. Here, keys this class never writes (another slot, a malformed key)
        raise under ``strict`` and are ignored otherwise; values that are not float32 (int for ``t``) raise.
        Hyperparameters are not in the state dict: build the optimizer with the saved ``get_config()``.
        """
        where = f"{type(self).__name__}.load_state_dict"
        entries = _state_dict.copies(where, state_dict)
        with self._lock:
            counted = {}
            if self._counts_steps:
                if strict and "t" not in entries:
                    raise ValueError(f"{where}: 't' is missing (pass strict=False to start counting from 0)")
                counted["t"] = _step_count(f"{where}: 't'", entries.pop("t", 0))
            slots = self._slot_entries(where, entries, strict)
            for by_id in self._slots.values():
                by_id.clear()  # the same dicts: params hands them out
            self._written.clear()
            vars(self).update(
                _state=None, _ids=(), _held=(), _names=None, _pending=_state_dict.Pending(slots, strict), **counted
            )

    def _slot_entries(self, where: str, entries: dict[str, np.ndarray], strict: bool) -> dict[str, np.ndarray]:
        """The entries keyed ``"layer_{i}/{name}:{slot}"`` with one of this class's slots; others raise (``strict``) or are left out."""
        slots = {}
        for name, value in entries.items():
            prefix, _, slot = name.rpartition(":")
            if slot not in self._slot_names or "/" not in prefix:
                if strict:
                    raise ValueError(
                        f"{where}: {name!r} is not a key of {type(self).__name__}'s state "
                        f"('layer_{{i}}/{{name}}:{{slot}}' with slot in {self._slot_names}); pass strict=False to ignore it"
                    )
                continue
            if value.dtype != STATE_DTYPE:
                raise ValueError(f"{where}: {name!r} has dtype {value.dtype}, but the state is {STATE_DTYPE.__name__}")
            slots[name] = value
        return slots

    @staticmethod
    def _seed_regularization(value: Any) -> str | None:
        """Our mode for a seed optimizer's ``regularization``: the seed's SGD and RMSprop apply L1 for anything but 'L2'."""
        return "L2" if value == "L2" else "L1"

    @classmethod
    def from_seed(cls, seed_optimizer: Any) -> Optimizer:
        """Ours, with the settings and state (copied) of an mpneuralnetwork optimizer of the same class.

        Continues exactly as the seed optimizer would: its ``regularization`` becomes the mode the
        seed applies (its SGD and RMSprop apply L1 for anything but 'L2', None included; its Adam
        applies nothing for anything but 'L1' and 'L2'). For a model from
        ``serialization.load_model``: ``model.optimizer = Adam.from_seed(model.optimizer)``.
        """
        config = dict(seed_optimizer.get_config())
        kind = config.pop("type")
        if kind != cls.__name__:
            raise TypeError(f"{cls.__name__}.from_seed: got a {kind} optimizer")
        if cls._alias is not None:
            config["regularization"] = cls._seed_regularization(config["regularization"])
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
    _slot_keys = {"velocities": "momentum_velocity.velocities"}
    _slot_names = tuple(_slot_keys)
    _hyperparameters = ("learning_rate", "weight_decay", "momentum")

    def __init__(
        self,
        learning_rate: float = 0.01,
        regularization: str | None = "L2",
        weight_decay: float = 0.001,
        momentum: float = 0.1,
    ) -> None:
        super().__init__(learning_rate, regularization, weight_decay, momentum=momentum)

    @property
    def velocities(self) -> dict:
        return self.params["velocities"]


class RMSprop(Optimizer):
    """RMSprop: ``c = d * c + (1 - d) * g'^2``, ``w = w - lr * g' / (sqrt(c) + eps)``, ``g' = g + reg(w)``.

    See :func:`mpnn_opt.rmsprop`. Defaults: learning_rate 0.001, 'L2', weight_decay 0.001,
    decay_rate 0.9, epsilon 1e-8. State: ``cache``.
    """

    _alias = staticmethod(rmsprop)
    _slot_keys = {"cache": "rms_step.cache"}
    _slot_names = tuple(_slot_keys)
    _hyperparameters = ("learning_rate", "weight_decay", "decay_rate", "epsilon")

    def __init__(
        self,
        learning_rate: float = 0.001,
        regularization: str | None = "L2",
        weight_decay: float = 0.001,
        decay_rate: float = 0.9,
        epsilon: float = 1e-8,
    ) -> None:
        super().__init__(learning_rate, regularization, weight_decay, decay_rate=decay_rate, epsilon=epsilon)

    @property
    def cache(self) -> dict:
        return self.params["cache"]


class Adam(Optimizer):
    """Adam with the seed's decoupled decay under 'L2' and coupled penalty under 'L1' (:func:`mpnn_opt.adam`).

    Defaults: learning_rate 0.001, 'L2', weight_decay 0.001, beta1 0.9, beta2 0.999, epsilon 1e-8.
    State: ``t`` (steps taken, shared by all parameters as in the seed), ``momentums``, ``velocities``.
    """

    _alias = staticmethod(adam)
    _slot_keys = {"momentums": "scale_by_adam.momentums", "velocities": "scale_by_adam.velocities"}
    _slot_names = tuple(_slot_keys)
    _count_key = "scale_by_adam.count"
    _hyperparameters = ("learning_rate", "weight_decay", "beta1", "beta2", "epsilon")
    _counts_steps = True

    @staticmethod
    def _seed_regularization(value: Any) -> str | None:
        """The seed's Adam applies L1 for 'L1', decoupled decay for 'L2', and nothing for anything else."""
        return value if value in ("L1", "L2") else None

    def __init__(
        self,
        learning_rate: float = 0.001,
        regularization: str | None = "L2",
        weight_decay: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
    ) -> None:
        super().__init__(learning_rate, regularization, weight_decay, beta1=beta1, beta2=beta2, epsilon=epsilon)

    @property
    def momentums(self) -> dict:
        return self.params["momentums"]

    @property
    def velocities(self) -> dict:
        return self.params["velocities"]
