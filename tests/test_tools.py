"""lossdsl fmt (canonical, comment-keeping, idempotent) and lossdsl schema."""

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings

import lossdsl
from lossdsl import cli
from lossdsl.formatting import format_source

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted([*ROOT.glob("specs/**/*.loss"), *ROOT.glob("examples/**/*.loss")])

MESSY = """# header comment

# second paragraph
inputs:   # the tensors
    pred:   logits[N]   # scores
    # the labels
    target: binary[N]
param lam = 0.1 in [0, 10]    # weight


let data = ce(weight=balanced,   # balanced
              label_smoothing=0.05)
loss = data +
       lam * fairness(fpr_gap, group=sex) +  # fair
       soft_bound(y <= 100)   # bound
# trailing
"""

TIDY = """# header comment

# second paragraph
inputs:  # the tensors
    pred: logits[N]  # scores
    # the labels
    target: binary[N]
param lam = 0.1 in [0, 10]  # weight

# balanced
let data = ce(weight=balanced, label_smoothing=0.05)
# fair
loss = data + lam * fairness(fpr_gap, group=sex) + soft_bound(y <= 100)  # bound
# trailing
"""


def test_fmt_keeps_comments_and_canonicalises():
    assert format_source(MESSY) == TIDY
    assert lossdsl.parse(TIDY) == lossdsl.parse(MESSY)


def test_fmt_keeps_strings_with_hashes():
    assert format_source('include "a#b.loss"   # real comment\nloss = mse()\n') == (
        'include "a#b.loss"  # real comment\nloss = mse()\n'
    )


@pytest.mark.parametrize("path", SPEC_FILES, ids=[p.name for p in SPEC_FILES])
def test_fmt_is_idempotent_and_keeps_the_ast_of_every_shipped_spec(path):
    text = path.read_text(encoding="utf-8")
    once = format_source(text)
    assert format_source(once) == once
    assert lossdsl.parse(once) == lossdsl.parse(text)
    assert once == text, f"{path} is not formatted: run `lossdsl fmt {path}`"


@settings(max_examples=60, deadline=None)
@given(__import__("hypothesis").strategies.sampled_from([MESSY, TIDY, "ce()", "  ce( )  # x\n\n\n", "# only\n"]))
def test_fmt_idempotent_on_variants(text):
    once = format_source(text)
    assert format_source(once) == once


def test_fmt_cli_check_diff_and_write(tmp_path, capsys):
    path = tmp_path / "a.loss"
    path.write_text(MESSY)
    assert cli.main(["fmt", "--check", str(path)]) == 1
    assert f"would reformat {path}" in capsys.readouterr().out
    assert cli.main(["fmt", "--diff", str(path)]) == 1
    assert "-loss = data +" in capsys.readouterr().out
    assert path.read_text() == MESSY  # --check and --diff write nothing
    assert cli.main(["fmt", str(path)]) == 0
    assert path.read_text() == TIDY
    assert cli.main(["fmt", "--check", str(path)]) == 0


def test_fmt_reports_syntax_errors_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.loss"
    path.write_text("loss = ce(\n")
    assert cli.main(["fmt", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:1:10: error[E002]" in out and "Traceback" not in out
    assert path.read_text() == "loss = ce(\n"


def test_schema_validates_every_shipped_spec(capsys):
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == lossdsl.Spec.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in SPEC_FILES:
        document = json.loads(lossdsl.parse(path.read_text(encoding="utf-8")).model_dump_json())
        jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "spec", "statements": [{"kind": "let", "name": "a"}]}, schema)


def test_pre_commit_hooks_run_the_commands_on_loss_files():
    text = (ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    assert "- id: lossdsl-check\n" in text and "  entry: lossdsl check\n" in text
    assert "- id: lossdsl-fmt\n" in text and "  entry: lossdsl fmt --check\n" in text
    assert text.count("  files: \\.loss$\n") == 2
