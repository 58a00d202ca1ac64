"""The methods of ``subject to ... using METHOD(ARG)``, without torch: their names, arguments and
defaults, the multiplier's cap, and the float32 bound on a constraint, which the checks read.
The rules that weigh a constraint and move its multiplier (with torch) are in ``lossdsl.duals``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    #: The integral part's largest step per window of the audited rates it reads (a window of
    #: ``W`` updates: the rate is at most ``per_window / W``): the multiplier may not outrun the
    #: measurement that drives it, or it overshoots while the window still shows the old violation.
    per_window: float = 0.3


ADAPTIVE = Adaptive()


#: ``using METHOD(ARG)``: the argument's name and its default.
METHOD_ARGUMENTS: dict[str, tuple[str, float]] = {
    "adaptive": ("lr", ADAPTIVE.lr),
    "lagrangian": ("lr", 0.01),
    "penalty": ("weight", 10.0),
    "augmented": ("rho", 1.0),
}
DEFAULT_METHOD = "adaptive"


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
