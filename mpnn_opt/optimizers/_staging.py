"""Gathering an mpneuralnetwork model's ``(param, grad)`` pairs, by name, into two flat buffers.

A layer exposes ``params -> {name: (param, grad)}``. Layer ``i``'s parameter ``name`` is known as
``("layer_{i}", name)`` (the name mpneuralnetwork's serialization gives it) and the :class:`Layout`
maps each such name to a span of one of two flat buffers: ``'regularized'`` and ``'unregularized'``,
split by the seed's name rule. The update then runs on a two-leaf tree, whatever the number of
layers: one fused loop per buffer, and no per-array cost in the compiled call.

On the host the buffers are 64-byte aligned and kept from step to step, so ``jax.device_put`` wraps
them without a second copy.

One array in several layers (tied weights) is one parameter with several gradients: :func:`untie`
keeps its first entry in the layout and schedules the others as later rounds, as the seed updates it
once per occurrence. :func:`write_back` copies the new values into the layers and commits the
optimizer's new state, all or nothing, with SIGINT held back.
"""

from __future__ import annotations

import _signal  # pyright: ignore[reportMissingImports]  # CPython C module; signal.signal's own C function: see _SigintHold
import functools
import math
import signal
import threading
from collections.abc import Callable, Iterator
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
        raise TypeError(
            f"{entry.where}: the parameter has dtype {param.dtype}; only floating-point parameters can be optimized"
        )
    is_array = isinstance(grad, np.ndarray)
    grad_dtype = grad.dtype if is_array else np.result_type(grad)
    if grad_dtype.kind != "f":
        raise TypeError(f"{entry.where}: the gradient has dtype {grad_dtype}; expected a floating-point gradient")
    if (grad.shape if is_array else np.shape(grad)) != param.shape:
        raise ValueError(
            f"{entry.where}: the gradient has shape {np.shape(grad)}, but the parameter has shape {param.shape}"
        )


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
    def of(entries: list[Entry]) -> Layout:
        dtypes = {entry.param.dtype for entry in entries}
        if len(dtypes) > 1:
            first = next(entry for entry in entries if entry.param.dtype != entries[0].param.dtype)
            raise TypeError(
                f"{first.where} has dtype {first.param.dtype}, but {entries[0].where} has {entries[0].param.dtype}; "
                f"the optimizer needs every parameter in one dtype"
            )
        spans, sizes = layout_spans(tuple((e.name, e.param.shape) for e in entries))
        return Layout(
            _dtype_name(entries[0].param.dtype),
            tuple((e.layer_key, e.name, e.param.shape) for e in entries),
            spans,
            sizes,
        )


@functools.lru_cache(maxsize=16)
def _dtype_name(dtype: np.dtype) -> str:
    return str(dtype)  # numpy's dtype name is computed in Python at every call: 3 us a step


@functools.lru_cache(maxsize=64)
def layout_spans(
    leaves: tuple[tuple[str, tuple[int, ...]], ...],
) -> tuple[tuple[tuple[str, int, int], ...], dict[str, int]]:
    """The ``(group, start, stop)`` of each ``(name, shape)`` leaf and the group sizes: a :class:`Layout`'s spans and sizes."""
    sizes: dict[str, int] = dict.fromkeys(GROUPS, 0)
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


def spans_of(layout: Layout, buffers: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each leaf's span of ``buffers``, shaped as the leaf (views): where :func:`stage` copies it."""
    return [
        buffers[group][start:stop].reshape(shape)
        for (_, _, shape), (group, start, stop) in zip(layout.leaves, layout.spans)
    ]


def stage(entries: list[Entry], spans: list[np.ndarray], field: str) -> None:
    """Copies each entry's ``field`` (``'param'`` or ``'grad'``) into its span (from :func:`spans_of`), cast to its dtype."""
    for entry, span in zip(entries, spans):
        np.copyto(span, getattr(entry, field), casting="same_kind")


def stage_round(pairs: list[tuple[int, Entry]], layout: Layout) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fresh group buffers holding each pair's gradient in the span of layout leaf ``index``, and masks of those spans.

    For one round of tied parameters (see :func:`untie`); spans of the other leaves hold zeros and
    are masked out.
    """
    grads = {group: np.zeros(size, layout.dtype) for group, size in layout.sizes.items()}
    mask = {group: np.zeros(size, bool) for group, size in layout.sizes.items()}
    for index, entry in pairs:
        group, start, stop = layout.spans[index]
        np.copyto(grads[group][start:stop].reshape(entry.param.shape), entry.grad, casting="same_kind")
        mask[group][start:stop] = True
    return grads, mask


def untie(entries: list[Entry]) -> tuple[list[Entry], list[list[tuple[int, Entry]]]]:
    """The first entry of each distinct parameter array, and the rounds that apply the other entries.

    ``rounds[r]`` lists ``(index into the first list, entry)`` for every array's ``(r + 2)``-th
    entry, in layer order: the seed updates a tied array once per layer that holds it, one after the
    other. Raises ``ValueError`` naming both places when one array is regularized under one name and
    not under another (its span cannot be in both group buffers).
    """
    distinct: list[Entry] = []
    rounds: list[list[tuple[int, Entry]]] = []
    for entry, owner, index, repeat in ties(entries):
        if owner is None:
            distinct.append(entry)
            continue
        if is_regularized_name(entry.name) != is_regularized_name(owner.name):
            raise ValueError(
                f"{entry.where} is the array of {owner.where}, but only one of the two names is regularized; "
                f"tie arrays under names that are both regularized or both not"
            )
        if repeat > len(rounds):
            rounds.append([])
        rounds[repeat - 1].append((index, entry))
    return distinct, rounds


def ties(entries: list[Entry]) -> Iterator[tuple[Entry, Entry | None, int, int]]:
    """``(entry, owner, index, repeat)`` for each entry in order: ``owner`` is the first entry of the same array
    (None for that first entry itself), ``index`` its position among the distinct arrays, ``repeat`` how many
    entries of that array came before this one."""
    first: dict[int, tuple[Entry, int]] = {}
    seen: dict[int, int] = {}
    for entry in entries:
        key = id(entry.param)
        if key not in first:
            first[key], seen[key] = (entry, len(first)), 1
            yield entry, None, first[key][1], 0
            continue
        owner, index = first[key]
        yield entry, owner, index, seen[key]
        seen[key] += 1


def write_back(
    entries: list[Entry],
    layout: Layout,
    new: dict[str, np.ndarray],
    old: dict[str, np.ndarray],
    commit: Callable[[], Any],
) -> None:
    """Copies each span of ``new`` into its entry's own parameter array, in place, then calls ``commit()``: all or nothing.

    On any exception before ``commit`` has returned, ``KeyboardInterrupt`` included, every entry gets
    its span of ``old`` (the values it had) back and the exception propagates. SIGINT is held back
    meanwhile (see :class:`_SigintHold`): a Ctrl-C runs the interrupted handler after the copies,
    before ``commit``, and when it raises, as the default handler does, the layers are restored and
    nothing is committed; a second Ctrl-C cannot cut the restoring short.
    """
    hold = None
    try:
        hold = _SigintHold()
        try:
            for entry, (group, start, stop) in zip(entries, layout.spans):
                np.copyto(entry.param, new[group][start:stop].reshape(entry.param.shape))
            hold.deliver()
            commit()
        except BaseException:
            restore(entries, layout, old)
            raise
    finally:
        if hold is not None:
            hold.release()


def restore(entries: list[Entry], layout: Layout, old: dict[str, np.ndarray]) -> None:
    """Copies each span of ``old`` back into its entry's parameter array (by item assignment: not the np.copyto that may just have failed)."""
    for entry, (group, start, stop) in zip(entries, layout.spans):
        entry.param[...] = old[group][start:stop].reshape(entry.param.shape)


class _SigintHold:
    """Holds SIGINT back while a step writes back and commits; the interrupted handler runs at :meth:`deliver`.

    Only in the main thread (the only one where Python runs signal handlers) and only when the
    current handler is a Python callable (the default one raises ``KeyboardInterrupt``); otherwise
    it holds nothing. Uses ``_signal`` directly: ``signal.signal`` converts the handler it returns
    into an enum member, which takes 5 us a step.
    """

    def __init__(self) -> None:
        self.held: list = []  # the frames passed to the handler, one per signal held
        self.previous: Callable | None = None
        if threading.current_thread() is threading.main_thread() and callable(_signal.getsignal(signal.SIGINT)):
            self.previous = _signal.signal(signal.SIGINT, self._hold)

    def _hold(self, signum: int, frame: Any) -> None:
        self.held.append(frame)

    def deliver(self) -> None:
        """Runs the interrupted handler once for each signal held so far; it may raise ``KeyboardInterrupt``."""
        while self.held and self.previous is not None:
            self.previous(signal.SIGINT, self.held.pop(0))

    def release(self) -> None:
        """Puts the interrupted handler back, then runs it for any signal held since the last :meth:`deliver`.

        Such a signal came in the last bytecodes of :func:`write_back`, after ``commit``: its
        ``KeyboardInterrupt`` propagates with the step applied, as it would just after the step.
        """
        if self.previous is not None:
            _signal.signal(signal.SIGINT, self.previous)
            self.deliver()
