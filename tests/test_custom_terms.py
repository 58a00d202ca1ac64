"""@lossdsl.term: custom terms get the checks, docs and diagnostics of built-in ones."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import Field

import lossdsl
from lossdsl.reference import term_markdown
from lossdsl.registry import REGISTRY


@pytest.fixture
def registered():
    """Registers two custom terms for one test, then removes them (the docs test reads REGISTRY)."""
    before = set(REGISTRY)

    @lossdsl.term("abs_error", example="abs_error(pred=head2)")
    def abs_error(pred, target):
        """Mean absolute error, written by hand."""
        return (pred - target).abs().mean()

    class MarginParams(lossdsl.TermParams):
        margin: float = Field(1.0, gt=0, description="the margin a positive must win by")

    @lossdsl.term("ranking", params=MarginParams)
    class Ranking(torch.nn.Module):
        """Pairwise ranking hinge."""

        def __init__(self, margin):
            super().__init__()
            self.margin = margin

        def forward(self, pos, neg):
            return F.relu(self.margin - pos + neg).mean()

    yield
    for name in set(REGISTRY) - before:
        del REGISTRY[name]


def test_custom_terms_compile_and_compute(registered):
    loss_fn = lossdsl.compile("abs_error(pred=p) + 0.5 * ranking(margin=0.25)")
    assert loss_fn.inputs == ("p", "target", "pos", "neg")
    p, t, pos, neg = torch.randn(5), torch.randn(5), torch.randn(5), torch.randn(5)
    expected = (p - t).abs().mean() + 0.5 * F.relu(0.25 - pos + neg).mean()
    torch.testing.assert_close(loss_fn(p=p, target=t, pos=pos, neg=neg), expected)
    assert list(loss_fn.last_terms) == ["abs_error", "ranking", "total"]


@pytest.mark.parametrize(
    ("src", "code", "hint"),
    [
        ("ranking(margn=1)", "E203", "did you mean 'margin'?"),
        ("ranking(margin=-1)", "E205", None),
        ("ranking(margin=big)", "E204", None),
        ("abs_eror()", "E202", "did you mean 'abs_error'?"),
    ],
)
def test_custom_terms_get_the_same_diagnostics(registered, src, code, hint):
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile(src)
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.code == code
    if hint:
        assert diagnostic.hint == hint


def test_custom_terms_are_documented_and_buildable(registered):
    page = term_markdown(REGISTRY["ranking"])
    assert page.startswith("### ranking\n\nPairwise ranking hinge.")
    assert "| `margin` | `1.0` | the margin a positive must win by |" in page
    assert "| `pos` | `pos` | the input read as pos |" in page
    from lossdsl import T

    assert str(T.ranking(margin=2.0) + T.abs_error()) == "ranking(margin=2.0) + abs_error()"


def test_a_custom_term_must_return_a_scalar(registered):
    @lossdsl.term("elementwise")
    def elementwise(pred):
        return pred.abs()

    with pytest.raises(lossdsl.LossSpecError, match=r"error\[E404\]: elementwise\(\) at <spec>:1:1 must return a scalar"):
        lossdsl.compile("elementwise()")(pred=torch.randn(3))


def test_registration_mistakes():
    with pytest.raises(ValueError, match="registered twice"):
        lossdsl.term("ce")(lambda pred: pred.sum())
    with pytest.raises(ValueError, match="identifier"):
        lossdsl.term("my-loss")(lambda pred: pred.sum())
    with pytest.raises(TypeError, match="reads no input"):
        lossdsl.term("constant")(lambda: torch.zeros(()))
    assert "constant" not in REGISTRY and "my-loss" not in REGISTRY


def test_plugins_load_from_the_entry_point_group(monkeypatch):
    from lossdsl import plugins

    calls = []

    class FakeEntryPoint:
        name = "fake"

        def load(self):
            return lambda: calls.append("registered")

    class BrokenEntryPoint:
        name = "broken"

        def load(self):
            raise ImportError("no module named fake_plugin")

    monkeypatch.setattr(plugins, "entry_points", lambda group: [FakeEntryPoint(), BrokenEntryPoint()] if group == "lossdsl.terms" else [])
    with pytest.warns(UserWarning, match="'broken' failed to load"):
        plugins.load_plugins()
    assert calls == ["registered"]
