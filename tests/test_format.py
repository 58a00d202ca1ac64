"""Formatting and serialisation: ``parse(format(spec)) == spec`` and JSON round trips, over generated ASTs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import lossdsl
from lossdsl import ast
from lossdsl.errors import LossSpecError
from lossdsl.parsing import parse

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").glob("*.loss"))
KEYWORDS = frozenset({
    "let", "loss", "param", "include", "subject", "inputs", "to", "as", "using", "in", "of",
    "and", "or", "not", "implies",
})
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- a strategy for whole specs --------------------------------------------------

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True).filter(lambda s: s not in KEYWORDS)

numbers = st.one_of(
    st.integers(min_value=0, max_value=10**30),
    st.floats(min_value=0.0, max_value=ast.LARGEST_NUMBER).filter(lambda x: math.copysign(1.0, x) > 0),
).map(lambda v: ast.Number(value=v))

# Strings hold anything but a line break: the language has no escape for one.
strings = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\n\r"), max_size=12
).map(lambda s: ast.String(value=s))

leaves = st.one_of(numbers, identifiers.map(lambda s: ast.Name(id=s)), strings)


def _extend(children: st.SearchStrategy) -> st.SearchStrategy:
    operands = st.lists(children, min_size=2, max_size=4)
    return st.one_of(
        st.builds(ast.BinOp, op=st.sampled_from(["+", "-", "*", "/"]), left=children, right=children),
        operands.flatmap(
            lambda items: st.lists(
                st.sampled_from(["<", "<=", ">", ">=", "=="]), min_size=len(items) - 1, max_size=len(items) - 1
            ).map(lambda ops: ast.Compare(operands=tuple(items), ops=tuple(ops)))
        ),
        st.builds(
            ast.Call,
            name=identifiers,
            args=st.lists(children, max_size=3).map(tuple),
            keywords=st.lists(
                st.builds(ast.Keyword, name=identifiers, value=children), max_size=3
            ).map(tuple),
        ),
        st.lists(children, max_size=3).map(lambda items: ast.List(items=tuple(items))),
        st.lists(children, min_size=1, max_size=3).map(lambda items: ast.Tuple(items=tuple(items))),
        children.map(lambda e: ast.Neg(operand=e)),
        st.builds(ast.Logic, op=st.sampled_from(["and", "or", "implies"]), left=children, right=children),
        children.map(lambda e: ast.Not(operand=e)),
    )


expressions = st.recursive(leaves, _extend, max_leaves=25)

statements = st.one_of(
    st.builds(ast.Let, name=identifiers, value=expressions),
    st.builds(ast.LossStmt, value=expressions, bare=st.booleans()),
)

specs = st.lists(statements, max_size=5).map(lambda items: ast.Spec(statements=tuple(items)))


# --- format round trip -----------------------------------------------------------


@SETTINGS
@given(specs)
def test_generated_spec_survives_format_and_parse(spec):
    text = lossdsl.format(spec)
    assert parse(text) == spec
    # one line per statement
    if spec.statements:
        assert text.endswith("\n")
        assert text.count("\n") == len(spec.statements)
    else:
        assert text == ""


@SETTINGS
@given(specs)
def test_format_is_idempotent(spec):
    text = lossdsl.format(spec)
    assert lossdsl.format(parse(text)) == text


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_spec_round_trips_through_format(path):
    spec = parse(path.read_text(encoding="utf-8"))
    text = lossdsl.format(spec)
    assert parse(text) == spec
    assert lossdsl.format(parse(text)) == text
    assert "#" not in text  # comments are not part of the AST


def test_format_canonical_text_of_the_card():
    spec = parse("ce(weight=balanced)+0.1*fairness(fpr_gap,group=sex)+soft_bound(y<=100)")
    assert lossdsl.format(spec) == "ce(weight=balanced) + 0.1 * fairness(fpr_gap, group=sex) + soft_bound(y <= 100)\n"


def test_format_of_a_multi_line_spec():
    text = "let data = ce(\n  weight=balanced)  # w\n\nloss = data +\n   0.5*mse()\n"
    assert lossdsl.format(parse(text)) == "let data = ce(weight=balanced)\nloss = data + 0.5 * mse()\n"


@pytest.mark.parametrize(
    ("node", "text"),
    [
        (ast.BinOp(op="-", left=ast.Name(id="a"), right=ast.BinOp(op="-", left=ast.Name(id="b"), right=ast.Name(id="c"))),
         "a - (b - c)"),
        (ast.BinOp(op="-", left=ast.BinOp(op="-", left=ast.Name(id="a"), right=ast.Name(id="b")), right=ast.Name(id="c")),
         "a - b - c"),
        (ast.BinOp(op="*", left=ast.BinOp(op="+", left=ast.Name(id="a"), right=ast.Name(id="b")), right=ast.Name(id="c")),
         "(a + b) * c"),
        (ast.BinOp(op="/", left=ast.Name(id="a"), right=ast.BinOp(op="*", left=ast.Name(id="b"), right=ast.Name(id="c"))),
         "a / (b * c)"),
        (ast.Neg(operand=ast.BinOp(op="+", left=ast.Name(id="a"), right=ast.Name(id="b"))), "-(a + b)"),
        (ast.Neg(operand=ast.Neg(operand=ast.Number(value=1))), "--1"),
        (ast.BinOp(op="*", left=ast.Neg(operand=ast.Name(id="a")), right=ast.Name(id="b")), "-a * b"),
        (ast.Compare(operands=(ast.Number(value=0), ast.Name(id="y"), ast.Number(value=1.5)), ops=("<=", "<")),
         "0 <= y < 1.5"),
        (ast.Compare(operands=(ast.Compare(operands=(ast.Name(id="a"), ast.Name(id="b")), ops=("<",)), ast.Name(id="c")),
                     ops=("==",)),
         "(a < b) == c"),
        (ast.BinOp(op="+", left=ast.Compare(operands=(ast.Name(id="a"), ast.Name(id="b")), ops=("<",)),
                   right=ast.Name(id="c")),
         "(a < b) + c"),
        (ast.Tuple(items=(ast.Name(id="a"),)), "(a,)"),
        (ast.Tuple(items=(ast.Name(id="a"), ast.Number(value=2))), "(a, 2)"),
        (ast.List(items=()), "[]"),
        (ast.String(value='a "quoted" \\ word'), r'"a \"quoted\" \\ word"'),
        (ast.Number(value=1e-05), "1e-05"),
        (ast.Number(value=2.0), "2.0"),
        (ast.Call(name="f", args=(ast.Number(value=1),),
                  keywords=(ast.Keyword(name="k", value=ast.List(items=(ast.Number(value=2),))),)),
         "f(1, k=[2])"),
    ],
)
def test_format_expression_parenthesises_only_where_needed(node, text):
    spec = ast.Spec(statements=(ast.LossStmt(value=node, bare=True),))
    assert lossdsl.format(spec) == text + "\n"
    assert parse(text).statements[0].value == node


def test_format_of_design_statements_round_trips():
    text = (
        "inputs:\n"
        "    pred: logits[N, C]\n"
        "    group: int[N] of 5\n"
        "param lam = 0.1 in [0.0, 10.0]\n"
        "param mu = -2.0\n"
        'include "base.loss"\n'
        "subject to fairness(fpr_gap, group=sex) <= 0.02 as fair using penalty(10)\n"
        "loss = ce()\n"
    )
    spec = parse(text)
    assert lossdsl.format(spec) == text
    assert parse(lossdsl.format(spec)) == spec


def test_negative_zero_number_round_trips_or_is_rejected():
    try:
        number = ast.Number(value=-0.0)
    except ValidationError:
        return  # rejecting it, like any negative Number, would also be fine
    spec = ast.Spec(statements=(ast.LossStmt(value=number, bare=True),))
    assert parse(lossdsl.format(spec)) == spec


def test_string_with_line_break_round_trips_or_is_rejected():
    try:
        node = ast.String(value="a\nb")
    except ValidationError:
        return
    spec = ast.Spec(statements=(ast.LossStmt(value=node, bare=True),))
    assert parse(lossdsl.format(spec)) == spec


# --- equality ignores spans --------------------------------------------------------


def test_equality_and_hash_ignore_spans():
    a = parse("loss = ce()\n").statements[0]
    b = parse("\n\n   loss   =   ce( )").statements[0]
    assert a.span != b.span
    assert a == b
    assert hash(a) == hash(b)
    assert a == ast.LossStmt(value=ast.Call(name="ce"))
    assert a != ast.LossStmt(value=ast.Call(name="ce"), bare=True)
    assert ast.Name(id="x") != ast.String(value="x")


# --- JSON ------------------------------------------------------------------------------


def _keys(value):
    """Every dictionary key anywhere in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


@SETTINGS
@given(specs)
def test_generated_spec_json_round_trip(spec):
    text = spec.model_dump_json()
    assert ast.Spec.model_validate_json(text) == spec
    assert "span" not in set(_keys(json.loads(text)))


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_example_spec_json_round_trip_without_spans(path):
    spec = parse(path.read_text(encoding="utf-8"), str(path))
    assert spec.span is not None and spec.statements[0].span is not None
    text = spec.model_dump_json()
    data = json.loads(text)
    assert "span" not in set(_keys(data))
    assert data["kind"] == "spec"
    assert [s["kind"] for s in data["statements"]] == [s.kind for s in spec.statements]
    again = ast.Spec.model_validate_json(text)
    assert again == spec
    assert again.span is None
    assert ast.Spec.model_validate(spec.model_dump()) == spec


def test_json_shape_of_a_small_spec():
    data = json.loads(parse("let a = -ce(weight=[1, 2.5])\nloss = a").model_dump_json())
    assert data == {
        "kind": "spec",
        "statements": [
            {
                "kind": "let",
                "name": "a",
                "value": {
                    "kind": "neg",
                    "operand": {
                        "kind": "call",
                        "name": "ce",
                        "args": [],
                        "keywords": [
                            {
                                "kind": "keyword",
                                "name": "weight",
                                "value": {
                                    "kind": "list",
                                    "items": [{"kind": "number", "value": 1}, {"kind": "number", "value": 2.5}],
                                },
                            }
                        ],
                    },
                },
            },
            {"kind": "loss", "value": {"kind": "name", "id": "a"}, "bare": False},
        ],
    }


def test_json_schema_has_no_span_property_anywhere():
    schema = ast.Spec.model_json_schema()

    def properties(value):
        if isinstance(value, dict):
            if isinstance(value.get("properties"), dict):
                yield value["properties"]
            for item in value.values():
                yield from properties(item)
        elif isinstance(value, list):
            for item in value:
                yield from properties(item)

    found = list(properties(schema))
    assert len(found) >= 10  # Spec, the statements and the expressions each have properties
    assert all("span" not in props for props in found)
    assert "Span" not in schema.get("$defs", {})
    assert "kind" in schema["properties"] and "statements" in schema["properties"]
    json.dumps(schema)  # serialisable


def test_json_rejects_a_negative_number_and_an_empty_tuple():
    with pytest.raises(ValidationError):
        ast.Spec.model_validate_json('{"statements": [{"kind": "loss", "value": {"kind": "number", "value": -1}}]}')
    with pytest.raises(ValidationError):
        ast.Spec.model_validate_json('{"statements": [{"kind": "loss", "value": {"kind": "tuple", "items": []}}]}')
    with pytest.raises(ValidationError):
        ast.Spec.model_validate_json('{"statements": [{"kind": "loss", "value": {"kind": "nope"}}]}')


# --- frozen and strict nodes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("node", "field", "value"),
    [
        (ast.Number(value=1), "value", 2),
        (ast.Name(id="x"), "id", "y"),
        (ast.BinOp(op="+", left=ast.Name(id="a"), right=ast.Name(id="b")), "op", "-"),
        (ast.Let(name="a", value=ast.Call(name="ce")), "name", "b"),
        (ast.Spec(), "statements", ()),
        (ast.Span(line=1, column=1, end_line=1, end_column=2), "line", 3),
    ],
)
def test_nodes_are_frozen(node, field, value):
    before = getattr(node, field)
    with pytest.raises(ValidationError) as info:
        setattr(node, field, value)
    assert info.value.errors()[0]["type"] == "frozen_instance"
    assert getattr(node, field) == before


def test_parsed_nodes_are_frozen():
    spec = parse("loss = ce()")
    with pytest.raises(ValidationError):
        spec.statements[0].value = ast.Call(name="mse")
    assert spec.statements[0].value == ast.Call(name="ce")


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (ast.Number, {"value": 1, "unit": "kg"}),
        (ast.Name, {"id": "x", "type": "float"}),
        (ast.Call, {"name": "ce", "kwargs": {}}),
        (ast.Let, {"name": "a", "value": {"kind": "name", "id": "b"}, "const": True}),
        (ast.Spec, {"statements": [], "version": 2}),
        (ast.Span, {"line": 1, "column": 1, "end_line": 1, "end_column": 2, "offset": 0}),
    ],
)
def test_nodes_reject_extra_fields(cls, fields):
    with pytest.raises(ValidationError) as info:
        cls(**fields)
    assert [e["type"] for e in info.value.errors()] == ["extra_forbidden"]


def test_nodes_validate_their_fields():
    with pytest.raises(ValidationError):
        ast.Number(value=-1)
    with pytest.raises(ValidationError):
        ast.Number(value=float("inf"))
    with pytest.raises(ValidationError):
        ast.BinOp(op="%", left=ast.Name(id="a"), right=ast.Name(id="b"))
    with pytest.raises(ValidationError):
        ast.Tuple(items=())
    assert ast.Tuple(items=(ast.Name(id="a"),)).items == (ast.Name(id="a"),)


# --- lossdsl fmt: comments around statements that hold strings ------------------------

from lossdsl.formatting import format_source  # noqa: E402

# Strings biased towards what confuses a hand-written comment lexer: escaped quotes, backslashes
# and '#'. '<' is left out so that the comments' markers below occur nowhere else.
tricky_strings = st.text(
    alphabet=st.one_of(st.sampled_from(['"', "\\", "#", " ", "a"]), st.characters(exclude_categories=("Cs",))).filter(
        lambda c: c not in "\n\r<"
    ),
    max_size=8,
).map(lambda s: ast.String(value=s))
string_calls = st.builds(
    ast.Call,
    name=st.sampled_from(["mse", "include_weights", "f"]),
    args=st.lists(tricky_strings, max_size=2).map(tuple),
    keywords=st.lists(st.builds(ast.Keyword, name=identifiers, value=tricky_strings), max_size=2).map(tuple),
)
comment_bodies = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)).filter(lambda c: c not in "\n\r<>"), max_size=10
)


@st.composite
def commented_sources(draw) -> tuple[str, list[str]]:
    """A spec's canonical lines with comment lines, trailing comments and blank lines between them,
    and the comments in order (each marked ``#<i>``, unique)."""
    statements = draw(st.lists(st.one_of(
        st.builds(ast.LossStmt, value=string_calls, bare=st.booleans()),
        st.builds(ast.Let, name=identifiers, value=string_calls),
        st.builds(ast.Include, path=tricky_strings.map(lambda s: s.value)),
        st.builds(ast.Let, name=identifiers, value=expressions),
    ), max_size=5))
    lines: list[str] = []
    comments: list[str] = []

    def comment() -> str:
        comments.append(f"#<{len(comments)}>{draw(comment_bodies)}".rstrip())
        return comments[-1]

    for statement in statements:
        if draw(st.booleans()):
            lines.append(comment())
        if draw(st.booleans()):
            lines.append("")
        (text,) = lossdsl.formatting.format_statement(statement)
        lines.append(text + (f"  {comment()}" if draw(st.booleans()) else ""))
    if draw(st.booleans()):
        lines.append(comment())
    return "\n".join(lines) + "\n", comments


@SETTINGS
@given(commented_sources())
def test_fmt_keeps_every_comment_and_the_ast_and_is_idempotent(source):
    text, comments = source
    once = format_source(text)
    assert parse(once) == parse(text)
    assert format_source(once) == once
    assert [c for c in comments if once.count(c) == 1] == comments
    assert once.count("#<") == len(comments)  # no comment made up from a string


def test_fmt_of_an_escaped_quote_before_a_hash_adds_no_comment():
    """The hand-written comment scanner ended the string at the escaped quote and took '#")' for a
    comment, appending it again on every run."""
    text = 'loss = mse(pred="a\\"#")\n'
    assert format_source(text) == text
    text = 'let a = f("\\\\", "#")  # real\n'  # an escaped backslash, then a string holding '#'
    assert format_source(text) == text
