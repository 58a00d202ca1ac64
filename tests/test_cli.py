"""The ``lossdsl`` command: ``check`` in every output format, exit statuses, and ``terms``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lossdsl import REGISTRY, cli, driver, files

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
N_SPECS = len(list(SPECS.glob("*.loss")))
GOOD = "let data = ce(weight=balanced)\nloss = data + 0.1 * fairness(fpr_gap, group=sex)\n"
BAD = "let data = ce()\nlet fair = fairness(fpr_gp, group=sex)\nloss = data + fair\n"
ANSI = "\x1b["


@pytest.fixture(autouse=True)
def _no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def project(tmp_path):
    """A directory with one good and one bad spec, and a file that is not a spec."""
    folder = tmp_path / "specs"
    (folder / "nested").mkdir(parents=True)
    (folder / "good.loss").write_text(GOOD, encoding="utf-8")
    (folder / "nested" / "bad.loss").write_text(BAD, encoding="utf-8")
    (folder / "notes.txt").write_text("not a spec ((", encoding="utf-8")
    return folder


# --- check: text output -----------------------------------------------------------------


def test_check_example_specs_is_clean(capsys):
    status, out, err = run(capsys, "check", SPECS)
    assert status == 0
    assert out == f"no problems ({N_SPECS} files checked)\n"
    assert err == ""


def test_check_a_single_clean_file(capsys, tmp_path):
    path = tmp_path / "one.loss"
    path.write_text(GOOD, encoding="utf-8")
    status, out, _ = run(capsys, "check", path)
    assert status == 0
    assert out == "no problems (1 file checked)\n"


def test_check_directory_with_a_bad_file(capsys, project):
    status, out, err = run(capsys, "check", project)
    bad = project / "nested" / "bad.loss"
    assert status == 1
    assert err == ""
    assert out.splitlines() == [
        f"{bad}:2:21: error[E201]: unknown statistic 'fpr_gp' for fairness()",
        " 2 | let fair = fairness(fpr_gp, group=sex)",
        "   |                     ^^^^^^ did you mean 'fpr_gap'?",
        "1 error in 1 file (2 files checked)",
    ]
    assert ANSI not in out
    assert "Traceback" not in out + err


def test_check_counts_errors_and_files(capsys, project):
    (project / "worse.loss").write_text("loss = cee() + ce() * mse()\nloss = mse()\n", encoding="utf-8")
    status, out, _ = run(capsys, "check", project)
    assert status == 1
    assert out.splitlines()[-1] == "4 errors in 2 files (3 files checked)"  # E201 + E202, E302, E103
    assert f"{project / 'worse.loss'}:1:8: error[E202]: unknown term 'cee'" in out
    assert f"{project / 'worse.loss'}:2:1: error[E103]:" in out
    assert f"{project / 'worse.loss'}:1:16: error[E302]: cannot multiply two losses" in out


def test_check_syntax_error_shows_file_position_and_caret(capsys, tmp_path):
    path = tmp_path / "syntax.loss"
    path.write_text("# comment\nloss = ce() +\n", encoding="utf-8")
    status, out, _ = run(capsys, "check", path)
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == f"{path}:2:14: error[E001]: unexpected end of input"
    assert lines[1] == " 2 | loss = ce() +"
    assert lines[2].startswith("   |              ^ expected ")
    assert lines[-1] == "1 error in 1 file (1 file checked)"


def test_check_several_paths(capsys, project):
    status, out, _ = run(capsys, "check", SPECS, project / "good.loss")
    assert status == 0
    assert out == f"no problems ({N_SPECS + 1} files checked)\n"


@pytest.mark.parametrize("command", ["check", "fmt"])
def test_a_directory_without_loss_files_is_a_usage_error(capsys, tmp_path, command):
    """Checking nothing must not pass as clean (as mypy: a message, exit 2)."""
    (tmp_path / "notes.txt").write_text("not a spec")
    (tmp_path / "nested").mkdir()
    status, out, err = run(capsys, command, tmp_path)
    assert status == 2
    assert out == ""
    assert err == f"lossdsl {command}: no .loss files in directory: {tmp_path}\n"
    # a directory with specs beside it does not make the empty one fine
    status, _, err = run(capsys, command, SPECS, tmp_path / "nested")
    assert status == 2 and err == f"lossdsl {command}: no .loss files in directory: {tmp_path / 'nested'}\n"


def test_nonexistent_path_is_a_usage_error(capsys, tmp_path):
    missing = tmp_path / "nope"
    status, out, err = run(capsys, "check", missing)
    assert status == 2
    assert out == ""
    assert err == f"lossdsl check: no such file or directory: {missing}\n"
    assert "Traceback" not in err


def test_invalid_utf8_is_a_diagnostic(capsys, tmp_path):
    path = tmp_path / "binary.loss"
    path.write_bytes(b"loss = ce()\n  \xff\xfe mse()\n")
    status, out, err = run(capsys, "check", path)
    assert status == 1
    assert out.splitlines() == [
        f"{path}:2:3: error[E011]: the file is not valid UTF-8",
        "1 error in 1 file (1 file checked)",
    ]
    assert "Traceback" not in out + err


def test_unreadable_file_is_a_diagnostic(capsys, monkeypatch, project):
    secret = project / "secret.loss"
    secret.write_text(GOOD, encoding="utf-8")
    secret.chmod(0)
    if os.access(secret, os.R_OK):  # running as root: permissions do not stop reads, so refuse it here
        real_open = files._open

        def refusing_open(file, *args, **kwargs):
            if os.fspath(file) == str(secret):
                raise PermissionError(13, "Permission denied", str(secret))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(files, "_open", refusing_open)
    try:
        status, out, err = run(capsys, "check", project)
    finally:
        secret.chmod(0o644)
    assert status == 1
    assert f"{secret}:1:1: error[E010]: cannot read the file: Permission denied" in out
    assert f"{project / 'nested' / 'bad.loss'}:2:21: error[E201]" in out
    assert out.splitlines()[-1] == "2 errors in 2 files (3 files checked)"
    assert "Traceback" not in out + err


def test_warnings_exit_zero(capsys, tmp_path):
    path = tmp_path / "unused.loss"
    path.write_text("let spare = mse()\nloss = ce()\n", encoding="utf-8")
    status, out, _ = run(capsys, "check", path)
    assert status == 0
    assert out.splitlines() == [
        f"{path}:1:1: warning[W001]: 'spare' is defined but not used in the objective",
        " 1 | let spare = mse()",
        "   | ^^^^^^^^^^^^^^^^^ it is not computed; add it to 'loss = ...' or remove it",
        "1 warning (1 file checked)",
    ]


def test_errors_and_warnings_summary(capsys, project):
    (project / "unused.loss").write_text("let spare = mse()\nloss = ce()\n", encoding="utf-8")
    status, out, _ = run(capsys, "check", project)
    assert status == 1
    assert out.splitlines()[-1] == "1 error in 1 file, 1 warning (3 files checked)"


def test_empty_file_diagnostic_names_the_file(capsys, tmp_path):
    path = tmp_path / "empty.loss"
    path.write_text("# nothing yet\n", encoding="utf-8")
    status, out, _ = run(capsys, "check", path)
    assert status == 1
    assert "error[E103]: the spec has no objective" in out
    assert out.startswith(f"{path}:1:1: error[E103]")


# --- colour --------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch, project):
    tty = _Tty()
    monkeypatch.setattr(sys, "stdout", tty)
    assert cli.main(["check", str(project)]) == 1
    assert "\x1b[31;1merror\x1b[0m" in tty.getvalue()

    monkeypatch.setenv("NO_COLOR", "1")
    plain = _Tty()
    monkeypatch.setattr(sys, "stdout", plain)
    assert cli.main(["check", str(project)]) == 1
    assert ANSI not in plain.getvalue()
    assert "error[E201]" in plain.getvalue()


def test_no_color_on_captured_output(capsys, monkeypatch, project):
    monkeypatch.setenv("NO_COLOR", "1")
    status, out, err = run(capsys, "check", project)
    assert status == 1
    assert "error[E201]" in out
    assert ANSI not in out + err


# --- check: JSON and GitHub formats ------------------------------------------------------------


def test_json_format(capsys, project):
    status, out, err = run(capsys, "check", project, "--format", "json")
    assert status == 1
    assert err == ""
    report = json.loads(out)
    assert (report["files_checked"], report["errors"], report["warnings"]) == (2, 1, 0)
    (diagnostic,) = report["diagnostics"]
    assert diagnostic == {
        "file": str(project / "nested" / "bad.loss"),
        "line": 2,
        "column": 21,
        "end_line": 2,
        "end_column": 27,
        "severity": "error",
        "code": "E201",
        "message": "unknown statistic 'fpr_gp' for fairness()",
        "hint": "did you mean 'fpr_gap'?",
    }


def test_json_format_clean_and_with_warnings(capsys, tmp_path):
    (tmp_path / "unused.loss").write_text("let spare = mse()\nloss = ce()\n", encoding="utf-8")
    status, out, _ = run(capsys, "check", tmp_path, "--format=json")
    assert status == 0
    report = json.loads(out)
    assert (report["files_checked"], report["errors"], report["warnings"]) == (1, 0, 1)
    assert [(d["code"], d["severity"], d["line"], d["column"]) for d in report["diagnostics"]] == [
        ("W001", "warning", 1, 1)
    ]

    status, out, _ = run(capsys, "check", SPECS, "--format", "json")
    assert status == 0
    assert json.loads(out) == {"files_checked": N_SPECS, "errors": 0, "warnings": 0, "diagnostics": []}


def test_github_format(capsys, project):
    (project / "unused.loss").write_text("let spare = mse()\nloss = ce()\n", encoding="utf-8")
    status, out, err = run(capsys, "check", project, "--format", "github")
    assert status == 1
    bad, unused = project / "nested" / "bad.loss", project / "unused.loss"
    assert out.splitlines() == [
        f"::error file={bad},line=2,col=21,endLine=2,endColumn=27,title=E201::"
        "unknown statistic 'fpr_gp' for fairness() (did you mean 'fpr_gap'?)",
        f"::warning file={unused},line=1,col=1,endLine=1,endColumn=18,title=W001::"
        "'spare' is defined but not used in the objective (it is not computed; add it to 'loss = ...' or remove it)",
    ]
    assert err == "1 error in 1 file, 1 warning (3 files checked)\n"


def test_github_format_escapes_percent_and_newlines():
    from lossdsl.errors import Diagnostic

    line = Diagnostic("E400", "50% off\nnext", hint="a\rb").to_github()
    assert line == "::error title=E400::50%25 off%0Anext (a%0Db)"


# --- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: COMMAND"),
        (["check"], "required: PATH"),
        (["check", "specs", "--format", "xml"], "invalid choice: 'xml'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: lossdsl")
    assert message in err


# --- terms --------------------------------------------------------------------------------------


def test_terms_lists_every_term_and_its_parameters(capsys):
    status, out, _ = run(capsys, "terms")
    assert status == 0
    names = [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")]
    assert names == list(REGISTRY)
    assert "    weight = —: class weights" in out
    assert "    group = required: the input holding integer group codes [N]" in out
    assert "    include_background = true: keep channel 0 when there are several" in out


def test_terms_markdown_is_the_reference_page(capsys):
    status, out, _ = run(capsys, "terms", "--markdown")
    assert status == 0
    assert out == (Path(__file__).resolve().parents[1] / "docs" / "terms.md").read_text(encoding="utf-8")


# --- the module entry point, for real ----------------------------------------------------------


def test_python_m_lossdsl_check_specs():
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    result = subprocess.run(
        [sys.executable, "-m", "lossdsl", "check", "specs/"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"no problems ({N_SPECS} files checked)\n"
    assert result.stderr == ""


# --- param overrides ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "status", "fragment"),
    [
        ("lam=0.5", 0, "no problems (1 file checked)"),
        ("lam=5", 1, "error[E205]: param 'lam' = 5.0 lies outside its range [0, 1]"),
        ("lamb=1", 1, ":1:1: error[E105]: unknown param 'lamb'"),
        ("eps=2", 1, "error[E205]: 'label_smoothing' of ce() is param 'eps' = 2.0"),
    ],
)
def test_check_param_overrides(capsys, tmp_path, option, status, fragment):
    path = tmp_path / "p.loss"
    path.write_text("param lam = 0.1 in [0, 1]\nparam eps = 0.1\nloss = lam * ce(label_smoothing=eps)\n")
    got, out, _ = run(capsys, "check", path, "--param", option)
    assert got == status
    assert fragment in out


def test_check_param_needs_name_equals_number(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["check", str(tmp_path), "--param", "lam=high"])
    assert info.value.code == 2
    assert "expected NAME=NUMBER" in capsys.readouterr().err


def test_check_finds_what_needs_the_params_values(capsys, tmp_path):
    """check builds the module as compile does: a param that divides to zero is E205 without --param."""
    path = tmp_path / "a.loss"
    path.write_text("param lam = 0\nloss = mse() / lam\n")
    status, out, _ = run(capsys, "check", str(path))
    assert status == 1
    assert f"{path}:2:8: error[E205]: division by zero with lam = 0" in out
    status, _, _ = run(capsys, "check", str(path), "--param", "lam=2")
    assert status == 0
