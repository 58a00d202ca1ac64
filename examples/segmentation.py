"""Semantic segmentation of small objects: ce() alone against dice() + ce().

    python examples/segmentation.py

Synthetic data: 32x32 single-channel images of Gaussian noise with two kinds of objects painted
in: one or two large bright discs (class 1) and a few small dark squares, 2 or 3 pixels wide
(class 2); everything else is background (class 0). The squares cover about 1 % of the pixels,
so per-pixel cross-entropy, dominated by background pixels, tends to give the faint, noisy
borderline pixels to the background. Dice scores each class by its overlap, whatever its size,
and adding it recovers more of the small objects.

A small fully convolutional net is trained twice, identically (same initial weights, same
batches) except for the spec; logits are [N, 3, 32, 32] and targets integer masks [N, 32, 32].
It prints each class's Dice and IoU on held-out images (over all their pixels together, from
the arg-max prediction). Set ``LOSSDSL_EXAMPLE_QUICK=1`` for a few-second run on less data.
"""

import os

import torch

import lossdsl

QUICK = os.environ.get("LOSSDSL_EXAMPLE_QUICK") == "1"

SPECS = ("ce()", "dice() + ce()")
CLASSES = ("background", "disc", "square")
SIZE = 32


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 1, SIZE, SIZE] and integer masks [n, SIZE, SIZE]."""
    rows = torch.arange(SIZE).view(SIZE, 1)
    cols = torch.arange(SIZE).view(1, SIZE)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 3, (), generator=generator))):
            radius = 4 + 4 * torch.rand((), generator=generator)
            cy, cx = (radius + (SIZE - 2 * radius) * torch.rand(2, generator=generator)).tolist()
            masks[i][(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] = 1
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            side = int(torch.randint(2, 4, (), generator=generator))
            y, x = torch.randint(0, SIZE - side + 1, (2,), generator=generator).tolist()
            masks[i, y : y + side, x : x + side] = 2
    level = torch.tensor([0.0, 1.0, -1.0])  # background, disc, square
    images = level[masks] + 0.9 * torch.randn(n, SIZE, SIZE, generator=generator)
    return images.unsqueeze(1), masks


def make_model() -> torch.nn.Module:
    def block(c_in: int, c_out: int, dilation: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation), torch.nn.ReLU()]

    return torch.nn.Sequential(*block(1, 16, 1), *block(16, 16, 1), *block(16, 16, 2), torch.nn.Conv2d(16, 3, 1))


def train(spec: str, images: torch.Tensor, masks: torch.Tensor, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)  # the same initial weights and batch order for every spec
    model = make_model()
    loss_fn = lossdsl.compile(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for batch in torch.randperm(len(masks)).split(32):
            loss = loss_fn(pred=model(images[batch]), target=masks[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def scores(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> list[tuple[float, float]]:
    """(Dice, IoU) of each class over all the pixels of the given images."""
    with torch.no_grad():
        predicted = model(images).argmax(dim=1)
    result = []
    for c in range(len(CLASSES)):
        p, g = predicted == c, masks == c
        overlap, p_size, g_size = (p & g).sum().item(), p.sum().item(), g.sum().item()
        result.append((2 * overlap / max(p_size + g_size, 1), overlap / max(p_size + g_size - overlap, 1)))
    return result


def main() -> None:
    torch.set_num_threads(1)  # a model this small runs faster on one thread
    generator = torch.Generator().manual_seed(0)
    n_train, n_test, epochs = (64, 32, 1) if QUICK else (1000, 500, 5)
    x_train, y_train = make_data(n_train, generator)
    x_test, y_test = make_data(n_test, generator)
    share = torch.bincount(y_test.flatten(), minlength=len(CLASSES)) / y_test.numel()

    results = {spec: scores(train(spec, x_train, y_train, epochs), x_test, y_test) for spec in SPECS}

    print(f"held-out Dice / IoU per class ({n_test} test images, {n_train} training images, {epochs} epochs)\n")
    header = f"{'class':>10} {'pixels':>7} " + " ".join(f"{spec + ' Dice':>18} {'IoU':>6}" for spec in SPECS)
    print(header)
    print("-" * len(header))
    for c, name in enumerate(CLASSES):
        row = " ".join(f"{results[spec][c][0]:>18.3f} {results[spec][c][1]:>6.3f}" for spec in SPECS)
        print(f"{name:>10} {share[c].item():>7.1%} {row}")


if __name__ == "__main__":
    main()
