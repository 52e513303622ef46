"""Mixed precision for the optimisation loops of defenses, attacks and baselines.

A component that offers ``precision`` (fp32 | bf16 | fp16) runs its loops inside
:func:`autocast`; each loop ends a step with :func:`step` instead of
``zero_grad / backward / step``. Parameters and optimiser state stay in fp32 (the master
weights); only the forward passes run in the lower precision (``torch.autocast``), and fp16
scales the loss (``torch.amp.GradScaler``) so small gradients do not underflow. With fp32
both are exactly the plain code, so CPU numbers do not change.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Iterable, Iterator

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_ACTIVE: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("toolbox_precision", default=None)
_SCALERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, torch.amp.GradScaler] = weakref.WeakKeyDictionary()


def check(precision: str, owner: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{owner} must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the forward passes inside in ``precision`` on ``device``'s type (fp32: no change)."""
    check(precision)
    kind = torch.device(device).type
    token = _ACTIVE.set((precision, kind))
    try:
        if precision == "fp32":
            yield
        else:
            # no cast cache: a block spans optimiser steps, and cached casts of the parameters
            # would keep their values from the block's first forward pass
            with torch.autocast(kind, dtype=PRECISIONS[precision], cache_enabled=False):
                yield
    finally:
        _ACTIVE.reset(token)


def active() -> str:
    """The precision of the innermost :func:`autocast` (fp32 outside any)."""
    state = _ACTIVE.get()
    return "fp32" if state is None else state[0]


def step(
    opt: torch.optim.Optimizer, loss: torch.Tensor, clip: tuple[Iterable[torch.Tensor], float] | None = None
) -> None:
    """``zero_grad``, ``backward`` and ``step`` of one update, with ``clip = (params, max_norm)``
    clipping the gradients' norm first; under fp16 with a loss scale per optimiser (gradients are
    unscaled before clipping; a step whose gradients overflow is skipped and the scale lowered)."""
    opt.zero_grad(set_to_none=True)
    state = _ACTIVE.get()
    scaler = None
    if state is not None and state[0] == "fp16":
        scaler = _SCALERS.get(opt)
        if scaler is None:
            scaler = _SCALERS[opt] = torch.amp.GradScaler(state[1])
    (loss if scaler is None else scaler.scale(loss)).backward()
    if clip is not None and clip[1]:
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(clip[0], clip[1])
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()
