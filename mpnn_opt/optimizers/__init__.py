"""mpneuralnetwork's optimizer classes, driven by mpnn_opt's functional aliases: change one import.

``from mpnn_opt.optimizers import Adam`` in place of ``from mpneuralnetwork.optimizers import Adam``.
The classes live in :mod:`mpnn_opt.optimizers._adapter` (its docstring states the guarantees and the
differences from mpneuralnetwork), the staging of a model's arrays into flat buffers in
:mod:`mpnn_opt.optimizers._staging`, the compiled step they share with :class:`Transform` in
:mod:`mpnn_opt.optimizers._stepper`. :class:`Transform` puts any gradient transformation (mpnn_opt's or
optax's) behind the same API, with the transformation's own state; see
:mod:`mpnn_opt.optimizers._transform`, which also says how to checkpoint and resume it. Every class has
torch's ``state_dict()`` / ``load_state_dict()``, keyed by layer position and parameter name
(:mod:`mpnn_opt.optimizers._state_dict`).
"""

from __future__ import annotations

import jax

from mpnn_opt.optimizers._adapter import SGD, Adam, Optimizer, RMSprop
from mpnn_opt.optimizers._transform import Transform

__all__ = ["Adam", "Optimizer", "RMSprop", "SGD", "Transform", "use_synchronous_dispatch"]


def use_synchronous_dispatch() -> bool:
    """Runs each JAX call on the calling thread (``jax_cpu_enable_async_dispatch = False``).

    ``step`` waits for its result, so asynchronous dispatch only adds two thread hand-offs (35-45 us
    on a 2-core machine, as much as the seed's whole step on a small model). The setting is
    process-wide and read when JAX starts its CPU backend: call this once, first thing, in a program
    that uses JAX only through these classes. Returns False (and changes nothing) when the backend
    has already started, where the setting can no longer take effect.
    """
    from jax._src import xla_bridge  # the only way to ask whether the backends have started

    if xla_bridge.backends_are_initialized():
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
