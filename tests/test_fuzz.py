"""Grammar-aware fuzzing, bounded and seeded: mutated specs get readable syntax hints."""

from __future__ import annotations

import random
import re
from pathlib import Path

import lossdsl
from lossdsl.parsing import _parser

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(ROOT.glob("specs/*.loss"))

# Statements of every kind, to mutate into syntax errors.
SNIPPETS = [
    "inputs:\n    pred: logits[N, C]\n    target: labels[N]\n    sex: group[N] of 2\n",
    "param lam = 0.1 in [0, 10]\n",
    "param mu = -2\n",
    'include "base.loss"\n',
    "let data = ce(weight=balanced, label_smoothing=0.05)\n",
    "subject to fairness(eo_gap, group=sex) <= 0.02 as fair using penalty(10)\n",
    "loss = data + lam * (mse() - 2) / 3 + warmup(100) * kl_normal()\n",
    "soft_bound(not (0 <= y < 1) or y > 2 and z == 1 implies w >= 0, penalty=softplus(2))\n",
    "quantile(q=[0.1, 0.5, 0.9], sample_weight=w) + fairness(group_loss(mse(pred=aux)), group=(sex, race))\n",
]
TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|\d+\.?\d*(?:e-?\d+)?|<=|>=|==|\n|\S')
VOCABULARY = [
    "let", "loss", "param", "include", "subject", "to", "as", "using", "in", "of", "inputs", "and", "or", "not",
    "implies", "(", ")", "[", "]", ",", "=", ":", "+", "-", "*", "/", "<=", "<", "==", "1", "2.5", "x", '"s"', "\n",
]
# What a hint must never show: Lark's names for terminals (uppercase, or '_'-prefixed).
LARK_NAMES = {terminal.name for terminal in _parser().terminals} | {"$END"}


def _mutants(rng: random.Random, text: str, count: int) -> list[str]:
    tokens = TOKEN.findall(text)
    found = []
    for _ in range(count):
        edited = list(tokens)
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(len(edited) + 1)
            action = rng.choice(("delete", "insert", "duplicate", "truncate"))
            if action == "delete" and where < len(edited):
                del edited[where]
            elif action == "duplicate" and where < len(edited):
                edited.insert(where, edited[where])
            elif action == "truncate":
                edited = edited[:where]
            else:
                edited.insert(where, rng.choice(VOCABULARY))
        found.append(" ".join(edited))
    return found


def test_no_syntax_hint_names_a_lark_terminal():
    """Every syntax error of a seeded corpus of mutated specs names what it expected as written
    ('of', ')', a name, end of line), never as Lark's terminal (``_OF``, ``RPAR``, ``$END``)."""
    rng = random.Random(10)
    sources = [*SNIPPETS, *(path.read_text(encoding="utf-8") for path in SPECS)]
    errors = 0
    for source in sources:
        for text in _mutants(rng, source, 150):
            try:
                lossdsl.parse(text)
            except lossdsl.LossSpecError as exc:
                for diagnostic in exc.diagnostics:
                    shown = f"{diagnostic.message} {diagnostic.hint or ''}"
                    words = set(re.findall(r"[$A-Za-z_][A-Za-z0-9_]*", shown))
                    assert not words & LARK_NAMES, f"{text!r}: {shown}"
                    errors += diagnostic.code.startswith("E00")
    assert errors > 1000  # the corpus does reach the parser's errors


def test_hints_name_keywords_as_written():
    for text, hint in [
        ("inputs:\n    g: group[N] 3\n", "expected 'of' or end of line"),
        ("param a = 1 2\n", "expected 'in' or end of line"),
        ("subject 3\n", "expected 'to'"),
        ("param a = 1 in 3\n", "expected '['"),
    ]:
        try:
            lossdsl.parse(text)
        except lossdsl.LossSpecError as exc:
            assert exc.diagnostics[0].hint == hint, text
        else:
            raise AssertionError(f"{text!r} parsed")
