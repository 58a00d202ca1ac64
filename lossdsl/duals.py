"""How a ``subject to`` weighs its constraint, and how a learned multiplier moves: one rule per method.

Each rule is resolved once per constraint when the module is built; the forward compares no
strings and reads nothing from the device. ``g`` is the signed excess (positive when violated),
``lam`` the multiplier, ``state`` the rule's own row of the module's ``dual_state`` buffer.
"""

from __future__ import annotations

import torch

from . import ast
from .dual_methods import (  # noqa: F401  (re-exported: the checks read them from dual_methods, without torch)
    ADAPTIVE,
    DEFAULT_METHOD,
    METHOD_ARGUMENTS,
    MULTIPLIER_CAP,
    STATE_SIZE,
    Adaptive,
    constraint_overflow,
)


class DualRule:
    """A constraint's method: its contribution to the loss and, for learned multipliers, the update."""

    learns = True

    def __init__(self, rate: float, equality: bool):
        self.rate = rate
        self.equality = equality
        self.lowest = -MULTIPLIER_CAP if equality else 0.0  # the multiplier's range; projected for <=, >=

    def contribution(self, g: torch.Tensor, violation: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return lam * g

    def update(
        self, lam: torch.Tensor, g: torch.Tensor, state: torch.Tensor, window: torch.Tensor | float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The multiplier after a step on the detached excess ``g``, and the rule's new state.
        ``window``: how many updates the constraint's value averages over (1: none; the default
        rule slows down to it, the overrides take the step they were given)."""
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

    The integral's rate is at most ``per_window / W`` where the constraint's value is a window of
    ``W`` updates (audited fairness rates over about an epoch: ``W = N / n``): a controller faster
    than its measurement keeps pushing after the model has complied, and overshoots into the
    trivial classifier and back (a limit cycle). Short windows (small data) keep ``lr``.
    """

    def __init__(self, rate: float, equality: bool, settings: Adaptive = ADAPTIVE):
        super().__init__(rate, equality)
        self.settings = settings

    def update(
        self, lam: torch.Tensor, g: torch.Tensor, state: torch.Tensor, window: torch.Tensor | float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.settings
        if isinstance(window, torch.Tensor):
            rate = (s.per_window / window.to(state.dtype)).clamp(max=self.rate)
        else:
            rate = min(self.rate, s.per_window / window)
        size_of_g, count, integral = state[0], state[1] + 1, state[2]
        g = g.to(state.dtype)
        # The running mean of |g| (bias-corrected), not of g^2: a violation of 1e30 squares past float32.
        size_of_g = s.decay * size_of_g + (1 - s.decay) * g.abs()
        scale = size_of_g / (1 - s.decay ** count)
        tiny = torch.finfo(state.dtype).tiny
        # A violation of 0 moves nothing; a NaN or inf one leaves the state as it was.
        normalised = torch.where(scale > tiny, g / scale.clamp(min=tiny), torch.zeros_like(g))
        size = integral.abs().clamp(min=s.unit)
        integral = (integral + rate * normalised * (size if s.relative else 1.0)).clamp(self.lowest, MULTIPLIER_CAP)
        used = (integral + s.damping * normalised * integral.abs().clamp(min=s.unit)).clamp(self.lowest, MULTIPLIER_CAP)
        new_state = torch.stack([size_of_g, count, integral])
        finite = torch.isfinite(new_state).all() & torch.isfinite(used)
        return torch.where(finite, used, lam), torch.where(finite, new_state, state)


#: ``using METHOD(ARG)``: the rule, the argument's name and its default (``dual_methods.METHOD_ARGUMENTS``).
METHODS: dict[str, tuple[type[DualRule], str, float]] = {
    name: (rule, *METHOD_ARGUMENTS[name])
    for name, rule in {"adaptive": AdaptiveRule, "lagrangian": Lagrangian, "penalty": Penalty, "augmented": Augmented}.items()
}
assert METHODS.keys() == METHOD_ARGUMENTS.keys()


def rule_for(method: str, rate: float, equality: bool) -> DualRule:
    return METHODS[method][0](rate, equality)
