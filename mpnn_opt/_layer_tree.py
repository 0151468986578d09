"""Gathering an mpneuralnetwork model's ``(param, grad)`` pairs, by name, into two flat buffers.

A layer exposes ``params -> {name: (param, grad)}``. Layer ``i``'s parameter ``name`` is known as
``("layer_{i}", name)`` (the name mpneuralnetwork's serialization gives it) and the :class:`Layout`
maps each such name to a span of one of two flat buffers: ``'regularized'`` and ``'unregularized'``,
split by the seed's name rule. The update then runs on a two-leaf tree, whatever the number of
layers: one fused loop per buffer, and no per-array cost in the compiled call.

On the host the buffers are 64-byte aligned and kept from step to step, so ``jax.device_put`` wraps
them without a second copy.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from mpnn_opt.regularization import is_regularized_name


class Entry(NamedTuple):
    """One parameter of one layer, with the gradient the layer holds for it."""

    layer_key: str  # "layer_{i}", i the layer's index in the list given to step
    layer_type: str  # the layer's class name, for error messages
    name: str  # the parameter's name in the layer's params dict
    param: np.ndarray
    grad: Any

    @property
    def where(self) -> str:
        return f"{self.layer_key} ({self.layer_type}) parameter {self.name!r}"


def gather(layers: list) -> list[Entry]:
    """Every ``(param, grad)`` of every layer that has ``params``, in layer order, checked.

    Raises ``TypeError`` / ``ValueError`` naming the layer and parameter when a parameter is not a
    writable floating-point NumPy array, or its gradient is not floating point or has another shape.
    Nothing is converted or copied here.
    """
    entries = []
    for index, layer in enumerate(layers):
        if not hasattr(layer, "params"):
            continue
        for name, (param, grad) in layer.params.items():
            entry = Entry(f"layer_{index}", type(layer).__name__, name, param, grad)
            _check(entry)
            entries.append(entry)
    return entries


def _check(entry: Entry) -> None:
    param, grad = entry.param, entry.grad
    if not isinstance(param, np.ndarray) or not param.flags.writeable:
        raise TypeError(f"{entry.where}: expected a writable NumPy array, got {type(param).__name__}")
    if param.dtype.kind != "f":
        raise TypeError(f"{entry.where}: the parameter has dtype {param.dtype}; only floating-point parameters can be optimized")
    grad_dtype = grad.dtype if isinstance(grad, np.ndarray) else np.result_type(grad)
    if grad_dtype.kind != "f":
        raise TypeError(f"{entry.where}: the gradient has dtype {grad_dtype}; expected a floating-point gradient")
    if np.shape(grad) != param.shape:
        raise ValueError(f"{entry.where}: the gradient has shape {np.shape(grad)}, but the parameter has shape {param.shape}")


GROUPS = ("regularized", "unregularized")
GROUP_MASK = {"regularized": True, "unregularized": False}


class Layout(NamedTuple):
    """Where each named parameter sits in the flat group buffers.

    A parameter goes to the ``'regularized'`` buffer when its name passes the seed's rule
    (:func:`mpnn_opt.regularization.is_regularized_name`), else to ``'unregularized'``; within a
    group, parameters follow the order of the layers. Equal layouts mean equal buffer shapes.
    """

    dtype: str
    leaves: tuple[tuple[str, str, tuple[int, ...]], ...]  # (layer_key, name, shape), in entry order
    spans: tuple[tuple[str, int, int], ...]  # (group, start, stop) of each leaf: follows from the leaves
    sizes: dict[str, int]  # the length of each group buffer: follows from the leaves

    @staticmethod
    def of(entries: list[Entry]) -> "Layout":
        dtypes = {entry.param.dtype for entry in entries}
        if len(dtypes) > 1:
            first = next(entry for entry in entries if entry.param.dtype != entries[0].param.dtype)
            raise TypeError(
                f"{first.where} has dtype {first.param.dtype}, but {entries[0].where} has {entries[0].param.dtype}; "
                f"the optimizer needs every parameter in one dtype"
            )
        spans, sizes = _spans(tuple((e.name, e.param.shape) for e in entries))
        return Layout(str(entries[0].param.dtype), tuple((e.layer_key, e.name, e.param.shape) for e in entries), spans, sizes)


@functools.lru_cache(maxsize=64)
def _spans(leaves: tuple[tuple[str, tuple[int, ...]], ...]) -> tuple[tuple[tuple[str, int, int], ...], dict[str, int]]:
    sizes = dict.fromkeys(GROUPS, 0)
    spans = []
    for name, shape in leaves:
        group = GROUPS[0] if is_regularized_name(name) else GROUPS[1]
        spans.append((group, sizes[group], sizes[group] + math.prod(shape)))
        sizes[group] += math.prod(shape)
    return tuple(spans), sizes


def aligned_empty(size: int, dtype: Any) -> np.ndarray:
    """A 1-D host array whose data starts on a 64-byte boundary, which JAX on CPU reads without a copy."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(size * itemsize + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    return raw[offset : offset + size * itemsize].view(dtype)


def stage(entries: list[Entry], layout: Layout, out: dict[str, np.ndarray], field: str) -> None:
    """Copies each entry's ``field`` (``'param'`` or ``'grad'``) into its span of ``out``, cast to its dtype."""
    for entry, (group, start, stop) in zip(entries, layout.spans):
        np.copyto(out[group][start:stop].reshape(entry.param.shape), getattr(entry, field), casting="same_kind")


def unstage(entries: list[Entry], layout: Layout, flats: dict[str, np.ndarray]) -> None:
    """Copies each span of ``flats`` into its entry's own parameter array, in place."""
    for entry, (group, start, stop) in zip(entries, layout.spans):
        np.copyto(entry.param, flats[group][start:stop].reshape(entry.param.shape))
