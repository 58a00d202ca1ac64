"""Train a tiny model with the card's spec and print the per-term values.

    python examples/quickstart.py

Synthetic data: a binary label that depends on five features, a protected
attribute ``sex`` that leaks into the features, and a second model head
``y`` (say, a predicted exposure) that must stay at or below 100. Set
``LOSSDSL_EXAMPLE_QUICK=1`` for a run of a few seconds on less data.
"""

import os

import torch

import lossdsl

SPEC = "ce(weight=balanced) + 0.1*fairness(fpr_gap, group=sex) + soft_bound(y<=100)"
QUICK = os.environ.get("LOSSDSL_EXAMPLE_QUICK") == "1"


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sex = torch.randint(0, 2, (n,), generator=generator)
    features = torch.randn(n, 5, generator=generator)
    features[:, 0] += 0.8 * sex  # the attribute leaks into a feature
    score = features @ torch.tensor([1.5, -1.0, 0.5, 0.0, 0.3]) - 1.0
    labels = (score + 0.5 * torch.randn(n, generator=generator) > 0).long()  # about 30% positives
    return features, labels, sex


def main() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    n_samples, epochs = (2048, 5) if QUICK else (4096, 20)
    features, labels, sex = make_data(n_samples, generator)

    model = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    loss_fn = lossdsl.compile(SPEC)
    print(f"spec:   {SPEC}\ninputs: {', '.join(loss_fn.inputs)}\n")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    print(f"{'epoch':>5} " + " ".join(f"{name:>10}" for name in ("ce", "fairness", "soft_bound", "total")))
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(labels)).split(256):
            out = model(features[batch])
            logits, exposure = out[:, 0], 60 + 100 * torch.sigmoid(out[:, 1] + 1)
            loss = loss_fn(pred=logits, target=labels[batch], sex=sex[batch], y=exposure)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch in (1, epochs) or epoch % 5 == 0:
            values = loss_fn.last_terms
            print(f"{epoch:>5} " + " ".join(f"{values[k].item():>10.4f}" for k in ("ce", "fairness", "soft_bound", "total")))

    with torch.no_grad():
        out = model(features)
        predicted = (out[:, 0] > 0).long()
        accuracy = (predicted == labels).float().mean().item()
        exposure = 60 + 100 * torch.sigmoid(out[:, 1] + 1)
    print(f"\naccuracy {accuracy:.3f}; largest exposure {exposure.max().item():.1f} (bound 100)")


if __name__ == "__main__":
    main()
