"""Optimizer state as a flat dict keyed by name, and back: checkpoints that survive changes to the optimizer.

:func:`state_dict` turns any state of this library (or of optax) into ``{key: array}``, and
:func:`load_state_dict` puts such a dict back into the state of a possibly changed optimizer, matching
entries by key and reporting what it could not match. Unlike torch.optim's ``state_dict`` (matched by
position, torch issue #1489), a key names *what* the value is, never where it sits in a chain.

The key scheme::

    [parameter path ":"] [scope "."] stage "." field ["." name]

* ``stage`` is the kind of the transformation that owns the value, taken from its state class name:
  ``State`` is dropped from the end and CamelCase becomes snake_case (``ScaleByAdamState`` ->
  ``scale_by_adam``, ``InjectHyperparamsState`` -> ``inject_hyperparams``, ``ScheduleState`` ->
  ``schedule``). The second stage of the same kind gets ``#2``, the third ``#3``, and so on, counted
  in state order among the stages of that kind only: adding or removing a stage of another kind
  (``clip_by_global_norm`` in front of Adam) changes no key.
* ``field`` is the state's field name (``count``, ``momentums``, ``velocities``, ``micro_step``, ...).
* ``parameter path`` is there for the fields that mirror the params (moments, caches, gradient
  sums): the path of the parameter, its keys joined by ``/`` (``dense/weights``, ``layers/0/bias``),
  without the trailing ``.value`` of a flax variable. Scalars (counters, flags) have none.
* ``name`` is there for the fields that hold named values (``hyperparams`` and ``scheduled`` of
  :func:`mpnn_opt.inject_hyperparams`): ``inject_hyperparams.hyperparams.learning_rate``, and for the
  parts of a per-parameter record (a named tuple where the params have an array, such as the 8-bit
  state's ``QuantizedBlocks``): ``dense/bias:scale_by_adam_8bit.momentums.values`` and ``...scales``.
* Wrappers are transparent: the state under ``inner_state`` (of ``inject_hyperparams``,
  ``accumulate``, ``skip_non_finite``, ``masked``, a schedule) and the members of a ``chain`` are
  keyed as if they stood alone, so wrapping an optimizer keeps its moments' keys. The groups of
  :func:`mpnn_opt.partition` are scopes: ``dense/weights:partition[decayed].scale_by_adam.momentums``.

For example ``mpnn_opt.adam(learning_rate=schedule)`` on ``{"dense": {"weights": w, "bias": b}}`` gives
``scale_by_adam.count``, ``dense/bias:scale_by_adam.momentums``, ``dense/weights:scale_by_adam.velocities``,
..., ``schedule.count`` (the learning rate's) and ``schedule#2.count`` (the weight decay's).
Two values with the same key (a parameter named ``a/b`` next to ``a`` with a child ``b``) raise. An array
outside any named-tuple state (rare: every state of this library and of optax is a named tuple) has only
its position for a key, ``state[1][0]``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from mpnn_opt._tree import key_name, parameter_path
from mpnn_opt.base import OptState

__all__ = ["LoadReport", "load_state_dict", "map_state", "state_dict", "state_kind"]

_NESTED_STATE_FIELDS = ("inner_state",)  # a wrapper's inner state: keyed as if it stood alone
_SCOPED_STATE_FIELDS = ("inner_states",)  # partition's label -> state: each label is a scope
_NAMED_VALUE_FIELDS = ("hyperparams", "scheduled")  # name -> scalar, not a mirror of the params


def state_kind(state_type: type) -> str:
    """The stage name of a state class: ``ScaleByAdamState`` -> ``'scale_by_adam'``."""
    name = state_type.__name__.removesuffix("State") or state_type.__name__
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=[0-9])", "_", name).lower()


def _is_named_tuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _parameter_key(path: tuple) -> str:
    return "/".join(key_name(entry) for entry in parameter_path(path))


class _Keyer:
    """Walks a state, rebuilding it with ``fn(key, leaf)`` in place of each array."""

    def __init__(self, fn: Callable[[str, Any], Any]):
        self.fn = fn
        self.seen: dict[str, None] = {}  # keys in state order
        self.occurrences: dict[tuple[str, str], int] = {}  # (scope, kind) -> stages met so far

    def leaf(self, key: str, value: Any) -> Any:
        if key in self.seen:
            raise ValueError(f"checkpoint: two values of the state have the key {key!r}; rename one of the parameters")
        self.seen[key] = None
        return self.fn(key, value)

    def state(self, node: Any, scope: str) -> Any:
        if node is None:
            return None
        if _is_named_tuple(node):
            return self.stage(node, scope)
        if isinstance(node, (tuple, list)):
            return type(node)(self.state(child, scope) for child in node)
        # an array (or array-like) outside any named state: only its position names it
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: self.leaf(f"{scope}state{jax.tree_util.keystr(path)}", leaf), node
        )

    def stage(self, node: Any, scope: str) -> Any:
        kind = state_kind(type(node))
        number = self.occurrences.get((scope, kind), 0) + 1
        self.occurrences[(scope, kind)] = number
        stage = f"{scope}{kind}" + (f"#{number}" if number > 1 else "")
        fields = {}
        for field in node._fields:
            value = getattr(node, field)
            if field in _NESTED_STATE_FIELDS:
                fields[field] = self.state(value, scope)
            elif field in _SCOPED_STATE_FIELDS and isinstance(value, Mapping):
                fields[field] = {label: self.state(child, f"{stage}[{label}].") for label, child in value.items()}
            elif field in _NAMED_VALUE_FIELDS and isinstance(value, Mapping):
                fields[field] = {name: self.leaf(f"{stage}.{field}.{name}", v) for name, v in value.items()}
            elif _is_named_tuple(value):
                fields[field] = self.state(value, scope)
            else:
                fields[field] = jax.tree_util.tree_map_with_path(
                    lambda path, leaf, field=field: self.mirrored(path, f"{stage}.{field}", leaf),
                    value,
                    is_leaf=_is_named_tuple,
                )
        return type(node)(**fields)

    def mirrored(self, path: tuple, suffix: str, leaf: Any) -> Any:
        """A value of a field that mirrors the params: keyed by the parameter's path.

        A named tuple there is a per-parameter record (``QuantizedBlocks(values, scales)``): each of its
        fields extends the key, ``dense/bias:scale_by_adam_8bit.momentums.values``.
        """
        prefix = f"{_parameter_key(path)}:" if path else ""
        if not _is_named_tuple(leaf):
            return self.leaf(prefix + suffix, leaf)
        return type(leaf)(
            **{
                name: jax.tree_util.tree_map(
                    lambda value, name=name: self.leaf(f"{prefix}{suffix}.{name}", value), getattr(leaf, name)
                )
                for name in leaf._fields
            }
        )


def _map_keyed(fn: Callable[[str, Any], Any], state: OptState) -> tuple[Any, list[str]]:
    keyer = _Keyer(fn)
    rebuilt = keyer.state(state, "")
    return rebuilt, list(keyer.seen)


def map_state(fn: Callable[[str, Any], Any], state: OptState) -> Any:
    """``state`` with each array replaced by ``fn(key, array)``, the key being :func:`state_dict`'s for it.

    Works on traced states too (inside ``jax.jit``): e.g. setting one value by name,
    ``map_state(lambda key, x: count if key == "scale_by_adam.count" else x, state)``.
    """
    return _map_keyed(fn, state)[0]


def state_dict(state: OptState) -> dict[str, jax.Array]:
    """The arrays of ``state`` in a flat dict, keyed by parameter path, stage and field (see the module docs).

    The values are the state's own arrays (no copy, still on their devices); save them with
    ``numpy.savez`` or orbax's ``StandardCheckpointer``.
    """
    arrays: dict[str, jax.Array] = {}

    def collect(key: str, leaf: Any) -> Any:
        arrays[key] = leaf
        return leaf

    _map_keyed(collect, state)
    return arrays


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_state_dict` did with each key (each tuple sorted).

    ``restored``: the saved value was loaded; ``fresh``: in the template only (the template's value
    kept); ``dropped``: in the saved dict only (ignored); ``mismatched``: in both with a different
    shape or dtype (the template's value kept), with the reason in ``reasons``.
    """

    restored: tuple[str, ...]
    fresh: tuple[str, ...]
    dropped: tuple[str, ...]
    mismatched: tuple[str, ...]
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every entry of the template was restored and every saved entry used."""
        return not (self.fresh or self.dropped or self.mismatched)

    def __str__(self) -> str:
        lines = [f"restored: {len(self.restored)}"]
        for title, keys in (
            ("fresh (not in the checkpoint; initial values kept)", self.fresh),
            ("dropped (in the checkpoint only)", self.dropped),
            ("mismatched (initial values kept)", self.mismatched),
        ):
            lines.append(f"{title}: {len(keys)}")
            lines += [f"  {key}" + (f"  ({self.reasons[key]})" if key in self.reasons else "") for key in keys]
        return "\n".join(lines)


def _describe(dtype: np.dtype, shape: tuple) -> str:
    return f"{dtype}{list(shape)}"


def _saved_array(value: Any, template_dtype: np.dtype) -> Any:
    """``value`` as an array; numpy.savez stores bfloat16 and the other ml_dtypes as raw bytes (``V2``),
    which are the values themselves: they are viewed (not converted) as the template's dtype."""
    if not hasattr(value, "dtype"):
        value = np.asarray(value)
    dtype = np.dtype(value.dtype)
    if dtype.kind == "V" and template_dtype.kind == "V" and dtype != template_dtype:
        if dtype.itemsize == template_dtype.itemsize and dtype.names is None:
            return np.asarray(value).view(template_dtype)
    return value


def _place(value: Any, template_leaf: Any) -> jax.Array:
    """``value`` on the template leaf's sharding (or the default device), never sharing the caller's memory.

    ``jax.device_put`` of a NumPy array on CPU may alias its memory (zero-copy) or copy it after returning,
    so a caller who reuses the array would change the restored state: NumPy values are copied first.
    Placing from the host compiles nothing (``jnp.asarray`` compiles a program per shape).
    """
    if isinstance(value, np.ndarray):
        value = value.copy()
    sharding = getattr(template_leaf, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else jax.device_put(value)


def load_state_dict(template: OptState, saved: Mapping[str, Any], *, strict: bool = True) -> tuple[Any, LoadReport]:
    """``template`` with the values of ``saved`` (a dict from :func:`state_dict`) wherever the keys match.

    ``template`` is ``tx.init(params)`` of the optimizer to resume, or its ``jax.eval_shape``, or a
    state whose arrays carry shardings; the result has exactly its structure, shapes, dtypes and
    shardings (each restored array is ``jax.device_put`` onto the template leaf's sharding).
    A saved value of another shape or dtype is never converted: it is mismatched.

    With ``strict=True`` (the default) anything fresh, dropped or mismatched raises ``ValueError``
    naming the keys. With ``strict=False`` fresh and mismatched entries keep the template's initial
    values (a ``jax.ShapeDtypeStruct`` template has none: that raises), dropped entries are ignored,
    and the :class:`LoadReport` says which is which.
    """
    if not isinstance(saved, Mapping):
        raise TypeError(f"load_state_dict: saved must be a mapping from key to array, got {type(saved).__name__}")
    restored: list[str] = []
    fresh: list[str] = []
    mismatched: list[str] = []
    reasons: dict[str, str] = {}
    template_leaves: dict[str, Any] = {}

    def load(key: str, leaf: Any) -> Any:
        template_leaves[key] = leaf
        if key not in saved:
            fresh.append(key)
            return leaf
        dtype, shape = np.dtype(leaf.dtype), tuple(leaf.shape)
        value = _saved_array(saved[key], dtype)
        got_dtype, got_shape = np.dtype(value.dtype), tuple(np.shape(value))
        if (got_dtype, got_shape) != (dtype, shape):
            mismatched.append(key)
            reasons[key] = f"saved {_describe(got_dtype, got_shape)}, template {_describe(dtype, shape)}"
            return leaf
        restored.append(key)
        return _place(value, leaf)

    state, keys = _map_keyed(load, template)
    known = set(keys)
    dropped = sorted(key for key in saved if key not in known)
    report = LoadReport(
        tuple(sorted(restored)), tuple(sorted(fresh)), tuple(dropped), tuple(sorted(mismatched)), reasons
    )
    if strict and not report.complete:
        raise ValueError(
            "load_state_dict(strict=True): the checkpoint does not match the optimizer state; "
            "pass strict=False to keep the template's values where it does not\n" + str(report)
        )
    abstract = [
        key for key in (*report.fresh, *report.mismatched) if isinstance(template_leaves[key], jax.ShapeDtypeStruct)
    ]
    if abstract:
        raise ValueError(
            "load_state_dict: these entries are not restored and the template is a jax.ShapeDtypeStruct, "
            f"which has no initial value to keep: {abstract}; pass tx.init(params) as the template instead"
        )
    return state, report
