"""torch's ``state_dict()`` / ``load_state_dict()`` for the class adapter: state keyed by layer position and name.

Array ids do not survive a new process, so the state dict names each value by where its parameter sits
in the model: layer ``i``'s parameter ``name`` is ``"layer_{i}/{name}"`` (the index in the list given to
``step``, the name in the layer's ``params``, as mpneuralnetwork's serialization names them).

* :class:`~mpnn_opt.optimizers.SGD`, :class:`~mpnn_opt.optimizers.RMSprop` and
  :class:`~mpnn_opt.optimizers.Adam` key each state array ``"layer_{i}/{name}:{slot}"``, with the seed's
  slot names (``velocities``, ``cache``, ``momentums``); Adam adds ``"t"``, the step count (a 0-d int64).
* :class:`~mpnn_opt.optimizers.Transform` keys its state with :func:`mpnn_opt.checkpoint.state_dict` over
  the tree ``{"layer_{i}": {name: param}}``: ``"layer_0/weights:scale_by_adam.momentums"``,
  ``"scale_by_adam.count"``.

Values are NumPy copies. Hyperparameters are not state (as in torch, where they sit in
``param_groups``): they are the constructor's arguments, saved by ``get_config()`` (which
mpneuralnetwork's ``save_model`` stores), except those a transformation injects with
:func:`mpnn_opt.inject_hyperparams`, which are part of its state and so of its state dict.

``load_state_dict`` replaces the whole state; the entries wait there, and the next ``step(layers)``
matches them to the layers' parameters by key. An entry whose shape differs from its parameter's
raises ``ValueError`` naming the key; with ``strict=True`` (the default) so do entries for parameters
the model does not have and parameters without an entry. The step then changes nothing and the
entries stay, as they were loaded, for the next call. ``strict=False`` ignores unknown entries and
starts the parameters without one from fresh state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Pending", "copies", "key", "unmatched"]


def key(layer_key: str, name: str, slot: str) -> str:
    """The key of one state array of the seed's classes: ``"layer_0/weights:velocities"``."""
    return f"{layer_key}/{name}:{slot}"


class Pending(NamedTuple):
    """Loaded entries waiting for the next ``step`` to match them to the layers' parameters."""

    entries: dict[str, np.ndarray]
    strict: bool


def copies(where: str, state_dict: Any) -> dict[str, np.ndarray]:
    """``state_dict``'s entries as NumPy copies; ``TypeError`` naming ``where`` for anything but a mapping of str keys."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"{where}: expected a mapping from key to array (what state_dict() returns), "
            f"got {type(state_dict).__name__}"
        )
    for name in state_dict:
        if not isinstance(name, str):
            raise TypeError(f"{where}: keys must be strings, got {name!r} of type {type(name).__name__}")
    return {name: np.array(value, copy=True) for name, value in state_dict.items()}


def unmatched(where: str, pending: Pending, expected: Mapping[str, tuple[int, ...]], extra: Iterable[str] = ()) -> None:
    """Raises ``ValueError`` for loaded entries that do not fit ``expected`` (key -> shape the parameter needs).

    Always for a shape that differs; with ``pending.strict`` also for keys not expected (besides
    ``extra``, keys handled elsewhere) and expected keys without an entry. Names every such key.
    """
    problems = [
        f"{name!r} has shape {value.shape}, but the parameter has shape {expected[name]}"
        for name, value in pending.entries.items()
        if name in expected and value.shape != tuple(expected[name])
    ]
    if pending.strict:
        known = set(expected) | set(extra)
        unknown = sorted(name for name in pending.entries if name not in known)
        missing = [name for name in expected if name not in pending.entries]
        problems += [f"{name!r} is for no parameter of this model" for name in unknown]
        problems += [f"{name!r} is missing" for name in missing]
    if problems:
        hint = " (pass strict=False to ignore unknown entries and start missing ones afresh)" if pending.strict else ""
        raise ValueError(
            f"{where}: the loaded state does not fit this model's parameters{hint}; nothing was changed:\n  "
            + "\n  ".join(problems)
        )
