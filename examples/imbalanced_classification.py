"""Long-tailed classification: plain, class-balanced and focal cross-entropy compared.

    python examples/imbalanced_classification.py

Synthetic data: five classes with frequencies 60/20/10/7/3 %, each a Gaussian blob in 4-D
whose mean sits close enough to its neighbours' that the blobs overlap. A small MLP is trained
three times, identically (same initial weights, same batches) except for the loss spec:

- ``ce()``: plain cross-entropy, which learns the prior and sacrifices the rare classes;
- ``ce(weight=balanced)``: each class weighted by ``n / (C * count_c)`` (the counts are set
  from the training labels with ``loss_fn.fit(target=...)``);
- ``focal(gamma=2.0)``: softmax focal loss, which down-weights the easy (mostly majority)
  examples. It weighs by difficulty, not by frequency, so it moves the rare classes' recall
  less than class weights do: expect a few points on the rarest class, not tens.

It prints the recall of each class on a held-out split drawn from the same distribution, and
the balanced accuracy (the mean of the per-class recalls). Set ``LOSSDSL_EXAMPLE_QUICK=1`` for
a few-second run on less data.
"""

import math
import os

import torch

import lossdsl

QUICK = os.environ.get("LOSSDSL_EXAMPLE_QUICK") == "1"

FREQUENCIES = (0.60, 0.20, 0.10, 0.07, 0.03)
SPECS = {
    "ce": "ce()",
    "balanced": "ce(weight=balanced)",
    "focal": "focal(gamma=2.0)",
}


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points: labels drawn with FREQUENCIES, features from one unit Gaussian per class."""
    num_classes = len(FREQUENCIES)
    labels = torch.multinomial(torch.tensor(FREQUENCIES), n, replacement=True, generator=generator)
    angles = torch.arange(num_classes) * 2 * math.pi / num_classes
    means = torch.zeros(num_classes, 4)
    means[:, 0], means[:, 1] = 2.0 * torch.cos(angles), 2.0 * torch.sin(angles)
    features = means[labels] + torch.randn(n, 4, generator=generator)
    return features, labels


def train(spec: str, features: torch.Tensor, labels: torch.Tensor, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights and batch order for every spec
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    loss_fn = lossdsl.compile(spec)
    loss_fn.fit(target=labels)  # class counts for weight=balanced; the other specs keep no statistics
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels)).split(256):
            loss = loss_fn(pred=model(features[batch]), target=labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def recalls(model: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> list[float]:
    with torch.no_grad():
        predicted = model(features).argmax(dim=1)
    return [(predicted[labels == c] == c).float().mean().item() for c in range(len(FREQUENCIES))]


def main() -> None:
    torch.set_num_threads(1)  # a model this small runs faster on one thread
    generator = torch.Generator().manual_seed(0)
    n_train, n_test, epochs = (1000, 1000, 3) if QUICK else (8000, 8000, 15)
    x_train, y_train = make_data(n_train, generator)
    x_test, y_test = make_data(n_test, generator)

    results = {}
    for name, spec in SPECS.items():
        results[name] = recalls(train(spec, x_train, y_train, epochs), x_test, y_test)

    counts = torch.bincount(y_test, minlength=len(FREQUENCIES)).tolist()
    print(f"held-out recall per class ({n_test} test points, {n_train} training points, {epochs} epochs)\n")
    header = f"{'class':>5} {'freq':>5} {'n':>5} " + " ".join(f"{spec:>20}" for spec in SPECS.values())
    print(header)
    print("-" * len(header))
    for c, frequency in enumerate(FREQUENCIES):
        row = " ".join(f"{results[name][c]:>20.3f}" for name in SPECS)
        print(f"{c:>5} {frequency:>5.0%} {counts[c]:>5} {row}")
    print("-" * len(header))
    row = " ".join(f"{sum(r) / len(r):>20.3f}" for r in results.values())
    print(f"{'balanced accuracy':>17} {row}")


if __name__ == "__main__":
    main()
