"""The table of input kinds (lossdsl.kinds) is what the checker, the call-time checks, verify and
the synthetic inputs read."""

from __future__ import annotations

import pytest
import torch

import lossdsl
from lossdsl import kinds, registry, runtime, synthetic, verify
from lossdsl.kinds import KINDS, Synthesis


def _declaration(kind: str, shape: str) -> runtime._Declaration:
    spec = lossdsl.parse(f"inputs:\n  x: {kind}{shape}\nloss = mse(pred=a, target=b)")
    decl = next(node for node in spec.walk() if isinstance(node, lossdsl.ast.InputDecl))
    return runtime._Declaration(decl)


def test_every_stage_reads_the_one_table():
    assert registry.INPUT_KINDS == tuple(KINDS)
    assert verify.LEARNED_KINDS == {name for name, kind in KINDS.items() if kind.learned}
    assert kinds.FLOAT | kinds.INDEX <= set(KINDS) and not kinds.FLOAT & kinds.INDEX


@pytest.mark.parametrize("name", list(KINDS))
def test_a_synthetic_tensor_of_each_kind_passes_its_own_declaration(name):
    kind = KINDS[name]
    need = Synthesis((6, 3), torch.Generator().manual_seed(0), torch.float64, 2.0, classes=3, groups=4)
    value = kind.synthesise(need)
    assert tuple(value.shape) == (6, 3)
    if kind.dtype == "float":
        assert value.dtype == torch.float64
    if kind.dtype == "index":
        assert not value.is_floating_point()
        assert int(value.min()) >= 0 and int(value.max()) < (3 if name == "labels" else 4)
    if kind.learned:
        assert value.is_floating_point()
    if name == "probs":
        torch.testing.assert_close(value.sum(dim=1), torch.ones(6, dtype=torch.float64))
    _declaration(name, "[6, 3]").check(value, {})  # raises LossSpecError when dtype or shape disagree


def test_the_wrong_dtype_for_a_float_or_an_index_kind_is_named():
    for name, wrong in (("logits", torch.zeros(4, dtype=torch.long)), ("group", torch.zeros(4))):
        with pytest.raises(lossdsl.LossSpecError, match="x"):
            _declaration(name, "[4]").check(wrong, {})


def test_an_unknown_kind_lists_the_table():
    with pytest.raises(lossdsl.LossSpecError) as info:
        lossdsl.compile("inputs:\n  pred: logit[N, 3]\nloss = ce()")
    assert "logits" in str(info.value)


def test_synthetic_inputs_follow_the_table_for_a_spec():
    plan = lossdsl.driver.plan_for("inputs:\n  pred: logits[8, 3]\n  target: labels[8]\n  g: group[8] of 5\n"
                                   "loss = ce() + fairness(dp_gap, group=g, pred=pred)")
    tensors = synthetic.synthetic_inputs(plan, batch=8)
    assert tensors["pred"].is_floating_point() and tensors["pred"].shape == (8, 3)
    assert not tensors["target"].is_floating_point() and int(tensors["target"].max()) < 3
    assert int(tensors["g"].max()) < 5
