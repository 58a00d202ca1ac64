"""Grammar-aware fuzzing, bounded and seeded.

- Mutated specs (tokens deleted, inserted, repeated, cut off) get syntax hints in the language's
  words, never Lark's terminal names.
- Generated specs (tests/fuzz_specs.py) compile or raise LossSpecError; each compiled one, called on
  synthetic inputs that fit it, is finite with finite gradients; format and ``lossdsl fmt``
  round-trip. ``python tests/fuzz_specs.py 20000 SEED`` runs the same properties long, offline.
"""

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


# -- generated specs: compile, call, format ------------------------------------------------

import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

from lossdsl.explain import explain  # noqa: E402
from lossdsl.formatting import format_source  # noqa: E402
from lossdsl.synthetic import synthetic_inputs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_specs import spec_text  # noqa: E402
from test_straight_line import assert_same_behaviour  # noqa: E402

#: Specs per run of the suite (a few seconds); ``python tests/fuzz_specs.py 20000`` runs more.
SUITE_SPECS = int(os.environ.get("LOSSDSL_FUZZ_SPECS", "250"))
SUITE_SEED = int(os.environ.get("LOSSDSL_FUZZ_SEED", "10"))


@dataclasses.dataclass
class Failure:
    property: str
    problem: str
    text: str


def _call_is_finite(module: lossdsl.LossModule) -> str | None:
    """None when the compiled spec, called twice in training mode on synthetic inputs that fit it,
    gives a finite loss and finite gradients; else what went wrong. Raises LossSpecError when the
    inputs do not fit (l1 without a model, layouts that do not agree)."""
    module.bind(torch.nn.Linear(3, 2))  # the model l1 and l2 penalise
    inputs = synthetic_inputs(module.plan)
    learned = [t.requires_grad_() for t in inputs.values() if t.is_floating_point()]
    for call in (1, 2):  # the second after a step: schedules and multipliers have moved
        value = module(**inputs)
        if not torch.isfinite(value).all():
            return f"call {call}: the loss is {value.tolist()}"
        value = value.sum()  # a per-sample loss (reduction=none) through its sum
        if learned and value.requires_grad:
            grads = torch.autograd.grad(value, learned, allow_unused=True)
            bad = [name for name, g in zip(inputs, grads) if g is not None and not torch.isfinite(g).all()]
            if bad:
                return f"call {call}: non-finite gradient for {', '.join(bad)}"
    return None


def _format_round_trips(text: str) -> str | None:
    spec = lossdsl.parse(text)
    canonical = lossdsl.format(spec)
    if lossdsl.parse(canonical) != spec:
        return f"parse(format(spec)) != spec:\n{canonical}"
    if lossdsl.format(lossdsl.parse(canonical)) != canonical:
        return "format is not idempotent"
    kept = format_source(text)
    if lossdsl.parse(kept) != spec:
        return f"lossdsl fmt changed the spec:\n{kept}"
    if format_source(kept) != kept:
        return f"lossdsl fmt is not idempotent:\n{kept}"
    return None


def run_properties(count: int, seed: int, stop_at_first: bool = True) -> tuple[dict[str, int], list[Failure]]:
    """Generate ``count`` specs from ``seed`` and check the four properties on each."""
    rng = random.Random(seed)
    summary = {"specs": 0, "parsed": 0, "compiled": 0, "called": 0, "did not fit": 0, "as the reference": 0}
    failures: list[Failure] = []
    for _ in range(count):
        text = spec_text(rng)
        summary["specs"] += 1
        try:  # (c) format round-trips whatever parses
            problem = _format_round_trips(text)
            summary["parsed"] += 1
        except lossdsl.LossSpecError:
            problem = None
        except Exception:  # noqa: BLE001 - any other exception is the finding
            problem = "parse raised " + traceback.format_exc(limit=-3)
        if problem:
            failures.append(Failure("format round trip", problem, text))
        try:  # (a) compile succeeds or raises LossSpecError
            module = lossdsl.compile(text)
        except lossdsl.LossSpecError:
            module = None
        except Exception:  # noqa: BLE001
            failures.append(Failure("compile", traceback.format_exc(limit=-3), text))
            module = None
        if module is not None:  # (b) finite value and gradients on inputs that fit
            summary["compiled"] += 1
            try:  # and lossdsl explain describes it (its trace is left to test_verify: slow)
                explain(module.plan, trace=False)
            except Exception:  # noqa: BLE001
                failures.append(Failure("explain", traceback.format_exc(limit=-3), text))
            try:
                problem = _call_is_finite(module)
                summary["called"] += 1
            except lossdsl.LossSpecError:
                summary["did not fit"] += 1
                problem = None
            except Exception:  # noqa: BLE001
                problem = "the call raised " + traceback.format_exc(limit=-3)
            if problem:
                failures.append(Failure("finite call", problem, text))
            try:  # (d) the straight-line forward behaves as the reference path
                assert_same_behaviour(text, calls=2)
                summary["as the reference"] += 1
            except lossdsl.LossSpecError:
                pass
            except Exception:  # noqa: BLE001
                failures.append(Failure("straight-line forward", traceback.format_exc(limit=-3), text))
        if failures and stop_at_first:
            break
    return summary, failures


def test_generated_specs_compile_or_diagnose_call_finite_and_format_round_trip():
    """A seeded corpus of generated specs: (a) compile succeeds or raises LossSpecError, never
    another exception; (b) each compiled spec, called on synthetic inputs that fit it, is finite with
    finite gradients; (c) format and lossdsl fmt keep the spec and are idempotent; (d) its straight-line
    forward (lossdsl.codegen) gives the reference path's values, gradients, last_terms and state."""
    summary, failures = run_properties(SUITE_SPECS, SUITE_SEED)
    assert not failures, f"{failures[0].property}: {failures[0].problem}\n--- spec:\n{failures[0].text}"
    # the corpus reaches every stage: most specs parse, many compile and are called
    assert summary["parsed"] > 0.8 * summary["specs"], summary
    assert summary["called"] > 0.3 * summary["specs"], summary
