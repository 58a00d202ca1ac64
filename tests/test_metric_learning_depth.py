"""Metric learning as pytorch-metric-learning (PML) users know it, against PML itself.

``batch_triplet`` and ``batch_contrastive`` form pairs and triplets from labels inside the batch;
each option is checked against PML's ``TripletMarginLoss`` / ``ContrastiveLoss`` with its miners
(``BatchHardMiner``, ``TripletMarginMiner(type_of_triplets="semihard")``), distance
(``LpDistance(normalize_embeddings=...)``) and reducers (``AvgNonZeroReducer``, ``MeanReducer``,
``SumReducer``): values and gradients on random embeddings and labels (PML's
``pytorch_metric_learning/losses/triplet_margin_loss.py``, ``contrastive_loss.py``,
``miners/batch_easy_hard_miner.py``, ``miners/triplet_margin_miner.py``,
``reducers/threshold_reducer.py``). ``triplet(swap=true)`` is checked against
``F.triplet_margin_loss(swap=True)``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lossdsl

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances, losses, miners, reducers  # noqa: E402

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
REDUCERS = {"mean_nonzero": reducers.AvgNonZeroReducer, "mean": reducers.MeanReducer, "sum": reducers.SumReducer}


def embeddings_and_labels(n: int, classes: int, seed: int, d: int = 5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x, torch.randint(0, classes, (n,), generator=g)


def value_and_grad(loss_fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    value = loss_fn(x)
    (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    return value.detach(), torch.zeros_like(x) if grad is None else grad


def pml_miner(mining: str, normalize: bool, mining_margin: float = 0.2):
    distance = distances.LpDistance(normalize_embeddings=normalize)
    if mining == "batch_hard":
        return miners.BatchHardMiner(distance=distance)
    if mining == "semi_hard":
        return miners.TripletMarginMiner(margin=mining_margin, type_of_triplets="semihard", distance=distance)
    return None


def pml_loss(loss, labels: torch.Tensor, miner=None):
    """PML's call: ``loss(embeddings, labels, miner(embeddings, labels))``."""
    return lambda x: loss(x, labels, None if miner is None else miner(x, labels))


def flag(value: bool) -> str:
    return str(value).lower()


def assert_same(ours, theirs, x: torch.Tensor) -> None:
    (v_ours, g_ours), (v_theirs, g_theirs) = value_and_grad(ours, x), value_and_grad(theirs, x)
    assert torch.isfinite(v_ours) and torch.isfinite(g_ours).all()
    torch.testing.assert_close(v_ours, v_theirs.to(v_ours.dtype), **TOLERANCE)
    torch.testing.assert_close(g_ours, g_theirs, **TOLERANCE)


# -- batch_triplet: mining and reduction ----------------------------------------------------------


@pytest.mark.parametrize("reduction", list(REDUCERS))
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
def test_batch_triplet_matches_pml_triplet_margin_loss(mining, normalize, reduction):
    x, y = embeddings_and_labels(32, 4, seed=1)
    margin = 0.2 if normalize else 1.0
    mining_margin = ", mining_margin=0.3" if mining == "semi_hard" else ""
    ours = lossdsl.compile(f"batch_triplet(mining={mining}, margin={margin}, normalize={flag(normalize)}, "
                           f"reduction={reduction}{mining_margin})")
    theirs = losses.TripletMarginLoss(margin=margin, distance=distances.LpDistance(normalize_embeddings=normalize),
                                      reducer=REDUCERS[reduction]())
    assert_same(lambda e: ours(embeddings=e, labels=y), pml_loss(theirs, y, pml_miner(mining, normalize, 0.3)), x)


def test_batch_triplet_defaults_are_pmls():
    """``batch_triplet()`` is ``TripletMarginLoss()``: margin 0.05, every triplet, LpDistance with
    unit-length embeddings, AvgNonZeroReducer."""
    x, y = embeddings_and_labels(24, 3, seed=2)
    ours = lossdsl.compile("batch_triplet()")
    assert_same(lambda e: ours(embeddings=e, labels=y), pml_loss(losses.TripletMarginLoss(), y), x)


@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
def test_batch_triplet_swap_matches_pml(mining):
    x, y = embeddings_and_labels(32, 4, seed=3)
    ours = lossdsl.compile(f"batch_triplet(mining={mining}, margin=0.3, swap=true)")
    theirs = losses.TripletMarginLoss(margin=0.3, swap=True)
    assert_same(lambda e: ours(embeddings=e, labels=y), pml_loss(theirs, y, pml_miner(mining, True)), x)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), classes=st.integers(1, 5), seed=st.integers(0, 2**16),
       mining=st.sampled_from(["all", "batch_hard", "semi_hard"]), swap=st.booleans())
def test_batch_triplet_matches_pml_on_any_small_batch(n, classes, seed, mining, swap):
    """Batches with one class, one sample per class or a single sample: PML gives 0 there (an empty
    batch makes its BatchHardMiner raise; the test below checks lossdsl's 0 there)."""
    x, y = embeddings_and_labels(n, classes, seed)
    ours = lossdsl.compile(f"batch_triplet(mining={mining}, margin=0.5, swap={flag(swap)})")
    theirs = losses.TripletMarginLoss(margin=0.5, swap=swap)
    assert_same(lambda e: ours(embeddings=e, labels=y), pml_loss(theirs, y, pml_miner(mining, True)), x)


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3], [5], []], ids=["one-class", "all-distinct", "one", "empty"])
@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
def test_batch_triplet_without_a_valid_triplet_is_zero_with_zero_gradient(mining, labels):
    y = torch.tensor(labels, dtype=torch.long)
    x = torch.randn(len(labels), 3, requires_grad=True)
    loss = lossdsl.compile(f"batch_triplet(mining={mining}, margin=0.5)")(embeddings=x, labels=y)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_batch_triplet_counts_only_the_triplets_above_zero():
    """Derived by hand: labels [0, 0, 1] on a line, raw distances (normalize=false).

    x = [0, 1, 3]: the triplets are (0, 1, 2) with d_ap = 1, d_an = 3, and (1, 0, 2) with d_ap = 1,
    d_an = 2. With margin 1.5 their losses are relu(1 - 3 + 1.5) = 0 and relu(1 - 2 + 1.5) = 0.5:
    mean_nonzero = 0.5, mean = 0.25, sum = 0.5."""
    x, y = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([0, 0, 1])
    for reduction, expected in {"mean_nonzero": 0.5, "mean": 0.25, "sum": 0.5}.items():
        loss = lossdsl.compile(f"batch_triplet(margin=1.5, normalize=false, reduction={reduction})")(embeddings=x, labels=y)
        torch.testing.assert_close(loss, torch.tensor(expected))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_batch_triplet_keeps_the_embeddings_dtype_and_accumulates_in_float32(dtype):
    x, y = embeddings_and_labels(16, 3, seed=4)
    ours = lossdsl.compile("batch_triplet(margin=0.3)")
    loss = ours(embeddings=x.to(dtype), labels=y)
    assert loss.dtype == dtype
    expected = losses.TripletMarginLoss(margin=0.3)(x.to(dtype).double(), y)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-2 if dtype != torch.float64 else 1e-7, atol=1e-3)


def test_batch_triplet_float_labels_compare_by_value():
    x, y = embeddings_and_labels(12, 3, seed=5)
    ours = lossdsl.compile("batch_triplet(mining=batch_hard)")
    torch.testing.assert_close(ours(embeddings=x, labels=y.double()), ours(embeddings=x, labels=y))


@pytest.mark.parametrize(
    "inputs, culprit",
    [
        ({"embeddings": torch.randn(6), "labels": torch.zeros(6)}, "embeddings"),
        ({"embeddings": torch.randn(6, 2), "labels": torch.zeros(5)}, "labels"),
        ({"embeddings": torch.randn(6, 2), "labels": torch.zeros(6, 1)}, "labels"),
        ({"embeddings": torch.ones(6, 2, dtype=torch.long), "labels": torch.zeros(6)}, "embeddings"),
    ],
)
def test_batch_triplet_bad_inputs_are_e402(inputs, culprit):
    with pytest.raises(lossdsl.LossSpecError) as error:
        lossdsl.compile("batch_triplet()")(**inputs)
    assert "E402" in str(error.value) and f"'{culprit}'" in str(error.value) and "batch_triplet" in str(error.value)


def test_mining_margin_without_semi_hard_is_a_spec_error():
    with pytest.raises(lossdsl.LossSpecError, match="mining=semi_hard"):
        lossdsl.compile("batch_triplet(mining=batch_hard, mining_margin=0.3)")
    lossdsl.compile("batch_triplet(mining=semi_hard, mining_margin=0.3)")


COMPILED = ["batch_triplet()", "batch_triplet(mining=batch_hard, swap=true)", "batch_triplet(mining=semi_hard)",
            "batch_contrastive()", "batch_contrastive(mining=batch_hard)", "batch_contrastive(mining=semi_hard)"]


@pytest.mark.parametrize("spec", COMPILED)
def test_batch_terms_compile_fullgraph_and_match_eager(spec):
    """No host synchronisation or graph break in the forward (torch.compile(fullgraph=True))."""
    x, y = embeddings_and_labels(16, 3, seed=6)
    loss_fn = lossdsl.compile(spec)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(embeddings=x, labels=y), loss_fn(embeddings=x, labels=y))



# -- batch_contrastive: PML's margin form ---------------------------------------------------------


def pml_scores_nothing(loss_name: str, miner, x: torch.Tensor, y: torch.Tensor) -> bool:
    """PML's GenericPairLoss returns 0 when each pair list holds at most one pair (one mined
    triplet): lossdsl scores that pair, a difference its docs record."""
    if loss_name != "contrastive":
        return False
    if miner is None:
        return False  # all pairs come in twos, (i, j) and (j, i)
    return len(miner(x, y)[0]) == 1


@pytest.mark.parametrize("reduction", list(REDUCERS))
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
def test_batch_contrastive_matches_pml_contrastive_loss(mining, normalize, reduction):
    x, y = embeddings_and_labels(32, 4, seed=11)
    pos, neg = (0.1, 0.9) if normalize else (1.0, 3.0)
    mining_margin = ", mining_margin=0.3" if mining == "semi_hard" else ""
    ours = lossdsl.compile(f"batch_contrastive(mining={mining}, pos_margin={pos}, neg_margin={neg}, "
                           f"normalize={flag(normalize)}, reduction={reduction}{mining_margin})")
    theirs = losses.ContrastiveLoss(pos_margin=pos, neg_margin=neg, reducer=REDUCERS[reduction](),
                                    distance=distances.LpDistance(normalize_embeddings=normalize))
    assert_same(lambda e: ours(embeddings=e, labels=y), pml_loss(theirs, y, pml_miner(mining, normalize, 0.3)), x)


def test_batch_contrastive_defaults_are_pmls():
    """``batch_contrastive()`` is ``ContrastiveLoss()``: pos_margin 0, neg_margin 1, all pairs,
    unit-length embeddings, AvgNonZeroReducer on each part."""
    x, y = embeddings_and_labels(24, 3, seed=12)
    ours = lossdsl.compile("batch_contrastive()")
    theirs = losses.ContrastiveLoss(pos_margin=0, neg_margin=1)
    assert_same(lambda e: ours(embeddings=e, labels=y), pml_loss(theirs, y), x)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), classes=st.integers(1, 5), seed=st.integers(0, 2**16),
       mining=st.sampled_from(["all", "batch_hard", "semi_hard"]), reduction=st.sampled_from(list(REDUCERS)))
def test_batch_contrastive_matches_pml_on_any_small_batch(n, classes, seed, mining, reduction):
    x, y = embeddings_and_labels(n, classes, seed)
    miner = pml_miner(mining, True)
    assume(not pml_scores_nothing("contrastive", miner, x, y))
    ours = lossdsl.compile(f"batch_contrastive(mining={mining}, pos_margin=0.2, neg_margin=0.9, reduction={reduction})")
    theirs = losses.ContrastiveLoss(pos_margin=0.2, neg_margin=0.9, reducer=REDUCERS[reduction]())
    assert_same(lambda e: ours(embeddings=e, labels=y), pml_loss(theirs, y, miner), x)


def test_batch_contrastive_scores_a_single_mined_pair_where_pml_gives_zero():
    """Derived: one mined triplet, so one positive and one negative pair, on a line, raw distances.

    x = [0, 1, 3], labels [0, 0, 1], semi_hard with mining_margin 1.5 keeps the triplets with
    0 < d_an - d_ap <= 1.5: (0, 1, 2) has 3 - 1 = 2 (out), (1, 0, 2) has 2 - 1 = 1 (kept). The pairs are
    (1, 0), d = 1, and (1, 2), d = 2: relu(1 - 0.5) + relu(2.5 - 2) = 1.0; PML gives 0."""
    x, y = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([0, 0, 1])
    spec = "batch_contrastive(mining=semi_hard, mining_margin=1.5, pos_margin=0.5, neg_margin=2.5, normalize=false)"
    torch.testing.assert_close(lossdsl.compile(spec)(embeddings=x, labels=y), torch.tensor(1.0))
    miner = miners.TripletMarginMiner(margin=1.5, type_of_triplets="semihard", distance=distances.LpDistance(normalize_embeddings=False))
    pml_value = losses.ContrastiveLoss(pos_margin=0.5, neg_margin=2.5, distance=distances.LpDistance(normalize_embeddings=False))(x, y, miner(x, y))
    assert pml_value.item() == 0.0


def test_batch_contrastive_averages_each_part_apart():
    """Derived by hand: x = [0, 1, 3], labels [0, 0, 1], raw distances, pos_margin 0.5, neg_margin 2.5.

    Positive pairs (0, 1), (1, 0): d = 1, loss 0.5 each. Negative pairs (0, 2), (2, 0): d = 3, loss 0;
    (1, 2), (2, 1): d = 2, loss 0.5. mean_nonzero: 0.5 + 0.5 = 1.0; mean: 0.5 + 1.0 / 4 = 0.75;
    sum: 1.0 + 1.0 = 2.0."""
    x, y = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([0, 0, 1])
    for reduction, expected in {"mean_nonzero": 1.0, "mean": 0.75, "sum": 2.0}.items():
        spec = f"batch_contrastive(pos_margin=0.5, neg_margin=2.5, normalize=false, reduction={reduction})"
        torch.testing.assert_close(lossdsl.compile(spec)(embeddings=x, labels=y), torch.tensor(expected))


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3], [5], []], ids=["one-class", "all-distinct", "one", "empty"])
@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
def test_batch_contrastive_without_a_valid_pair_is_finite_with_finite_gradient(mining, labels):
    """One class: no negative pair; distinct labels: no positive pair. mining=all still scores the
    pairs there are, as PML does; mined, a pair needs a triplet, so there are none: 0, zero gradient.
    Checked against PML where it runs (it needs a sample)."""
    y = torch.tensor(labels, dtype=torch.long)
    x = torch.randn(len(labels), 3, dtype=torch.float64, requires_grad=True)
    loss = lossdsl.compile(f"batch_contrastive(mining={mining})")(embeddings=x, labels=y)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    if mining != "all" or len(labels) < 2:
        assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(x))
    if len(labels):
        theirs = losses.ContrastiveLoss()
        miner = pml_miner(mining, True)
        torch.testing.assert_close(loss, theirs(x, y, None if miner is None else miner(x, y)).to(loss.dtype))



@pytest.mark.parametrize("loss_name", ["triplet", "contrastive"])
@pytest.mark.parametrize("mining", ["all", "batch_hard", "semi_hard"])
def test_repeated_and_zero_embeddings_match_pml(mining, loss_name):
    """Ties in the distances (repeated embeddings: batch_hard's farthest and nearest are picked as PML's
    torch.max picks them), distance 0 (cdist's gradient there is 0, not NaN) and a zero embedding
    (unit length by F.normalize's eps)."""
    g = torch.Generator().manual_seed(31)
    base = torch.randn(4, 3, generator=g)
    x = torch.cat([base, base, base[:2], torch.zeros(1, 3)])
    y = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0, 1, 2, 1])
    if loss_name == "triplet":
        ours = lossdsl.compile(f"batch_triplet(mining={mining}, margin=0.3)")
        theirs = losses.TripletMarginLoss(margin=0.3)
    else:
        ours = lossdsl.compile(f"batch_contrastive(mining={mining}, pos_margin=0.1)")
        theirs = losses.ContrastiveLoss(pos_margin=0.1)
    assert_same(lambda e: ours(embeddings=e, labels=y), pml_loss(theirs, y, pml_miner(mining, True)), x)


# -- triplet(swap=true) ---------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("p", [1, 2, 3])
def test_triplet_swap_matches_torch(p, reduction, weighted):
    """p = 3 takes lossdsl's scaled norm, sample_weight its own reduction: both must still swap as torch does."""
    g = torch.Generator().manual_seed(7)
    anchor, positive, negative = (torch.randn(20, 4, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    weight = torch.rand(20, generator=g, dtype=torch.float64)
    spec = f"triplet(margin=0.7, p={p}, swap=true, reduction={reduction}{', sample_weight=w' if weighted else ''})"
    ours = lossdsl.compile(spec)(anchor=anchor, positive=positive, negative=negative, **({"w": weight} if weighted else {}))
    per_triplet = F.triplet_margin_loss(anchor, positive, negative, margin=0.7, p=p, swap=True, reduction="none")
    if weighted:
        per_triplet = per_triplet * weight
    expected = {"none": per_triplet, "sum": per_triplet.sum(),
                "mean": per_triplet.sum() / (weight.sum() if weighted else 20)}[reduction]
    torch.testing.assert_close(ours, expected)
    wrt = (anchor, positive, negative)
    for g_ours, g_ref in zip(torch.autograd.grad(ours.sum(), wrt), torch.autograd.grad(expected.sum(), wrt)):
        torch.testing.assert_close(g_ours, g_ref)


def test_triplet_swap_changes_the_loss_only_where_the_positive_is_nearer_the_negative():
    """Derived: a = 0, p = 2, n = 3 on a line: d_an = 3, d_pn = 1, so the swap scores
    relu(2 - 1 + 1) = 2 instead of relu(2 - 3 + 1) = 0."""
    a, p, n = torch.tensor([[0.0]]), torch.tensor([[2.0]]), torch.tensor([[3.0]])
    plain = lossdsl.compile("triplet()")(anchor=a, positive=p, negative=n)
    swapped = lossdsl.compile("triplet(swap=true)")(anchor=a, positive=p, negative=n)
    torch.testing.assert_close(plain, torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped, torch.tensor(2.0), atol=1e-5, rtol=0)


# -- docs/coming_from.md: each row of the pytorch-metric-learning table gives the peer's number -----


def _pml_rows() -> dict[str, str]:
    """The section's table: peer call (as written, backticks and all) -> the lossdsl spec."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "coming_from.md").read_text()
    section = text.split("## pytorch-metric-learning\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            peer, spec = [cell.strip() for cell in line.strip("|").split(" | ")][:2]
            rows[peer] = spec.strip("`")
    return rows


def _mined(loss, miner):
    return lambda z, y: loss(z, y, miner(z, y))


_SEMI_HARD = miners.TripletMarginMiner(margin=0.3, type_of_triplets="semihard")
PEERS = {  # the rows' peer calls, called as PML (embeddings, labels) or torch (anchor, positive, negative)
    "`TripletMarginLoss()`": losses.TripletMarginLoss(),
    "`TripletMarginLoss(margin=0.2)` with `BatchHardMiner()`": _mined(losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()),
    '`TripletMarginLoss(margin=0.2)` with `TripletMarginMiner(margin=0.3, type_of_triplets="semihard")`':
        _mined(losses.TripletMarginLoss(margin=0.2), _SEMI_HARD),
    "`TripletMarginLoss(margin=0.1, swap=True)`": losses.TripletMarginLoss(margin=0.1, swap=True),
    "`TripletMarginLoss(distance=LpDistance(normalize_embeddings=False))`":
        losses.TripletMarginLoss(distance=distances.LpDistance(normalize_embeddings=False)),
    "`TripletMarginLoss(reducer=MeanReducer())`": losses.TripletMarginLoss(reducer=reducers.MeanReducer()),
    "`TripletMarginLoss(reducer=SumReducer())`": losses.TripletMarginLoss(reducer=reducers.SumReducer()),
    "`ContrastiveLoss()`": losses.ContrastiveLoss(),
    "`ContrastiveLoss(pos_margin=0.1, neg_margin=0.9)` with `BatchHardMiner()`":
        _mined(losses.ContrastiveLoss(pos_margin=0.1, neg_margin=0.9), miners.BatchHardMiner()),
    '`ContrastiveLoss()` with `TripletMarginMiner(type_of_triplets="semihard")`':
        _mined(losses.ContrastiveLoss(), miners.TripletMarginMiner(type_of_triplets="semihard")),
    "`F.triplet_margin_loss(anchor, positive, negative)`": F.triplet_margin_loss,
    "`F.triplet_margin_loss(anchor, positive, negative, margin=0.5, p=1, swap=True)`":
        lambda anchor, positive, negative: F.triplet_margin_loss(anchor, positive, negative, margin=0.5, p=1, swap=True),
}


def test_the_docs_table_lists_the_rows_this_test_checks():
    assert set(_pml_rows()) == set(PEERS)


@pytest.mark.parametrize("peer", list(PEERS))
def test_each_docs_row_gives_the_peers_number(peer):
    spec = _pml_rows()[peer]
    loss_fn = lossdsl.compile(spec)
    if peer.startswith("`F."):
        g = torch.Generator().manual_seed(21)
        anchor, positive, negative = (torch.randn(16, 5, generator=g) for _ in range(3))
        torch.testing.assert_close(loss_fn(anchor=anchor, positive=positive, negative=negative),
                                   PEERS[peer](anchor, positive, negative), **TOLERANCE)
        return
    x, y = embeddings_and_labels(32, 4, seed=22)
    assert_same(lambda e: loss_fn(embeddings=e, labels=y), lambda e: PEERS[peer](e, y), x)
