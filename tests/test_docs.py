"""The docs agree with the code: docs/terms.md with the registry, docs/language.md's error codes with the checks."""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import tomllib
from pathlib import Path

import pytest
import torch

import lossdsl
import lossdsl.checking
import lossdsl.driver
from lossdsl import cli
from lossdsl.parsing import MAX_NESTING
from lossdsl.reference import shown_default, terms_markdown
from lossdsl.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "language.md"
TERMS_DOC = ROOT / "docs" / "terms.md"
CODE_PATTERN = re.compile(r'"([EW]\d{3})"')


def _section(text: str, title: str) -> str:
    """The body of the level-2 section ``## title``, up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(title)}[ \t]*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/language.md has no '## {title}' section"
    return match.group(1)


def _term_sections() -> dict[str, str]:
    parts = re.split(r"^### +(\S+)[ \t]*$", TERMS_DOC.read_text(encoding="utf-8"), flags=re.M)
    return {name: re.split(r"^## ", body, flags=re.M)[0] for name, body in zip(parts[1::2], parts[2::2])}


def _table(body: str, header: tuple[str, ...]) -> list[list[str]]:
    """Rows (cells stripped) of the first markdown table in ``body`` whose header is ``header``."""
    lines = body.splitlines()
    for index, line in enumerate(lines):
        if _cells(line) == list(header):
            rows = []
            for row in lines[index + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                rows.append(_cells(row))
            return rows
    raise AssertionError(f"no table with header {' | '.join(header)}")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if not line.startswith("|"):
        return []
    return [cell.strip() for cell in line.strip("|").split("|")]


def _unquote(cell: str) -> str:
    return cell.strip().strip("`").strip()


# -- terms ---------------------------------------------------------------------------


def test_terms_reference_is_generated_from_the_registry():
    assert TERMS_DOC.read_text(encoding="utf-8") == terms_markdown(), (
        "docs/terms.md is stale: run `lossdsl terms --markdown > docs/terms.md`"
    )


def test_every_registered_term_has_a_section_and_nothing_else_does():
    assert set(_term_sections()) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_term_section_matches_its_parameter_model(name):
    body = _term_sections().get(name)
    assert body is not None, f"no '### {name}' section under '## Terms'"
    term = REGISTRY[name]
    assert term.doc in body, f"the one-line doc of {name} is missing from its section"
    rows = _table(body, ("name", "default", "description"))
    documented = {_unquote(row[0]): row for row in rows}
    fields = term.params.model_fields
    assert list(documented) == list(fields), f"{name}: documented parameters differ from the model's"
    for field_name, field in fields.items():
        _, default, description = documented[field_name]
        assert _unquote(default) == shown_default(field), f"{name}.{field_name}: default"
        if field.description:
            assert field.description in description, f"{name}.{field_name}: description"


def test_term_examples_compile():
    for name, body in _term_sections().items():
        examples = re.findall(r"^Example: `([^`]+)`", body, re.M)
        assert examples, f"'### {name}' has no 'Example: `...`' line"
        for example in examples:
            plan = lossdsl.compile(example).plan
            assert name in {t.term.name for t in plan.terms}, example


# -- error codes ---------------------------------------------------------------------


def _codes_in_source() -> set[str]:
    codes: set[str] = set()
    for path in (ROOT / "lossdsl").rglob("*.py"):
        codes |= set(CODE_PATTERN.findall(path.read_text(encoding="utf-8")))
    return codes


def _error_rows() -> list[tuple[str, str]]:
    rows = _table(_section(DOC.read_text(encoding="utf-8"), "Error codes"), ("code", "meaning", "example"))
    result = []
    for row in rows:
        assert len(row) == 3, f"malformed error-code row: {row}"
        example = re.fullmatch(r"`([^`]*)`", row[2])
        assert example, f"{row[0]}: the example must be one `code span`"
        result.append((_unquote(row[0]), example.group(1)))
    return result


def test_error_table_lists_exactly_the_codes_in_the_source():
    documented = {code for code, _ in _error_rows()}
    source = _codes_in_source()
    assert source - documented == set(), "codes emitted by lossdsl but not documented"
    assert documented - source == set(), "codes documented but never emitted by lossdsl"


# The Python examples of the error table, spelled out: the docs are never passed to eval.
PYTHON_EXAMPLES = {
    'lossdsl.load("missing.loss")': lambda: lossdsl.load("missing.loss"),
    'lossdsl.load("latin1.loss")': lambda: lossdsl.load("latin1.loss"),
    'lossdsl.LossSpecError("bad tensor")': lambda: _raise(lossdsl.LossSpecError("bad tensor")),
    'lossdsl.compile("ce()")(torch.randn(4))': lambda: lossdsl.compile("ce()")(torch.randn(4)),
    'lossdsl.compile("l2()")()': lambda: lossdsl.compile("l2()")(),
    'lossdsl.compile("elementwise()")(pred=torch.randn(3))': lambda: _custom_elementwise(),
    'lossdsl.driver.plan_for("let data = mse()", library=True)': (
        lambda: lossdsl.driver.plan_for("let data = mse()", library=True)
    ),
    'lossdsl.compile("param lam = 1\\nloss = lam * ce()", params={"lamb": 2})': (
        lambda: lossdsl.compile("param lam = 1\nloss = lam * ce()", params={"lamb": 2})
    ),
    'lossdsl.compile("mse()")(torch.randn(4), torch.randn(3))': (
        lambda: lossdsl.compile("mse()")(torch.randn(4), torch.randn(3))
    ),
    'lossdsl.compile("mse()")(torch.tensor([float("nan")]), torch.zeros(1))': lambda: _checking_finite(
        lossdsl.compile("mse()"))(torch.tensor([float("nan")]), torch.zeros(1)),
    'lossdsl.compile("\\n".join(["let a = cee()"] * 101))': lambda: lossdsl.compile("\n".join(["let a = cee()"] * 101)),
    'lossdsl.load("cycle.loss")': lambda: lossdsl.load("cycle.loss"),
    'lossdsl.load("cycle.loss", max_bytes=4)': lambda: lossdsl.load("cycle.loss", max_bytes=4),
    'lossdsl.load("deep.loss")': lambda: _deep_includes(),
}


def _checking_finite(loss_fn):
    loss_fn.check_finite = True
    return loss_fn


def _deep_includes() -> None:
    """deep.loss, then 40 files each including the next: deeper than MAX_INCLUDE_DEPTH."""
    for i in range(40):
        Path(f"deep{i}.loss").write_text(f'include "deep{i + 1}.loss"\n' if i < 39 else "let x = mse()\n")
    Path("deep.loss").write_text('include "deep0.loss"\nloss = x\n')
    lossdsl.load("deep.loss")


def _custom_elementwise() -> None:
    lossdsl.term("elementwise")(lambda pred: pred.abs())
    try:
        lossdsl.compile("elementwise()")(pred=torch.randn(3))
    finally:
        del REGISTRY["elementwise"]


def _raise(error: Exception) -> None:
    raise error


def _codes_of(example: str) -> set[str]:
    """The diagnostic codes an example produces: a spec for lossdsl.compile, or a listed Python call."""
    try:
        if example.startswith("lossdsl."):
            assert example in PYTHON_EXAMPLES, f"add `{example}` to PYTHON_EXAMPLES"
            result = PYTHON_EXAMPLES[example]()
            return {d.code for d in result.warnings} if result is not None else set()
        plan = lossdsl.compile(example.replace("\\n", "\n")).plan
    except lossdsl.LossSpecError as exc:
        return {d.code for d in exc.diagnostics}
    return {d.code for d in plan.warnings}


@pytest.mark.parametrize("code,example", _error_rows())
def test_error_example_produces_its_code(code, example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # for the load() examples: missing.loss is absent, latin1.loss is not UTF-8
    (tmp_path / "latin1.loss").write_bytes("loss = ce()  # café\n".encode("latin-1"))
    (tmp_path / "cycle.loss").write_text('include "cycle.loss"\n')
    assert code in _codes_of(example), f"`{example}` does not produce {code}"


def test_nesting_limit_is_documented():
    text = DOC.read_text(encoding="utf-8")
    assert f"MAX_NESTING` = {MAX_NESTING}" in text


# -- guides ----------------------------------------------------------------------------

GUIDES = [ROOT / "docs" / "fairness.md", ROOT / "docs" / "constraints.md"]


@pytest.mark.parametrize("path", GUIDES, ids=lambda p: p.name)
def test_every_spec_in_the_guides_checks(path):
    blocks = re.findall(r"^```loss\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)
    assert blocks, f"{path.name} shows no spec"
    for block in blocks:
        lossdsl.compile(block)  # checks it; raises LossSpecError with the diagnostic


# -- README and the CI snippet: the commands and outputs shown are the real ones -----------

README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"


def _blocks(body: str, language: str = "") -> list[str]:
    """The fenced code blocks of ``body`` opened with ```language (plain ``` blocks for "")."""
    return re.findall(rf"^```{re.escape(language)}\n(.*?)^```", body, re.M | re.S)


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_commands_are_the_ones_ci_runs():
    """.ci/run runs the README's test command as written, then the main job's steps in the same
    environment (whose install, with the dev extra, covers the main job's)."""
    main_job, tests = (block.strip() for block in _blocks(_section(_readme(), "Two commands"), "bash"))
    ci = [line for line in CI_RUN.read_text(encoding="utf-8").splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    assert ci[0] == tests
    main_steps, test_steps = main_job.split(" && "), tests.split(" && ")
    assert main_steps[:2] == test_steps[:2]  # the venv, activated
    assert main_steps[2] == test_steps[2].replace('-e ".[dev]"', "-e .")
    assert ci[1:] == [" && ".join(main_steps[3:])] == ["lossdsl check specs/ && python examples/quickstart.py"]


def test_readme_check_sample_is_the_real_output(tmp_path, monkeypatch, capsys):
    """The `$ lossdsl check` sample, run on a copy of specs/ with the typo the README describes."""
    body = _section(_readme(), "Check specs in CI")
    where, typo, right = re.search(r"typo in `([^`]+)` \(`(\w+)` for `(\w+)`\)", body).groups()
    (sample,) = [block for block in _blocks(body) if block.startswith("$ lossdsl ")]
    command, *expected = sample.rstrip("\n").split("\n")
    shutil.copytree(ROOT / "specs", tmp_path / "specs")
    spec = tmp_path / where
    text = spec.read_text(encoding="utf-8")
    assert text.count(right) == 1
    spec.write_text(text.replace(right, typo), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_COLOR", raising=False)
    argv = shlex.split(command.removeprefix("$ "))
    assert argv[0] == "lossdsl"
    status = cli.main(argv[1:])
    assert capsys.readouterr().out.splitlines() == expected
    assert status == 1  # "1 on errors"


def _credit_inputs(n: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"pred": torch.randn(n, generator=generator), "target": torch.randint(0, 2, (n,), generator=generator),
            "sex": torch.randint(0, 2, (n,), generator=generator), "y": torch.randn(n, generator=generator)}


def test_readme_python_sample_shows_the_real_inputs_and_terms(monkeypatch):
    monkeypatch.chdir(ROOT)
    (block,) = _blocks(_section(_readme(), "Use it from Python"), "python")
    loss_fn = lossdsl.load("specs/credit.loss")
    loss_fn(**_credit_inputs())
    shown_inputs = re.search(r"^loss_fn\.inputs +# (.*)$", block, re.M).group(1)
    assert ast.literal_eval(shown_inputs) == loss_fn.inputs
    shown_terms = re.search(r"^loss_fn\.last_terms +# (\{.*\}), detached$", block, re.M).group(1)
    assert list(ast.literal_eval(shown_terms)) == list(loss_fn.last_terms)


def test_readme_error_samples_are_the_real_messages(monkeypatch):
    monkeypatch.chdir(ROOT)
    shown = re.findall(r"`(error\[E40\d\]: [^`]*)`", _section(_readme(), "Use it from Python"))
    loss_fn = lossdsl.load("specs/credit.loss")
    inputs = _credit_inputs()
    calls = {
        "E401": {k: v for k, v in inputs.items() if k != "target"},  # "without target"
        "E402": {**inputs, "target": inputs["target"][:, None].expand(8, 2)},  # "a target of shape (N, 2)"
    }
    real = []
    for code, given in calls.items():
        with pytest.raises(lossdsl.LossSpecError) as info:
            loss_fn(**given)
        assert info.value.diagnostics[0].code == code
        real.append(str(info.value))
    assert shown == real


def test_readme_specs_compile():
    text = _readme()
    card = _blocks(text)[0]
    one_screen = _blocks(_section(text, "The language in one screen"))[0]
    for spec in (card, one_screen):
        assert lossdsl.compile(spec).inputs == ("pred", "target", "sex", "y")


def test_ci_snippet_installs_lossdsl_from_its_checkout_and_its_commands_pass(monkeypatch, capsys):
    """lossdsl is not on PyPI: the GitHub Actions snippet checks its repository out and installs it
    from there, and the lossdsl commands it runs pass on this repository's specs."""
    workflow = next(block for block in _blocks(DOC.read_text(encoding="utf-8"), "yaml") if "jobs:" in block)
    checkout = re.search(r"repository: [^,}]+, path: ([^\s,}]+)", workflow).group(1)
    install, *commands = re.findall(r"^\s*- run: (.*)$", workflow, re.M)
    assert install.endswith(f"pip install ./{checkout}")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["name"] == "lossdsl" and "lossdsl" in project["scripts"]  # what ./<checkout> installs
    monkeypatch.chdir(ROOT)
    assert commands and all(command.startswith("lossdsl ") for command in commands)
    for command in commands:
        assert cli.main(shlex.split(command)[1:]) == 0, command
    capsys.readouterr()


@pytest.mark.parametrize("path", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_no_doc_installs_lossdsl_from_an_index(path):
    """`pip install lossdsl` would fetch whatever an index serves under that name."""
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"pip install(?: [^\s`&|;]+)* lossdsl(?:[\s`=<>\[]|$)", text, re.M)
