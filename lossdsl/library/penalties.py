"""Weight penalties over a bound model's parameters: ``l1`` and ``l2``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .. import parity
from ..registry import Term, implements
from .params.penalties import PenaltyParams


_NORMALISATION = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)


class _Penalty(Term):
    """Over the parameters of the model given to ``LossModule.bind(model)``: read at call time,
    never copied, so the penalty always sees the current weights. By default biases and the
    parameters of normalisation layers are left out. Calling before ``bind`` is error E403."""

    def __init__(self, params: PenaltyParams):
        super().__init__()
        self.weight = params.weight
        self.include_bias = params.include_bias
        self.include_norm = params.include_norm
        self._parameters_of_model: tuple[nn.Parameter, ...] | None = None

    def bind(self, model: nn.Module) -> None:
        """Choose the model's parameters to penalise. Holds references only: no copy, no registration."""
        chosen: dict[int, nn.Parameter] = {}
        for module in model.modules():
            if not self.include_norm and isinstance(module, _NORMALISATION):
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if name.endswith("bias") and not self.include_bias:
                    continue
                chosen.setdefault(id(parameter), parameter)
        self._parameters_of_model = tuple(chosen.values())

    def forward(self) -> torch.Tensor:
        parameters = self._parameters_of_model
        if parameters is None:
            from ..errors import LossSpecError

            raise LossSpecError(f"{self.where} penalises a model's weights: call loss_fn.bind(model) first", code="E403")
        if not parameters:
            return torch.zeros(())
        return self.weight * torch.stack([self.norm(p) for p in parameters]).sum()

    def norm(self, parameter: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _penalty_reference(weight: float, norm: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[nn.Module], parity.Reference]:
    """weight * sum of norm(w) over the model's weights (biases and normalisation layers left out)."""

    def bind(model: nn.Module) -> parity.Reference:
        weights = [p for name, p in model.named_parameters() if not name.endswith("bias")]
        return lambda: weight * sum(norm(p) for p in weights)

    return bind


def _mlp(width: int, layers: int) -> Callable[[torch.Generator], nn.Module]:
    """``layers`` x Linear(width) with ReLUs between, weights ~ N(0, 1 / width)."""

    def make(g: torch.Generator) -> nn.Module:
        modules: list[nn.Module] = []
        for _ in range(layers):
            linear = nn.Linear(width, width)
            with torch.no_grad():
                linear.weight.copy_(torch.randn(width, width, generator=g) / math.sqrt(width))
                linear.bias.copy_(torch.randn(width, generator=g))
            modules += [linear, nn.ReLU()]
        return nn.Sequential(*modules[:-1])

    return make


def _penalty_cases(name: str, norm: Callable[[torch.Tensor], torch.Tensor]) -> parity.Cases:
    def cases(s: parity.Sizes) -> list[parity.Case]:
        width, layers = s.mlp
        return [parity.Case(f"{name}(weight=1e-4)", f"{layers} x Linear({width})", parity.inputs(),
                            _penalty_reference(1e-4, norm), grad=(), model=_mlp(width, layers))]

    return cases


@implements("l1", cases=_penalty_cases("l1", lambda p: p.abs().sum()))
class L1(_Penalty):
    def norm(self, parameter: torch.Tensor) -> torch.Tensor:
        return parameter.abs().sum()


@implements("l2", cases=_penalty_cases("l2", lambda p: p.square().sum()))
class L2(_Penalty):
    def norm(self, parameter: torch.Tensor) -> torch.Tensor:
        return parameter.square().sum()
