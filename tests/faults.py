"""Fault injection for the class adapter's tests: an exception at any line of a step before it commits."""

from __future__ import annotations

import dis
import sys
from collections.abc import Callable

from mpnn_opt.optimizers import _adapter, _staging, _stepper, _transform

NOP = dis.opmap["NOP"]


class FaultAtLine:
    """A ``sys.settrace`` tracer that raises ``error`` at the ``n``-th line the adapter's modules run before the step commits.

    With ``n = None`` it only counts those lines. "Committed": the optimizer holds a new device state.
    Lines that start with a NOP (a ``try:``) are skipped: no exception or signal can arise there (a
    tracer's exception at a nested ``try:`` lies outside every handler's range, which real code never meets).
    """

    FILES = {_adapter.__file__, _staging.__file__, _stepper.__file__, _transform.__file__}

    def __init__(self, optimizer, n: int | None, error: BaseException | None = None) -> None:
        self.optimizer, self.n, self.error = optimizer, n, error
        self.before = vars(optimizer)["_state"]
        self.lines = 0
        self.fired = False

    def committed(self) -> bool:
        state = vars(self.optimizer)["_state"]
        return state is not None and state is not self.before

    def __call__(self, frame, event, arg):
        return self._line if frame.f_code.co_filename in self.FILES else None

    def _line(self, frame, event, arg):
        if event == "line" and not self.fired and frame.f_code.co_code[frame.f_lasti] != NOP and not self.committed():
            if self.lines == self.n:
                self.fired = True
                raise self.error  # pyright: ignore[reportGeneralTypeIssues]  # set whenever n is
            self.lines += 1
        return self._line

    def run(self, function: Callable[[], object]) -> BaseException | None:
        """Calls ``function()`` under the tracer; returns what it raised, or None."""
        previous = sys.gettrace()
        sys.settrace(self)
        try:
            function()
        except BaseException as raised:  # noqa: BLE001 - the injected KeyboardInterrupt included
            return raised
        finally:
            sys.settrace(previous)
        return None
