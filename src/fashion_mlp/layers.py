"""The layers of torch whose numbers depend on the CPU, replaced by ones that do not.

- `Linear`: torch's `nn.Linear` (same parameters, same state dict) whose forward and backward
  run on linalg's products, the same bits on every x86-64 CPU.
- `BatchNorm1d`: torch's training-mode batch norm sums each channel over the batch in per-thread
  parts when channels are few, so its statistics depend on the thread count. This one sums
  each channel in batch order (linalg.column_sums); the rest is torch's elementwise arithmetic.
- `Dropout`: torch's `nn.Dropout` draws its mask from MKL's random generator on Intel CPUs and
  from torch's own elsewhere, so the same seed drops different units on Intel and AMD. This one
  always draws from torch's own generator (the global one, which `torch.manual_seed` seeds).

Under `torch.export` (MLflow's logged model) both are the plain torch layers, so the exported
program runs anywhere torch does, without this package; at inference they compute the same
function as torch's, up to the last bits of each product.
"""

import torch
from torch import nn

from fashion_mlp.linalg import column_sums, matmul


class _LinearFunction(torch.autograd.Function):
    """y = x W^T + b, with the gradients torch's linear has, through `matmul`."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return matmul(x, weight.t(), bias)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        return (
            matmul(grad, weight) if needs_x else None,
            matmul(grad.t(), x) if needs_weight else None,
            column_sums(grad) if needs_bias else None,
        )


class Linear(nn.Linear):
    """`nn.Linear` on the CPU-independent products (CPU float32 inputs of shape batch x in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or x.device.type != "cpu":
            return super().forward(x)
        return _LinearFunction.apply(x, self.weight, self.bias)


class Dropout(nn.Dropout):
    """`nn.Dropout` whose mask comes from torch's generator on every CPU: each unit is kept
    when its uniform draw is at least p, and scaled by 1 / (1 - p)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or torch.compiler.is_exporting():
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class _BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalisation of a batch x channels input, every sum over the batch
    by linalg.column_sums; returns the output and the batch's mean and biased variance."""

    @staticmethod
    def forward(x, weight, bias, eps):
        count = x.shape[0]
        mean = column_sums(x).div_(count)
        centred = x - mean
        variance = column_sums(centred * centred).div_(count)
        inverse_std = torch.rsqrt(variance + eps)  # torch.sqrt would be MKL's, per CPU model
        normalised = centred * inverse_std
        return normalised * weight + bias, mean, variance, normalised, inverse_std

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weight, _, _ = inputs
        _, _, _, normalised, inverse_std = output
        ctx.save_for_backward(weight, normalised, inverse_std)
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(ctx, grad, *unused):
        weight, normalised, inverse_std = ctx.saved_tensors
        count = grad.shape[0]
        grad_normalised = grad * weight
        grad_x = (
            grad_normalised * count
            - column_sums(grad_normalised)
            - normalised * column_sums(grad_normalised * normalised)
        ) * (inverse_std / count)
        return grad_x, column_sums(grad * normalised), column_sums(grad), None


class BatchNorm1d(nn.BatchNorm1d):
    """`nn.BatchNorm1d` (same parameters and buffers) whose training-mode statistics do not
    depend on the thread count; evaluation uses the running statistics, as torch's does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or torch.compiler.is_exporting() or x.device.type != "cpu":
            return super().forward(x)
        output, mean, variance, _, _ = _BatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            unbiased = variance * (x.shape[0] / max(x.shape[0] - 1, 1))
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        return output
