"""Text to AST. This module only parses: names, types and terms are checked in ``checks``.

The grammar is ``grammar/loss.lark`` (shipped as ``lossdsl.grammar``), an LALR
grammar built once. A small post-lexer handles line continuation. The pydantic AST
is built while the parser reduces (no Lark tree is built and walked afterwards, and
each node's span is worked out only from the tokens and nodes of its own rule): the
parser's loop is not recursive, so deeply nested input gives a diagnostic, never a
``RecursionError``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import ast
from .errors import Diagnostic, LossSpecError

#: Deepest expression nesting accepted (each operator, call or list is one level).
MAX_NESTING = 100

# A newline after one of these continues the statement on the next line.
_CONTINUES_AFTER = frozenset(
    {"PLUS", "MINUS", "STAR", "SLASH", "COMPARE_OP", "AND", "OR", "NOT", "IMPLIES", "COMMA", "EQUAL"}
)
_OPENERS = {"LPAR": "RPAR", "LSQB": "RSQB"}
# The logic operators are reserved words. The contextual lexer reads one as a NAME where no
# operator can follow (`let and = 1`, `soft_bound(and y <= 1)`); the post-lexer retypes it.
_RESERVED = {word: word.upper() for word in ast.RESERVED_WORDS}
_RESERVED_USE = {
    "AND": "joins two conditions inside soft_bound, as in soft_bound(a <= 1 and b >= 0)",
    "OR": "joins two conditions inside soft_bound, as in soft_bound(a <= 0 or a >= 1)",
    "NOT": "negates a condition inside soft_bound, as in soft_bound(not a > 1)",
    "IMPLIES": "joins two conditions inside soft_bound, as in soft_bound(a > 0 implies b >= 1)",
}
# An operator that needs an operand after it.
_NEEDS_OPERAND = _CONTINUES_AFTER - {"COMMA", "EQUAL"}
_CLOSERS = frozenset(_OPENERS.values())

_TOKEN_NAMES = {
    "_NL": "end of line",
    "$END": "end of input",
    "NAME": "a name",
    "INT": "a number",
    "FLOAT": "a number",
    "STRING": "a string",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "EQUAL": "'='",
    "COLON": "':'",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "COMPARE_OP": "a comparison",
    "AND": "'and'",
    "OR": "'or'",
    "NOT": "'not'",
    "IMPLIES": "'implies'",
}


def _expected_terminals(exc: UnexpectedInput) -> set[str]:
    """The terminals that can follow where the parse stopped. The parser's own list holds every
    lookahead of the state, some of which only fit elsewhere (LALR merges them: ')' after
    ``param a = 1``); asking the parser which it accepts gives the ones that fit here."""
    expected = set(getattr(exc, "expected", ()))
    interactive = getattr(exc, "interactive_parser", None)
    if interactive is not None:
        try:
            expected = set(interactive.accepts())
        except UnexpectedInput:  # pragma: no cover - the parser's state is valid up to the token
            pass
    if "_NL" in expected:  # 'end of line' covers the end of the input too
        expected.discard("$END")
    return expected


def _expected_name(terminal: str) -> str:
    """How a hint names a terminal the parser expected: a keyword or symbol as it is written
    (``_OF`` is 'of'), the others by what they are; never Lark's own name for it."""
    if terminal in _TOKEN_NAMES:
        return _TOKEN_NAMES[terminal]
    try:
        pattern = _parser().get_terminal(terminal).pattern
    except KeyError:  # a name Lark made up that no terminal has
        return "more input"
    if pattern.type == "str":
        return f"'{pattern.value}'"
    return terminal.strip("_").lower().replace("_", " ")


class _LineJoiner:
    """Post-lexer: drops newlines that do not end a statement, retypes reserved words.

    A newline is dropped inside brackets, after a binary operator, comma or '=',
    after another newline, and at the start of the text. (It cannot be held back
    to drop a trailing one: the contextual lexer reads the parser's state, so
    the grammar accepts one trailing newline instead.)
    """

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def open_brackets(self) -> list[Token]:
        return getattr(self._local, "open_brackets", [])

    @property
    def passed(self) -> list[Token]:
        """The last two tokens handed to the parser (for the diagnostic of a syntax error)."""
        return getattr(self._local, "passed", [])

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        open_brackets: list[Token] = []
        passed: list[Token] = []
        self._local.open_brackets, self._local.passed = open_brackets, passed
        previous: str | None = None
        for token in stream:
            if token.type == "_NL" and (open_brackets or previous in _CONTINUES_AFTER or previous in (None, "_NL")):
                continue
            if token.type == "NAME" and token.value in _RESERVED:
                token = Token.new_borrow_pos(_RESERVED[token.value], token.value, token)
            passed[:] = [*passed[-1:], token]
            if token.type in _OPENERS:
                open_brackets.append(token)
            elif token.type in _CLOSERS and open_brackets and _OPENERS[open_brackets[-1].type] == token.type:
                open_brackets.pop()
            previous = token.type
            yield token
        if open_brackets:
            bracket = open_brackets[-1]
            raise _UnclosedBracket(bracket)


class _UnclosedBracket(Exception):
    def __init__(self, token: Token):
        self.token = token


_LINE_JOINER = _LineJoiner()


# The comments the lexer hands to its callback while ``parse_with_comments`` runs, per thread (the
# parser is built once and shared); None otherwise, and the callback keeps nothing.
_COMMENTS = threading.local()


def _keep_comment(token: Token) -> Token:
    found = getattr(_COMMENTS, "found", None)
    if found is not None:
        found.append(token)
    return token


def _grammar_cache() -> str | bool:
    """Where lark keeps the analysed grammar between processes (building its LALR tables is most of
    the parser's start-up): a file in the user's own cache folder; lark checks that it holds this
    grammar, these options and this lark (by a hash) and rebuilds it when not. Not lark's default, a
    file in the shared temporary folder: the cache is a pickle, so it is read only from a folder (and
    a file) that the user owns and nobody else may write. False (no cache) otherwise, or when there
    is no such folder to make: ``$XDG_CACHE_HOME`` when it is an absolute path (the XDG rule), else
    ``~/.cache``, made only inside a home folder that exists."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home) or not os.path.isdir(home):
            return False
        base = os.path.join(home, ".cache")
    folder = os.path.join(base, "lossdsl")
    path = os.path.join(folder, f"grammar-py{sys.version_info[0]}{sys.version_info[1]}.lark-cache")
    try:
        if not os.path.isdir(base):
            os.mkdir(base, 0o700)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not _private(os.stat(folder)) or (os.path.lexists(path) and not _private(os.lstat(path))):
            return False  # someone else's, or writable by others: read no pickle from it
    except OSError:
        return False
    return path


def _private(status: os.stat_result) -> bool:
    """Owned by this user (where there are users) and writable by nobody else."""
    owned = not hasattr(os, "getuid") or status.st_uid == os.getuid()
    return owned and not status.st_mode & 0o022


@functools.cache
def _parser() -> Lark:
    parser = Lark.open_from_package(
        "lossdsl.grammar",
        "loss.lark",
        parser="lalr",
        # The spans are worked out by _Reduce, from each rule's own tokens and nodes, as Lark's
        # propagate_positions does; Lark's own pass costs as much again as the rest of the parse.
        propagate_positions=False,
        maybe_placeholders=True,
        postlex=_LINE_JOINER,
        lexer_callbacks={"COMMENT": _keep_comment},
        cache=_grammar_cache(),
    )
    _build_while_reducing(parser)
    return parser


# The _AstBuilder of the parse running on this thread (the parser, and so its callbacks, are shared).
_BUILDING = threading.local()


class _Extent:
    """Where a reduced rule lies in the text, brackets that were dropped around it included (Lark's
    "container" positions): the first token's start to the last token's end. ``_AstBuilder._span``
    reads it as it read Lark's ``meta``."""

    __slots__ = ("line", "column", "end_line", "end_column")

    def __init__(self, line: int, column: int, end_line: int, end_column: int):
        self.line, self.column, self.end_line, self.end_column = line, column, end_line, end_column


class _Reduce:
    """The parser's callback for one grammar rule: its children as Lark's tree builder would hand
    them to a rule (anonymous tokens dropped, None for a missing optional, ``_statement`` spliced,
    a ``?rule`` of one child replaced by it), then the builder's method of the rule's name with the
    rule's extent. Every result's extent is kept (by id, for this parse) for the rule that takes it."""

    def __init__(self, name: str, wrappers: list[Any]):
        self.name = name
        shaped: Any = self._call
        for wrapper in wrappers:  # Lark's own child filter and single-child expansion, innermost first
            shaped = wrapper(shaped)
        self._shaped = shaped

    def _call(self, children: list[Any]) -> Any:
        builder: _AstBuilder = _BUILDING.builder
        method = getattr(builder, self.name, None)
        if method is None:  # a rule the builder has no method for (``_statement``): spliced by its parent
            return Tree(self.name, children)
        if builder.fatal is not None:  # the parse can only fail now: build nothing more
            return _NOT_BUILT
        return method(builder.extent, children)

    def __call__(self, children: list[Any]) -> Any:
        builder: _AstBuilder = _BUILDING.builder
        extents = builder.extents
        first = last = None
        for child in children:
            first = child if isinstance(child, Token) else extents.get(id(child)) if child is not None else None
            if first is not None:
                break
        for child in reversed(children):
            last = child if isinstance(child, Token) else extents.get(id(child)) if child is not None else None
            if last is not None:
                break
        extent = None
        if first is not None and last is not None:
            extent = _Extent(first.line, first.column, last.end_line, last.end_column)
        builder.extent = extent
        result = self._shaped(children)
        if not isinstance(result, Token):  # a token passed up keeps its own place
            extents[id(result)] = extent
        return result


#: What a rule reduces to once a node could not be built (``_AstBuilder.fatal``).
_NOT_BUILT = object()


def _build_while_reducing(parser: Lark) -> None:
    """Replace the parser's tree-building callbacks with ``_Reduce`` ones: the AST is built as the
    parser reduces, and no Lark tree is built and walked afterwards."""
    callbacks = parser.parser.parser.parser.callbacks
    for rule, wrappers in parser._parse_tree_builder.rule_builders:
        name = rule.alias or rule.options.template_source or rule.origin.name
        only = rule.expansion[0] if len(rule.expansion) == 1 else None
        if rule.options.expand1 and not rule.alias and only is not None and not only.is_term and not only.name.startswith("_"):
            # ``?sum: product``: the one child itself, in the same place. Most reductions are these
            # (each number or name passes up through every level of the expression rules).
            callbacks[rule] = _first_child
        else:
            callbacks[rule] = _Reduce(str(name), wrappers)


def _first_child(children: list[Any]) -> Any:
    return children[0]


def parse_with_comments(text: str, filename: str | None = None) -> tuple[ast.Spec, dict[int, str]]:
    """``parse``, and line number -> the comment on it (``# ...``), as the parser's own lexer read
    them (a ``#`` inside a string is no comment): for ``lossdsl fmt``, which keeps them."""
    found: list[Token] = []
    _COMMENTS.found = found
    try:
        spec = parse(text, filename)
    finally:
        _COMMENTS.found = None
    return spec, {token.line: str(token).rstrip() for token in found}


def parse(text: str, filename: str | None = None) -> ast.Spec:
    """Parse spec text into a ``Spec``; raise ``LossSpecError`` on a syntax error."""
    parser = _parser()
    builder = _AstBuilder(filename, text)
    _BUILDING.builder = builder
    try:
        statements = parser.parse(text)
    except _UnclosedBracket as exc:
        token = exc.token
        diagnostic = Diagnostic(
            "E002",
            f"'{token.value}' was never closed",
            _token_span(token, filename),
            hint="add the matching bracket",
            source=text,
        )
        raise LossSpecError([diagnostic]) from None
    except UnexpectedInput as exc:
        raise LossSpecError([_syntax_diagnostic(exc, text, filename)]) from None
    finally:
        _BUILDING.builder = None
    if builder.fatal is not None:  # as the first node built wrong, after any syntax error
        raise LossSpecError([builder.fatal])
    if builder.diagnostics:
        raise LossSpecError(builder.diagnostics)
    return ast.Spec(statements=tuple(statements), span=_whole_text_span(text, filename))


def _syntax_diagnostic(exc: UnexpectedInput, text: str, filename: str | None) -> Diagnostic:
    line, column = exc.line, exc.column
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if 0 <= exc.pos_in_stream < len(text) else "?"
        span = ast.Span(line=line, column=column, end_line=line, end_column=column + 1, filename=filename)
        if char == '"':
            return Diagnostic("E003", "unterminated string", span, hint="close it with '\"' on the same line", source=text)
        return Diagnostic("E003", f"unexpected character {char!r}", span, source=text)
    token = getattr(exc, "token", None)
    expected = sorted({_expected_name(name) for name in _expected_terminals(exc)})
    hint = f"expected {_or_list(expected)}" if expected else None
    if isinstance(exc, UnexpectedEOF) or (token is not None and token.type in ("$END", "_NL")):
        what = "end of input" if (token is None or token.type == "$END") else "end of line"
        span = _end_span(text, filename) if what == "end of input" else _token_span(token, filename)
        return Diagnostic("E001", f"unexpected {what}", span, hint=hint, source=text)
    assert isinstance(exc, UnexpectedToken)
    span = _token_span(token, filename)
    open_brackets = _LINE_JOINER.open_brackets
    # The token before the unexpected one: the contextual lexer raises before the post-lexer
    # sees the token, the parser after.
    before = [t for t in _LINE_JOINER.passed if (t.line, t.column) != (token.line, token.column)]
    operator = before[-1] if before and before[-1].type in _NEEDS_OPERAND else None
    if token.type in _RESERVED_USE:
        hint = f"'{token.value}' is a reserved word: it {_RESERVED_USE[token.type]}"
    elif open_brackets and (
        (token.type in _CLOSERS and token.type != _OPENERS[open_brackets[-1].type])
        or open_brackets[-1].line < token.line
    ):  # a mismatched closer, or a statement that ran on past its line
        bracket = open_brackets[-1]
        hint = f"the '{bracket.value}' at {bracket.line}:{bracket.column} is not closed"
    elif operator is not None and operator.type in _RESERVED_USE and token.type in ("EQUAL", "COLON"):
        hint = f"'{operator.value}' is a reserved word, not a name"
    elif operator is not None:
        hint = f"'{operator.value}' needs an operand after it"
    return Diagnostic("E001", f"unexpected {_describe(token)}", span, hint=hint, source=text)


def _describe(token: Token) -> str:
    if token.type == "NAME":
        return f"name '{token.value}'"
    if token.type in ("INT", "FLOAT"):
        return f"number {token.value}"
    return f"'{token.value}'"


def _or_list(items: list[str]) -> str:
    if len(items) > 6:
        return ", ".join(items[:6]) + ", ..."
    if len(items) <= 2:
        return " or ".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]


def _token_span(token: Token, filename: str | None) -> ast.Span:
    end_line = token.end_line or token.line
    end_column = token.end_column or token.column + 1
    if token.type == "_NL":  # point at the line end, not the next line
        end_line, end_column = token.line, token.column + 1
    return ast.Span(line=token.line, column=token.column, end_line=end_line, end_column=end_column, filename=filename)


def _end_span(text: str, filename: str | None) -> ast.Span:
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    column = len(stripped) - (stripped.rfind("\n") + 1) + 1
    return ast.Span(line=line, column=column, end_line=line, end_column=column + 1, filename=filename)


def _whole_text_span(text: str, filename: str | None) -> ast.Span:
    end = _end_span(text, filename)
    return ast.Span(line=1, column=1, end_line=end.line, end_column=end.column, filename=filename)


_ESCAPE = re.compile(r"\\(.)")


# Per node class: its fields in order, and the defaults of those that have one.
_FIELDS: dict[type, tuple[tuple[str, ...], dict[str, Any]]] = {}
_new_object, _set_attribute = object.__new__, object.__setattr__


def _construct(cls: type[Any], fields: dict[str, Any]) -> Any:
    """``cls(**fields)`` without pydantic validating fields the grammar and the builder already
    guarantee (an expression's operator, a number's range, a string without a line break, node
    children that are nodes): the model as validation makes it (fields in order, defaults filled,
    the fields given marked set), as ``model_construct`` does at a third of its cost. A ``Spec``
    built in Python is validated as ever; tests/test_parser.py checks that validating what the
    parser built changes nothing."""
    shape = _FIELDS.get(cls)
    if shape is None:
        shape = _FIELDS[cls] = (tuple(cls.model_fields),
                                {name: field.default for name, field in cls.model_fields.items() if not field.is_required()})
    names, defaults = shape
    node = _new_object(cls)
    _set_attribute(node, "__dict__", {name: fields[name] if name in fields else defaults[name] for name in names})
    _set_attribute(node, "__pydantic_fields_set__", set(fields))
    _set_attribute(node, "__pydantic_extra__", None)
    _set_attribute(node, "__pydantic_private__", None)
    return node


class _InputsHeader:
    def __init__(self, span: ast.Span):
        self.span = span


class _AstBuilder:
    """AST nodes from the rules the parser reduces (bottom-up, by ``_Reduce``), one method a rule.

    A problem that makes a node impossible (E004, E006) is kept as ``fatal`` and the parse goes on,
    so a syntax error later in the text is still the one reported, as when the tree was built first."""

    def __init__(self, filename: str | None, text: str):
        self.filename = filename
        self.text = text
        self.diagnostics: list[Diagnostic] = []
        self.fatal: Diagnostic | None = None
        self.extent: _Extent | None = None  # of the rule being reduced
        self.extents: dict[int, _Extent | None] = {}
        self._depth: dict[int, int] = {}

    def _fail(self, diagnostic: Diagnostic) -> None:
        if self.fatal is None:
            self.fatal = diagnostic

    # -- helpers --
    def _span(self, meta: Any) -> ast.Span:
        return _construct(ast.Span, {"line": meta.line, "column": meta.column, "end_line": meta.end_line,
                                     "end_column": meta.end_column, "filename": self.filename})

    def _node(self, cls: type[ast.Node], meta: Any, children: tuple[Any, ...] = (), **fields: Any) -> Any:
        depth = 1 + max((self._depth.get(id(child), 0) for child in children), default=0)
        span = self._span(meta)
        if depth > MAX_NESTING:
            diagnostic = Diagnostic(
                "E004",
                f"expression nested too deeply (the limit is {MAX_NESTING} levels)",
                span,
                hint="split it with 'let' statements",
                source=self.text,
            )
            self._fail(diagnostic)
        fields["span"] = span
        node = _construct(cls, fields)
        self._depth[id(node)] = depth
        return node

    # -- statements --
    def start(self, meta: Any, children: list[Any]) -> list[Any]:
        statements: list[Any] = []
        block: list[ast.InputDecl] | None = None
        header: _InputsHeader | None = None
        for child in children:
            if child is None:
                continue
            if isinstance(child, _InputsHeader):
                if block is not None:
                    statements.append(ast.Inputs(decls=tuple(block), span=header.span))  # type: ignore[union-attr]
                header, block = child, []
            elif isinstance(child, ast.InputDecl):
                if block is None:
                    self.diagnostics.append(
                        Diagnostic(
                            "E005",
                            f"input declaration '{child.name}' outside an 'inputs:' block",
                            child.span,
                            hint="put it under a line 'inputs:'",
                            source=self.text,
                        )
                    )
                else:
                    block.append(child)
            else:
                if block is not None:
                    statements.append(ast.Inputs(decls=tuple(block), span=header.span))  # type: ignore[union-attr]
                    header, block = None, None
                statements.append(child)
        if block is not None:
            statements.append(ast.Inputs(decls=tuple(block), span=header.span))  # type: ignore[union-attr]
        return statements

    def let_stmt(self, meta: Any, children: list[Any]) -> ast.Let:
        name, value = children
        return ast.Let(name=str(name), value=value, span=self._span(meta))

    def loss_stmt(self, meta: Any, children: list[Any]) -> ast.LossStmt:
        return ast.LossStmt(value=children[0], span=self._span(meta))

    def bare_stmt(self, meta: Any, children: list[Any]) -> ast.LossStmt:
        return ast.LossStmt(value=children[0], bare=True, span=self._span(meta))

    def param_stmt(self, meta: Any, children: list[Any]) -> ast.Param:
        name, value, low, high = children
        return ast.Param(name=str(name), value=value, low=low, high=high, span=self._span(meta))

    def signed_number(self, meta: Any, children: list[Any]) -> float:
        *sign, number = children
        return -number.value if sign else number.value

    def include_stmt(self, meta: Any, children: list[Any]) -> ast.Include:
        return ast.Include(path=_unquote(children[0]), span=self._span(meta))

    def subject_stmt(self, meta: Any, children: list[Any]) -> ast.SubjectTo:
        constraint, name, method = children
        return ast.SubjectTo(
            constraint=constraint, name=str(name) if name else None, method=method, span=self._span(meta)
        )

    def inputs_header(self, meta: Any, children: list[Any]) -> _InputsHeader:
        return _InputsHeader(self._span(meta))

    def input_decl(self, meta: Any, children: list[Any]) -> ast.InputDecl:
        name, kind, shape, groups = children
        return ast.InputDecl(
            name=str(name),
            type=str(kind),
            shape=shape,
            groups=int(groups) if groups is not None else None,
            span=self._span(meta),
        )

    def shape(self, meta: Any, children: list[Any]) -> tuple[str | int, ...]:
        return tuple(int(d) if d.type == "INT" else str(d) for d in children if d is not None)

    # -- expressions --
    def comparison(self, meta: Any, children: list[Any]) -> ast.Compare:
        operands, ops = tuple(children[0::2]), tuple(str(op) for op in children[1::2])
        return self._node(ast.Compare, meta, operands, operands=operands, ops=ops)

    def logic(self, meta: Any, children: list[Any]) -> ast.Logic:
        left, op, right = children
        return self._node(ast.Logic, meta, (left, right), op=str(op), left=left, right=right)

    def logic_not(self, meta: Any, children: list[Any]) -> ast.Not:
        operand = children[-1]
        return self._node(ast.Not, meta, (operand,), operand=operand)

    def binop(self, meta: Any, children: list[Any]) -> ast.BinOp:
        left, op, right = children
        return self._node(ast.BinOp, meta, (left, right), op=str(op), left=left, right=right)

    def neg(self, meta: Any, children: list[Any]) -> ast.Neg:
        operand = children[-1]
        return self._node(ast.Neg, meta, (operand,), operand=operand)

    def number(self, meta: Any, children: list[Any]) -> ast.Number:
        token = children[0]
        try:
            value: int | float = int(token) if token.type == "INT" else float(token)
        except ValueError:  # more digits than Python converts
            value = math.inf
        if not value <= ast.LARGEST_NUMBER:  # inf too
            diagnostic = Diagnostic("E006", "number too large", self._span(meta), source=self.text,
                                    hint=f"numbers go up to {ast.LARGEST_NUMBER!r} (float32's largest)")
            self._fail(diagnostic)
            value = 0  # never seen: the parse raises the diagnostic
        return self._node(ast.Number, meta, value=value)

    def name(self, meta: Any, children: list[Any]) -> ast.Name:
        return self._node(ast.Name, meta, id=str(children[0]))

    def string(self, meta: Any, children: list[Any]) -> ast.String:
        return self._node(ast.String, meta, value=_unquote(children[0]))

    def tuple(self, meta: Any, children: list[Any]) -> ast.Tuple:
        items = tuple(c for c in children if c is not None)
        return self._node(ast.Tuple, meta, items, items=items)

    def list(self, meta: Any, children: list[Any]) -> ast.List:
        items = tuple(c for c in children if c is not None)
        return self._node(ast.List, meta, items, items=items)

    def keyword(self, meta: Any, children: list[Any]) -> ast.Keyword:
        name, value = children
        return self._node(ast.Keyword, meta, (value,), name=str(name), value=value)

    def call(self, meta: Any, children: list[Any]) -> ast.Call:
        name, *arguments = children
        args: list[Any] = []
        keywords: list[ast.Keyword] = []
        for argument in arguments:
            if argument is None:
                continue
            if isinstance(argument, ast.Keyword):
                keywords.append(argument)
            elif keywords:
                self.diagnostics.append(
                    Diagnostic(
                        "E001",
                        "positional argument after a keyword argument",
                        argument.span,
                        hint="put positional arguments first",
                        source=self.text,
                    )
                )
            else:
                args.append(argument)
        children_nodes = (*args, *keywords)
        return self._node(ast.Call, meta, children_nodes, name=str(name), args=tuple(args), keywords=tuple(keywords))


def _unquote(token: Token) -> str:
    return _ESCAPE.sub(r"\1", str(token)[1:-1])
