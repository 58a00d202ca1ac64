"""``lossdsl.integrations.hf.compute_loss_func``: a compiled loss with the signature of
transformers' ``Trainer(compute_loss_func=...)``, ``(outputs, labels, num_items_in_batch=None)``.

References: ``F.cross_entropy`` on the shifted, flattened tokens, which is Hugging Face's
``ForCausalLMLoss`` (its sum divided by ``num_items_in_batch`` when given, transformers#34191), and,
when transformers is installed, a tiny GPT-2's own loss. The tests without transformers stand in
for its ``ModelOutput`` with a dict and a namespace (``outputs.logits`` or ``outputs["logits"]``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import lossdsl
from lossdsl.integrations.hf import compute_loss_func


def _tokens(b: int, t: int, v: int, seed: int, pad_from: list[int]):
    """Logits [B, T, V] that take gradients, and labels [B, T] padded with -100 from ``pad_from[i]`` on."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g).requires_grad_()
    ids = torch.randint(0, v, (b, t), generator=g)
    return logits, ids.masked_fill(torch.arange(t) >= torch.tensor(pad_from)[:, None], -100)


def _causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hugging Face's ForCausalLMLoss without num_items_in_batch: the mean over the shifted tokens."""
    v = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("wrap", [lambda logits: SimpleNamespace(logits=logits), lambda logits: {"logits": logits}])
def test_four_accumulated_micro_batches_add_up_to_the_whole_batch(wrap):
    """transformers#34191: each micro-batch's loss divided by the whole batch's count of tokens
    (num_items_in_batch, as the Trainer counts it over the accumulation steps): their sum is the
    whole batch's token mean, values and gradients to 1e-6, although the micro-batches hold
    different numbers of tokens."""
    logits, labels = _tokens(8, 10, 13, seed=3, pad_from=[10, 1, 4, 7, 2, 10, 0, 5])
    whole = _causal_lm_loss(logits, labels)
    (whole_grad,) = torch.autograd.grad(whole, logits)
    loss = compute_loss_func("token_ce(shift=true, num_items=num_items_in_batch)")
    global_count = (labels[:, 1:] != -100).sum()  # 39 tokens after the shift
    accumulated = sum(loss(wrap(logits[i:i + 2]), labels[i:i + 2], num_items_in_batch=global_count)
                      for i in range(0, 8, 2))
    (grad,) = torch.autograd.grad(accumulated, logits)
    torch.testing.assert_close(accumulated.detach(), whole.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(grad, whole_grad, rtol=0, atol=1e-6)
    # each micro-batch's own mean, averaged over the four (the bug), is another number
    naive = sum(_causal_lm_loss(logits[i:i + 2], labels[i:i + 2]) for i in range(0, 8, 2)) / 4
    assert (naive - whole).abs() > 1e-3


def test_an_int_count_and_no_count_give_hugging_faces_numbers():
    logits, labels = _tokens(3, 6, 7, seed=4, pad_from=[6, 3, 2])
    loss = compute_loss_func("token_ce(shift=true, num_items=n)")
    # without num_items_in_batch (evaluation): the micro-batch's own token mean, as ForCausalLMLoss
    torch.testing.assert_close(loss({"logits": logits}, labels), _causal_lm_loss(logits, labels))
    # a Python int: the sum over the tokens divided by it
    v = logits.shape[-1]
    summed = F.cross_entropy(logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(loss({"logits": logits}, labels, num_items_in_batch=20), summed / 20)


def test_a_token_term_without_num_items_is_e403_when_the_trainer_gives_a_count():
    logits, labels = _tokens(2, 5, 4, seed=5, pad_from=[5, 3])
    loss = compute_loss_func("token_ce(shift=true)")
    torch.testing.assert_close(loss({"logits": logits}, labels), _causal_lm_loss(logits, labels))
    with pytest.raises(lossdsl.LossSpecError, match=r"E403.*token_ce\(\) at <spec>:1:1 divides by its micro-batch's own"
                       r".*num_items=num_items_in_batch"):
        loss({"logits": logits}, labels, num_items_in_batch=torch.tensor(5))


def test_per_sequence_normalisation_refuses_a_token_count_unless_mapped():
    logits, labels = _tokens(4, 5, 4, seed=6, pad_from=[5, 3, 0, 2])
    loss = compute_loss_func("token_ce(normalize=sequences, num_items=n)")
    with pytest.raises(lossdsl.LossSpecError, match=r"E403.*averages over sequences.*inputs=\{'n': \.\.\.\}"):
        loss({"logits": logits}, labels, num_items_in_batch=torch.tensor(10))
    # mapped: the count of sequences with a token (3 here: the third is all padding)
    mapped = compute_loss_func("token_ce(normalize=sequences, num_items=n)",
                               inputs={"n": lambda outputs, labels: (labels != -100).any(dim=1).sum()})
    means = torch.stack([F.cross_entropy(logits[i], labels[i]) for i in (0, 1, 3)])
    torch.testing.assert_close(mapped({"logits": logits}, labels, num_items_in_batch=10), means.mean())
    torch.testing.assert_close(loss({"logits": logits}, labels), means.mean())  # no count: its own


def test_inputs_maps_spec_inputs_to_output_keys_attributes_and_functions():
    """A sequence classifier with a regression head: ``pred`` from ``logits``, ``score`` from an
    attribute of another name, ``goal`` computed from the labels."""
    g = torch.Generator().manual_seed(7)
    logits, value = torch.randn(6, 3, generator=g), torch.randn(6, generator=g)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    outputs = SimpleNamespace(logits=logits, value_head=value)
    loss = compute_loss_func("ce() + 0.5 * mse(pred=score, target=goal)",
                             inputs={"score": "value_head", "goal": lambda outputs, labels: labels.float() / 2})
    expected = F.cross_entropy(logits, labels) + 0.5 * F.mse_loss(value, labels.float() / 2)
    torch.testing.assert_close(loss(outputs, labels), expected)
    assert set(loss.last_terms) == {"ce", "mse", "total"}
    torch.testing.assert_close(loss.last_terms["mse"], F.mse_loss(value, labels.float() / 2))


def test_a_missing_output_or_a_mapping_of_an_unread_input_is_e401():
    with pytest.raises(lossdsl.LossSpecError, match=r"E401.*input 'pred' is read from the model's outputs as 'logits'"
                       r".*did you mean 'logit'\?"):
        compute_loss_func("ce()")({"logit": torch.randn(2, 3)}, torch.tensor([0, 1]))
    with pytest.raises(lossdsl.LossSpecError, match=r"E401.*inputs= maps 'prd'.*did you mean 'pred'\?"):
        compute_loss_func("ce()", inputs={"prd": "logits"})
    with pytest.raises(TypeError, match="compute_loss_func takes spec text or a LossModule"):
        compute_loss_func(3)


def test_a_compiled_module_is_used_as_it_is():
    loss_fn = lossdsl.compile("token_ce(num_items=count)")
    loss = compute_loss_func(loss_fn)
    assert loss.loss_fn is loss_fn
    logits, labels = _tokens(2, 4, 5, seed=8, pad_from=[4, 2])
    v = logits.shape[-1]
    summed = F.cross_entropy(logits.reshape(-1, v), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss({"logits": logits}, labels, num_items_in_batch=torch.tensor(12)), summed / 12)


def test_a_tiny_gpt2_under_transformers_gives_its_own_loss():
    """With transformers installed: GPT-2's loss (ForCausalLMLoss), with and without num_items_in_batch."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=31, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 31, (3, 9))
    labels = ids.masked_fill(torch.arange(9) >= torch.tensor([9, 5, 2])[:, None], -100)
    loss = compute_loss_func("token_ce(shift=true, num_items=num_items_in_batch)")
    outputs = model(input_ids=ids)
    torch.testing.assert_close(loss(outputs, labels), model(input_ids=ids, labels=labels).loss)
    count = torch.tensor(25)
    torch.testing.assert_close(loss(outputs, labels, num_items_in_batch=count),
                               model(input_ids=ids, labels=labels, num_items_in_batch=count).loss)


def test_under_the_trainer_four_accumulation_steps_take_the_whole_batchs_sgd_step(tmp_path):
    """With transformers installed: Trainer(compute_loss_func=..., gradient_accumulation_steps=4)
    on 8 sequences of different lengths takes one SGD step (lr 1, no clipping) equal to the one
    the whole batch's token mean gives (HF's loss on the 8 at once). Dropout off; each sequence's
    first label is -100 (a masked prompt token), so the Trainer's count of labels, before the shift
    or after it (versions differ), is the shifted tokens' count."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer's
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=31, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 31, (8, 9))
    labels = ids.masked_fill(torch.arange(9) >= torch.tensor([9, 2, 4, 7, 3, 9, 5, 6])[:, None], -100)
    labels[:, 0] = -100
    reference = transformers.GPT2LMHeadModel(config)
    reference.load_state_dict(model.state_dict())
    reference.train()
    reference(input_ids=ids, labels=labels).loss.backward()
    expected = {name: p.detach() - p.grad for name, p in reference.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4, max_steps=1,
        learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no", seed=0, dataloader_drop_last=False)
    dataset = [{"input_ids": ids[i], "labels": labels[i]} for i in range(8)]
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset,
                                   compute_loss_func=compute_loss_func("token_ce(shift=true, num_items=n)"))
    trainer.train()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=1e-5, msg=name)
