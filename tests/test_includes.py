"""include "other.loss": params, lets and inputs from other files, cycles, missing files, diagnostics."""

import pytest
import torch
import torch.nn.functional as F

import lossdsl
import lossdsl.cli


@pytest.fixture
def project(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.loss").write_text(
        "param lam = 0.1 in [0, 1]\nlet data = mse()\nloss = data  # not included\n"
    )
    (tmp_path / "shared" / "inputs.loss").write_text("inputs:\n    pred: real[N]\n    target: real[N]\n")
    return tmp_path


def test_included_params_and_lets_are_in_scope(project):
    path = project / "exp.loss"
    path.write_text('include "shared/base.loss"\nloss = data + lam * mae()\n')
    loss_fn = lossdsl.load(path, params={"lam": 0.5})
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred, target) + 0.5 * F.l1_loss(pred, target))
    assert loss_fn.params == {"lam": 0.5}
    assert list(loss_fn.last_terms) == ["data", "mae", "total"]


def test_nested_includes_and_included_declarations(project):
    (project / "shared" / "both.loss").write_text('include "inputs.loss"\ninclude "base.loss"\n')
    path = project / "exp.loss"
    path.write_text('include "shared/both.loss"\nloss = data\n')
    loss_fn = lossdsl.load(path)
    with pytest.raises(lossdsl.LossSpecError, match=r"input 'target' \(declared real\[N\] at .*inputs.loss:3\)"):
        loss_fn(torch.randn(3), torch.randn(4))


def test_an_include_takes_effect_at_its_line(project):
    path = project / "exp.loss"
    path.write_text('let early = data\ninclude "shared/base.loss"\nloss = early\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(path)
    assert (info.value.diagnostics[0].code, info.value.diagnostics[0].span.line) == ("E104", 1)


def test_missing_include_is_reported_at_the_include_line(project):
    path = project / "exp.loss"
    path.write_text('loss = mse()\ninclude "shared/nope.loss"\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(path)
    diagnostic = info.value.diagnostics[0]
    assert (diagnostic.code, diagnostic.span.filename, diagnostic.span.line) == ("E010", str(path), 2)
    assert "nope.loss" in diagnostic.message


def test_include_cycle(project):
    (project / "a.loss").write_text('include "b.loss"\nloss = mse()\n')
    (project / "b.loss").write_text('include "a.loss"\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(project / "a.loss")
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == "E107"
    assert "a.loss -> b.loss -> a.loss" in diagnostic.message


def test_diagnostics_inside_an_included_file_name_it(project):
    broken = project / "shared" / "broken.loss"
    broken.write_text("let data = mse(\n")
    (project / "exp.loss").write_text('include "shared/broken.loss"\nloss = mse()\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(project / "exp.loss")
    assert str(info.value).startswith(f"{broken}:1:15: error[E002]")
    assert " 1 | let data = mse(" in str(info.value)


def test_a_name_defined_in_both_files_points_at_both(project):
    path = project / "exp.loss"
    path.write_text('include "shared/base.loss"\nlet data = mae()\nloss = data\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(path)
    diagnostic = info.value.diagnostics[0]
    assert (diagnostic.code, diagnostic.span.line) == ("E102", 2)
    assert diagnostic.hint.endswith("base.loss:2")


def test_edited_included_files_are_read_again(project):
    path = project / "exp.loss"
    path.write_text('include "shared/base.loss"\nloss = lam * data\n')
    assert lossdsl.load(path).params == {"lam": 0.1}
    (project / "shared" / "base.loss").write_text("param lam = 0.7\nlet data = mse()\n")
    assert lossdsl.load(path).params == {"lam": 0.7}


def test_check_command_follows_includes(project, capsys):
    (project / "exp.loss").write_text('include "shared/base.loss"\nloss = data + lam * mae()\n')
    assert lossdsl.cli.main(["check", str(project)]) == 0
    out = capsys.readouterr().out
    assert "inputs.loss:1:1: warning[W004]: no objective: checked as a file to include" in out
    assert "base.loss:1:1: warning[W002]: param 'lam' is not used" in out  # base.loss alone does not use it
    assert out.splitlines()[-1] == "2 warnings (3 files checked)"


def test_an_include_path_with_a_nul_character_is_a_diagnostic(project, capsys):
    path = project / "exp.loss"
    path.write_text('include "shared/a\0b.loss"\nloss = mse()\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(path)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.span.line, diagnostic.message) == (
        "E010", 1, "an include path cannot hold a NUL character")
    assert lossdsl.cli.main(["check", str(path)]) == 1
    assert "Traceback" not in capsys.readouterr().err
