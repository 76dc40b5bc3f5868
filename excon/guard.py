"""Divergence guard: a non-finite loss or weight stops training in one line, before the
checkpoint of the bad epoch is written, and a diverged model is refused wherever it is loaded."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from excon import distributed

# How often (in steps) the device-side flag is read back on the host when no step is tolerated:
# reading it every step would add a host-device sync to the hot loop.
CHECK_EVERY = 25


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight."""


class UnusableModel(ValueError):
    """A model file holds non-finite weights (a diverged run) and is refused."""


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (one sync in all)."""
    names = [k for k, v in tensors.items() if v.is_floating_point()]
    if not names:
        return []
    flags = torch.stack([torch.isfinite(tensors[k]).all().to("cpu") for k in names])
    return [k for k, ok in zip(names, flags.tolist(), strict=True) if not ok]


def refuse_nonfinite(tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise UnusableModel when any weight of `source` is not finite."""
    bad = nonfinite_tensors(tensors)
    if bad:
        raise UnusableModel(
            f"{source}: {len(bad)} of {len(tensors)} weight tensors are not finite (first: "
            f"{bad[0]}); the run diverged, retrain it (lower optim.lr, or train.amp=false)"
        )


def cause_hint(lr: float, amp: bool) -> str:
    hint = f"lr was {lr:g}: lower optim.lr or add optim.warmup_epochs"
    return hint + ("; bf16 autocast is on: try train.amp=false" if amp else "")


class StepGuard:
    """Watches the loss of every step of one epoch.

    tolerate == 0 (default): the steps are not changed; a device-side record of the first
    non-finite step is read every CHECK_EVERY steps and at the end, and raises DivergenceError.
    tolerate > 0: each step's gradients are checked after backward (the same on every rank once
    DDP has reduced them) and a non-finite step skips its update; more than `tolerate` skipped
    steps in the epoch raise. Costs one host sync per step, so it is opt-in.
    """

    def __init__(self, what: str, epoch: int, device: torch.device, tolerate: int) -> None:
        self.what, self.epoch, self.tolerate, self.skipped = what, epoch, tolerate, 0
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def watch(self, step: int, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)

    def update_ok(
        self, step: int, params: Iterable[torch.nn.Parameter], lr: float, amp: bool
    ) -> bool:
        """With tolerate > 0: whether the gradients allow this step's update."""
        if self.tolerate == 0:
            return True
        grads = [p.grad for p in params if p.grad is not None]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        finite = (finite & (self._first_bad < 0)).float()  # this rank's loss too
        # every rank takes the same decision (the mean is 1 only when all ranks are finite)
        if distributed.reduce_over_ranks({"ok": finite})["ok"].item() == 1.0:
            return True
        self.skipped += 1
        self._first_bad.fill_(-1)
        if self.skipped > self.tolerate:
            raise DivergenceError(
                f"{self.what} diverged: {self.skipped} non-finite steps in epoch "
                f"{self.epoch + 1} (the last at step {step + 1}) exceed "
                f"train.nonfinite_tolerance={self.tolerate}; {cause_hint(lr, amp)}"
            )
        return False

    def check(self, step: int, lr: float, amp: bool, force: bool = False) -> None:
        """Raise if a watched step was non-finite (every CHECK_EVERY steps, or when forced)."""
        if self.tolerate > 0 or not (force or step % CHECK_EVERY == 0):
            return
        bad = {"bad": (self._first_bad >= 0).float()}
        if distributed.reduce_over_ranks(bad, summed={"bad"})["bad"].item() > 0:
            first = int(self._first_bad.item())
            at = f"step {first + 1}" if first >= 0 else "a step of another rank"
            raise DivergenceError(
                f"{self.what} diverged: non-finite loss at epoch {self.epoch + 1}, {at}; "
                f"{cause_hint(lr, amp)}. The last good checkpoint is kept"
            )


def finite_or_none(value: object) -> object:
    """`value` with every NaN/inf float replaced by None, recursively: metrics files are strict
    JSON, where `null` means undefined."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
