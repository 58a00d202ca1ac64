"""A variational autoencoder whose objective is a two-term lossdsl spec.

    python examples/vae.py

Synthetic data: 8x8 grey-level "glyphs" drawn procedurally (a bar, a column, a box, a plus and a
diagonal, each shifted by up to one pixel, with varying stroke intensity and pixel noise). A
small VAE with a 4-D latent space is trained with

    let recon_loss = mse(pred=recon, target=x)
    let kl = kl_normal(mu=mu, logvar=logvar)
    loss = recon_loss + 0.01 * warmup(800) * kl

``mse`` averages the squared error over the 64 pixels and the batch; ``kl_normal`` sums the KL
divergence over the latent dimensions and averages it over the batch, so the weight 0.01 sets
the balance between the two (a beta-VAE: a larger weight buys a smoother latent space with
blurrier reconstructions; at 0.02 the KL still holds about 1.7 nats and the held-out MSE is
0.033 against 0.095 for the mean image). ``warmup(800)`` ramps the KL weight up from 0 over
the first 800 training steps (about ten epochs), the usual guard against an early collapse; the
step counter lives in the loss module.

Every few epochs it prints the epoch means of both terms, read from ``loss_fn.last_terms``;
then the error on held-out glyphs, the KL of each latent dimension, and one held-out glyph, its
reconstruction, and glyphs decoded from the prior; last, the summary of ``lossdsl.watch``, which
checked each term's share of the gradient along the way (and would have warned of a collapse).
Set ``LOSSDSL_EXAMPLE_QUICK=1`` for a few-second run on less data.
"""

import os

import torch

import lossdsl

QUICK = os.environ.get("LOSSDSL_EXAMPLE_QUICK") == "1"

SPEC = """
let recon_loss = mse(pred=recon, target=x)
let kl = kl_normal(mu=mu, logvar=logvar)
loss = recon_loss + 0.01 * warmup(800) * kl   # the KL weight ramps up over the first 800 steps
"""

LATENT = 4


def templates() -> torch.Tensor:
    """Five 8x8 glyphs drawn in the middle of the image, leaving a pixel of margin for shifts."""
    glyphs = torch.zeros(5, 8, 8)
    glyphs[0, 3:5, 1:7] = 1  # a bar
    glyphs[1, 1:7, 3:5] = 1  # a column
    glyphs[2, 1:7, 1:7] = 1  # a box ...
    glyphs[2, 2:6, 2:6] = 0  # ... hollow
    glyphs[3, 3:5, 1:7] = 1  # a plus
    glyphs[3, 1:7, 3:5] = 1
    glyphs[4, torch.arange(1, 7), torch.arange(1, 7)] = 1  # a diagonal
    return glyphs


def make_data(n: int, generator: torch.Generator) -> torch.Tensor:
    glyphs = templates()[torch.randint(0, 5, (n,), generator=generator)]
    shifts = torch.randint(-1, 2, (n, 2), generator=generator)
    images = torch.stack([torch.roll(g, (int(dy), int(dx)), dims=(0, 1)) for g, (dy, dx) in zip(glyphs, shifts)])
    intensity = 0.6 + 0.4 * torch.rand(n, 1, 1, generator=generator)
    images = images * intensity + 0.05 * torch.randn(n, 8, 8, generator=generator)
    return images.clamp(0, 1).reshape(n, 64)


class VAE(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 2 * LATENT))
        self.decoder = torch.nn.Sequential(
            torch.nn.Linear(LATENT, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # the reparameterisation trick
        return self.decoder(z), mu, logvar


def ascii_art(images: list[torch.Tensor]) -> str:
    """Images [64] side by side, one character per pixel."""
    shades = " .:-=+*#%@"
    rows = []
    for r in range(8):
        cells = ["".join(shades[min(int(v * 10), 9)] * 2 for v in image.reshape(8, 8)[r].tolist()) for image in images]
        rows.append("   ".join(cells).rstrip())
    return "\n".join(rows)


def main() -> None:
    torch.set_num_threads(1)  # a model this small runs faster on one thread
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    n_train, epochs, every = (500, 2, 1) if QUICK else (10000, 40, 5)
    x_train, x_test = make_data(n_train, generator), make_data(200 if QUICK else 2000, generator)

    model = VAE()
    loss_fn = lossdsl.compile(SPEC)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    print(f"spec:{SPEC}inputs: {', '.join(loss_fn.inputs)}\n")
    # Checks each term's share of the gradient every 50 steps; warns if the KL collapses or drowns the
    # reconstruction (docs/training.md, "The monitor"). This run gives no warning.
    monitor = lossdsl.watch(loss_fn, every=50)

    print(f"{'epoch':>5} {'recon_loss':>10} {'kl':>8} {'total':>8}")
    for epoch in range(1, epochs + 1):
        sums = {"recon_loss": 0.0, "kl": 0.0, "total": 0.0}
        batches = torch.randperm(n_train).split(128)
        for batch in batches:
            x = x_train[batch]
            recon, mu, logvar = model(x)
            loss = loss_fn(recon=recon, x=x, mu=mu, logvar=logvar)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            for key in sums:
                sums[key] += loss_fn.last_terms[key].item()
        if epoch == 1 or epoch % every == 0:
            means = {key: value / len(batches) for key, value in sums.items()}
            print(f"{epoch:>5} {means['recon_loss']:>10.5f} {means['kl']:>8.3f} {means['total']:>8.5f}")

    model.eval()
    with torch.no_grad():
        mu, logvar = model.encoder(x_test).chunk(2, dim=1)
        recon = model.decoder(mu)  # the posterior mean, no sampling
        kl_per_dim = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).mean(dim=0)
        samples = model.decoder(torch.randn(4, LATENT, generator=generator))
    test_mse = (recon - x_test).pow(2).mean().item()
    baseline = (x_test - x_train.mean(dim=0)).pow(2).mean().item()
    print(f"\nheld-out reconstruction MSE {test_mse:.5f}, decoding the posterior mean (the mean image: {baseline:.5f})")
    print("KL per latent dimension (nats): " + " ".join(f"{v:.2f}" for v in kl_per_dim.tolist()))
    labels = ("held-out", "reconstruction", "prior sample 1", "prior sample 2")
    print("\n" + "   ".join(f"{label:<16}" for label in labels).rstrip())
    print(ascii_art([x_test[0], recon[0], samples[0], samples[1]]))
    print("\n" + monitor.summary())


if __name__ == "__main__":
    main()
