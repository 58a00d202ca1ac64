"""include "other.loss": params, lets and inputs from other files, cycles, missing files, diagnostics."""

import os

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


# -- what an include may read (docs/language.md, "Security model") -----------------------

SECRET = "TOP_SECRET_VALUE_42"


@pytest.fixture
def outside(tmp_path):
    """A project folder, and next to it a file it must not read."""
    project = tmp_path / "project"
    (project / "shared").mkdir(parents=True)
    (project / "shared" / "base.loss").write_text("let data = mse()\n")
    (tmp_path / "secret.loss").write_text(f"let data = mse()  # {SECRET}\n")
    return project


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink", "symlinked folder"])
def test_an_include_cannot_leave_the_root(outside, how):
    secret = outside.parent / "secret.loss"
    path = {"absolute": str(secret), "dotdot": "../secret.loss", "symlink": "link.loss",
            "symlinked folder": "folder/secret.loss"}[how]
    if how == "symlink":
        (outside / "link.loss").symlink_to(secret)
    if how == "symlinked folder":
        (outside / "folder").symlink_to(outside.parent, target_is_directory=True)
    spec = outside / "exp.loss"
    spec.write_text(f'include "{path}"\nloss = data\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(spec)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.span.filename, diagnostic.span.line) == ("E012", str(spec), 1)
    assert repr(path) in diagnostic.message  # it names the path...
    assert SECRET not in str(info.value)  # ...never the file's content
    assert lossdsl.cli.main(["check", str(spec)]) == 1


def test_include_root_widens_the_root(outside, capsys):
    spec = outside / "exp.loss"
    spec.write_text('include "../secret.loss"\nloss = data\n')
    pred, target = torch.randn(5), torch.randn(5)
    loss_fn = lossdsl.load(spec, include_root=outside.parent)
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred, target))
    assert lossdsl.cli.main(["check", str(spec)]) == 1
    assert "error[E012]" in capsys.readouterr().out
    assert lossdsl.cli.main(["check", "--include-root", str(outside.parent), str(spec)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no problems (1 file checked)"


def test_a_symlink_that_stays_inside_the_root_is_followed(outside):
    (outside / "alias.loss").symlink_to(outside / "shared" / "base.loss")
    spec = outside / "exp.loss"
    spec.write_text('include "alias.loss"\nloss = data\n')
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(lossdsl.load(spec)(pred, target), F.mse_loss(pred, target))


def test_the_root_is_the_top_level_files_folder_for_nested_includes_too(outside):
    (outside / "shared" / "up.loss").write_text('include "../other.loss"\n')  # still inside project/
    (outside / "other.loss").write_text("let data = mae()\n")
    (outside / "shared" / "out.loss").write_text('include "../../secret.loss"\n')
    pred, target = torch.randn(5), torch.randn(5)
    (outside / "ok.loss").write_text('include "shared/up.loss"\nloss = data\n')
    torch.testing.assert_close(lossdsl.load(outside / "ok.loss")(pred, target), F.l1_loss(pred, target))
    (outside / "bad.loss").write_text('include "shared/out.loss"\nloss = data\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(outside / "bad.loss")
    assert [(d.code, d.span.filename) for d in info.value.diagnostics][0] == (
        "E012", str(outside / "shared" / "out.loss"))


def test_spec_text_without_a_file_includes_only_under_include_root(outside, monkeypatch):
    monkeypatch.chdir(outside / "shared")
    text = 'include "base.loss"\nloss = data\n'
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(text)  # not the working directory: where a string came from says nothing
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.span.line) == ("E012", 1)
    assert diagnostic.message == "cannot include 'base.loss': a spec compiled from a string has no include root"
    pred, target = torch.randn(5), torch.randn(5)
    loss_fn = lossdsl.compile(text, include_root=outside / "shared")
    torch.testing.assert_close(loss_fn(pred, target), F.mse_loss(pred, target))


def test_proc_self_environ_is_not_read(monkeypatch):
    monkeypatch.setenv("LOSSDSL_TEST_SECRET", SECRET)
    for root in (None, "/"):
        with pytest.raises(lossdsl.LossSpecError) as info:
            lossdsl.compile('include "/proc/self/environ"\nloss = mse()', include_root=root)
        assert [d.code for d in info.value.diagnostics] == ["E012"]
        assert SECRET not in str(info.value)


def test_each_file_is_read_and_parsed_once(tmp_path, monkeypatch):
    """Twenty files that each include the next twice: 2^20 expansions without memoising."""
    for i in range(20):
        nxt = f'include "f{i + 1}.loss"\ninclude "f{i + 1}.loss"\n' if i < 19 else ""
        (tmp_path / f"f{i}.loss").write_text(f"{nxt}let x{i} = mse()\n")
    (tmp_path / "top.loss").write_text('include "f0.loss"\nloss = x0 + x19\n')
    reads = []
    real_read = lossdsl.includes.read_text

    def counting_read(path, *args, **kwargs):
        reads.append(path)
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(lossdsl.includes, "read_text", counting_read)
    loss_fn = lossdsl.load(tmp_path / "top.loss")
    assert sorted(os.path.basename(p) for p in reads) == sorted(f"f{i}.loss" for i in range(20))
    assert [let.name for let in loss_fn.plan.lets] == ["x0", "x19"]
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(loss_fn(pred, target), 2 * F.mse_loss(pred, target))


def test_a_diamond_of_includes_brings_the_shared_file_in_once(tmp_path):
    (tmp_path / "common.loss").write_text("param lam = 0.5\n")
    (tmp_path / "a.loss").write_text('include "common.loss"\nlet a = mse()\n')
    (tmp_path / "b.loss").write_text('include "common.loss"\nlet b = mae()\n')
    (tmp_path / "top.loss").write_text('include "a.loss"\ninclude "b.loss"\nloss = a + lam * b\n')
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(lossdsl.load(tmp_path / "top.loss")(pred, target),
                               F.mse_loss(pred, target) + 0.5 * F.l1_loss(pred, target))


def test_includes_are_depth_limited(tmp_path):
    from lossdsl.includes import MAX_INCLUDE_DEPTH

    def chain(levels):
        for i in range(levels):
            inner = f'include "c{i + 1}.loss"\n' if i + 1 < levels else ""
            (tmp_path / f"c{i}.loss").write_text(f"{inner}let x{i} = mse()\n")
        (tmp_path / "top.loss").write_text('include "c0.loss"\nloss = x0\n')
        return lossdsl.load(tmp_path / "top.loss")

    assert chain(MAX_INCLUDE_DEPTH).plan.lets[0].name == "x0"  # the top file, then 32 levels of includes
    with pytest.raises(lossdsl.LossSpecError) as info:
        chain(MAX_INCLUDE_DEPTH + 1)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.span.filename, diagnostic.span.line) == (
        "E108", str(tmp_path / f"c{MAX_INCLUDE_DEPTH - 1}.loss"), 1)
    assert diagnostic.message == f"includes nested deeper than {MAX_INCLUDE_DEPTH} levels"


def test_an_included_file_over_max_bytes_is_refused(tmp_path):
    (tmp_path / "base.loss").write_text("let data = mse()\n" + "# padding\n" * 10)
    (tmp_path / "top.loss").write_text('include "base.loss"\nloss = data\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(tmp_path / "top.loss", max_bytes=64)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.span.line) == ("E013", 1)
    assert diagnostic.message == f"included file '{tmp_path / 'base.loss'}' is 117 bytes, over the limit of 64"
    assert lossdsl.load(tmp_path / "top.loss", max_bytes=117).plan.lets[0].name == "data"


def test_an_included_directory_is_refused(tmp_path):
    (tmp_path / "dir.loss").mkdir()
    (tmp_path / "top.loss").write_text('include "dir.loss"\nloss = mse()\n')
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.load(tmp_path / "top.loss")
    assert [(d.code, d.message) for d in info.value.diagnostics] == [
        ("E010", f"included file '{tmp_path / 'dir.loss'}' is not a regular file (a directory)")]
