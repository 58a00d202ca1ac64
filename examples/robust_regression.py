"""Linear regression with gross outliers: mse() against huber(delta=1.0) and mae().

    python examples/robust_regression.py

Synthetic data: y = 2 x1 - 1 x2 + 0.5 x3 + 1 plus Gaussian noise (sd 0.3), with three standard
normal features. In the training set, 10 % of the targets are gross errors: replaced by a value
drawn uniformly from [-30, 30], unrelated to the features. The same linear model is fitted
three times, full batch, with each spec. Squared error lets the outliers pull the fit: they
shrink its slopes by their share in expectation, shift its intercept, and add their spread to
every coefficient's error. Huber and absolute error grow only linearly in the residual, so the
outliers barely move them.

It prints the recovered coefficients next to the true ones, and the root-mean-square error on
clean held-out data. Set ``LOSSDSL_EXAMPLE_QUICK=1`` for a few-second run.
"""

import os

import torch

import lossdsl

QUICK = os.environ.get("LOSSDSL_EXAMPLE_QUICK") == "1"

SPECS = ("mse()", "huber(delta=1.0)", "mae()")
TRUE_WEIGHTS = (2.0, -1.0, 0.5)
TRUE_BIAS = 1.0
OUTLIER_SHARE = 0.10


def make_data(n: int, generator: torch.Generator, outliers: bool) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.randn(n, 3, generator=generator)
    targets = features @ torch.tensor(TRUE_WEIGHTS) + TRUE_BIAS + 0.3 * torch.randn(n, generator=generator)
    if outliers:
        corrupted = torch.randperm(n, generator=generator)[: int(OUTLIER_SHARE * n)]
        targets[corrupted] = 60 * torch.rand(len(corrupted), generator=generator) - 30
    return features, targets


def fit(spec: str, features: torch.Tensor, targets: torch.Tensor, steps: int) -> torch.nn.Linear:
    torch.manual_seed(0)  # the same initial weights for every spec
    model = torch.nn.Linear(3, 1)
    loss_fn = lossdsl.compile(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    # a decaying step size, so that mae (whose gradient never shrinks) settles on its optimum
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = loss_fn(pred=model(features).squeeze(1), target=targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return model


def main() -> None:
    torch.set_num_threads(1)  # a model this small runs faster on one thread
    generator = torch.Generator().manual_seed(0)
    n_train, steps = (300, 150) if QUICK else (1000, 1500)
    x_train, y_train = make_data(n_train, generator, outliers=True)
    x_test, y_test = make_data(2000, generator, outliers=False)

    models = {spec: fit(spec, x_train, y_train, steps) for spec in SPECS}

    print(f"{n_train} training points, {OUTLIER_SHARE:.0%} gross outliers; clean test data\n")
    header = f"{'':>12} {'true':>8} " + " ".join(f"{spec:>17}" for spec in SPECS)
    print(header)
    print("-" * len(header))
    names = [f"w{i + 1}" for i in range(len(TRUE_WEIGHTS))] + ["bias"]
    for i, (name, true) in enumerate(zip(names, TRUE_WEIGHTS + (TRUE_BIAS,))):
        values = []
        for model in models.values():
            coefficients = torch.cat([model.weight.detach().flatten(), model.bias.detach()])
            values.append(coefficients[i].item())
        print(f"{name:>12} {true:>8.3f} " + " ".join(f"{v:>17.3f}" for v in values))
    print("-" * len(header))
    with torch.no_grad():
        errors = [(model(x_test).squeeze(1) - y_test).pow(2).mean().sqrt().item() for model in models.values()]
    print(f"{'test RMSE':>12} {0.3:>8.3f} " + " ".join(f"{e:>17.3f}" for e in errors))
    print("\n(the 'true' test RMSE is the noise level, 0.3: the error of the true coefficients)")


if __name__ == "__main__":
    main()
