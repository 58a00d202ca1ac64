"""Parsing and diagnostics: text to AST, every error code with its position, and rendering."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lossdsl
from lossdsl import ast
from lossdsl.errors import LossSpecError
from lossdsl.parsing import MAX_NESTING, parse

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.loss"))
CARD = "ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)"


# --- helpers -------------------------------------------------------------------


def N(value):  # noqa: N802 - short AST builders keep the expected trees readable
    return ast.Number(value=value)


def V(name):  # noqa: N802
    return ast.Name(id=name)


def B(op, left, right):  # noqa: N802
    return ast.BinOp(op=op, left=left, right=right)


def C(name, *args, **keywords):  # noqa: N802
    return ast.Call(
        name=name,
        args=tuple(args),
        keywords=tuple(ast.Keyword(name=k, value=v) for k, v in keywords.items()),
    )


def expr_of(text: str):
    """The value of the single objective statement of ``text``."""
    spec = parse(text)
    assert len(spec.statements) == 1
    statement = spec.statements[0]
    assert isinstance(statement, ast.LossStmt)
    return statement.value


def diagnostics_of(text: str, filename: str | None = None):
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile(text, filename=filename)
    assert info.value.diagnostics, "a LossSpecError always carries at least one diagnostic"
    return info.value.diagnostics


# --- valid specs ---------------------------------------------------------------


def test_card_one_liner_parses_to_the_expected_tree():
    spec = parse(CARD)
    assert spec.statements == (
        ast.LossStmt(
            bare=True,
            value=B(
                "+",
                B(
                    "+",
                    C("ce", weight=V("balanced")),
                    B("*", N(0.1), C("fairness", V("fpr_gap"), group=V("sex"))),
                ),
                C("soft_bound", ast.Compare(operands=(V("y"), N(100)), ops=("<=",))),
            ),
        ),
    )
    assert spec.objective is spec.statements[0]
    assert isinstance(spec.statements[0].value.right.args[0].operands[1].value, int)


def test_card_one_liner_compiles_and_reads_its_inputs():
    assert lossdsl.compile(CARD).inputs == ("pred", "target", "sex", "y")


def test_multi_line_spec_with_comments_lets_and_loss():
    text = (
        "# credit.loss: comments run to the end of the line\n"
        "\n"
        "let data = ce(weight=balanced, label_smoothing=0.05)    # a named sub-objective\n"
        "let fair = fairness(fpr_gap, group=sex)\n"
        "   # an indented comment line\n"
        "\n"
        "loss = data +                                            # continues\n"
        "       0.1 * fair +\n"
        "       soft_bound(y <= 100)\n"
        "\n"
    )
    spec = parse(text)
    let_data, let_fair, objective = spec.statements
    assert let_data == ast.Let(name="data", value=C("ce", weight=V("balanced"), label_smoothing=N(0.05)))
    assert let_fair == ast.Let(name="fair", value=C("fairness", V("fpr_gap"), group=V("sex")))
    assert objective == ast.LossStmt(
        value=B(
            "+",
            B("+", V("data"), B("*", N(0.1), V("fair"))),
            C("soft_bound", ast.Compare(operands=(V("y"), N(100)), ops=("<=",))),
        ),
        bare=False,
    )
    # spans point at the source lines
    assert (let_data.span.line, let_data.span.column) == (3, 1)
    assert (let_fair.span.line, let_fair.span.column) == (4, 1)
    assert (objective.span.line, objective.span.end_line) == (7, 9)
    # and it type-checks
    plan = lossdsl.check(spec, text)
    assert [t.label for t in plan.terms] == ["data", "fair", "soft_bound"]


def test_continuation_inside_brackets():
    text = "loss = ce(\n    weight = [\n        1,\n        2.5,\n    ],\n    label_smoothing=0.1,\n)\n"
    assert expr_of(text) == C("ce", weight=ast.List(items=(N(1), N(2.5))), label_smoothing=N(0.1))


def test_continuation_after_each_binary_operator_and_comparison():
    text = "a +\n b -\n c *\n d /\n e <=\n f"
    assert expr_of(text) == ast.Compare(
        operands=(B("-", B("+", V("a"), V("b")), B("/", B("*", V("c"), V("d")), V("e"))), V("f")),
        ops=("<=",),
    )


def test_continuation_after_operator_skips_blank_and_comment_lines():
    assert expr_of("ce() +\n\n   # why\n  mse()") == B("+", C("ce"), C("mse"))


def test_backslash_continues_a_line():
    assert expr_of("ce() \\\n + mse()") == B("+", C("ce"), C("mse"))


def test_crlf_line_endings():
    spec = parse("let a = ce()\r\nloss = a\r\n")
    assert spec.statements == (ast.Let(name="a", value=C("ce")), ast.LossStmt(value=V("a")))


def test_comparison_chain():
    assert expr_of("soft_bound(0 <= y <= 1)") == C(
        "soft_bound", ast.Compare(operands=(N(0), V("y"), N(1)), ops=("<=", "<="))
    )
    assert expr_of("a < b > c == d >= e") == ast.Compare(
        operands=(V("a"), V("b"), V("c"), V("d"), V("e")), ops=("<", ">", "==", ">=")
    )


def test_comparison_binds_looser_than_arithmetic():
    assert expr_of("y - 1 <= 2 * z") == ast.Compare(
        operands=(B("-", V("y"), N(1)), B("*", N(2), V("z"))), ops=("<=",)
    )


def test_lists_tuples_and_strings():
    assert expr_of("[]") == ast.List(items=())
    assert expr_of("[1, x, [2]]") == ast.List(items=(N(1), V("x"), ast.List(items=(N(2),))))
    assert expr_of("[1, 2,]") == ast.List(items=(N(1), N(2)))
    assert expr_of("(1,)") == ast.Tuple(items=(N(1),))
    assert expr_of("(a, b, )") == ast.Tuple(items=(V("a"), V("b")))
    assert expr_of("(a)") == V("a")  # parentheses alone make no node
    assert expr_of('"hello world"') == ast.String(value="hello world")
    assert expr_of('""') == ast.String(value="")
    assert expr_of(r'"say \"hi\" \\ now"') == ast.String(value='say "hi" \\ now')
    assert expr_of('f("#not a comment")') == C("f", ast.String(value="#not a comment"))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("0.5", 0.5),
        (".5", 0.5),
        ("3.", 3.0),
        ("1e-3", 1e-3),
        ("2.5E+4", 25000.0),
        ("7e2", 700.0),
        (".25e1", 2.5),
    ],
)
def test_numbers(text, value):
    node = expr_of(text)
    assert node == N(value)
    assert type(node.value) is type(value)


def test_unary_minus():
    assert expr_of("-1") == ast.Neg(operand=N(1))
    assert expr_of("--x") == ast.Neg(operand=ast.Neg(operand=V("x")))
    assert expr_of("-(a + b)") == ast.Neg(operand=B("+", V("a"), V("b")))
    assert expr_of("a - -b") == B("-", V("a"), ast.Neg(operand=V("b")))


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a + b * c", B("+", V("a"), B("*", V("b"), V("c")))),
        ("a * b + c", B("+", B("*", V("a"), V("b")), V("c"))),
        ("(a + b) * c", B("*", B("+", V("a"), V("b")), V("c"))),
        ("-a * b", B("*", ast.Neg(operand=V("a")), V("b"))),
        ("a * -b", B("*", V("a"), ast.Neg(operand=V("b")))),
        ("a - b - c", B("-", B("-", V("a"), V("b")), V("c"))),
        ("a - (b - c)", B("-", V("a"), B("-", V("b"), V("c")))),
        ("a / b / c", B("/", B("/", V("a"), V("b")), V("c"))),
        ("a / b * c", B("*", B("/", V("a"), V("b")), V("c"))),
        ("a + b - c + d", B("+", B("-", B("+", V("a"), V("b")), V("c")), V("d"))),
    ],
)
def test_operator_precedence_and_associativity(text, tree):
    assert expr_of(text) == tree


def test_calls_positional_and_keyword_arguments():
    assert expr_of("f()") == ast.Call(name="f")
    assert expr_of("f(1, x, k=2, j=[y],)") == ast.Call(
        name="f",
        args=(N(1), V("x")),
        keywords=(ast.Keyword(name="k", value=N(2)), ast.Keyword(name="j", value=ast.List(items=(V("y"),)))),
    )


def test_keywords_of_the_statements_are_plain_names_elsewhere():
    assert expr_of("mse(pred=inputs)") == C("mse", pred=V("inputs"))
    assert lossdsl.compile("mse(pred=inputs)").inputs == ("inputs", "target")


def test_spans_are_one_based_with_exclusive_end():
    call = expr_of("  fairness(fpr_gap, group=sex)")
    assert (call.span.line, call.span.column, call.span.end_line, call.span.end_column) == (1, 3, 1, 31)
    stat = call.args[0]
    assert (stat.span.column, stat.span.end_column) == (12, 19)


def test_empty_and_comment_only_text_parse_to_no_statements():
    assert parse("").statements == ()
    assert parse("\n\n# nothing here\n   \n").statements == ()


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_example_spec_parses_and_compiles(path):
    text = path.read_text(encoding="utf-8")
    spec = parse(text, str(path))
    assert spec.objective is not None
    assert all(isinstance(s, (ast.Let, ast.LossStmt, ast.Param, ast.Inputs, ast.SubjectTo)) for s in spec.statements)
    assert sum(isinstance(s, ast.LossStmt) for s in spec.statements) == 1
    assert spec.span.filename == str(path)
    module = lossdsl.load(path)
    assert "pred" in module.inputs


def test_example_specs_exist():
    assert len(SPECS) >= 5


# --- statements of the design that parse but do not compile yet ----------------


def test_inputs_block_parses():
    text = "inputs:\n    pred: logits[N, C]\n    group: int[N] of 5\n    w: float\nloss = ce()\n"
    spec = parse(text)
    inputs, objective = spec.statements
    assert inputs == ast.Inputs(
        decls=(
            ast.InputDecl(name="pred", type="logits", shape=("N", "C")),
            ast.InputDecl(name="group", type="int", shape=("N",), groups=5),
            ast.InputDecl(name="w", type="float"),
        )
    )
    assert objective == ast.LossStmt(value=C("ce"))
    assert inputs.span.line == 1


def test_param_statement_parses():
    spec = parse("param lam = 0.1 in [0, 10]\nparam mu = -2\nparam nu = 1e-3 in [-1.5, -0.5]\nloss = ce()")
    assert spec.statements[:3] == (
        ast.Param(name="lam", value=0.1, low=0.0, high=10.0),
        ast.Param(name="mu", value=-2.0),
        ast.Param(name="nu", value=1e-3, low=-1.5, high=-0.5),
    )


def test_subject_to_statement_parses():
    spec = parse(
        "loss = ce()\n"
        "subject to fairness(fpr_gap, group=sex) <= 0.02 as fair using penalty(10)\n"
        "subject to y <= 1"
    )
    assert spec.statements[1] == ast.SubjectTo(
        constraint=ast.Compare(operands=(C("fairness", V("fpr_gap"), group=V("sex")), N(0.02)), ops=("<=",)),
        name="fair",
        method=C("penalty", N(10)),
    )
    assert spec.statements[2] == ast.SubjectTo(constraint=ast.Compare(operands=(V("y"), N(1)), ops=("<=",)))


def test_include_statement_parses():
    spec = parse('include "shared/base.loss"\nloss = ce()')
    assert spec.statements[0] == ast.Include(path="shared/base.loss")


def test_input_declaration_outside_a_block_is_e005():
    (diagnostic,) = diagnostics_of("loss = ce()\ny: float[N]")
    assert diagnostic.code == "E005"
    assert (diagnostic.span.line, diagnostic.span.column) == (2, 1)


# --- invalid specs: one table ----------------------------------------------------

DEEP_LIST = "[" * 150 + "]" * 150  # innermost list at column 150 is depth 1: depth 101 starts at 50
DEEP_NEG = "-" * 150 + "ce()"  # ce() is depth 1, the '-' at column k is depth 152 - k: 101 at 51
LONG_SUM = "loss = " + "ce() + " * 150 + "ce()"  # left-nested: the 100th '+' node starts at the 'ce' in column 8

INVALID = [
    # E001 syntax errors
    ("ce() +", "E001", 1, 7),  # missing right operand: end of input just after the '+'
    ("loss = ce() + * mse()", "E001", 1, 15),  # missing operand between '+' and '*'
    ("ce() + -", "E001", 1, 9),
    (")", "E001", 1, 1),  # stray ')'
    ("ce())", "E001", 1, 5),
    ("loss = ce() mse()", "E001", 1, 13),  # two expressions on one line
    ("let a = ce()\nlet b = mse() mae()\nloss = a + b", "E001", 2, 15),
    ("ce() * 2 3", "E001", 1, 10),
    ("fairness(group=sex, fpr_gap)", "E001", 1, 21),  # positional after keyword
    ("let = ce()", "E001", 1, 5),
    ("loss ce()", "E001", 1, 6),
    ("let a = ce()\nloss =", "E001", 2, 7),
    ("ce(,)", "E001", 1, 4),
    ("ce(pred=)", "E001", 1, 9),
    ("loss = mse() +\n\n  * mae()", "E001", 3, 3),
    ("let a = ce(weight=[1, 2)\nloss = a", "E001", 1, 24),  # mismatched bracket
    # E002 unclosed bracket, at the bracket
    ("ce(", "E002", 1, 3),
    ("[1, 2", "E002", 1, 1),
    ("loss = ce() +\n  mse(reduction=sum", "E002", 2, 6),
    ("loss = [ce(),\n  mse()\n\n", "E002", 1, 8),
    ("let a = (ce() + [mse()\nloss = a", "E001", 2, 1),  # the next line runs on inside the brackets
    # E003 bad characters and unterminated strings
    ("ce() @ mse()", "E003", 1, 6),
    ("ce(weight=balanced) ; mse()", "E003", 1, 21),
    ("loss = ce() +\n  mse() $", "E003", 2, 9),
    ("loss = ce() + \u00fc", "E003", 1, 15),
    ('let a = "abc\nloss = ce()', "E003", 1, 9),
    ('loss = f("open', "E003", 1, 10),
    ('ce(pred="a\rb")', "E003", 1, 9),  # a carriage return ends a line too
    ('ce(pred="a\\\rb")', "E003", 1, 9),  # escaped or not
    # E004 nesting too deep
    (DEEP_LIST, "E004", 1, 50),
    (DEEP_NEG, "E004", 1, 51),
    (LONG_SUM, "E004", 1, 8),
    # constraints: subject to a loss OP a number
    ("loss = ce()\ninclude \"base.loss\"", "E012", 2, 1),  # spec text without include_root includes nothing
    ("loss = ce()\nsubject to mse() < 1", "E303", 2, 12),
    ("subject to ce() <= x as n using penalty(10)\nloss = ce()", "E301", 1, 20),
    ("loss = ce()\ninputs:\n  y: float", "E106", 3, 3),
    # E102 duplicate let
    ("let a = ce()\nlet a = mse()\nloss = a", "E102", 2, 1),
    # E103 no objective / two objectives
    ("let a = ce()", "E103", 1, 1),
    ("loss = ce()\nloss = mse()", "E103", 2, 1),
    ("ce()\n\nmse()", "E103", 3, 1),
    # E104 undefined name, use before definition
    ("let data = ce()\nloss = dta", "E104", 2, 8),
    ("let b = a\nlet a = ce()\nloss = b", "E104", 1, 9),
    ("loss = ce", "E104", 1, 8),
    # E201 unknown enum value
    ("ce(weight=balancd)", "E201", 1, 11),
    ("fairness(fpr_gp, group=sex)", "E201", 1, 10),
    ("soft_bound(y <= 1, penalty=cubic)", "E201", 1, 28),
    # E202 unknown term
    ("loss = cee()", "E202", 1, 8),
    ("ce() + 0.5 * hubber(delta=2)", "E202", 1, 14),
    # E203 unknown argument
    ("ce(wieght=balanced)", "E203", 1, 4),
    ("let m = mse(\n    pred=aux,\n    tagret=y)\nloss = m", "E203", 3, 5),
    # E204 wrong argument type
    ("ce(label_smoothing=sex)", "E204", 1, 20),
    ("ce(pred=1)", "E204", 1, 9),
    ('huber(delta="big")', "E204", 1, 13),
    ("soft_bound(y)", "E204", 1, 12),
    ("let a = ce()\nloss = soft_bound(a <= 1)", "E204", 2, 19),
    # E205 out of range
    ("ce(label_smoothing=2)", "E205", 1, 20),
    ("huber(-1)", "E205", 1, 7),
    ("fairness(fpr_gap, group=sex, groups=0)", "E205", 1, 37),
    ("ce(weight=[1, -1])", "E205", 1, 11),
    ("ce() / 0", "E205", 1, 8),
    # E206 missing argument
    ("fairness(fpr_gap)", "E206", 1, 1),
    ("ce() + soft_bound(margin=0.1)", "E206", 1, 8),
    # E207 too many positional / duplicate
    ("mse(1)", "E207", 1, 5),
    ("fairness(fpr_gap, sex)", "E207", 1, 19),
    ("ce(weight=balanced, weight=balanced)", "E207", 1, 21),
    # E301 not a loss
    ("y", "E301", 1, 1),
    ("loss = 1", "E301", 1, 8),
    ("[1, 2]", "E301", 1, 1),
    ('loss = "ce"', "E301", 1, 8),
    ("(ce(), mse())", "E301", 1, 1),
    ("let a = 2 * 3\nloss = ce()", "E301", 1, 9),
    # E302 type errors in arithmetic
    ("ce() * mse()", "E302", 1, 1),
    ("let a = ce()\nloss = 0.5 * a * a", "E302", 2, 8),
    ("loss = ce() + 1", "E302", 1, 8),
    ("ce() - 2", "E302", 1, 1),
    ("1 / ce()", "E302", 1, 1),
    # E303 comparison of constants
    ("soft_bound(3 <= 4)", "E303", 1, 12),
    ("soft_bound(0 <= y <= 1 <= 2)", "E303", 1, 12),
    ("soft_bound((y <= 1) <= 2)", "E303", 1, 13),
    # E304 comparison outside a term
    ("y <= 1", "E304", 1, 1),
    ("ce() + (y <= 1)", "E304", 1, 9),
]


def _case_id(case):
    text, code, line, column = case
    short = text if len(text) <= 30 else text[:27] + "..."
    return f"{code}-{line}:{column}-{short!r}"


@pytest.mark.parametrize(("text", "code", "line", "column"), INVALID, ids=[_case_id(c) for c in INVALID])
def test_invalid_spec_reports_code_and_position(text, code, line, column):
    diagnostics = diagnostics_of(text)
    first = diagnostics[0]
    assert (first.code, first.span.line, first.span.column) == (code, line, column)
    assert first.severity == "error"
    assert first.message
    assert first.span.end_line > first.span.line or first.span.end_column > first.span.column


def test_invalid_table_is_broad():
    assert len(INVALID) >= 35
    codes = {code for _, code, _, _ in INVALID}
    assert codes >= {"E001", "E002", "E003", "E004", "E102", "E103", "E104",
                     "E201", "E202", "E203", "E204", "E205", "E206", "E207",
                     "E301", "E302", "E303", "E304"}


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("let data = ce()\nloss = dta", "did you mean 'data'?"),
        ("loss = ce", "'ce' is a term: call it, ce()"),
        ("let b = a\nlet a = ce()\nloss = b", "move 'let a' (line 2) above this line"),
        ("loss = cee()", "did you mean 'ce'?"),
        ("ce(wieght=balanced)", "did you mean 'weight'?"),
        ("let m = mse(\n    pred=aux,\n    tagret=y)\nloss = m", "did you mean 'target'?"),
        ("ce(weight=balancd)", "did you mean 'balanced'?"),
        ("fairness(fpr_gp, group=sex)", "did you mean 'fpr_gap'?"),
        ("soft_bound(y <= 1, penalty=cubic)", "expected one of: squared, hinge, softplus, log_barrier"),
        ("let a = ce()\nlet a = mse()\nloss = a", "it is first defined at line 1"),
        ("loss = ce()\nloss = mse()", "the first is at line 1"),
        ("y <= 1", "penalise its violation: soft_bound(y <= 1)"),
        ("let a = ce(weight=[1, 2)\nloss = a", "the '[' at 1:19 is not closed"),
        ("ce(", "add the matching bracket"),
        ("let a = (ce() + [mse()\nloss = a", "the '[' at 1:17 is not closed"),
        ("ce(]", "the '(' at 1:3 is not closed"),
        # a closer that matches its bracket is not the mistake: the operator before it is
        ("soft_bound(y <= 1 and)", "'and' needs an operand after it"),
        ("soft_bound(not)", "'not' needs an operand after it"),
        ("loss = ce() + )", "'+' needs an operand after it"),
        ("ce() * * mse()", "'*' needs an operand after it"),
        # reserved words, also where the contextual lexer would read them as names
        ("soft_bound(and y <= 1)",
         "'and' is a reserved word: it joins two conditions inside soft_bound, as in soft_bound(a <= 1 and b >= 0)"),
        ("let or = ce()\nloss = or",
         "'or' is a reserved word: it joins two conditions inside soft_bound, as in soft_bound(a <= 0 or a >= 1)"),
        ("ce(not=1)", "'not' is a reserved word, not a name"),
        ("inputs:\n  implies: logits\nloss = ce()",
         "'implies' is a reserved word: it joins two conditions inside soft_bound, as in soft_bound(a > 0 implies b >= 1)"),
    ],
)
def test_hints(text, hint):
    assert diagnostics_of(text)[0].hint == hint


def test_e104_did_you_mean_only_offers_lets_defined_earlier():
    (diagnostic,) = diagnostics_of("let fair = fairness(fpr_gap, group=sex)\nlet whole = ce() + fiar\nloss = whole")
    assert diagnostic.code == "E104"
    assert diagnostic.message == "undefined name 'fiar'"
    assert diagnostic.hint == "did you mean 'fair'?"
    assert (diagnostic.span.line, diagnostic.span.column, diagnostic.span.end_column) == (2, 20, 24)


def test_e004_limit_is_exact():
    # exactly MAX_NESTING levels is fine, one more is not
    ok = "[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1)
    assert isinstance(expr_of(f"f({ok})"), ast.Call)
    too_deep = "[" * MAX_NESTING + "]" * MAX_NESTING
    with pytest.raises(LossSpecError) as info:
        parse(f"f({too_deep})")
    assert info.value.diagnostics[0].code == "E004"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000 + "]" * 5000,
        "-" * 5000 + "ce()",
        "ce() " + "+ ce() " * 3000,
        "soft_bound(" + "(" * 3000 + "y" + ")" * 3000 + " <= 1) + " + "-" * 3000 + "mse()",
        "f(" * 2000 + ")" * 2000,
    ],
    ids=["lists", "negations", "sum", "parens-then-negations", "calls"],
)
def test_very_deep_nesting_is_a_diagnostic_not_a_recursion_error(text):
    diagnostics = diagnostics_of(text)
    assert diagnostics[0].code == "E004"
    assert "nested too deeply" in diagnostics[0].message


def test_redundant_parentheses_do_not_count_as_nesting():
    assert expr_of("(" * 1000 + "ce()" + ")" * 1000) == C("ce")


def test_several_independent_errors_are_all_reported():
    text = (
        "let a = cee()\n"  # E202 at 1:9
        "let b = ce(wieght=1)\n"  # E203 at 2:12
        "let a = mse()\n"  # E102 at 3:1
        "let c = fairness(fpr_gp, group=sex)\n"  # E201 at 4:18
        "loss = a + b + c + ce() * mse()\n"  # E302 at 5:20
        "loss = mse()\n"  # E103 at 6:1
    )
    diagnostics = diagnostics_of(text)
    found = sorted((d.code, d.span.line, d.span.column) for d in diagnostics)
    assert found == sorted(
        [("E202", 1, 9), ("E203", 2, 12), ("E102", 3, 1), ("E201", 4, 18), ("E302", 5, 20), ("E103", 6, 1)]
    )


def test_several_errors_in_one_expression_are_all_reported():
    diagnostics = diagnostics_of("ce(wieght=balanced) + 0.1 * fairness(fpr_gp, group=sex) + soft_bound(3 <= 4) + cee()")
    assert [(d.code, d.span.column) for d in diagnostics] == [("E203", 4), ("E201", 38), ("E303", 70), ("E202", 80)]


def test_several_syntax_level_argument_errors_are_collected():
    diagnostics = diagnostics_of("f(a=1, 2) + g(b=1, c=2, 3)")
    assert [(d.code, d.span.column) for d in diagnostics] == [("E001", 8), ("E001", 25)]


def test_errors_suppress_follow_on_type_errors():
    # an unknown term is reported once, not again as "cannot multiply"
    diagnostics = diagnostics_of("cee() * mse()")
    assert [d.code for d in diagnostics] == ["E202"]


def test_unused_let_is_a_warning_not_an_error():
    plan = lossdsl.check(parse("let a = ce()\nloss = mse()"), "let a = ce()\nloss = mse()")
    (warning,) = plan.warnings
    assert (warning.code, warning.severity, warning.span.line) == ("W001", "warning", 1)
    assert lossdsl.compile("let a = ce()\nloss = mse()").inputs == ("pred", "target")


def test_errors_property_filters_by_severity():
    error = LossSpecError([
        lossdsl.Diagnostic("W001", "w", severity="warning"),
        lossdsl.Diagnostic("E202", "e"),
    ])
    assert [d.code for d in error.errors] == ["E202"]


# --- rendering -------------------------------------------------------------------

HEAD = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): error\[(?P<code>E\d{3})\]: (?P<message>.+)$")


def test_rendering_with_filename_and_hint():
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile(
            "let data = ce()\nlet fair = fairness(fpr_gp, group=sex)\nloss = data + fair", filename="specs/c.loss"
        )
    assert str(info.value) == (
        "specs/c.loss:2:21: error[E201]: unknown statistic 'fpr_gp' for fairness()\n"
        " 2 | let fair = fairness(fpr_gp, group=sex)\n"
        "   |                     ^^^^^^ did you mean 'fpr_gap'?"
    )


def test_rendering_caret_sits_under_the_span():
    text = "loss = ce() + 0.5 * hubber(delta=2)"
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile(text)
    head, source_line, caret_line = str(info.value).split("\n")
    match = HEAD.match(head)
    assert match and match["file"] == "<spec>" and (match["line"], match["col"], match["code"]) == ("1", "21", "E202")
    assert source_line == f" 1 | {text}"
    prefix = " 1 | "
    assert caret_line.startswith("   | ")
    carets = caret_line[len(prefix):]
    start = len(carets) - len(carets.lstrip(" "))
    width = len(carets.lstrip(" ").split(" ")[0])
    assert (start + 1, width) == (21, len("hubber"))
    assert text[start:start + width] == "hubber"
    assert caret_line.endswith("^^^^^^ did you mean 'huber'?")


def test_rendering_gutter_widens_for_two_digit_lines():
    text = "# c\n" * 11 + "loss = ce() @ mse()"
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile(text)
    assert str(info.value) == (
        "<spec>:12:13: error[E003]: unexpected character '@'\n"
        " 12 | loss = ce() @ mse()\n"
        "    |             ^"
    )


def test_rendering_span_over_several_lines_underlines_to_the_line_end():
    text = "let a = ce()\nloss = a +\n  1"
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile(text)
    lines = str(info.value).split("\n")
    assert lines[0].startswith("<spec>:2:8: error[E302]: cannot add a number and a loss")
    assert lines[1] == " 2 | loss = a +"
    assert lines[2] == "   |        ^^^ " + info.value.diagnostics[0].hint


def test_rendering_every_diagnostic_has_head_source_and_carets():
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile("let a = cee()\nloss = a + mse(reduction=avg)")
    rendered = str(info.value).split("\n")
    assert len(rendered) == 6
    assert [HEAD.match(rendered[i])["code"] for i in (0, 3)] == ["E202", "E201"]
    assert rendered[1] == " 1 | let a = cee()"
    assert rendered[2] == "   |         ^^^ did you mean 'ce'?"
    assert rendered[4] == " 2 | loss = a + mse(reduction=avg)"
    assert rendered[5].startswith("   |                          ^^^ ")


def test_rendering_tabs_keep_the_caret_aligned():
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile("ce()\t+ mse() mse()")
    _, source_line, caret_line = str(info.value).split("\n")
    assert source_line == " 1 | ce() + mse() mse()"
    assert caret_line.startswith("   |              ^^^ ")


def test_rendering_end_of_input_points_past_the_text():
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile("ce() +\n\n")
    head, source_line, caret_line = str(info.value).split("\n")
    assert head == "<spec>:1:7: error[E001]: unexpected end of input"
    assert source_line == " 1 | ce() +"
    assert caret_line.startswith("   |       ^ expected ")


def test_rendering_without_source_shows_the_hint_on_its_own_line():
    diagnostic = lossdsl.Diagnostic("E400", "bad tensor", hint="pass it")
    assert diagnostic.render() == "error[E400]: bad tensor\n  = pass it"
    assert str(LossSpecError("shape mismatch", code="E402")) == "error[E402]: shape mismatch"


def test_rendering_in_color_wraps_severity_and_carets():
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile("cee()")
    plain = info.value.render()
    colored = info.value.render(color=True)
    assert "\x1b[" not in plain
    assert "\x1b[31;1merror\x1b[0m" in colored
    assert "\x1b[31;1m^^^\x1b[0m" in colored
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == plain


def test_rendering_with_form_feed_whitespace_shows_the_right_line():
    with pytest.raises(LossSpecError) as info:
        lossdsl.compile("ce()\f+ mse() mse()")
    _, source_line, caret_line = str(info.value).split("\n")
    assert source_line.startswith(" 1 | ce()")
    assert "mse() mse()" in source_line
    assert caret_line.startswith("   |              ^^^ ")


# --- numbers the lexer accepts but the AST cannot hold ----------------------------


def test_overflowing_float_literal_is_a_diagnostic():
    with pytest.raises(LossSpecError):
        lossdsl.compile("ce(label_smoothing=1e999)")


def test_huge_integer_literal_is_a_diagnostic():
    with pytest.raises(LossSpecError):
        lossdsl.compile("ce(ignore_index=" + "9" * 5000 + ")")


# --- robustness ------------------------------------------------------------------

_SPEC_CHARS = list("abcexyz_019.()[],=+-*/<>\"\\#: \t\n") + ["let ", "loss ", "param ", "in ", "subject to ",
                                                           "inputs:", "include ", "ce(", "soft_bound(", "fairness("]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(_SPEC_CHARS), max_size=30).map("".join)))
def test_garbage_either_parses_or_raises_loss_spec_error(text):
    try:
        spec = parse(text)
    except LossSpecError as exc:
        assert exc.diagnostics
        assert all(d.code.startswith("E") for d in exc.diagnostics)
        assert isinstance(str(exc), str)
        return
    assert isinstance(spec, ast.Spec)
    try:
        lossdsl.check(spec, text)
    except LossSpecError as exc:
        assert exc.diagnostics
        assert isinstance(str(exc), str)


def test_parse_with_comments_keeps_what_the_lexer_read_as_comments():
    from concurrent.futures import ThreadPoolExecutor

    from lossdsl.parsing import _COMMENTS, parse_with_comments

    text = '# head\nloss = ce(weight=[1, 2])  # trailing \nlet a = fairness(tpr_gap, group="a#b")\n'
    spec, comments = parse_with_comments(text)
    assert spec == parse(text)
    assert comments == {1: "# head", 2: "# trailing"}  # the '#' inside the string is none
    assert getattr(_COMMENTS, "found", None) is None  # a plain parse keeps nothing
    # Each thread collects its own text's comments from the one shared parser.
    texts = [f"loss = ce()  # number {i}\n" * 20 for i in range(16)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(parse_with_comments, texts))
    for i, (_, found) in enumerate(results):
        assert found == {line: f"# number {i}" for line in range(1, 21)}


# --- the AST built while the parser reduces (issue 16) ------------------------------------------

# Lark's tree rules -> the AST kind each becomes (the rules that make a node).
_RULE_KINDS = {
    "let_stmt": "let", "loss_stmt": "loss", "bare_stmt": "loss", "param_stmt": "param", "include_stmt": "include",
    "subject_stmt": "subject_to", "input_decl": "input", "comparison": "compare", "logic": "logic",
    "logic_not": "not", "binop": "binop", "neg": "neg", "number": "number", "name": "name", "string": "string",
    "tuple": "tuple", "list": "list", "keyword": "keyword", "call": "call",
}


def _lark_spans(text):
    """Every node's (kind, line, column, end_line, end_column) by Lark's own propagate_positions on
    the tree it builds: what the parser's spans were before it built the AST while reducing."""
    from lark import Lark, Tree

    from lossdsl.parsing import _LINE_JOINER

    reference = _lark_spans.__dict__.get("parser")
    if reference is None:
        reference = _lark_spans.parser = Lark.open_from_package(
            "lossdsl.grammar", "loss.lark", parser="lalr", propagate_positions=True, maybe_placeholders=True,
            postlex=_LINE_JOINER)
    found = []
    stack = [reference.parse(text)]
    while stack:
        tree = stack.pop()
        if isinstance(tree, Tree):
            if tree.data in _RULE_KINDS:
                meta = tree.meta
                found.append((_RULE_KINDS[tree.data], meta.line, meta.column, meta.end_line, meta.end_column))
            if tree.data != "signed_number":  # a param's number is a value in the AST, not a node
                stack += tree.children
    return sorted(found)


def _ast_spans(spec):
    return sorted((node.kind, node.span.line, node.span.column, node.span.end_line, node.span.end_column)
                  for node in spec.walk() if node.kind not in ("spec", "inputs"))


@pytest.mark.parametrize("text", [
    "loss = (a + b) * c\n",  # a node's span takes in the brackets of its first and last operand
    "loss = ((a)) * (-(b))\n",  # ... but a bracketed operand's own span does not
    "param lam = -1.5\nparam mu = 2 in [-1, 3]\n",
    "inputs:\n  x: logits[N, C] of 3\n  y: labels[]\n  z: real\nloss = ce(x, y)\n",
    "soft_bound(not (a > 1) and (b < 2 implies c == 1))\n",
    "f(\n  a,\n  b = [1, (2,)],\n)  # c\n",
    "subject to (a <= 1) as one using penalty(10)\nloss = 1 +\n  2\n",
], ids=range(7))
def test_spans_built_while_reducing_are_lark_propagate_positions_spans(text):
    spec = parse(text)
    assert _ast_spans(spec) == _lark_spans(text)


def test_spans_match_lark_on_the_fuzz_corpus_and_the_shipped_specs():
    import random
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fuzz_specs

    rng = random.Random(16)
    texts = [path.read_text() for path in SPECS] + [fuzz_specs.spec_text(rng) for _ in range(150)]
    compared = 0
    for text in texts:
        try:
            spec = parse(text)
        except LossSpecError:
            continue
        assert _ast_spans(spec) == _lark_spans(text), text
        compared += 1
    assert compared > 100


def test_bracketed_operand_spans_by_hand():
    # "loss = (a + b) * c": the product runs from its '(' (column 8) to the end of c (column 19, exclusive)
    binop = parse("loss = (a + b) * c").statements[0].value
    assert (binop.span.column, binop.span.end_column) == (8, 19)
    assert (binop.left.span.column, binop.left.span.end_column) == (9, 14)  # a + b without its brackets
    param = parse("param lam = -1.5").statements[0]
    assert (param.span.column, param.span.end_column, param.value) == (1, 17, -1.5)


def test_a_syntax_error_after_a_node_that_cannot_be_built_is_still_the_one_reported():
    # The number is too large (E006) and the nesting too deep (E004); a syntax error later in the text
    # is reported instead of them, as when the whole tree was parsed before any node was built.
    deep = "-" * (MAX_NESTING + 1) + "a"
    for text, code in (("let a = 1e39\nloss = (", "E002"), (f"let a = {deep}\nloss = ce(,)", "E001")):
        (diagnostic,) = pytest.raises(LossSpecError, parse, text).value.diagnostics
        assert (diagnostic.code, diagnostic.span.line) == (code, 2)
    (diagnostic,) = pytest.raises(LossSpecError, parse, "let a = 1e39\nlet b = 1e40\nloss = a").value.diagnostics
    assert (diagnostic.code, diagnostic.span.line) == ("E006", 1)  # the first one only


def test_parses_on_several_threads_build_their_own_trees():
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"let a{i} = ce() + {i} * (mse() - {i})\nloss = a{i}\n" * 1 for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        specs = list(pool.map(parse, texts))
    assert specs == [parse(text) for text in texts]
    assert [spec.statements[0].value.right.left.value for spec in specs] == list(range(64))


def _revalidated(node):
    """The node as pydantic validation builds it from the same field values."""
    return type(node)(**{name: getattr(node, name) for name in node.model_fields_set})


def test_nodes_the_parser_builds_unvalidated_are_what_validation_builds():
    import random
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fuzz_specs

    rng = random.Random(1616)
    texts = [path.read_text() for path in SPECS] + [fuzz_specs.spec_text(rng) for _ in range(100)]
    texts.append('loss = f(-1, 2.5e3, "a\\\\"b", [x, (y,)], not a < b <= c and d implies e or g, k=(1))')
    checked = 0
    for text in texts:
        try:
            spec = parse(text, "a.loss")
        except LossSpecError:
            continue
        for node in spec.walk():
            for built in (node, node.span):
                validated = _revalidated(built)
                assert list(built.__dict__) == list(validated.__dict__)  # the fields, in order
                assert repr(built.__dict__) == repr(validated.__dict__)  # the values, 1 and 1.0 apart
                assert built.__pydantic_fields_set__ == validated.__pydantic_fields_set__
                assert (built.__pydantic_extra__, built.__pydantic_private__) == (None, None)
                assert built.model_dump() == validated.model_dump()
                checked += 1
    assert checked > 5000
