"""A compiled loss copies, pickles, saves and crosses processes like any torch module.

Every shipped spec (specs/*.loss, the examples'), and every spec the docs compile, goes through
pickle, copy.deepcopy after a backward, torch.save + torch.load and AveragedModel, inside a model
that holds it: afterwards the copy holds equal state (buffers, multipliers, class counts, step
counters, EMA windows, last_terms, params, training flags) and, called on the same inputs, gives
the same values as the original and keeps equal state.
"""

from __future__ import annotations

import ast
import copy
import io
import pickle
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field
from torch import nn
from torch.optim.swa_utils import AveragedModel

import lossdsl
from lossdsl.registry import REGISTRY
from lossdsl.synthetic import declarations, synthetic_inputs
from lossdsl.verify import LEARNED_KINDS

ROOT = Path(__file__).resolve().parents[1]


# -- the specs ----------------------------------------------------------------------------------


def _example_specs() -> list[tuple[str, str, dict | None]]:
    """The spec strings of examples/*.py: their module-level SPEC, SPECS, PENALTY and CONSTRAINED
    (computed from the example's own source: CONSTRAINED is built from BOUND with f-strings)."""
    found = []
    for path in sorted((ROOT / "examples").glob("*.py")):
        module = ast.parse(path.read_text(encoding="utf-8"))
        wanted = {"SPEC", "SPECS", "PENALTY", "CONSTRAINED", "BOUND"}
        assigns = [node for node in module.body if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id in wanted for t in node.targets)]
        namespace: dict = {}
        exec(compile(ast.Module(body=assigns, type_ignores=[]), str(path), "exec"), namespace)  # the examples' constants
        for name in ("SPEC", "SPECS", "PENALTY", "CONSTRAINED"):
            value = namespace.get(name)
            texts = [value] if isinstance(value, str) else list(value.values()) if isinstance(value, dict) else list(value or ())
            for text in texts:
                found.append((f"{path.name}:{name}", text, {"lam": 0.3} if name == "PENALTY" else None))
    return found


def _doc_specs() -> list[tuple[str, str, dict | None]]:
    """What tests/test_docs.py compiles: each term's example in docs/terms.md, each spec in the guides."""
    found = [(f"terms.md:{text}", text, None)
             for text in re.findall(r"^Example: `([^`]+)`", (ROOT / "docs" / "terms.md").read_text(encoding="utf-8"), re.M)]
    for guide in ("fairness.md", "constraints.md"):
        blocks = re.findall(r"^```loss\n(.*?)^```", (ROOT / "docs" / guide).read_text(encoding="utf-8"), re.M | re.S)
        found += [(f"{guide}:{i}", block, None) for i, block in enumerate(blocks)]
    return found


#: Specs whose inputs the synthetic inference cannot shape (per-label weights, several quantiles):
#: the same spec with its inputs declared.
DECLARED = {
    "bce(pos_weight=[1.0, 4.0, 2.5])": "inputs:\n    pred: logits[N, 3]\n    target: multihot[N, 3]\n",
    "quantile(q=[0.1, 0.5, 0.9])": "inputs:\n    pred: real[N, 3]\n    target: real[N]\n",
}

SPEC_FILES = sorted((ROOT / "specs").glob("*.loss"))
SPECS = [(path.name, None, None) for path in SPEC_FILES] + _example_specs() + _doc_specs()
IDS = [name for name, _, _ in SPECS]


def compiled(name: str, text: str | None, params: dict | None) -> lossdsl.LossModule:
    if text is None:
        return lossdsl.load(ROOT / "specs" / name, params=params)
    return lossdsl.compile(DECLARED.get(text, "") + text, params=params)


class Holder(nn.Module):
    """A model that holds its loss as a submodule (as a LightningModule does), bound to itself."""

    def __init__(self, loss_fn: lossdsl.LossModule):
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.loss_fn = loss_fn.bind(self)


def inputs_for(loss_fn: lossdsl.LossModule, seed: int) -> dict[str, torch.Tensor]:
    """Synthetic fitting inputs; the learned kinds (logits, reals, embeddings) need a gradient."""
    kinds = {decl.name: decl.type for decl in declarations(loss_fn.plan)}
    tensors = synthetic_inputs(loss_fn.plan, seed=seed)
    for name, tensor in tensors.items():
        if kinds[name] in LEARNED_KINDS and tensor.is_floating_point():
            tensor.requires_grad_()
    return tensors


def trained(name: str, text: str | None, params: dict | None, steps: int = 3) -> Holder:
    """A holder whose loss has taken a few training steps, each with a backward: its state has moved."""
    holder = Holder(compiled(name, text, params))
    for seed in range(steps):
        value = holder.loss_fn(**inputs_for(holder.loss_fn, seed))
        if value.requires_grad:
            value.backward()
    return holder


def assert_same_state(copied: lossdsl.LossModule, original: lossdsl.LossModule) -> None:
    copied_state, original_state = copied.state_dict(), original.state_dict()
    assert list(copied_state) == list(original_state)
    for key, tensor in original_state.items():
        assert copied_state[key].dtype == tensor.dtype and copied_state[key].device == tensor.device, key
        torch.testing.assert_close(copied_state[key], tensor, rtol=0, atol=0, equal_nan=True, msg=key)
    copied_last, original_last = copied.last_terms, original.last_terms
    assert list(copied_last) == list(original_last)
    for label, value in original_last.items():
        torch.testing.assert_close(copied_last[label], value, rtol=0, atol=0, equal_nan=True, msg=label)
    assert dict(copied.params) == dict(original.params)
    assert [m.training for m in copied.modules()] == [m.training for m in original.modules()]


def assert_copy_behaves(copied: Holder, original: Holder) -> None:
    """Equal state now, and equal values and state after the same training-mode call."""
    assert copied.loss_fn is not original.loss_fn
    assert_same_state(copied.loss_fn, original.loss_fn)
    inputs = inputs_for(original.loss_fn, seed=10)
    expected = original.loss_fn(**inputs)
    torch.testing.assert_close(copied.loss_fn(**inputs), expected, rtol=0, atol=0, equal_nan=True)
    assert_same_state(copied.loss_fn, original.loss_fn)


def through_pickle(obj):
    return pickle.loads(pickle.dumps(obj))


def through_torch_save(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def averaged(holder: Holder) -> Holder:
    return AveragedModel(holder).module


ROUND_TRIPS = {"pickle": through_pickle, "deepcopy": copy.deepcopy, "torch.save": through_torch_save,
               "AveragedModel": averaged}


def test_the_specs_are_collected():
    names = {name.split(":")[0] for name in IDS}
    assert {"credit.loss", "quickstart.py", "vae.py", "adult_fairness.py", "terms.md", "fairness.md"} <= names
    assert len(SPECS) > 40


@pytest.mark.parametrize("round_trip", ROUND_TRIPS)
@pytest.mark.parametrize(("name", "text", "params"), SPECS, ids=IDS)
def test_a_round_trip_keeps_state_and_values(name, text, params, round_trip):
    original = trained(name, text, params)
    copied = ROUND_TRIPS[round_trip](original)
    assert_copy_behaves(copied, original)


@pytest.mark.parametrize("round_trip", ["pickle", "deepcopy", "torch.save"])
@pytest.mark.parametrize(("name", "text", "params"), SPECS[:8], ids=IDS[:8])
def test_the_loss_alone_round_trips(name, text, params, round_trip):
    """Pickled alone: its model holds it, so the model travels along (see test_binding_*)."""
    original = trained(name, text, params)
    loss_fn = ROUND_TRIPS[round_trip](original.loss_fn)
    inputs = inputs_for(loss_fn, seed=5)
    assert_same_state(loss_fn, original.loss_fn)
    torch.testing.assert_close(loss_fn(**inputs), original.loss_fn(**inputs), rtol=0, atol=0)


def test_state_of_every_kind_survives_with_its_values():
    """The checkpoint test's spec keeps class counts, an EMA window, a multiplier and a step counter."""
    spec = (
        "let data = ce(weight=balanced)\n"
        "loss = data + warmup(5) * fairness(fpr_gap, group=g, groups=3, window=ema(0.8))\n"
        "subject to fairness(dp_gap, group=g, groups=3) <= 0.01 as parity using lagrangian(lr=0.5)\n"
    )
    loss_fn = lossdsl.compile(spec)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        pred = torch.randn(32, 2, generator=generator, requires_grad=True)
        loss_fn(pred=pred, target=torch.randint(0, 2, (32,), generator=generator),
                g=torch.randint(0, 3, (32,), generator=generator)).backward()
    for round_trip in (through_pickle, copy.deepcopy, through_torch_save):
        copied = round_trip(loss_fn)
        assert int(copied.step_count) == 4 and float(copied.multipliers[0]) > 0
        assert int(copied.terms[0].class_counts.sum()) == 4 * 32
        assert copied.terms[1].running_sums.abs().sum() > 0
        assert_same_state(copied, loss_fn)
        assert list(copied.last_terms) == ["data", "fairness_1", "fairness_2", "parity", "parity.surrogate",
                                           "parity.violation", "parity.multiplier", "weight/fairness_1", "total"]
        # warmup(5) at step 3, the step of the last call (then the counter moved to 4), carried too
        torch.testing.assert_close(copied.last_terms["weight/fairness_1"], torch.tensor(3 / 5))


def test_the_last_values_are_kept_detached_and_copies_do_not_share_state():
    loss_fn = lossdsl.load(ROOT / "specs" / "credit.loss")
    inputs = inputs_for(loss_fn, seed=0)
    loss_fn(**inputs).backward()
    copied = copy.deepcopy(loss_fn)
    assert all(not value.requires_grad for value in copied._last[0])
    copied(**inputs_for(loss_fn, seed=1))  # a training step of the copy moves its counts only
    assert not torch.equal(copied.terms[0].class_counts, loss_fn.terms[0].class_counts)
    assert not torch.equal(copied.last_terms["total"], loss_fn.last_terms["total"])


def test_a_shallow_copy_shares_the_tensors_and_rebuilds_the_terms():
    loss_fn = lossdsl.load(ROOT / "specs" / "credit.loss")
    loss_fn(**inputs_for(loss_fn, seed=0))
    shallow = copy.copy(loss_fn)
    assert shallow.terms[0] is not loss_fn.terms[0]
    assert shallow.terms[0].class_counts is loss_fn.terms[0].class_counts
    inputs = inputs_for(loss_fn, seed=1)
    torch.testing.assert_close(shallow.eval()(**inputs), loss_fn.eval()(**inputs), rtol=0, atol=0)


def test_eval_mode_device_and_dtype_survive():
    loss_fn = lossdsl.load(ROOT / "specs" / "credit.loss").to(torch.float64).eval()
    loss_fn.terms[0].class_counts = torch.tensor([3, 5])
    for round_trip in (through_pickle, copy.deepcopy, through_torch_save):
        copied = round_trip(loss_fn)
        assert not copied.training and not any(m.training for m in copied.modules())
        assert copied.terms[1].running_sums is None
        assert copied.terms[0].class_counts.tolist() == [3, 5]
        quantiles = round_trip(lossdsl.compile("quantile(q=[0.1, 0.9])").to(torch.float16)).terms[0].quantiles
        assert quantiles.dtype == torch.float16  # a buffer left out of state_dict keeps its dtype too


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_module_on_cuda_comes_back_on_cuda():
    loss_fn = lossdsl.load(ROOT / "specs" / "credit.loss").cuda()
    inputs = {name: tensor.cuda() for name, tensor in inputs_for(loss_fn, seed=0).items()}
    loss_fn(**inputs)
    for round_trip in (through_pickle, copy.deepcopy, through_torch_save):
        copied = round_trip(loss_fn)
        assert copied.terms[0].class_counts.is_cuda and copied.last_terms["total"].is_cuda
        torch.testing.assert_close(copied(**inputs), loss_fn(**inputs), rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 40), steps=st.integers(0, 3))
def test_pickled_values_equal_the_original_at_any_point(seed, batch, steps):
    loss_fn = lossdsl.load(ROOT / "specs" / "credit.loss")
    for step in range(steps):
        loss_fn(**synthetic_inputs(loss_fn.plan, batch=batch, seed=seed + step))
    copied = through_pickle(loss_fn)
    inputs = synthetic_inputs(loss_fn.plan, batch=batch, seed=seed + steps)
    torch.testing.assert_close(copied(**inputs), loss_fn(**inputs), rtol=0, atol=0)
    assert_same_state(copied, loss_fn)


# -- includes ---------------------------------------------------------------------------------


def test_a_pickle_reads_no_included_file(tmp_path):
    """The pickle holds the spec with its includes expanded: the file may be gone when it is loaded,
    and messages still name the included file's line."""
    (tmp_path / "lib.loss").write_text("param lam = 0.5\nlet fit = huber(delta=2.0)\n")
    (tmp_path / "exp.loss").write_text('include "lib.loss"\nloss = fit + lam * mae()\n')
    loss_fn = lossdsl.load(tmp_path / "exp.loss", params={"lam": 0.25})
    data = pickle.dumps(loss_fn)
    (tmp_path / "lib.loss").write_text("let fit = mse()\n")  # changed, then gone
    (tmp_path / "lib.loss").unlink()
    copied = pickle.loads(data)
    pred, target = torch.randn(6), torch.randn(6)
    expected = torch.nn.functional.huber_loss(pred, target, delta=2.0) + 0.25 * (pred - target).abs().mean()
    torch.testing.assert_close(copied(pred, target), expected)
    assert copied.params == {"lam": 0.25}
    with pytest.raises(lossdsl.LossSpecError, match=r"huber\(\) at .*lib\.loss:2:11"):
        copied(pred, target[:3])


# -- params -----------------------------------------------------------------------------------


def test_params_are_read_only_with_a_clear_error():
    loss_fn = lossdsl.load(ROOT / "specs" / "credit.loss")
    with pytest.raises(AttributeError, match=r"read-only.*with_params\(lam=0\.3\).*compile\(spec, params="):
        loss_fn.params = {"lam": 5.0}
    with pytest.raises(TypeError, match=r"read-only.*with_params"):
        loss_fn.params["lam"] = 5
    for change in (lambda p: p.update(lam=5), lambda p: p.pop("lam"), lambda p: p.clear()):
        with pytest.raises(TypeError, match="read-only"):
            change(loss_fn.params)
    with pytest.raises(TypeError, match="read-only"):
        del loss_fn.params["lam"]
    assert loss_fn.params == {"lam": 0.1} and dict(loss_fn.params) == {"lam": 0.1}


def test_with_params_builds_a_module_with_the_new_values():
    loss_fn = lossdsl.load(ROOT / "specs" / "credit.loss")
    inputs = synthetic_inputs(loss_fn.plan, seed=3)
    heavier = loss_fn.with_params(lam=5.0)
    also = loss_fn.with_params({"lam": 5.0})
    assert heavier.params == {"lam": 5.0} and loss_fn.params == {"lam": 0.1}
    expected = lossdsl.load(ROOT / "specs" / "credit.loss", params={"lam": 5.0})(**inputs)
    torch.testing.assert_close(heavier(**inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(also(**inputs), expected, rtol=0, atol=0)
    last = loss_fn(**inputs).detach()  # the original is unchanged: lam is still 0.1
    parts = loss_fn.last_terms
    torch.testing.assert_close(last, parts["data"] + 0.1 * parts["fair"] + parts["soft_bound"])
    with pytest.raises(lossdsl.LossSpecError, match=r"E205.*lam' = 50.0 lies outside its range \[0, 10\]"):
        loss_fn.with_params(lam=50.0)
    with pytest.raises(lossdsl.LossSpecError, match=r"E105.*unknown param 'lamb'"):
        loss_fn.with_params(lamb=1.0)


def test_a_param_that_sets_a_term_argument_is_rebuilt_from_its_value():
    loss_fn = lossdsl.compile("param eps = 0.1 in [0, 0.5]\nloss = ce(label_smoothing=eps)", params={"eps": 0.3})
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.3)
    for copied in (through_pickle(loss_fn), copy.deepcopy(loss_fn), through_torch_save(loss_fn)):
        torch.testing.assert_close(copied(logits, labels), expected)
    smoothed = loss_fn.with_params(eps=0.5)
    torch.testing.assert_close(smoothed(logits, labels),
                               torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.5))


# -- binding ----------------------------------------------------------------------------------


def _l2(model: nn.Module) -> torch.Tensor:
    return sum(p.square().sum() for name, p in model.named_parameters() if not name.endswith("bias"))


class Siblings(nn.Module):
    """A model and its loss side by side, the loss bound to the model only."""

    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 3)
        self.loss_fn = lossdsl.compile("mse() + l2(weight=0.5)").bind(self.net)


def test_a_deep_copy_of_the_model_binds_the_copied_model():
    pred, target = torch.randn(5), torch.randn(5)
    original = Siblings()
    copied = copy.deepcopy(original)
    with torch.no_grad():
        copied.net.weight.mul_(2)
    mse = torch.nn.functional.mse_loss(pred, target)
    torch.testing.assert_close(copied.loss_fn(pred, target), mse + 0.5 * _l2(copied.net))
    torch.testing.assert_close(original.loss_fn(pred, target), mse + 0.5 * _l2(original.net))
    averaged_model = AveragedModel(original).module
    assert averaged_model.loss_fn.terms[1]._parameters_of_model[0] is averaged_model.net.weight


def test_a_loss_copied_or_pickled_without_its_model_is_unbound():
    original = Siblings()
    # A pickle cannot tell whether the sibling net is in it too: a loss bound to a sibling is unbound.
    for copied in (copy.deepcopy(original.loss_fn), through_pickle(original.loss_fn),
                   through_torch_save(original.loss_fn), through_pickle(original).loss_fn):
        with pytest.raises(lossdsl.LossSpecError, match=r"E403.*call loss_fn.bind\(model\) first"):
            copied(torch.randn(2), torch.randn(2))
    rebound = copy.deepcopy(original.loss_fn).bind(original.net)
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(rebound(pred, target), torch.nn.functional.mse_loss(pred, target) + 0.5 * _l2(original.net))


def test_a_loss_bound_to_the_model_that_holds_it_keeps_the_binding_through_a_pickle():
    holder = Holder(lossdsl.compile("mse(pred=p, target=t) + l2(weight=0.5)"))
    for copied in (through_pickle(holder), through_torch_save(holder), copy.deepcopy(holder)):
        with torch.no_grad():
            copied.net.weight.fill_(1.0)
        p, t = torch.randn(4), torch.randn(4)
        torch.testing.assert_close(copied.loss_fn(p=p, t=t), torch.nn.functional.mse_loss(p, t) + 0.5 * 6.0)
        assert copied.loss_fn._bound_model is copied
    alone = through_pickle(holder.loss_fn)  # the holder travels with it: the copy is bound to the holder's copy
    assert alone._bound_model.loss_fn is alone


# -- custom terms -----------------------------------------------------------------------------


def abs_gap(pred, target):
    """Mean absolute error, as a custom term of this test module."""
    return (pred - target).abs().mean()


class ScaleParams(lossdsl.TermParams):
    scale: float = Field(1.0, gt=0, description="a factor")


class LearnedScale(nn.Module):
    """A custom module term with a learnable parameter and a counter that is no tensor."""

    def __init__(self, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(scale)))
        self.calls = 0

    def forward(self, pred, target):
        self.calls += 1
        return self.weight * (pred - target).square().mean()


@pytest.fixture
def custom_terms():
    """Registers the two module-level terms by hand for one test (test_docs reads REGISTRY)."""
    lossdsl.term("pickling_abs_gap")(abs_gap)
    lossdsl.term("pickling_scale", params=ScaleParams)(LearnedScale)
    yield "pickling_abs_gap() + pickling_scale(scale=2.0)"
    for name in ("pickling_abs_gap", "pickling_scale"):
        REGISTRY.pop(name, None)


def test_custom_terms_pickle_by_reference(custom_terms):
    loss_fn = lossdsl.compile(custom_terms)
    pred, target = torch.randn(6), torch.randn(6)
    loss_fn(pred, target)
    with torch.no_grad():
        loss_fn.terms[1].inner.weight.fill_(3.0)
    for copied in (through_pickle(loss_fn), copy.deepcopy(loss_fn), through_torch_save(loss_fn)):
        inner = copied.terms[1].inner
        assert isinstance(inner, LearnedScale) and inner.calls == 1 and inner.weight.item() == 3.0
        assert isinstance(inner.weight, nn.Parameter) and inner.weight.requires_grad
        expected = (pred - target).abs().mean() + 3.0 * (pred - target).square().mean()
        torch.testing.assert_close(copied(pred, target), expected)


def test_an_unpickled_custom_term_is_registered_where_it_is_missing(custom_terms):
    data = pickle.dumps(lossdsl.compile(custom_terms))
    for name in ("pickling_abs_gap", "pickling_scale"):
        del REGISTRY[name]
    copied = pickle.loads(data)
    assert REGISTRY["pickling_abs_gap"].module.registration[1] is abs_gap
    pred, target = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(copied(pred, target), (pred - target).abs().mean() + 2 * (pred - target).square().mean())


def test_a_custom_term_that_cannot_be_imported_refuses_to_pickle_but_copies():
    def local_gap(pred, target):
        return (pred - target).abs().mean()

    lossdsl.term("pickling_local_gap")(local_gap)
    try:
        loss_fn = lossdsl.compile("pickling_local_gap()")
        with pytest.raises(pickle.PicklingError, match=r"custom term 'pickling_local_gap'.*local_gap.*cannot be "
                                                       r"imported by name.*top level of a module"):
            pickle.dumps(loss_fn)
        with pytest.raises(pickle.PicklingError, match="pickling_local_gap"):
            through_torch_save(loss_fn)
        pred, target = torch.randn(4), torch.randn(4)
        torch.testing.assert_close(copy.deepcopy(loss_fn)(pred, target), (pred - target).abs().mean())
    finally:
        del REGISTRY["pickling_local_gap"]


def test_a_pickle_of_another_lossdsl_format_is_refused_plainly():
    _, (cls, payload), _ = lossdsl.compile("mse()").__reduce_ex__(2)
    with pytest.raises(pickle.UnpicklingError, match="format 0.*compile the spec again"):
        lossdsl.pickling._rebuild(cls, {**payload, "format": 0})


# -- processes --------------------------------------------------------------------------------


def _child(queue, holders):
    """In a spawned process: each holder's loss on its inputs, the values and the state after."""
    results = []
    for holder, inputs in holders:
        value = holder.loss_fn(**inputs)
        results.append((value.detach(), holder.loss_fn.last_terms,
                        {k: v.clone() for k, v in holder.loss_fn.state_dict().items()}))
    queue.put(pickle.dumps(results))  # plain bytes: tensors shared with an exited process are gone


def test_a_spawned_process_computes_the_same_values(custom_terms):
    chosen = [("credit.loss", None, None), ("fair_classifier.loss", None, None), ("clinical_dose.loss", None, None),
              ("constraints", "loss = ce()\nsubject to fairness(eo_gap, group=sex, groups=2, window=ema(0.9)) "
                              "<= 0.02 as eo using augmented(2.0)", None),
              ("custom", custom_terms, None)]
    holders = [trained(name, text, params) for name, text, params in chosen]
    sent = [(copy.deepcopy(holder), inputs_for(holder.loss_fn, seed=20)) for holder in holders]
    expected = []
    for holder, (_, inputs) in zip(holders, sent):  # the originals, called on the same inputs
        value = holder.loss_fn(**inputs)
        expected.append((value.detach(), holder.loss_fn.last_terms, holder.loss_fn.state_dict()))
    counts_before = sent[0][0].loss_fn.terms[0].class_counts.clone()
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, sent))
    process.start()
    try:
        results = pickle.loads(queue.get(timeout=120))
    finally:
        process.join(timeout=60)
    assert process.exitcode == 0
    # torch.multiprocessing shares a sent module's tensors: the child's training step moved the counts here too
    assert torch.equal(sent[0][0].loss_fn.terms[0].class_counts, results[0][2]["terms.0.class_counts"])
    assert not torch.equal(sent[0][0].loss_fn.terms[0].class_counts, counts_before)
    for (value, last, state), (want_value, want_last, want_state) in zip(results, expected):
        torch.testing.assert_close(value, want_value, rtol=0, atol=0)
        assert list(last) == list(want_last)
        for label in want_last:
            torch.testing.assert_close(last[label], want_last[label], rtol=0, atol=0)
        for key in want_state:
            torch.testing.assert_close(state[key], want_state[key], rtol=0, atol=0)


def test_check_finite_survives_copies():
    """``check_finite`` is an attribute outside ``state_dict``: copies keep it, and still raise E405."""
    loss_fn = lossdsl.compile("mse()")
    loss_fn.check_finite = True
    for round_trip in (through_pickle, copy.deepcopy, through_torch_save, copy.copy):
        copied = round_trip(loss_fn)
        assert copied.check_finite
        with pytest.raises(lossdsl.LossSpecError, match="E405"):
            copied(torch.tensor([float("nan")]), torch.zeros(1))
    assert not copy.deepcopy(lossdsl.compile("mse()")).check_finite


def test_a_pickle_from_before_the_library_move_still_loads():
    """A LossModule pickled when the built-in terms lived in lossdsl/terms/ (the fixture's script
    says how it was made) loads today, with its state, and computes what a fresh one does."""
    import importlib.util

    folder = Path(__file__).parent / "fixtures" / "pickles"
    spec = importlib.util.spec_from_file_location("make_before_library_move", folder / "make_before_library_move.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    loaded = pickle.loads((folder / "loss_before_library_move.pkl").read_bytes())
    fresh = maker.trained()
    # Its window state was summed in float32 then; group sums are float64 now: equal to rounding.
    loaded_state, fresh_state = loaded.state_dict(), fresh.state_dict()
    assert list(loaded_state) == list(fresh_state)
    for key, tensor in fresh_state.items():
        assert loaded_state[key].dtype == tensor.dtype, key
        torch.testing.assert_close(loaded_state[key], tensor, equal_nan=True, msg=key)
    for loss_fn in (loaded, fresh):
        loss_fn.eval()
    torch.testing.assert_close(loaded(**maker.inputs(2)), fresh(**maker.inputs(2)))
