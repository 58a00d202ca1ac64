"""A grammar-aware generator of spec texts, for tests/test_fuzz.py (and longer runs offline).

``spec_text(rng)`` writes one spec from the language's constructs: terms from the registry with
random arguments (mostly valid, some not), arithmetic, schedules, lets, params, ``soft_bound``
conditions with logic, fairness options, ``subject to``, ``inputs:`` blocks, comments, strings,
line continuations and uneven spacing. Everything is drawn from ``rng``: a seed gives one corpus.

Run it long offline: ``python tests/fuzz_specs.py 20000 [SEED]`` prints a summary and every failure
of the properties in test_fuzz.py, with the spec that shows it.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import annotated_types

from lossdsl.registry import INPUT, REGISTRY, TermParams
from lossdsl.library.group_fairness import GROUP_LOSS_FORMS

# Input names: each role's own name most of the time, else one of these.
NAMES = ("pred", "target", "aux", "y", "x", "w", "sex", "race", "score", "logits2", "labels2", "mask")
LET_NAMES = ("data", "fair", "fit", "aux_loss", "bound", "reg", "main", "extra")
PARAM_NAMES = ("lam", "mu", "alpha_w", "scale")
# What never goes into a term name or a keyword: the reserved words.
COMMENT_TEXT = ("note", "a # in a comment", 'a "quoted" word', "back\\slash", "tabs\tand spaces", "é ü ∑", "")
STRING_TEXT = ("a", "a#b", 'a\\"#', "\\\\", "#", "x.loss", "", "balanced", "ünï")
SCHEDULES = ("warmup", "linear", "cosine")
METHODS = ("lagrangian(0.01)", "penalty(10)", "augmented(1.0)", "penalty", "augmented(2)", "lagrangian")
TENSOR_FUNCTIONS = ("abs", "square", "relu", "sigmoid", "softplus")
# Numbers anywhere, out of range too: float32's edges (3e38, its tiny 1e-45), a double's (1e-300),
# beyond int64 (1e20 as an integer), and plain wrong ones.
EXTREME = (0, -1, 1e6, 1e-8, 1e30, 0.5, 2, 1000, 1e20, 3e38, -3e38, 1e38, 1e-45, 1e-300)
# Terms with one value per sample, which group_loss(...) accepts.
PER_SAMPLE = tuple(name for name, term in REGISTRY.items() if getattr(term.module, "per_sample", False))


class Writer:
    """Spec text from the constructs, with random (valid) spacing and continuations."""

    def __init__(self, rng: random.Random, valid: float):
        self.rng = rng
        self.valid = valid  # the chance that a choice stays inside the language's rules
        self.params: list[str] = []
        self.lets: list[str] = []

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def wrong(self) -> bool:
        return not self.chance(self.valid)

    # -- lexical ----------------------------------------------------------------------
    def space(self) -> str:
        return self.rng.choice(("", " ", " ", "  ")) if self.chance(0.2) else " "

    def join_binary(self, left: str, op: str, right: str) -> str:
        if self.chance(0.06):  # a line ending in an operator continues
            return f"{left} {op}\n    {right}"
        if self.chance(0.02):
            return f"{left} \\\n    {op} {right}"
        return f"{left}{self.space()}{op}{self.space()}{right}"

    def call(self, name: str, arguments: list[str]) -> str:
        separator = ",\n        " if self.chance(0.05) else "," + self.space()
        trailing = "," if arguments and self.chance(0.05) else ""
        return f"{name}({separator.join(arguments)}{trailing})"

    def number(self, low: float | None = None, high: float | None = None, integer: bool = False,
               extreme: bool = True) -> str:
        """A number in [low, high] mostly; else anything, huge or tiny too unless not ``extreme``."""
        rng = self.rng
        if self.wrong() and self.chance(0.5):  # anywhere, also out of range
            value = rng.choice(EXTREME if extreme else (0, -1, 0.5, 2, 10))
        elif low is not None and high is not None:
            value = rng.uniform(low, high)
        else:
            base = low if low is not None else 0.0
            value = base + rng.choice((0.5, 1, 2, 0.1, 0.05, 3, 10, rng.uniform(0, 5)))
            if high is not None and value > high:
                value = high
        if integer:
            value = max(int(round(value)), int(low) if low is not None else 0)
            return str(value)
        digits = rng.choice((0, 1, 2, 3))
        rounded = round(float(value), digits)
        if (low is not None and rounded < low) or (high is not None and rounded > high):
            rounded = round(float(value), 6)  # rounding must not leave the range
        return rng.choice((repr(rounded), f"{rounded:g}"))

    def string(self) -> str:
        return '"' + self.rng.choice(STRING_TEXT) + '"'

    def comment(self) -> str:
        return "# " + self.rng.choice(COMMENT_TEXT)

    # -- terms ------------------------------------------------------------------------
    def term(self, depth: int = 0, names: tuple[str, ...] | None = None) -> str:
        name = self.rng.choice(names or tuple(REGISTRY))
        if self.wrong() and self.chance(0.2):
            return self.call(self.rng.choice(("cee", "msee", "fairnes", name + "x")), [])
        params = REGISTRY[name].params
        arguments: list[str] = []
        chosen: dict[str, str] = {}
        for field, info in params.model_fields.items():
            required = info.is_required()
            if not required and not self.chance(0.3):
                continue
            if name == "fairness" and not self._fits_fairness(field, chosen):
                continue
            value = self.argument(name, params, field, info, depth)
            chosen[field] = value
            if field in params.positional and not arguments and self.chance(0.6):
                arguments.append(value)
            else:
                arguments.append(f"{field}={value}")
        if self.wrong() and self.chance(0.2):
            arguments.append(self.rng.choice(("unknown=1", "1", "pred=1", 'weight="x"')))
        return self.call(name, arguments)

    def _fits_fairness(self, field: str, chosen: dict[str, str]) -> bool:
        """Keep fairness's options to combinations it accepts (mostly: the checks see the rest)."""
        if not self.valid or self.wrong():
            return True
        stat = chosen.get("stat", "")
        inner = stat.startswith("group_loss")
        if field in ("pred", "target", "hard") and inner:
            return False
        if field == "agg" and stat == "group_loss":
            return True
        if field == "ref" and stat.startswith("group_loss(") :
            return False
        if field == "hard" and stat.startswith("mean_pred"):
            return False
        if field == "groups" and chosen.get("group", "").startswith("("):
            return False
        if field == "window" and "groups" not in chosen:
            return False
        return True

    def argument(self, term: str, params: type[TermParams], field: str, info, depth: int) -> str:  # noqa: ANN001
        rng = self.rng
        if self.wrong() and self.chance(0.3):
            return rng.choice((self.string(), self.number(), "[]", "balanced", "(a, b)", "true", "pred"))
        if field == "stat":
            if depth < 1 and self.chance(0.3):
                return self.call(rng.choice(GROUP_LOSS_FORMS), [self.term(depth + 1, PER_SAMPLE)])
            return rng.choice(params.options(field))
        if field == "agg":
            return rng.choice(("max", "mean", f"smoothmax({self.number(0.01, 2)})"))  # smoothmax(1e-45) too
        if field == "window":
            return f"ema({self.number(0, 0.99)})"
        if field == "penalty" and term == "soft_bound":
            return rng.choice(("squared", "hinge", "softplus", f"softplus({self.number(0.1, 5)})", "log_barrier"))
        if field == "condition":
            return self.condition()
        if field == "expr":
            return self.tensor_expression(2, constant=False)
        if INPUT in info.metadata:
            if field == "group" and self.chance(0.2):
                return f"({rng.choice(('sex', 'race'))}, {rng.choice(('race', 'site'))})"
            default = info.default if isinstance(info.default, str) else None
            if field == "group":
                default = "sex"
            return default if default and self.chance(0.7) else rng.choice(NAMES)
        options = params.options(field)
        if options and (self.chance(0.7) or not (params.accepts(field, tuple) or params.accepts(field, float))):
            return rng.choice(options)
        if params.accepts_bool(field):
            return rng.choice(("true", "false"))
        if self.params and self.chance(0.1):  # a number set by a param
            return rng.choice(self.params)
        low, high = _bounds(info)
        if field == "q":
            low, high = 0.01, 0.99
        if params.accepts(field, tuple):  # ce(weight=[1e38] * 3) too: the sums must not overflow
            items = [self.number(low if low is not None else 0.1, high if high is not None else 5)
                     for _ in range(rng.randint(1, 5))]
            if self.wrong() and self.chance(0.3):  # one extreme number repeated, as ce(weight=[1e38] * 3)
                items = [rng.choice(("1e38", "3e38", "1e-45", "1e30"))] * rng.randint(2, 4)
            return "[" + ", ".join(items) + "]"
        if field == "p":  # the norm of triplet's distance: triplet(p=1000) too
            return self.number(1, 6, integer=True)
        integer = params.accepts(field, int) and not params.accepts(field, float)
        if field in ("groups",):
            return self.number(1, 6, integer=True)
        return self.number(low, high if high is not None else (None if low is None else low + 10), integer)

    # -- expressions ------------------------------------------------------------------
    def tensor_expression(self, depth: int, constant: bool = True) -> str:
        """An element-wise expression that is finite for finite inputs (log and division only of
        positive values), unless divided by a tiny number (``y / 1e-300``, which the checks must
        catch); its first operand reads an input unless ``constant``."""
        rng = self.rng
        if depth <= 0 or self.chance(0.3):
            return self.number(0, 3) if constant and self.chance(0.4) else rng.choice(NAMES[:5])
        choice = rng.randrange(7)
        first = self.tensor_expression(depth - 1, constant)
        if choice == 6:  # by a number: soft_bound(y / 1e-300 <= 1) too
            return self.join_binary(first, "/", self.number(0.5, 10))
        if choice == 0:
            return f"{rng.choice(TENSOR_FUNCTIONS)}({first})"
        if choice == 1:
            return f"log(1 + square({first}))"
        if choice == 2:
            return f"{first} / (1 + square({self.tensor_expression(depth - 1)}))"
        if choice == 3:
            return f"clamp({first}, {self.number(-3, 0)}, {self.number(0, 3)})"
        if choice == 4:
            return f"exp(sigmoid({first}))"
        return self.join_binary(first, rng.choice("+-*"), self.tensor_expression(depth - 1))

    def comparison(self) -> str:
        rng = self.rng
        left = self.tensor_expression(1, constant=False)
        if self.chance(0.3):  # a chain: 0 <= y <= 10
            return f"{self.number(-2, 0)} {rng.choice(('<=', '<'))} {left} {rng.choice(('<=', '<'))} {self.number(0, 10)}"
        op = rng.choice(("<=", ">=", "<", ">", "=="))
        return f"{left} {op} {self.number(-3, 10)}"

    def condition(self, depth: int = 2) -> str:
        rng = self.rng
        if depth <= 0 or self.chance(0.5):
            return self.comparison()
        choice = rng.randrange(4)
        if choice == 0:
            return f"not {self.condition(depth - 1)}" if self.chance(0.5) else f"not ({self.condition(depth - 1)})"
        op = ("and", "or", "implies")[choice - 1]
        return f"({self.condition(depth - 1)}) {op} ({self.condition(depth - 1)})"

    def schedule(self) -> str:
        kind = self.rng.choice(SCHEDULES)
        steps = self.number(1, 1000, integer=True)  # warmup(99999999999999999999) too
        if kind == "warmup":
            return f"warmup({steps})"
        return f"{kind}({self.number(0, 2)}, {self.number(0, 2)}, {steps})"

    def weight(self) -> str:
        choice = self.rng.randrange(4)
        if choice == 0 and self.params:
            return self.rng.choice(self.params)
        if choice == 1:
            return self.schedule()
        return self.number(0, 3)

    def objective(self, depth: int = 2) -> str:
        rng = self.rng
        if self.wrong() and self.chance(0.1):
            return rng.choice((self.number(), "pred", self.comparison(), f"{self.term()} * {self.term()}",
                               f"{self.number()} + {self.term()}", self.string(), "[ce()]", "undefined_let"))
        if depth <= 0 or self.chance(0.35):
            if self.lets and self.chance(0.3):
                return rng.choice(self.lets)
            return self.term()
        choice = rng.randrange(6)
        if choice == 0:
            return self.join_binary(self.weight(), "*", self.objective(depth - 1))
        if choice == 1:
            return self.join_binary(self.objective(depth - 1), "/", self.number(0.5, 10))
        if choice == 2:
            return f"-{self.objective(depth - 1)}" if self.chance(0.3) else f"({self.objective(depth - 1)})"
        return self.join_binary(self.objective(depth - 1), rng.choice("+-+"), self.objective(depth - 1))

    # -- statements -------------------------------------------------------------------
    def body(self) -> list[str]:
        rng = self.rng
        lines: list[str] = []
        if self.chance(0.02):
            lines.append(f"include {self.string()}")
        for name in rng.sample(PARAM_NAMES, rng.randint(0, 2)):
            low = self.number(0, 1)
            text = f"param {name} = {self.number(float(low), float(low) + 5)}"
            if self.chance(0.5):
                text += f" in [{low}, {self.number(float(low) + 5, float(low) + 20)}]"
            lines.append(text)
            self.params.append(name)
        for name in rng.sample(LET_NAMES, rng.randint(0, 3)):
            lines.append(f"let {name} = {self.objective()}")
            self.lets.append(name)
        constraints = [self.constraint() for _ in range(rng.choice((0, 0, 0, 1, 2)))]
        if self.lets and not self.chance(0.1) or self.chance(0.5):
            lines.append(f"loss = {self.objective()}")
        elif not self.wrong():
            lines.append(self.objective())  # a bare expression: the card's one-liner form
        return lines + constraints

    def constraint(self) -> str:
        rng = self.rng
        text = f"subject to {self.objective(1)} {rng.choice(('<=', '>=', '=='))} {self.number(0, 2)}"
        if self.chance(0.3):
            text += f" as c_{rng.randrange(3)}"
        if self.chance(0.4):
            text += f" using {rng.choice(METHODS)}"
        return text

    def decorate(self, lines: list[str]) -> str:
        """Comment lines, trailing comments and blank lines between the statements."""
        out = []
        if self.chance(0.2):
            out.append(self.comment())
        for line in lines:
            if self.chance(0.15):
                out.append("")
            if self.chance(0.15):
                out.append(self.comment())
            out.append(line + (f"  {self.comment()}" if self.chance(0.15) else ""))
        return "\n".join(out) + ("\n" if self.chance(0.9) else "")


def _bounds(info) -> tuple[float | None, float | None]:  # noqa: ANN001
    low = high = None
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = float(item.ge)
        elif isinstance(item, annotated_types.Gt):
            low = float(item.gt) + 0.01
        elif isinstance(item, annotated_types.Le):
            high = float(item.le)
        elif isinstance(item, annotated_types.Lt):
            high = float(item.lt) - 0.01
    if low is not None and low < -1e9:  # an int64 range: keep to small numbers
        low, high = -100.0, 100.0
    return low, high


def inputs_block(rng: random.Random, declarations) -> str:  # noqa: ANN001
    """An ``inputs:`` block for the inferred declarations; now and then one kind or size is off."""
    lines = ["inputs:"]
    for decl in declarations:
        kind = decl.type
        if rng.random() < 0.03:
            kind = rng.choice(("logits", "labels", "real", "group", "weight", "binary"))
        shape = ", ".join(str(d) for d in decl.shape or ("N",))
        groups = f" of {decl.groups}" if decl.groups else (" of 3" if kind == "group" and rng.random() < 0.5 else "")
        lines.append(f"    {decl.name}: {kind}[{shape}]{groups}")
    return "\n".join(lines) + "\n"


def spec_text(rng: random.Random, valid: float = 0.97) -> str:
    """One spec; with ``valid`` near 1, most compile. An ``inputs:`` block, when drawn, declares
    what the checker infers for the spec without it."""
    writer = Writer(rng, valid)
    text = writer.decorate(writer.body())
    if rng.random() < 0.35:
        from lossdsl.driver import plan_for
        from lossdsl.errors import LossSpecError
        from lossdsl.synthetic import declarations

        try:
            plan = plan_for(text)
            block = inputs_block(rng, declarations(plan)) if plan.inputs else ""
        except LossSpecError:
            block = ""
        text = block + text
    return text


if __name__ == "__main__":  # offline: a long run, every failure printed
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_fuzz import run_properties

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    summary, failures = run_properties(count, seed, stop_at_first=False)
    for failure in failures:
        print(f"--- {failure.property}: {failure.problem}\n{failure.text}")
    print(summary)
    sys.exit(1 if failures else 0)
