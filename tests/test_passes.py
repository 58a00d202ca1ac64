"""The passes under their names: bind checks what the params' values decide, build checks nothing
again, and `lossdsl check` stops at bind without building a torch module."""

from __future__ import annotations

import json
import math
import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import cli, includes, runtime
from lossdsl.binding import BoundPlan, bind
from lossdsl.checking import check
from lossdsl.driver import Driver, plan_for
from lossdsl.includes import Located, Refusal, expand_includes
from lossdsl import folding
from lossdsl.plan import Arithmetic, Constant, LetValue, Negate, ParamValue, ScheduleValue
from lossdsl.schedules import SCHEDULES

#: Specs whose only problem depends on the params' values: the runtime found these before bind.
NEEDS_THE_VALUES = [
    ("param lam = 0\nloss = mse() / lam\n", {}, "division by zero with lam = 0"),
    ("param lam = 1\nloss = (1 / lam) * mse()\n", {"lam": 0}, "division by zero with lam = 0"),
    ("param lam = 1e30\nloss = (lam * lam) * mse()\n", {}, "the constant overflows with lam = 1e+30"),
    ("param w = 1e10\nloss = w * (w * mse())\n", {}, "the loss's weight exceeds 1e+15 with w = 1e+10"),
    ("param lam = 2\nloss = mae()\nsubject to mae() <= 1 / (lam - 2)\n", {}, "division by zero with lam = 2"),
    ("param eps = 0.1\nloss = ce(label_smoothing=eps)\n", {"eps": 2},
     "'label_smoothing' of ce() is param 'eps' = 2.0, which must be less than or equal to 1"),
    ("param lam = 0.5 in [0, 1]\nloss = lam * mse()\n", {"lam": 5.0},
     "param 'lam' = 5.0 lies outside its range [0, 1]"),
]


def _refuse_to_build(*args, **kwargs):
    raise AssertionError("a torch module was built")


@pytest.mark.parametrize(("spec", "params", "message"), NEEDS_THE_VALUES)
def test_check_finds_at_bind_what_compile_finds_without_building_a_module(spec, params, message, tmp_path,
                                                                           capsys, monkeypatch):
    with pytest.raises(lossdsl.LossSpecError) as compiled:
        lossdsl.compile(spec, params)
    (expected,) = compiled.value.diagnostics
    assert (expected.code, expected.message) == ("E205", message)

    path = tmp_path / "spec.loss"
    path.write_text(spec)
    monkeypatch.setattr(runtime.LossModule, "__init__", _refuse_to_build)
    monkeypatch.setattr(runtime, "build", _refuse_to_build)
    options = [arg for name, value in params.items() for arg in ("--param", f"{name}={value}")]
    status = cli.main(["check", "--format", "json", str(path), *options])
    out = capsys.readouterr().out
    assert status == 1
    (reported,) = json.loads(out)["diagnostics"]
    assert (reported["code"], reported["message"]) == ("E205", message)
    if expected.span is not None:
        assert (reported["line"], reported["column"]) == (expected.span.line, expected.span.column)


def test_bind_gives_every_param_its_value_and_each_term_its_arguments():
    plan = plan_for("param lam = 0.5\nparam eps = 0.1\nloss = lam * ce(label_smoothing=eps) + mse()")
    bound = bind(plan, overrides={"eps": 0.25})
    assert isinstance(bound, BoundPlan) and bound.plan is plan
    assert dict(bound.params) == {"lam": 0.5, "eps": 0.25}
    assert [getattr(p, "label_smoothing", None) for p in bound.term_params] == [0.25, None]
    assert plan.terms[0].params.label_smoothing == 0.1  # the plan keeps the checked default
    # params= are values already checked (a module's own): overrides still come last.
    assert dict(bind(plan, {"lam": 0.75}, {"eps": 0.0}).params) == {"lam": 0.75, "eps": 0.0}


def test_build_makes_the_module_bind_describes():
    plan = plan_for("param lam = 0.5\nparam eps = 0.1\nloss = lam * ce(label_smoothing=eps)")
    module = runtime.build(bind(plan, overrides={"lam": 2.0, "eps": 0.2}))
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    torch.testing.assert_close(module(logits, target), 2.0 * F.cross_entropy(logits, target, label_smoothing=0.2))
    assert dict(module.params) == {"lam": 2.0, "eps": 0.2}


def test_bind_reports_every_bad_override_at_once():
    plan = plan_for("param lam = 0.5 in [0, 1]\nloss = lam * mse()")
    with pytest.raises(lossdsl.LossSpecError) as info:
        bind(plan, overrides={"lamb": 1, "lam": float("nan")})
    assert [d.code for d in info.value.diagnostics] == ["E105", "E204"]


# --- folding: one module for the checker's constants and bind's arithmetic over params ----------


def test_fold_refuses_a_zero_divisor_and_an_overflow():
    assert folding.fold("*", 1.5, -4.0) == -6.0
    with pytest.raises(folding.FoldError) as zero:
        folding.fold("/", 1.0, 0.0)
    assert (zero.value.message, zero.value.at_divisor) == ("division by zero", True)
    with pytest.raises(folding.FoldError) as overflow:
        folding.fold("*", 1e30, 1e30)
    assert (overflow.value.message, overflow.value.at_divisor) == ("the constant overflows", False)


def test_the_checker_and_the_tensor_expressions_fold_alike():
    spec = lossdsl.parse("soft_bound(y <= (3 - 1) * 50 / 4)")
    bound = spec.statements[0].value.args[0].operands[1]
    assert folding.number_value(bound) == 25.0
    assert folding.number_value(lossdsl.parse("soft_bound(y <= y * 2)").statements[0].value.args[0].operands[1]) is None
    reported = []
    value = folding.number_value(lossdsl.parse("soft_bound(y <= 1 / 0 + 1e30 * 1e30)")
                                 .statements[0].value.args[0].operands[1], lambda node, error: reported.append(error.message))
    assert value is folding.INVALID
    assert reported == ["division by zero", "the constant overflows"]  # both sides folded, each reported once


_PYTHON_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_numbers = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda x: abs(x) > 1e-6)


@settings(max_examples=200, deadline=None)
@given(_numbers, _numbers, _numbers, st.sampled_from("+-*/"), st.sampled_from("+-*/"))
def test_interval_of_params_is_their_arithmetic(a, b, c, op1, op2):
    """Over params (one value each) the interval is one point: the arithmetic itself, in float64
    (a division multiplies by the reciprocal: equal to rounding)."""
    expr = Arithmetic(op1, ParamValue("a"), Negate(Arithmetic(op2, ParamValue("b"), Constant(c))))
    params = {"a": a, "b": b}
    inner = _PYTHON_OPS[op2](b, c)
    if op1 == "/" and inner == 0:
        with pytest.raises(folding.FoldError):
            folding.interval(expr, params)
        return
    expected = _PYTHON_OPS[op1](a, -inner)
    low, high = folding.interval(expr, params)
    assert low == high
    assert math.isclose(low, expected, rel_tol=1e-12, abs_tol=1e-300)
    assert folding.constant(expr, params) == low


def test_interval_of_a_schedule_covers_its_steps():
    ramp = ScheduleValue("linear", SCHEDULES["linear"][0](start=-1, end=3, steps=10))
    assert folding.interval(Arithmetic("*", Constant(2.0), ramp), {}) == (-2.0, 6.0)
    assert folding.constant(ramp, {}) is None  # it moves
    with pytest.raises(folding.FoldError, match="the divisor goes from -1 to 3"):
        folding.interval(Arithmetic("/", Constant(1.0), ramp), {})
    # The largest factor on a loss: 1 / the divisor's smallest size.
    assert folding.weight(Arithmetic("/", LetValue("x"), ParamValue("w")), {"w": 0.5}) == 2.0
    assert folding.weight(Arithmetic("*", ramp, LetValue("x")), {}) == 3.0


# --- the driver: the passes in order, the caches, the I/O ---------------------------------------


def test_each_driver_owns_its_caches():
    text = "loss = mse() + 0.5 * mae()"
    first, second = Driver(), Driver()
    assert first.plan(text) is first.plan(text)  # checked once
    assert first.parse(text) is first.parse(text)
    assert second.plan(text) is not first.plan(text)
    assert lossdsl.driver.plan_for(text) is lossdsl.driver.DRIVER.plan(text)  # lossdsl.compile's driver


class _MemoryReader:
    """Includes from a dict: the pass reads through its reader alone."""

    def __init__(self, files, filename="top.loss", source=""):
        self.files, self.filename, self.top = files, filename, filename
        self.sources = {filename: source}
        self.read_names = []

    def refuse(self, path):
        return None

    def locate(self, path, including):
        if path not in self.files:
            return Refusal("E010", f"included file {path!r} does not exist")
        return Located(path, path)

    def read(self, located):
        self.read_names.append(located.name)
        self.sources[located.name] = self.files[located.key]
        return self.files[located.key]

    def show(self, key):
        return key


def test_expand_includes_reads_through_its_reader_alone(monkeypatch):
    monkeypatch.setattr(includes, "read_text", _refuse_to_build)  # no file system
    text = 'include "a.loss"\ninclude "b.loss"\nloss = data + lam * mae()\n'
    reader = _MemoryReader({"a.loss": 'include "b.loss"\nlet data = mse()\n', "b.loss": "param lam = 0.25\n"},
                           source=text)
    expanded = expand_includes(lossdsl.parse(text, "top.loss"), reader)
    assert [type(s).__name__ for s in expanded.statements] == ["Param", "Let", "LossStmt"]
    assert reader.read_names == ["a.loss", "b.loss"]  # b once, though included twice
    plan = check(expanded, text, "top.loss", sources=reader.sources)
    assert [p.name for p in plan.params] == ["lam"] and [t.term.name for t in plan.terms] == ["mse", "mae"]


def test_expand_includes_finds_cycles_by_the_readers_keys():
    reader = _MemoryReader({"a.loss": 'include "top.loss"\n', "top.loss": ""}, source='include "a.loss"\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        expand_includes(lossdsl.parse('include "a.loss"\nloss = mse()\n', "top.loss"), reader)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.message) == ("E107", "include cycle: top.loss -> a.loss -> top.loss")
    assert (diagnostic.span.filename, diagnostic.span.line) == ("a.loss", 1)


# --- the checker's parts: a call's params are collected per call, passed explicitly ------------


def test_the_params_a_call_is_given_are_its_own_not_its_inner_terms():
    plan = plan_for("param k = 2\nloss = fairness(group_loss(mse), group=g, groups=k)")
    (term,) = plan.terms
    assert term.param_args == (("groups", "k"),) and term.params.groups == 2
    # An inner term given a param is refused, whatever the outer call was given before it.
    with pytest.raises(lossdsl.LossSpecError) as info:
        plan_for("param d = 2\nparam k = 2\nloss = fairness(group_loss(huber(delta=d)), groups=k, group=g)")
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.message) == (
        "E204", "a param cannot set an argument of the term inside group_loss() yet")
    assert (diagnostic.span.line, diagnostic.span.column) == (3, 28)


def test_check_is_a_pure_function_of_the_spec(monkeypatch):
    """The check pass reads no file: an include must be expanded first (by the driver)."""
    monkeypatch.setattr(includes, "read_text", _refuse_to_build)
    spec = lossdsl.parse("param lam = 0.5\nloss = lam * mse()\n")
    first, second = check(spec), check(spec)
    assert first is not second  # not cached here: the driver caches
    assert [t.label for t in first.terms] == [t.label for t in second.terms] == ["mse"]
    assert first.params[0].default == 0.5


def test_build_reads_the_numbers_bind_folded(monkeypatch):
    """bind folds every number of the plan once; build reads them and folds nothing again."""
    spec = "param lam = 0.5\nlet fit = mse() + lam * mae()\nloss = fit / (1 + lam) + warmup(4) * mae()"
    bound = bind(plan_for(spec), overrides={"lam": 3.0})
    monkeypatch.setattr(folding, "_interval", _refuse_to_build)
    module = runtime.build(bound).eval()  # eval: the step counter stays at 0, so warmup(4) is 0
    pred, target = torch.randn(7), torch.randn(7)
    fit = F.mse_loss(pred, target) + 3.0 * F.l1_loss(pred, target)
    torch.testing.assert_close(module(pred, target), fit / 4.0)


@pytest.mark.parametrize("stat", ["dp_gap", "group_loss(mse)"])
def test_a_whole_param_fills_an_integer_field(stat):
    """param values are floats; groups=k with k = 2 is the integer 2 (it was E205, and an
    IndexError for group_loss, whose validator saw the defaults written back as given)."""
    spec = f"param k = 2\nloss = fairness({stat}, group=g, groups=k)"
    assert lossdsl.compile(spec).terms[0].num_groups == 2
    assert lossdsl.compile(spec, params={"k": 3}).terms[0].num_groups == 3
    with pytest.raises(lossdsl.LossSpecError, match=r"E205.*'groups' of fairness\(\) is param 'k' = 2.5"):
        lossdsl.compile(spec, params={"k": 2.5})
