"""``lossdsl.watch(loss_fn)``: a monitor that says when a loss is going wrong while it trains.

Every ``every``-th training-mode call of the loss (a forward hook: the loop is not changed) it
takes each term's share of the gradient the loss sends to the model's outputs, and the terms'
values and the constraints' multipliers, and warns (``LossSpecWarning``, naming the term and its
spec line) when an auxiliary term drowns the main one, when the total falls while a metric the
user gives rises, when a multiplier keeps growing, when a KL term collapses to 0 (posterior
collapse), or when a term is stuck. The loss's own forward is unchanged: the monitor reads the
per-term values the module keeps from its last call (undetached) and asks autograd for the
gradients, outside the forward, once per check: it synchronises with the device then, never in
between.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .errors import LossSpecWarning
from .runtime import LossModule, _is_compiling

#: Terms whose value falling to 0 is a posterior collapse.
KL_TERMS = frozenset({"kl_normal", "kl"})


@dataclass
class Check:
    """One check: per term label, its value, the coefficient the total gives it (d total / d term)
    and the norm of its weighted gradient w.r.t. the watched inputs; per constraint, its multiplier;
    the total; the metric, when one was given."""

    step: int
    values: dict[str, float]
    norms: dict[str, float]
    coefficients: dict[str, float] = field(default_factory=dict)
    multipliers: dict[str, float] = field(default_factory=dict)
    violations: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    metric: float | None = None

    @property
    def shares(self) -> dict[str, float]:
        """Each term's share of the summed gradient norms (0 for all when no term has a gradient)."""
        whole = sum(self.norms.values())
        return {label: (norm / whole if whole > 0 else 0.0) for label, norm in self.norms.items()}


class Monitor:
    """What ``lossdsl.watch`` returns: the checks so far (``history``), the warnings given
    (``warnings``), ``step(metric=...)`` to hand it a metric, ``summary()``, ``close()``."""

    def __init__(
        self,
        loss_fn: LossModule,
        every: int = 10,
        metric: Callable[[], float] | None = None,
        wrt: tuple[str, ...] | None = None,
        primary: str | None = None,
        dominance: float = 0.9,
        patience: int = 3,
        window: int = 5,
        kl_floor: float = 1e-2,
        tolerance: float = 0.01,
    ):
        if not isinstance(loss_fn, LossModule):
            raise TypeError(f"lossdsl.watch() watches a compiled loss (lossdsl.compile(...)), got {type(loss_fn).__name__}")
        if every < 1 or patience < 1 or window < 2:
            raise ValueError("lossdsl.watch(): every and patience are at least 1, window at least 2")
        unknown = sorted(set(wrt or ()) - set(loss_fn.inputs))
        if unknown:
            raise ValueError(f"lossdsl.watch(): wrt names '{unknown[0]}', which the loss does not read; "
                             f"it reads {', '.join(loss_fn.inputs)}")
        self.loss_fn = loss_fn
        self.every, self.metric, self.wrt = every, metric, wrt
        self.dominance, self.patience, self.window = dominance, patience, window
        self.kl_floor, self.tolerance = kl_floor, tolerance
        plan = loss_fn.plan
        self.labels = tuple(term.label for term in plan.terms)
        self._where = {term.label: _where_with_line(term.where, term.span, plan.source) for term in plan.terms}
        self._kl = {term.label for term in plan.terms if term.term.name in KL_TERMS}
        # Terms only constraints read are weighed by their multipliers, not by a weight to lower.
        self._constrained = _constraint_only_labels(plan)
        self._constraints = {c.name: _where_with_line(_constraint_where(c.name, c.span, plan.filename), c.span,
                                                      plan.source) for c in plan.constraints}
        if primary is not None and primary not in self.labels:
            raise ValueError(f"lossdsl.watch(): primary={primary!r} is none of the terms: {', '.join(self.labels)}")
        #: The main (task) term; the others are auxiliary. The objective's first term by default.
        self.primary = primary or (self.labels[0] if self.labels else None)
        self.calls = 0
        self.history: list[Check] = []
        #: The warnings given, as their messages (each kind once per term).
        self.warnings: list[str] = []
        self._warned: set[tuple[str, str]] = set()
        self._metric_points: list[tuple[float, float, dict[str, float]]] = []  # (total, metric, weighted values)
        self._since_metric: list[Check] = []
        self._hook = loss_fn.register_forward_hook(self._after_forward, with_kwargs=True)

    # -- collecting ------------------------------------------------------------------------------

    def _after_forward(self, module: LossModule, args: tuple, kwargs: dict, total: torch.Tensor) -> None:
        if not module.training or _is_compiling():
            return
        self.calls += 1
        if (self.calls - 1) % self.every or not torch.is_grad_enabled() or not total.requires_grad or total.dim():
            return  # (a total of reduction=none terms has no single gradient to share out)
        named = dict(zip(("pred", "target"), args))
        named.update(kwargs)
        self.observe(self._measure(module, named, total))

    def _measure(self, module: LossModule, inputs: dict[str, torch.Tensor], total: torch.Tensor) -> Check:
        """Per-term values, coefficients and weighted-gradient norms of the call that just ran."""
        count = len(self.labels)
        values = list(module._last[0][:count])  # the terms' values as computed (undetached)
        names = self.wrt or tuple(name for name in module.inputs if isinstance(inputs.get(name), torch.Tensor)
                                  and inputs[name].requires_grad)
        watched = [inputs[name] for name in names if isinstance(inputs.get(name), torch.Tensor) and inputs[name].requires_grad]
        differentiable = [i for i, value in enumerate(values) if value.requires_grad and value.dim() == 0]
        coefficients = [0.0] * count
        norms = [0.0] * count
        if differentiable and watched:
            chosen = [values[i] for i in differentiable]
            slopes = torch.autograd.grad(total, chosen, retain_graph=True, allow_unused=True)  # d total / d term
            slopes = [torch.zeros_like(v) if s is None else s for v, s in zip(chosen, slopes)]
            for i, slope in zip(differentiable, slopes):
                coefficients[i] = float(slope)
            squared = self._weighted_gradient_norms(chosen, slopes, watched, total.dtype)
            for i, value in zip(differentiable, squared.tolist()):
                norms[i] = math.sqrt(value)
        last = module.last_terms
        multipliers = {name: float(last[f"{name}.multiplier"]) for name in self._constraints}
        violations = {name: float(last[f"{name}.violation"]) for name in self._constraints}
        metric = float(self.metric()) if self.metric is not None else None
        return Check(
            step=self.calls - 1,
            values={label: float(v.detach().double().mean()) for label, v in zip(self.labels, values)},
            norms=dict(zip(self.labels, norms)),
            coefficients=dict(zip(self.labels, coefficients)),
            multipliers=multipliers,
            violations=violations,
            total=float(total.detach()),
            metric=metric,
        )

    @staticmethod
    def _weighted_gradient_norms(values: list[torch.Tensor], slopes: list[torch.Tensor],
                                 watched: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """``||d (c_i term_i) / d inputs||^2`` per term, from one batched autograd call (one row of
        the identity per term, scaled by its coefficient); a term at a time where an op of the
        terms' backward cannot be batched."""
        stacked = torch.stack([v.to(dtype).reshape(()) for v in values])
        weights = torch.diag(torch.stack([s.to(dtype).reshape(()) for s in slopes]))
        try:
            rows = torch.autograd.grad(stacked, watched, grad_outputs=weights, retain_graph=True,
                                       allow_unused=True, is_grads_batched=True)
            return sum((r.flatten(1).double().square().sum(1) for r in rows if r is not None),
                       torch.zeros(len(values), dtype=torch.float64, device=stacked.device))
        except RuntimeError:  # (vmap over an op without a batching rule)
            result = []
            for row in range(len(values)):
                grads = torch.autograd.grad(stacked, watched, grad_outputs=weights[row], retain_graph=True,
                                            allow_unused=True)
                result.append(sum(float(g.double().square().sum()) for g in grads if g is not None))
            return torch.tensor(result, dtype=torch.float64)

    def step(self, metric: float | torch.Tensor | None = None) -> None:
        """Hand the monitor a metric to compare the loss with (lower is better: a validation loss, an
        error rate, a fairness gap), typically once per epoch: it is paired with the mean total of
        the checks since the last call."""
        if metric is None:
            return
        checks = self._since_metric or self.history[-1:]
        if not checks:
            return
        self._since_metric = []
        total = sum(c.total for c in checks) / len(checks)
        weighted = {label: sum(c.values[label] * c.coefficients.get(label, 1.0) for c in checks) / len(checks)
                    for label in self.labels}
        self._metric_points.append((total, float(metric), weighted))
        self._check_metric()

    # -- checking --------------------------------------------------------------------------------

    def observe(self, check: Check) -> None:
        """Record one check and run the warnings' rules (the hook calls it; a test may too)."""
        self.history.append(check)
        self._since_metric.append(check)
        self._check_dominance()
        self._check_multipliers()
        self._check_collapse()
        self._check_stuck()
        if check.metric is not None:
            weighted = {label: check.values[label] * check.coefficients.get(label, 1.0) for label in self.labels}
            self._metric_points.append((check.total, check.metric, weighted))
            self._check_metric()

    def _warn(self, kind: str, subject: str, message: str) -> None:
        if (kind, subject) in self._warned:
            return
        self._warned.add((kind, subject))
        self.warnings.append(message)
        warnings.warn(message, LossSpecWarning, stacklevel=4)

    def _check_dominance(self) -> None:
        recent = self.history[-self.patience:]
        if len(recent) < self.patience:
            return
        for label in self.labels:
            if label == self.primary or label in self._constrained:
                continue
            shares = [c.shares.get(label, 0.0) for c in recent]
            if min(shares) > self.dominance:
                main = recent[-1].shares.get(self.primary, 0.0)
                self._warn("dominates", label, (
                    f"{self._where[label]}: this auxiliary term carries {shares[-1]:.0%} of the loss's gradient "
                    f"(w.r.t. the model's outputs) over the last {self.patience} checks, the main term "
                    f"{self.primary} {main:.0%}: its weight drowns the task; lower it"))

    def _check_multipliers(self) -> None:
        """Over twice ``window`` checks: a multiplier that rises at each while its constraint is violated
        at every one, and no less in the later half than in the earlier. (A multiplier rises for a
        while from 0 in a healthy run too, with the violation shrinking as it does, or batches that
        meet the bound in between: measured on examples/adult_fairness.py's constrained runs.)"""
        span = 2 * self.window
        recent = self.history[-span:]
        if len(recent) < span:
            return
        for name, where in self._constraints.items():
            series = [c.multipliers.get(name, 0.0) for c in recent]
            violations = [c.violations.get(name, 1.0) for c in recent]
            earlier, later = sum(violations[: self.window]), sum(violations[self.window:])
            if min(violations) > 0 and later >= earlier and all(b > a for a, b in zip(series, series[1:])):
                self._warn("multiplier", name, (
                    f"{where}: its multiplier grew at each of the last {span} checks ({series[0]:.3g} -> "
                    f"{series[-1]:.3g}) and the bound was violated at every one, no less at the end: it is not "
                    "being met; loosen it, give the model a way to meet it, or check the term's scale"))

    def _check_collapse(self) -> None:
        recent = self.history[-self.patience:]
        if len(recent) < self.patience:
            return
        for label in self._kl:
            values = [c.values.get(label, math.inf) for c in recent]
            weighted = all(c.coefficients.get(label, 1.0) > 0 for c in recent)
            if weighted and max(abs(v) for v in values) < self.kl_floor:
                self._warn("collapse", label, (
                    f"{self._where[label]}: the KL term has stayed below {self.kl_floor:g} ({values[-1]:.2g}) over "
                    f"the last {self.patience} checks: the posterior has collapsed onto the prior (the decoder "
                    "ignores the latent code); lower its weight or ramp it up more slowly (warmup)"))

    def _check_stuck(self) -> None:
        recent = self.history[-self.window:]
        if len(recent) < self.window:
            return
        for label in self.labels:
            values = [c.values.get(label, math.nan) for c in recent]
            first = values[0]
            if not math.isfinite(first) or first == 0:  # 0: a satisfied hinge or bound, at rest by design
                continue
            if all(abs(v - first) <= 1e-7 * abs(first) for v in values):
                self._warn("stuck", label, (
                    f"{self._where[label]}: its value has stayed {first:.6g} over the last {self.window} checks "
                    f"(gradient norm {recent[-1].norms.get(label, 0.0):.2g}): the term is stuck; its inputs may "
                    "not depend on the model, or it saturates"))

    def _check_metric(self) -> None:
        points = self._metric_points[-self.window:]
        if len(points) < self.window:
            return
        totals = [p[0] for p in points]
        metrics = [p[1] for p in points]
        total_change, metric_change = _change(totals), _change(metrics)
        total_scale = max(abs(sum(totals) / len(totals)), 1e-12)
        metric_scale = max(abs(sum(metrics) / len(metrics)), 1e-12)
        if total_change < -self.tolerance * total_scale and metric_change > self.tolerance * metric_scale:
            fell = {label: points[-1][2][label] - points[0][2][label] for label in self.labels}
            label = min(fell, key=fell.get)
            self._warn("metric", "metric", (
                f"the total fell by {-total_change:.3g} over the last {self.window} checks while the metric rose by "
                f"{metric_change:.3g}: the loss rewards something the metric does not; {self._where[label]} fell "
                "most; check its weight, or stop early"))

    # -- reporting -------------------------------------------------------------------------------

    def summary(self) -> str:
        """One line: checks, each term's mean share of the gradient, and the warnings given."""
        if not self.history:
            return f"lossdsl.watch: no checks yet ({self.calls} training calls, every {self.every})"
        shares = {label: sum(c.shares.get(label, 0.0) for c in self.history) / len(self.history) for label in self.labels}
        listed = ", ".join(f"{label} {share:.0%}" for label, share in shares.items())
        kinds = sorted({f"{kind}: {subject}" for kind, subject in self._warned})
        said = f"{len(self.warnings)} warning{'s' * (len(self.warnings) != 1)} ({'; '.join(kinds)})" if kinds else "no warnings"
        checks = len(self.history)
        return (f"lossdsl.watch: {checks} check{'s' * (checks != 1)} over {self.calls} training calls; "
                f"mean gradient share {listed}; {said}")

    def close(self) -> None:
        """Stop watching (remove the hook)."""
        self._hook.remove()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch(loss_fn: LossModule, every: int = 10, metric: Callable[[], float] | None = None, **options) -> Monitor:
    """Watch a compiled loss while it trains: every ``every``-th training-mode call, each term's share
    of the gradient w.r.t. the model's outputs, and warnings when the loss goes wrong.

    ``metric``: a function of no arguments giving a metric to compare the total with, lower is
    better, read at each check (or hand one in with ``monitor.step(metric=...)``). Options:
    ``wrt`` (the inputs the gradient is taken w.r.t.; default every input that requires grad),
    ``primary`` (the main term's label; default the objective's first term), ``dominance`` (0.9),
    ``patience`` (3 checks), ``window`` (5 checks), ``kl_floor`` (0.01), ``tolerance`` (0.01).
    """
    return Monitor(loss_fn, every=every, metric=metric, **options)


def _change(series: list[float]) -> float:
    """The least-squares slope of ``series`` times its span: its trend's rise from first to last."""
    n = len(series)
    mean_x, mean_y = (n - 1) / 2, sum(series) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(series)) / sum((x - mean_x) ** 2 for x in range(n))
    return slope * (n - 1)


def _constraint_only_labels(plan: object) -> frozenset[str]:
    """The labels of the terms the constraints read and the objective does not (through lets too)."""
    from .plan import LetValue, TermValue

    lets = {let.name: let.value for let in plan.lets}

    def reached(roots: list) -> set[str]:
        found: set[str] = set()
        seen: set[str] = set()
        pending = list(roots)
        while pending:
            for expr in pending.pop().find_all((TermValue, LetValue)):
                if isinstance(expr, TermValue):
                    found.add(expr.term.label)
                elif expr.name not in seen and expr.name in lets:
                    seen.add(expr.name)
                    pending.append(lets[expr.name])
        return found

    objective = reached([plan.objective] if plan.objective is not None else [])
    return frozenset(reached([e for c in plan.constraints for e in (c.value, c.bound)]) - objective)


def _where_with_line(where: str, span: object, source: str) -> str:
    """``fairness() at <spec>:2:8`` and the spec line itself, for the warning."""
    line = getattr(span, "line", None)
    lines = source.splitlines()
    if not line or not 1 <= line <= len(lines):
        return where
    return f"{where} (`{lines[line - 1].strip()}`)"


def _constraint_where(name: str, span: object, filename: str | None) -> str:
    if span is None:
        return f"constraint '{name}'"
    return f"constraint '{name}' at {getattr(span, 'filename', None) or filename or '<spec>'}:{span.line}:{span.column}"
