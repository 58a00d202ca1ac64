"""A term's reference implementation and benchmark inputs, and the check that the term matches them.

A term registers its cases with it (``register(..., cases=...)``, ``@lossdsl.term(..., cases=...)``):
a function of the ``Sizes`` that gives ``Case`` objects, each a one-term spec, a way to make its inputs
and the reference to compare it with, called directly (a torch functional, MONAI's loss, or the
closed form in plain torch, the way a practitioner would write it). Three places read them from
the registry, so a new term needs no edit anywhere else:

- the parity test (``tests/test_parity.py``) checks every case at ``TINY`` sizes: the same value
  and the same gradients as the reference (``check_parity``);
- the benchmark (``benchmarks/terms.py``) times each case at ``SMALL`` and ``LARGE`` against its
  reference, after the same check; a term without cases is an error there;
- ``lossdsl terms`` and ``docs/terms.md`` list the term (``lossdsl.reference``).

Nothing here runs in a loss's forward; it is torch only, no test framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

Inputs = dict[str, torch.Tensor]
Reference = Callable[..., torch.Tensor]
Maker = Callable[[torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Sizes:
    """The sizes one run makes its inputs at."""

    name: str
    n: int  # the batch
    classes: int  # classes and labels
    outputs: int  # regression outputs per sample
    embed: int  # embedding and latent width
    images: tuple[int, int, int, int]  # segmentation inputs [N, C, H, W]
    mlp: tuple[int, int]  # width and layers of the model that l1 and l2 penalise
    groups: int  # known groups (groups=K)
    many_groups: int  # sparse group codes, ranked within the batch


#: The parity test's: small enough that every case runs in well under a second.
TINY = Sizes("tiny", n=64, classes=5, outputs=3, embed=4, images=(2, 3, 8, 8), mlp=(8, 2), groups=4, many_groups=50)
#: The benchmark's.
SMALL = Sizes("small", n=4096, classes=10, outputs=8, embed=16, images=(1, 4, 64, 64), mlp=(64, 2), groups=8,
              many_groups=2000)
LARGE = Sizes("large", n=262144, classes=10, outputs=8, embed=16, images=(16, 4, 64, 64), mlp=(256, 8), groups=8,
              many_groups=2000)


@dataclass(frozen=True)
class Case:
    """One row: a one-term spec, its inputs and its reference, at one size."""

    spec: str
    shape: str  # the main input's shape, shown in the benchmark's table
    make: Callable[[torch.Generator], Inputs]  # CPU tensors; moved to the device afterwards
    reference: Reference  # called with the inputs as keywords
    grad: tuple[str, ...] = ("pred",)  # inputs that require grad
    one_call: bool = False  # the reference is a single torch call
    note: str = ""  # what the reference is, when it is not one torch functional
    variant: str = ""  # shown after the shape: "binary", "softmax", ...
    #: For weight penalties: builds the model that the loss is bound to (``LossModule.bind``). The
    #: gradients checked are then its parameters', and ``reference(model)`` returns the reference.
    model: Callable[[torch.Generator], torch.nn.Module] | None = None
    term: str = ""  # filled in from the registry
    size: str = ""  # the Sizes' name, filled in

    @property
    def size_label(self) -> str:
        return f"{self.shape} {self.variant}".rstrip()

    @property
    def label(self) -> str:
        return f"{self.spec} {self.size_label}"


#: What a term registers: its cases at given sizes.
Cases = Callable[[Sizes], Sequence[Case]]


def cases_of(name: str, sizes: Sizes, registry: Mapping[str, Any] | None = None) -> list[Case]:
    """The registered term ``name``'s cases at ``sizes`` (none when it registered none)."""
    definition = _registry(registry)[name]
    if definition.cases is None:
        return []
    return [replace(case, term=name, size=sizes.name) for case in definition.cases(sizes)]


def registered_cases(sizes: Sizes, registry: Mapping[str, Any] | None = None) -> list[Case]:
    """Every registered term's cases at ``sizes``, in registry order."""
    registry = _registry(registry)
    return [case for name in registry for case in cases_of(name, sizes, registry)]


def terms_without_cases(registry: Mapping[str, Any] | None = None) -> list[str]:
    """Registered terms that give no reference and inputs."""
    return [name for name, definition in _registry(registry).items() if definition.cases is None]


def _registry(registry: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if registry is None:
        from .registry import REGISTRY

        return REGISTRY
    return registry


# -- Inputs ---------------------------------------------------------------------------------------


def randn(*shape: int) -> Maker:
    return lambda g: torch.randn(*shape, generator=g)


def labels(*shape: int, classes: int) -> Maker:
    return lambda g: torch.randint(0, classes, shape, generator=g)


def flags(*shape: int, dtype: torch.dtype = torch.float32, p: float = 0.3) -> Maker:
    return lambda g: (torch.rand(*shape, generator=g) < p).to(dtype)


def inputs(**makers: Maker) -> Callable[[torch.Generator], Inputs]:
    return lambda g: {name: make(g) for name, make in makers.items()}


def shape(*dims: int) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"


def lazy(factory: Callable[[], Reference]) -> Reference:
    """A reference built on its first call (MONAI's losses: importing MONAI takes seconds, and
    listing the cases should not)."""
    built: list[Reference] = []

    def reference(*args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        if not built:
            built.append(factory())
        return built[0](*args, **kwargs)

    return reference


# -- The check ------------------------------------------------------------------------------------


@dataclass
class Setup:
    """One case made concrete on a device: fresh inputs, a fresh lossdsl module, the reference."""

    inputs: Inputs
    grads: tuple[torch.Tensor, ...]  # the tensors whose gradients are checked (and reset each step)
    names: tuple[str, ...]  # their names, for messages
    ours: torch.nn.Module
    reference: Reference


def materialise(case: Case, device: torch.device, seed: int = 0) -> Setup:
    """Inputs from ``seed``, the case's spec compiled (it must be the one term), and its reference."""
    from .driver import compile as compile_spec
    from .registry import REGISTRY

    generator = torch.Generator().manual_seed(seed)
    tensors = {name: tensor.to(device) for name, tensor in case.make(generator).items()}
    for name in case.grad:
        tensors[name].requires_grad_()
    grads, names = tuple(tensors[name] for name in case.grad), case.grad
    ours = compile_spec(case.spec).to(device)
    expected = REGISTRY[case.term].module
    if len(ours.terms) != 1 or type(ours.terms[0]) is not expected:
        raise ValueError(f"the case spec {case.spec!r} does not compile to the single term {case.term}")
    reference = case.reference
    if case.model is not None:
        model = case.model(generator).to(device)
        ours.bind(model)
        reference = case.reference(model)
        named = list(model.named_parameters())
        grads, names = tuple(p for _, p in named), tuple(name for name, _ in named)
    return Setup(tensors, grads, names, ours, reference)


def step(loss_fn: Callable[..., torch.Tensor], tensors: Inputs, grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One forward + backward, gradients reset first."""
    for tensor in grads:
        tensor.grad = None
    loss = loss_fn(**tensors)
    loss.backward()
    return loss


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """float32 tolerances: relative 1e-4, absolute 1e-5 of the largest reference magnitude."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=max(1e-5 * scale, 1e-12), msg=lambda m: f"{what}: {m}")


def check_parity(case: Case, device: torch.device | str = "cpu", seed: int = 0) -> None:
    """Fresh inputs and modules for each side: the same value, and the same gradient for every
    tensor that takes one; ``AssertionError`` naming the case otherwise."""
    device = torch.device(device)
    results = []
    for side in ("ours", "reference"):
        setup = materialise(case, device, seed)
        value = step(getattr(setup, side), setup.inputs, setup.grads).detach()
        results.append((value, [None if t.grad is None else t.grad.clone() for t in setup.grads]))
    (ours, our_grads), (theirs, their_grads) = results
    where = case.label
    assert_close(ours, theirs, f"{where}: value")
    for name, mine, reference in zip(setup.names, our_grads, their_grads):
        if mine is None or reference is None:
            if (mine is None) != (reference is None):
                raise AssertionError(f"{where}: gradient of {name}: only one side has one")
            continue
        assert_close(mine, reference, f"{where}: gradient of {name}")
