"""The ELU the Q networks use, and the activation derivatives the hand-written passes of `rl._fast` share.

Its own module so that `rl.networks` (plain autograd) and `rl._fast` (the opt-in fast paths) both import it
without importing each other.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["activation_grad", "elu", "elu_and_derivative"]

_LOG2_E = 1.0 / math.log(2.0)


def elu_and_derivative(z: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """`(elu(z), elu'(z))`, elementwise, same shape as `z` (`elu(z)` written into `out` when given).

    `d = exp(min(z, 0))` is `elu'(z)`, and `elu(z) = max(z, d - 1)` because `e^z - 1 >= z`. Measured on this CPU
    (AVX2, fp32): `exp2` of a pre-scaled argument is ~2x faster than `exp`, and this form beats `F.elu` (which
    computes `expm1` on every element) by 1.1-2x from 128 to 12.8k rows of 256; `torch.where` is slower still."""
    d = torch.mul(z, _LOG2_E).clamp_max_(0.0).exp2_()
    return torch.add(d, -1.0, out=out).clamp_min_(z), d


class _ELU(torch.autograd.Function):
    """ELU whose backward reads its output (`elu'(z) = h + 1` where `h <= 0`): `F.elu`'s backward recomputes
    `exp` from the input, which cost as much as the forward (8.5 ms per 12.8k x 256 tensor here, against 1.5 ms),
    and the output is kept anyway as the next layer's input."""

    # The torch.func form (forward without ctx, setup_context apart), so that it also runs under vmap and grad.
    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        return elu_and_derivative(z)[0]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        return activation_grad(grad, h, "elu")


def elu(z: Tensor) -> Tensor:
    """`F.elu(z)` (alpha 1) with the faster forward and backward of `elu_and_derivative` (first-order gradients
    only: a second derivative raises)."""
    if torch.is_grad_enabled() and z.requires_grad:
        return _ELU.apply(z)
    return elu_and_derivative(z)[0]


def activation_grad(grad: Tensor, h: Tensor, activation: str) -> Tensor:
    """`grad * act'(z)` from the activation's output `h = act(z)`, one fused pass: `elu'(z) = h + 1` where
    `h <= 0` (else 1), `relu'(z) = [h > 0]` (multiplying by a boolean mask instead converts it to float first:
    ~8x slower here)."""
    if activation == "elu":
        return torch.ops.aten.elu_backward(grad, 1.0, 1, 1, True, h)
    return torch.ops.aten.threshold_backward(grad, h, 0.0)
