"""How a ``subject to`` weighs its constraint, and how a learned multiplier moves: one rule per method.

Each rule is resolved once per constraint when the module is built; the forward compares no
strings and reads nothing from the device. ``g`` is the signed excess (positive when violated),
``lam`` the multiplier, ``state`` the rule's own row of the module's ``dual_state`` buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import ast

#: The largest size of a constraint's multiplier: the learned ones saturate here rather than grow
#: until ``lam * g`` overflows (a multiplier of 1e6 weighs the constraint a million times the loss:
#: beyond it, the constraint is infeasible or its scale is wrong).
MULTIPLIER_CAP = 1e6
#: Values of state per constraint in ``dual_state``: the violation's running mean size, the
#: number of updates, and the multiplier's integral part.
STATE_SIZE = 3


@dataclass(frozen=True)
class Adaptive:
    """The default method's settings: ``adaptive(lr)``."""

    #: The integral part's step per update, for a violation of its running mean size:
    #: relative to the multiplier's size (at least ``unit``) when ``relative``, else absolute.
    lr: float = 0.01
    relative: bool = True
    #: The proportional (damping) part: this fraction of the multiplier's size (at least ``unit``)
    #: per running mean size of violation.
    damping: float = 0.25
    unit: float = 0.1
    #: The decay of the violation's running mean size (about 1,000 updates).
    decay: float = 0.999


ADAPTIVE = Adaptive()


class DualRule:
    """A constraint's method: its contribution to the loss and, for learned multipliers, the update."""

    learns = True

    def __init__(self, rate: float, equality: bool):
        self.rate = rate
        self.equality = equality
        self.lowest = -MULTIPLIER_CAP if equality else 0.0  # the multiplier's range; projected for <=, >=

    def contribution(self, g: torch.Tensor, violation: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return lam * g

    def update(self, lam: torch.Tensor, g: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The multiplier after a step on the detached excess ``g``, and the rule's new state."""
        return (lam + self.rate * g).clamp(self.lowest, MULTIPLIER_CAP), state


class Penalty(DualRule):
    """``penalty(w)``: a fixed weight on the violation."""

    learns = False

    def contribution(self, g: torch.Tensor, violation: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return self.rate * violation


class Lagrangian(DualRule):
    """``lagrangian(lr)``: projected dual ascent, ``lam = max(0, lam + lr * g)`` (signed for ``==``)."""


class Augmented(DualRule):
    """``augmented(rho)``: the augmented Lagrangian; ``lam = max(0, lam + rho * g)``."""

    def contribution(self, g: torch.Tensor, violation: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        rho = self.rate
        if self.equality:
            return lam * g + rho / 2 * g.square()
        # rho/2 * (max(0, g + lam/rho)^2 - (lam/rho)^2), expanded so that nothing squares lam/rho
        # (1e30 for rho = 1e-30 and lam = 1: inf - inf): lam * g + rho/2 * g^2 where g >= -lam/rho,
        # else the constant -lam^2 / (2 rho), held within float32 (it passes no gradient).
        active = lam * g + rho / 2 * g.square()
        inactive = (-(lam * lam) / (2 * rho)).clamp(min=-ast.LARGEST_NUMBER / 4)
        return torch.where(g >= -lam / rho, active, inactive)


class AdaptiveRule(DualRule):
    """``adaptive(lr)``, the default: a damped (proportional-integral) multiplier whose steps are
    normalised by the violation's running scale and taken relative to the multiplier's own size,
    so that neither the constraint's units nor the weight it ends at need to be known.

    With ``s`` the running mean of ``|g|`` (decay 0.999, bias-corrected; not of ``g^2``, which
    overflows float32 for a violation of 1e30) and ``e = g / s``, the integral part moves by
    ``lr * e * max(|I|, unit)`` (relative steps above ``unit``: a factor of about ``exp(lr)`` per
    update, so 0.1 to 100 takes about 700), and the multiplier used is
    ``I + damping * e * max(|I|, unit)``: the proportional part reacts to the violation at once
    and fades with it, which damps the oscillation of plain dual ascent. A slow scale matters: one
    that follows a shrinking violation down raises the gain until the multiplier chatters.
    """

    def __init__(self, rate: float, equality: bool, settings: Adaptive = ADAPTIVE):
        super().__init__(rate, equality)
        self.settings = settings

    def update(self, lam: torch.Tensor, g: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        size_of_g, count, integral = state[0], state[1] + 1, state[2]
        g = g.to(state.dtype)
        # The running mean of |g| (bias-corrected), not of g^2: a violation of 1e30 squares past float32.
        size_of_g = s.decay * size_of_g + (1 - s.decay) * g.abs()
        scale = size_of_g / (1 - s.decay ** count)
        tiny = torch.finfo(state.dtype).tiny
        # A violation of 0 moves nothing; a NaN or inf one leaves the state as it was.
        normalised = torch.where(scale > tiny, g / scale.clamp(min=tiny), torch.zeros_like(g))
        size = integral.abs().clamp(min=s.unit)
        integral = (integral + self.rate * normalised * (size if s.relative else 1.0)).clamp(self.lowest, MULTIPLIER_CAP)
        used = (integral + s.damping * normalised * integral.abs().clamp(min=s.unit)).clamp(self.lowest, MULTIPLIER_CAP)
        new_state = torch.stack([size_of_g, count, integral])
        finite = torch.isfinite(new_state).all() & torch.isfinite(used)
        return torch.where(finite, used, lam), torch.where(finite, new_state, state)


#: ``using METHOD(ARG)``: the rule, the argument's name and its default.
METHODS: dict[str, tuple[type[DualRule], str, float]] = {
    "adaptive": (AdaptiveRule, "lr", ADAPTIVE.lr),
    "lagrangian": (Lagrangian, "lr", 0.01),
    "penalty": (Penalty, "weight", 10.0),
    "augmented": (Augmented, "rho", 1.0),
}
DEFAULT_METHOD = "adaptive"


def rule_for(method: str, rate: float, equality: bool) -> DualRule:
    return METHODS[method][0](rate, equality)


def constraint_overflow(method: str, rate: float, bound: float) -> str | None:
    """Why a constraint with this bound cannot stay in float32, or None: its contribution with the
    excess ``g`` at twice the bound's size (at least 2: a loss of 0 to twice the bound) and the
    multiplier at ``MULTIPLIER_CAP`` (a penalty's weight for ``penalty``) passes float32's largest."""
    excess = 2 * max(abs(bound), 1.0)
    if method == "penalty":
        worst = rate * excess
    elif method in ("lagrangian", "adaptive"):
        worst = MULTIPLIER_CAP * excess
    else:  # augmented: lam * g + rho / 2 * g^2
        worst = MULTIPLIER_CAP * excess + rate / 2 * excess * excess
    if worst <= ast.LARGEST_NUMBER and math.isfinite(worst):
        return None
    return (f"the constraint's {method} term reaches {worst:.3g} for a loss near its bound {bound:g}, "
            f"beyond float32's largest number ({ast.LARGEST_NUMBER:.3g})")
