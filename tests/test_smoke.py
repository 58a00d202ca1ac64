import torch

import lossdsl

CARD = "ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)"


def test_card_spec_runs_and_reports_terms():
    loss_fn = lossdsl.compile(CARD)
    assert loss_fn.inputs == ("pred", "target", "sex", "y")
    logits = torch.randn(32, requires_grad=True)
    loss = loss_fn(pred=logits, target=torch.randint(0, 2, (32,)), sex=torch.randint(0, 2, (32,)),
                   y=torch.full((32,), 110.0))
    loss.backward()
    terms = loss_fn.last_terms
    assert set(terms) == {"ce", "fairness", "soft_bound", "total"}
    torch.testing.assert_close(terms["soft_bound"], torch.tensor(100.0))
    torch.testing.assert_close(terms["total"], terms["ce"] + 0.1 * terms["fairness"] + terms["soft_bound"])
    assert torch.isfinite(logits.grad).all()
