"""``lossdsl verify``: the usual checklist for a custom loss, run on synthetic inputs.

1. finite value and gradients at ordinary inputs, and at extreme ones (logits and reals x 1e4,
   float32);
2. ``torch.autograd.gradcheck`` in float64 on a small batch;
3. each term's gradient norm, flagging a term that dominates another by more than 100 times;
4. a few hundred optimisation steps on a tiny synthetic problem (the logits, reals and
   embeddings are the parameters; everything else is data) must lower the loss;
5. for each fairness rate a constraint reads: whether its audited rates run over a window (a
   known group count) or come from each batch alone, and what gives them a window.

Synthetic inputs come from the spec's ``inputs:`` block, or are inferred from the terms that read
them (see ``lossdsl.synthetic``). A per-sample loss (``reduction=none``) is checked through its sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import kinds
from .plan import Plan
from .runtime import LossModule
from .errors import LossSpecError
from .synthetic import declarations, synthetic_inputs

LEARNED_KINDS = kinds.LEARNED
DOMINANCE = 100.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def verify(plan: Plan, steps: int = 300) -> list[Check]:
    """Run every check; none stops the others."""
    kinds = {decl.name: decl.type for decl in declarations(plan)}
    runs = [
        ("finite at ordinary inputs", lambda name: _finite(plan, kinds, scale=1.0, name=name)),
        ("finite at extreme inputs (x1e4)", lambda name: _finite(plan, kinds, scale=1e4, name=name)),
        ("gradcheck (float64)", lambda name: _gradcheck(plan, kinds)),
        ("gradient balance", lambda name: _balance(plan, kinds)),
        ("optimisation lowers the loss", lambda name: _descent(plan, kinds, steps)),
        ("constraint rates over a window", lambda name: _windows(plan, name)),
    ]
    checks = []
    for name, run in runs:
        try:
            checks.append(run(name))
        except LossSpecError as exc:  # e.g. inferred inputs of the wrong shape: declare them
            problem = exc.diagnostics[0].message
            advice = "" if plan.declared else " (declare the inputs in an inputs: block)"
            checks.append(Check(name, False, f"{problem}{advice}"))
    return checks


def _learned(inputs: dict[str, torch.Tensor], kinds: dict[str, str]) -> dict[str, torch.Tensor]:
    return {n: t.requires_grad_() for n, t in inputs.items() if kinds[n] in LEARNED_KINDS and t.is_floating_point()}


def _finite(plan: Plan, kinds: dict[str, str], scale: float, name: str) -> Check:
    inputs = synthetic_inputs(plan, scale=scale)
    learned = _learned(inputs, kinds)
    value = LossModule(plan).eval()(**inputs)
    finite = torch.isfinite(value)
    if not finite.all():
        if value.dim() == 0:
            return Check(name, False, f"the loss is {value.item()}")
        return Check(name, False, f"{int((~finite).sum())} of {value.numel()} per-sample losses are not finite")
    value = value.sum()
    if learned:
        grads = torch.autograd.grad(value, list(learned.values()), allow_unused=True)
        bad = [n for n, g in zip(learned, grads) if g is not None and not torch.isfinite(g).all()]
        if bad:
            return Check(name, False, f"non-finite gradient for {', '.join(bad)}")
    return Check(name, True, f"loss {value.item():.4g}")


def _gradcheck(plan: Plan, kinds: dict[str, str]) -> Check:
    inputs = synthetic_inputs(plan, batch=4, dtype=torch.float64)
    learned = _learned(inputs, kinds)
    if not learned:
        return Check("gradcheck (float64)", True, "no differentiable inputs")
    module = LossModule(plan).eval()
    names = list(learned)

    def loss(*tensors: torch.Tensor) -> torch.Tensor:
        return module(**{**inputs, **dict(zip(names, tensors))}).sum()

    try:
        ok = torch.autograd.gradcheck(loss, tuple(learned.values()), eps=1e-6, atol=1e-5, rtol=1e-3)
    except RuntimeError as exc:
        return Check("gradcheck (float64)", False, str(exc).split("\n")[0])
    return Check("gradcheck (float64)", ok, f"w.r.t. {', '.join(names)}")


def _balance(plan: Plan, kinds: dict[str, str]) -> Check:
    """Each term's gradient norm with respect to the learned inputs: the terms only, not the lets
    that add them up nor a constraint's value, violation and multiplier."""
    inputs = synthetic_inputs(plan)
    learned = _learned(inputs, kinds)
    module = LossModule(plan).eval()
    module(**inputs)  # the whole loss runs first: its checks name the input that does not fit
    norms = {}
    for term, term_module in zip(plan.terms, module.terms):
        value = term_module(*(inputs[name] for name in term.inputs))
        value = (value[0] if isinstance(value, tuple) else value).sum()  # an audited term: (value, surrogate)
        if not value.requires_grad:
            norms[term.label] = 0.0
            continue
        grads = torch.autograd.grad(value, list(learned.values()), allow_unused=True)
        norms[term.label] = float(torch.sqrt(sum((g.square().sum() for g in grads if g is not None), torch.zeros(()))))
    shown = ", ".join(f"{label} {norm:.3g}" for label, norm in norms.items())
    positive = {label: norm for label, norm in norms.items() if norm > 0}
    if len(positive) >= 2 and max(positive.values()) > DOMINANCE * min(positive.values()):
        top = max(positive, key=positive.get)
        low = min(positive, key=positive.get)
        return Check("gradient balance", False, f"{top} dominates {low} by more than {DOMINANCE:g}x ({shown})")
    return Check("gradient balance", True, shown or "no term gradients")


def _windows(plan: Plan, name: str) -> Check:
    """A constraint's fairness rates from one batch are noisy and overstate a gap: say so. Passes
    (the spec is valid), with the advice in its detail; fit happens at training time, not here."""
    module = LossModule(plan)
    audited = [(plan.terms[i], module.terms[i]) for i in module.audited_terms]
    if not audited:
        return Check(name, True, "no fairness rate in a constraint")
    notes = []
    for term, term_module in audited:
        group = term.params.group_names[0]
        if term_module.window_known:
            notes.append(f"{term.label}: a window over the known group count")
        else:
            notes.append(f"{term.label}: each batch's rates until loss_fn.fit({group}=codes) sets the group count "
                         f"(or give groups=K)")
    return Check(name, True, "; ".join(notes))


def _descent(plan: Plan, kinds: dict[str, str], steps: int) -> Check:
    inputs = synthetic_inputs(plan, seed=1)
    learned = {n: torch.nn.Parameter(t) for n, t in inputs.items() if kinds[n] in LEARNED_KINDS}
    if not learned:
        return Check("optimisation lowers the loss", True, "nothing to learn")
    module = LossModule(plan)
    module.window_warning = False  # said by the window check instead
    # The loss's own parameters too (uncertainty()'s learned weights), as a training loop gives them.
    optimizer = torch.optim.Adam([*learned.values(), *module.parameters()], lr=0.05)
    first = last = None
    for _ in range(steps):
        loss = module(**{**inputs, **learned}).sum()
        if not torch.isfinite(loss):
            return Check("optimisation lowers the loss", False, f"the loss became {loss.item()}")
        first = loss.item() if first is None else first
        last = loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    passed = last < first
    return Check("optimisation lowers the loss", passed, f"{first:.4g} -> {last:.4g} in {steps} steps")


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name:<{width}}  {'ok' if c.passed else 'FAIL':<6}  {c.detail}" for c in checks]
    failed = sum(not c.passed for c in checks)
    lines.append(f"{len(checks) - failed} passed, {failed} failed" if failed else f"all {len(checks)} checks passed")
    return "\n".join(lines) + "\n"
