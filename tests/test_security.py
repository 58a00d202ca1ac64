"""What a spec may make lossdsl do (docs/language.md, "Security model"): bounded reads, bounded
excerpts, bounded time in every pass on hostile specs, and clear errors for Python API misuse.

Each case that could hang or exhaust memory on a broken build runs in a subprocess with a
timeout and a memory limit, so a regression fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl import cli, files
from lossdsl.errors import EXCERPT_WIDTH, MAX_MESSAGE

#: "Terminates" bound for one hostile spec: generous (the machine may be loaded); speed itself is
#: measured elsewhere.
BOUND_S = 30


def run_python(code: str, cwd: os.PathLike[str] | str, timeout: float = 4 * BOUND_S) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter under a 4 GiB address-space limit; fail on a timeout."""

    def limit_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=limit_memory if os.name == "posix" else None)
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish within {timeout} s")


def codes(exc: pytest.ExceptionInfo) -> list[str]:
    return [d.code for d in exc.value.diagnostics]


# -- bounded reads ---------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="needs FIFOs, /dev/zero")
def test_a_fifo_and_dev_zero_are_refused_without_blocking_or_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe.loss")
    (tmp_path / "top.loss").write_text('include "pipe.loss"\nloss = mse()\n')
    result = run_python("""
        import lossdsl, lossdsl.cli
        for call in (lambda: lossdsl.load("pipe.loss"), lambda: lossdsl.load("top.loss")):
            try:
                call()
            except lossdsl.LossSpecError as exc:
                print(exc.diagnostics[0].code, exc.diagnostics[0].message)
        for argv in (["check", "pipe.loss"], ["check", "/dev/zero"], ["fmt", "--check", "/dev/zero"]):
            print("exit", lossdsl.cli.main(argv))
    """, tmp_path, timeout=BOUND_S)
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[:2] == ["E010 the file is not a regular file (a FIFO)",
                         "E010 included file 'pipe.loss' is not a regular file (a FIFO)"]
    assert "pipe.loss:1:1: error[E010]: the file is not a regular file (a FIFO)" in lines
    assert lines.count("/dev/zero:1:1: error[E010]: the file is not a regular file (a device)") == 2
    assert lines.count("exit 1") == 3


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(tmp_path)
    assert (codes(info), info.value.diagnostics[0].message) == (
        ["E010"], "the file is not a regular file (a directory)")


def test_the_size_limit_is_checked_before_reading_and_configurable(tmp_path, monkeypatch):
    path = tmp_path / "big.loss"
    text = "loss = mse()\n" + "#" * files.DEFAULT_MAX_BYTES + "\n"  # over 1 MiB, but a valid spec
    path.write_text(text)
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(path)
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.code == "E013"
    assert diagnostic.message == f"the file is {len(text):,} bytes, over the limit of {files.DEFAULT_MAX_BYTES:,}"
    # Refused on its size: not one byte read.
    monkeypatch.setattr(files.os, "read", lambda *args: pytest.fail("read a file over the limit"))
    with pytest.raises(lossdsl.LossSpecError):
        lossdsl.load(path)
    monkeypatch.undo()
    pred, target = torch.randn(6), torch.randn(6)
    loss_fn = lossdsl.load(path, max_bytes=len(text))
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred, target))
    assert cli.main(["check", str(path)]) == 1
    assert cli.main(["check", "--max-bytes", str(len(text)), str(path)]) == 0
    assert cli.main(["fmt", "--check", "--max-bytes", str(len(text) - 1), str(path)]) == 1


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_the_size_limit_holds_while_reading_a_file_that_reports_size_zero():
    assert os.stat("/proc/self/maps").st_size == 0  # so only the read itself can find it too big
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load("/proc/self/maps", max_bytes=64)
    assert (codes(info), info.value.diagnostics[0].message) == (["E013"], "the file is over the limit of 64 bytes")


def test_max_bytes_takes_a_whole_number():
    for wrong in (-1, 1.5, "10", True):
        with pytest.raises(TypeError, match="max_bytes takes a whole number of bytes"):
            lossdsl.compile("mse()", max_bytes=wrong)


def test_cli_rejects_a_bad_max_bytes_or_include_root(tmp_path, capsys):
    path = tmp_path / "a.loss"
    path.write_text("loss = mse()\n")
    for argv in (["--max-bytes", "-3"], ["--max-bytes", "lots"], ["--include-root", str(tmp_path / "nowhere")]):
        with pytest.raises(SystemExit) as info:
            cli.main(["check", *argv, str(path)])
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "expected a whole number of bytes, got '-3'" in err
    assert f"not a directory: '{tmp_path / 'nowhere'}'" in err


# -- bounded excerpts ------------------------------------------------------------------


def test_an_excerpt_quotes_a_bounded_window_of_a_long_line():
    text = "loss = mse()" + " " * 200_000 + "$ " + "x" * 200_000
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(text)
    rendered = str(info.value)
    head, line, caret = rendered.split("\n")
    assert head == f"<spec>:1:{200_013}: error[E003]: unexpected character '$'"
    assert len(line) <= EXCERPT_WIDTH + 20 and line.startswith(" 1 | ...") and line.endswith("...")
    assert line.index("$") == caret.index("^")  # the caret still points at the character
    assert len(rendered) < 3 * EXCERPT_WIDTH


def test_a_short_line_is_quoted_whole():
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("loss = mse() + cee()")
    assert str(info.value).split("\n")[1:] == [
        " 1 | loss = mse() + cee()",
        "   |                ^^^ did you mean 'ce'?",
    ]


def test_a_message_quoting_a_huge_name_is_clipped():
    name = "a" * 100_000
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(f"loss = {name}")
    (diagnostic,) = info.value.diagnostics
    assert diagnostic.code == "E301"
    assert len(diagnostic.message) <= MAX_MESSAGE and diagnostic.message.endswith("...")
    assert len(str(info.value)) < 3 * MAX_MESSAGE + 3 * EXCERPT_WIDTH


def test_a_one_line_file_of_a_megabyte_is_reported_briefly(tmp_path, capsys):
    path = tmp_path / "long.loss"
    path.write_text("loss = mse() " + "+" * (files.DEFAULT_MAX_BYTES - 20) + "\n")
    assert cli.main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "error[E001]" in out and len(out) < 4 * EXCERPT_WIDTH


# -- bounded time in every pass ----------------------------------------------------------

HOSTILE = r'''
import json, os, sys, time
import lossdsl, lossdsl.cli

def chain(n, body):
    return "let a1 = mse()\n" + "".join(f"let a{i} = {body(i)}\n" for i in range(2, n)) + f"loss = a{n - 1}\n"

def nested_includes(n):
    for i in range(n):
        with open(f"inc{i}.loss", "w") as f:
            f.write((f'include "inc{i + 1}.loss"\n' if i + 1 < n else "") + f"let x{i} = mse()\n")
    return 'include "inc0.loss"\nloss = x0\n'

def fan_out(n):
    head = "".join(f"let a{i} = mse(pred=p{i}, target=t{i})\n" for i in range(n))
    pairs = "".join(f"let b{i} = a{i} + a{i + 1}\n" for i in range(n - 1))
    sums = "let s0 = b0\n" + "".join(f"let s{i} = s{i - 1} + b{i}\n" for i in range(1, n - 1))
    return head + pairs + sums + f"loss = s{n - 2}\n"

def lets_of_size(size):
    lines, total = [], 0
    while total < size:
        lines.append(f"let a{len(lines)} = mse()\n")
        total += len(lines[-1])
    return "".join(lines) + "loss = a0\n"

SPECS = {
    "chain of 1500 lets": lambda: chain(1500, lambda i: f"a{i - 1}"),
    "chain of 1500 lets, each twice": lambda: chain(1500, lambda i: f"a{i - 1} + a{i - 1}"),
    "chain of 1500 sums": lambda: chain(1500, lambda i: f"a{i - 1} + 0.5 * mae()"),
    "1000 nested includes": lambda: nested_includes(1000),
    "fan-out over 2000 inputs": lambda: fan_out(2000),
    "2000 undefined names": lambda: (
        "".join(f"let a{i} = mse()\nlet b{i} = zz{i} + a{i}\n" for i in range(2000)) + "loss = a0\n"),
    "1 MiB of lets": lambda: lets_of_size(1 << 20),
}
results = {}
for name in SPECS:
    text = SPECS[name]()
    start = time.perf_counter()
    try:
        lossdsl.compile(text, filename="spec.loss")
        outcome = "compiled"
    except lossdsl.LossSpecError as exc:
        outcome = "LossSpecError " + ",".join(sorted({d.code for d in exc.diagnostics}))
    except BaseException as exc:
        outcome = type(exc).__name__
    results[name] = (outcome, time.perf_counter() - start)
    if name.startswith("chain of 1500 lets, each"):  # explain expands each let once
        with open("chain.loss", "w") as f:
            f.write(chain(40, lambda i: f"a{i - 1} + a{i - 1}"))
        start = time.perf_counter()
        sys.stdout, saved = open(os.devnull, "w"), sys.stdout
        try:
            status = lossdsl.cli.main(["explain", "--no-trace", "chain.loss"])
        finally:
            sys.stdout = saved
        results["explain of a 40-let chain, each twice"] = (f"exit {status}", time.perf_counter() - start)
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, tuple[str, float]]:
    """Every hostile spec, compiled in one fresh interpreter: (outcome, seconds) by name."""
    result = run_python(HOSTILE, tmp_path_factory.mktemp("hostile"))
    assert result.returncode == 0, result.stderr[-2000:]
    return {name: tuple(value) for name, value in json.loads(result.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize(("name", "expected"), [
    ("chain of 1500 lets", "compiled"),  # (before: RecursionError from about 500)
    ("chain of 1500 lets, each twice", "compiled"),
    ("explain of a 40-let chain, each twice", "exit 0"),  # (before: 2^40 lines)
    ("chain of 1500 sums", "compiled"),
    ("1000 nested includes", "LossSpecError E108"),  # deeper than MAX_INCLUDE_DEPTH (before: RecursionError)
    ("fan-out over 2000 inputs", "compiled"),  # (before: inputs times terms, over 200 s)
    ("2000 undefined names", "LossSpecError E009,E301"),  # the checks stop after MAX_ERRORS
    ("1 MiB of lets", "compiled"),  # (before: quadratic in lets, over 180 s)
])
def test_hostile_specs_compile_or_fail_cleanly_in_bounded_time(hostile, name, expected):
    outcome, seconds = hostile[name]
    assert outcome == expected
    assert seconds < (2 if name == "1 MiB of lets" else 1) * BOUND_S


def test_the_checks_stop_after_max_errors():
    from lossdsl.checking import MAX_ERRORS

    text = "".join(f"let a{i} = cee()\n" for i in range(MAX_ERRORS + 50)) + "loss = mse()\n"
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(text)
    assert codes(info) == ["E202"] * MAX_ERRORS + ["E009"]
    assert info.value.diagnostics[-1].message == f"too many errors: the checks stop after {MAX_ERRORS}"


def test_many_warnings_render_in_linear_time(tmp_path, capsys):
    path = tmp_path / "unused.loss"
    path.write_text("".join(f"let a{i} = mse()\n" for i in range(5000)) + "loss = mae()\n")
    start = time.perf_counter()
    assert cli.main(["check", str(path)]) == 0
    assert time.perf_counter() - start < BOUND_S
    out = capsys.readouterr().out
    assert out.count("warning[W001]") == 5000
    assert " 4999 | let a4998 = mse()" in out


def test_rendering_diagnostics_does_not_rescan_the_source_each_time():
    source = "".join(f"let a{i} = mse()\n" for i in range(60_000))  # about 1 MiB
    spans = [lossdsl.ast.Span(line=line, column=5, end_line=line, end_column=7) for line in range(1, 60_001, 12)]
    start = time.perf_counter()
    rendered = [lossdsl.Diagnostic("W001", "unused", span, source=source).render() for span in spans]
    assert time.perf_counter() - start < 5  # (before: each split the whole source, about 20 s)
    line = spans[-1].line
    assert rendered[-1] == f"<spec>:{line}:5: error[W001]: unused\n {line} | let a{line - 1} = mse()\n       |     ^^"


def test_the_limits_are_documented():
    from lossdsl.checking import MAX_ERRORS
    from lossdsl.includes import MAX_INCLUDE_DEPTH

    text = (Path(__file__).parent.parent / "docs" / "language.md").read_text(encoding="utf-8")
    assert f"MAX_INCLUDE_DEPTH` = {MAX_INCLUDE_DEPTH} levels" in text
    assert f"DEFAULT_MAX_BYTES` = {files.DEFAULT_MAX_BYTES >> 20} MiB" in text
    assert f"EXCERPT_WIDTH` = {EXCERPT_WIDTH}" in text
    assert f"MAX_MESSAGE` = {MAX_MESSAGE:,}" in text
    assert f"MAX_ERRORS` ({MAX_ERRORS})" in text


def test_a_deep_expression_built_in_python_is_e004_not_a_recursion_error():
    from lossdsl.parsing import MAX_NESTING

    expr = lossdsl.T.mse()
    for _ in range(MAX_NESTING - 1):
        expr = expr + lossdsl.T.mae()
    assert len(lossdsl.compile(expr.spec).plan.terms) == MAX_NESTING  # as deep as the parser allows
    for _ in range(2000):
        expr = expr + lossdsl.T.mae()
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(expr.spec)
    assert codes(info) == ["E004"]


def test_a_let_chain_keeps_its_meaning():
    """The iterative plan builder orders lets as the recursive one did: each after those it uses."""
    text = "let a = mse()\nlet b = a + 0.5 * mae()\nlet c = b + a\nloss = c + b\n"
    loss_fn = lossdsl.compile(text)
    assert [let.name for let in loss_fn.plan.lets] == ["a", "b", "c"]
    pred, target = torch.randn(7), torch.randn(7)
    mse, mae = F.mse_loss(pred, target), F.l1_loss(pred, target)
    b = mse + 0.5 * mae
    torch.testing.assert_close(loss_fn(pred, target), (b + mse) + b)


# -- Python API misuse -------------------------------------------------------------------


@pytest.mark.parametrize(("call", "message"), [
    (lambda: lossdsl.compile(123), r"lossdsl.compile takes spec text \(a str\) or a lossdsl.Spec, got int$"),
    (lambda: lossdsl.compile(b"mse()"), r"lossdsl.compile takes spec text \(a str\) or a lossdsl.Spec, got bytes$"),
    (lambda: lossdsl.compile(None), r"lossdsl.compile takes spec text \(a str\) or a lossdsl.Spec, got NoneType$"),
    (lambda: lossdsl.load(None), r"lossdsl.load takes a path \(a str or os.PathLike\), got NoneType"),
    (lambda: lossdsl.load(3), r"lossdsl.load takes a path \(a str or os.PathLike\), got int"),
    (lambda: lossdsl.compile("param lam = 1\nloss = lam * mse()", params=[("lam", 2)]),
     "params takes a mapping of param names to numbers"),
    (lambda: lossdsl.compile("param lam = 1\nloss = lam * mse()", params="lam=2"),
     "params takes a mapping of param names to numbers"),
    (lambda: lossdsl.compile("param lam = 1\nloss = lam * mse()", params={1: 2.0}),
     r"params takes param names as str keys, got 1 \(int\)"),
    (lambda: lossdsl.compile("mse()", filename=3), "filename takes a str, got int"),
    (lambda: lossdsl.compile("mse()", include_root=3), r"include_root takes a path \(a str or os.PathLike\), got int"),
    (lambda: lossdsl.check("mse()"), r"lossdsl.check takes a lossdsl.Spec \(from lossdsl.parse\), got str"),
])
def test_python_api_misuse_is_a_clear_type_error(call, message):
    with pytest.raises(TypeError, match=f"^{message}"):
        call()


def test_an_include_path_with_a_lone_surrogate_is_a_diagnostic_that_prints(tmp_path):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile('include "\udcff"\nloss = mse()', include_root=tmp_path)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.span.line) == ("E010", 1)
    assert diagnostic.message == r"the include path '\udcff' is not valid text (it holds a lone surrogate)"
    str(info.value).encode("utf-8")  # printable: the surrogate is escaped


def test_a_diagnostic_quoting_a_lone_surrogate_prints():
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("loss = \udcff")
    assert str(info.value).encode("utf-8").decode("utf-8").startswith(
        r"<spec>:1:8: error[E003]: unexpected character '\udcff'")
