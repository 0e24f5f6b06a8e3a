"""Stage `activations`: every activation the models may use, with its derivative, on one figure.

Reads the activation registry (`nonlinearities.py`). Writes `reports/activations.png`. The
derivatives are computed by autograd, the same machinery that trains the models (the tests check
them against the closed forms: sigmoid' = s(1 - s), tanh' = 1 - tanh^2, relu' = 0 for x < 0 and
1 for x > 0).

    fashion-mlp activations --out reports/activations.png
"""

from pathlib import Path

import torch

from fashion_mlp.figures import pyplot, save_figure
from fashion_mlp.nonlinearities import ACTIVATIONS, activation_layer


def activation_curves(x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Activation name -> (f(x), f'(x)), the derivative taken by autograd."""
    curves = {}
    for name in ACTIVATIONS:
        function = activation_layer(name)
        inputs = x.detach().clone().requires_grad_(True)
        outputs = function(inputs)
        # Each output depends only on its own input, so the gradient of the sum is f'(x).
        (gradient,) = torch.autograd.grad(outputs.sum(), inputs)
        curves[name] = (outputs.detach(), gradient)
    return curves


def plot_activations(path: Path, x: torch.Tensor | None = None) -> None:
    plt = pyplot()
    x = torch.linspace(-6, 6, 601) if x is None else x
    curves = activation_curves(x)
    fig, axes = plt.subplots(
        2, len(curves), figsize=(4 * len(curves), 6), sharex=True, layout="constrained"
    )
    for column, (name, (values, gradient)) in enumerate(curves.items()):
        for row, (series, label) in enumerate(((values, name), (gradient, f"{name}' (autograd)"))):
            ax = axes[row, column]
            ax.plot(x.numpy(), series.numpy())
            ax.set_title(label)
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.axvline(0, color="grey", linewidth=0.5)
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("x")
    fig.suptitle("Activation functions (top) and their derivatives (bottom)")
    save_figure(fig, Path(path))
