"""Sequence terms: ``token_ce`` (token-level cross-entropy over [B, T, V]) and ``linear_ce`` (the
cross-entropy from hidden states and the output weight, computed in chunks).

References: ``F.cross_entropy`` on the flattened tokens, which is what Hugging Face's causal-LM loss
computes (transformers/loss/loss_utils.py, ``ForCausalLMLoss``: shift, flatten, ``reduction="sum"``
divided by ``num_items_in_batch`` when given, else ``reduction="mean"``), and
``F.cross_entropy(hidden @ W.T, target)`` for linear_ce.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lossdsl

# -- token_ce -------------------------------------------------------------------------------------


def _tokens(b: int, t: int, v: int, seed: int = 0, pad_from: list[int] | None = None):
    """Logits [B, T, V] that take gradients, and ids [B, T] padded with -100 from ``pad_from[i]`` on."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g).requires_grad_()
    ids = torch.randint(0, v, (b, t), generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g) if pad_from is None else torch.tensor(pad_from)
    return logits, ids.masked_fill(torch.arange(t) >= lengths[:, None], -100)


def _value_and_grad(loss: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_ce_is_cross_entropy_over_the_flattened_non_padding_tokens(smoothing):
    logits, ids = _tokens(4, 9, 11, pad_from=[9, 5, 1, 3])
    ours = _value_and_grad(lossdsl.compile(f"token_ce(label_smoothing={smoothing})")(logits, ids), logits)
    expected = _value_and_grad(F.cross_entropy(logits.flatten(0, 1), ids.flatten(), label_smoothing=smoothing), logits)
    torch.testing.assert_close(ours, expected)


def test_token_ce_shift_is_hugging_faces_causal_lm_alignment():
    """HF's ForCausalLMLoss: logits[..., :-1, :] predict labels[..., 1:]."""
    logits, ids = _tokens(3, 7, 5, seed=1)
    ours = _value_and_grad(lossdsl.compile("token_ce(shift=true)")(logits, ids), logits)
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, 5), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(ours, _value_and_grad(shifted, logits))
    assert ours[1][:, -1].abs().sum() == 0  # the last position predicts nothing


def test_token_ce_per_sequence_normalisation_averages_the_sequences_that_have_tokens():
    logits, ids = _tokens(4, 6, 5, seed=2, pad_from=[6, 2, 0, 4])  # the third sequence is all padding
    ours = _value_and_grad(lossdsl.compile("token_ce(normalize=sequences)")(logits, ids), logits)
    means = [F.cross_entropy(logits[i], ids[i]) for i in (0, 1, 3)]
    torch.testing.assert_close(ours, _value_and_grad(torch.stack(means).mean(), logits))


@pytest.mark.parametrize("normalize", ["tokens", "sequences"])
def test_accumulated_micro_batches_with_the_global_count_equal_the_whole_batch(normalize):
    """transformers#34191: four micro-batches' losses, each divided by the whole batch's count, add
    up to the whole batch's loss (values and gradients), although their token counts differ."""
    logits, ids = _tokens(8, 10, 13, seed=3, pad_from=[10, 1, 4, 7, 2, 10, 0, 5])
    whole = _value_and_grad(lossdsl.compile(f"token_ce(normalize={normalize}, shift=true)")(logits, ids), logits)
    shifted = ids[:, 1:] != -100
    count = shifted.sum() if normalize == "tokens" else shifted.any(dim=1).sum()
    loss_fn = lossdsl.compile(f"token_ce(normalize={normalize}, shift=true, num_items=n)")
    accumulated = sum(loss_fn(logits[i:i + 2], ids[i:i + 2], n=count) for i in range(0, 8, 2))
    value, grad = _value_and_grad(accumulated, logits)
    torch.testing.assert_close(value, whole[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, whole[1], rtol=0, atol=1e-6)
    # and what the bug computed, each micro-batch's own mean averaged, is another number
    naive = sum(lossdsl.compile(f"token_ce(normalize={normalize}, shift=true)")(logits[i:i + 2], ids[i:i + 2])
                for i in range(0, 8, 2)) / 4
    assert (naive - whole[0]).abs() > 1e-3


def test_token_ce_on_an_all_padding_batch_is_zero_with_zero_gradients():
    logits = torch.randn(2, 4, 6, requires_grad=True)
    ids = torch.full((2, 4), -100)
    for spec, extra in [("token_ce()", {}), ("token_ce(normalize=sequences)", {}),
                        ("token_ce(num_items=n)", {"n": torch.tensor(0)}), ("token_ce(shift=true)", {})]:
        value, grad = _value_and_grad(lossdsl.compile(spec)(logits, ids, **extra), logits)
        assert value.item() == 0.0, spec
        assert torch.equal(grad, torch.zeros_like(grad)), spec


def test_token_ce_reductions_sum_and_none():
    logits, ids = _tokens(3, 5, 4, seed=4)
    flat = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view(3, 5)
    torch.testing.assert_close(lossdsl.compile("token_ce(reduction=none)")(logits, ids), flat)
    torch.testing.assert_close(lossdsl.compile("token_ce(reduction=sum)")(logits, ids), flat.sum())


def test_token_ce_half_precision_is_computed_in_float32():
    logits, ids = _tokens(2, 6, 7, seed=5)
    half = logits.detach().to(torch.bfloat16)
    value = lossdsl.compile("token_ce()")(half, ids)
    assert value.dtype == torch.bfloat16
    expected = F.cross_entropy(half.float().flatten(0, 1), ids.flatten())
    torch.testing.assert_close(value.float(), expected, rtol=1e-2, atol=0)


@pytest.mark.parametrize(("inputs", "message"), [
    ({"pred": torch.randn(4, 5), "target": torch.zeros(4, dtype=torch.long)}, "input 'pred' of token_ce.*expected logits \\[B, T, V\\]"),
    ({"pred": torch.randn(2, 3, 5), "target": torch.zeros(2, 4, dtype=torch.long)}, "input 'target'.*shape \\(2, 3\\)"),
    ({"pred": torch.randn(2, 3, 5), "target": torch.zeros(2, 3)}, "input 'target'.*integer token ids"),
    ({"pred": torch.randn(2, 3, 5), "target": torch.zeros(2, 3, dtype=torch.long), "n": torch.ones(2)},
     "input 'n'.*one count"),
])
def test_token_ce_bad_inputs_are_e402_naming_the_input(inputs, message):
    spec = "token_ce(num_items=n)" if "n" in inputs else "token_ce()"
    with pytest.raises(lossdsl.LossSpecError, match=message) as caught:
        lossdsl.compile(spec)(**inputs)
    assert caught.value.diagnostics[0].code == "E402"


def test_token_ce_traces_fullgraph_and_matches_eager():
    logits, ids = _tokens(2, 5, 6, seed=6)
    loss_fn = lossdsl.compile("token_ce(shift=true, num_items=n)")
    compiled = torch.compile(loss_fn, fullgraph=True, backend="eager")
    n = torch.tensor(5)
    torch.testing.assert_close(compiled(logits, ids, n=n), loss_fn(logits, ids, n=n))


def test_token_ce_per_sample_is_each_sequences_token_mean():
    logits, ids = _tokens(3, 6, 5, seed=7, pad_from=[6, 0, 2])
    expected = torch.stack([F.cross_entropy(logits[0], ids[0]), torch.zeros(()), F.cross_entropy(logits[2], ids[2])])
    for normalize in ("tokens", "sequences"):
        torch.testing.assert_close(lossdsl.compile(f"token_ce(normalize={normalize})").per_sample(logits, ids), expected)


# -- linear_ce ------------------------------------------------------------------------------------


def _hidden(n: int, d: int, v: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_()
    head = (torch.randn(v, d, generator=g, dtype=dtype) / d**0.5).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g)
    return hidden, head, target


def _grads(loss: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (loss.detach(), *torch.autograd.grad(loss, tensors))


@pytest.mark.parametrize("options", [
    {}, {"label_smoothing": 0.1}, {"ignore_index": -100}, {"ignore_index": 3, "label_smoothing": 0.2},
    {"reduction": "sum"},
])
@pytest.mark.parametrize("chunk", [7, 64, "auto"])
def test_linear_ce_equals_cross_entropy_of_the_whole_logits(options, chunk):
    """Values and gradients w.r.t. hidden and head, with a chunk that does not divide N (7), one
    larger than N (64) and the default."""
    hidden, head, target = _hidden(45, 16, 30, seed=1)
    target[[2, 9, 40]] = options.get("ignore_index", -100)
    arguments = ", ".join([f"chunk_size={chunk}", *(f"{k}={v}" for k, v in options.items())])
    ours = _grads(lossdsl.compile(f"linear_ce({arguments})")(hidden=hidden, target=target, head=head), hidden, head)
    reference = F.cross_entropy(hidden @ head.T, target, **options)
    for mine, theirs in zip(ours, _grads(reference, hidden, head)):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_linear_ce_with_a_bias_and_sequences_of_hidden_states():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    head = torch.randn(20, 8, generator=g, requires_grad=True)
    bias = torch.randn(20, generator=g, requires_grad=True)
    target = torch.randint(0, 20, (3, 5), generator=g)
    target[0, 3:] = -100
    loss_fn = lossdsl.compile("linear_ce(bias=b, chunk_size=4)")
    ours = _grads(loss_fn(hidden=hidden, target=target, head=head, b=bias), hidden, head, bias)
    reference = F.cross_entropy((hidden @ head.T + bias).flatten(0, 1), target.flatten())
    for mine, theirs in zip(ours, _grads(reference, hidden, head, bias)):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    each = lossdsl.compile("linear_ce(bias=b, reduction=none)")(hidden=hidden, target=target, head=head, b=bias)
    expected = F.cross_entropy((hidden @ head.T + bias).transpose(1, 2), target, reduction="none")
    torch.testing.assert_close(each, expected, rtol=1e-5, atol=1e-5)


def test_linear_ce_keeps_no_logits_for_the_backward():
    """What autograd saves for the backward holds no [N, V] tensor (nor anything of N * V values):
    F.cross_entropy(h @ W.T, y) saves the logits' log-softmax, [N, V]."""
    hidden, head, target = _hidden(64, 8, 500, seed=3)
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = lossdsl.compile("linear_ce(chunk_size=16)")(hidden=hidden, target=target, head=head)
    assert max(saved) <= 500 * 8 < 64 * 500  # the head [V, D] is the largest thing kept
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        F.cross_entropy(hidden @ head.T, target)
    assert max(saved) == 64 * 500  # the reference keeps the logits
    loss.backward()  # and the recomputing backward runs from what was kept
    assert torch.isfinite(head.grad).all()


def test_linear_ce_with_every_target_ignored_is_zero_with_zero_gradients():
    hidden, head, target = _hidden(10, 4, 6, seed=4)
    target[:] = -100
    value, grad_hidden, grad_head = _grads(lossdsl.compile("linear_ce(chunk_size=3)")(hidden=hidden, target=target, head=head),
                                           hidden, head)
    assert value.item() == 0.0
    assert torch.equal(grad_hidden, torch.zeros_like(grad_hidden)) and torch.equal(grad_head, torch.zeros_like(grad_head))


def test_linear_ce_in_bfloat16_is_close_to_float32():
    hidden, head, target = _hidden(32, 16, 40, seed=5)
    low = lossdsl.compile("linear_ce(chunk_size=8)")(hidden=hidden.detach().bfloat16(), target=target,
                                                    head=head.detach().bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), F.cross_entropy(hidden @ head.T, target).detach(), rtol=2e-2, atol=0)


@pytest.mark.parametrize(("inputs", "message"), [
    ({"hidden": torch.randn(4)}, "input 'hidden' of linear_ce.*hidden states \\[N, D\\]"),
    ({"head": torch.randn(6, 5)}, "input 'head'.*output weight \\[V, 3\\]"),
    ({"head": torch.randn(6, 3, dtype=torch.float64)}, "input 'head'.*torch.float64 but the hidden states are torch.float32"),
    ({"target": torch.zeros(5, dtype=torch.long)}, "input 'target'.*shape \\(4,\\)"),
    ({"target": torch.zeros(4)}, "input 'target'.*integer class ids"),
])
def test_linear_ce_bad_inputs_are_e402_naming_the_input(inputs, message):
    given = {"hidden": torch.randn(4, 3), "target": torch.zeros(4, dtype=torch.long), "head": torch.randn(6, 3), **inputs}
    with pytest.raises(lossdsl.LossSpecError, match=message) as caught:
        lossdsl.compile("linear_ce()")(**given)
    assert caught.value.diagnostics[0].code == "E402"


def test_linear_ce_traces_fullgraph_and_matches_eager():
    """No host synchronisation or graph break, the chunked Function included; gradients too."""
    hidden, head, target = _hidden(20, 4, 9, seed=6)
    target[5] = -100
    loss_fn = lossdsl.compile("linear_ce(chunk_size=6, label_smoothing=0.1)")
    compiled = torch.compile(loss_fn, fullgraph=True, backend="eager")
    ours = _grads(compiled(hidden=hidden, target=target, head=head), hidden, head)
    for mine, eager in zip(ours, _grads(loss_fn(hidden=hidden, target=target, head=head), hidden, head)):
        torch.testing.assert_close(mine, eager)


def test_the_large_vocabulary_benchmark_runs_and_linear_ce_keeps_less(capsys):
    """benchmarks/large_vocab.py at a toy size: it checks both sides agree, then measures."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "large_vocab.py"
    spec = importlib.util.spec_from_file_location("large_vocab", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ratios = module.main(["--device", "cpu", "--n", "32", "--d", "8", "--v", "512", "--reps", "1", "--chunk", "8"])
    # the reference keeps the [32, 512] float32 log-softmax (64 KiB); linear_ce the log-sum-exp [32] and targets
    assert ratios["memory_ratio"] > 50
    assert "same loss and gradients" in capsys.readouterr().out
