"""Activations: autograd's derivatives against the closed forms; why the nonlinearity matters."""

import torch
from torch import nn
from typer.testing import CliRunner

from fashion_mlp.activations import activation_curves
from fashion_mlp.cli import app


def test_autograd_derivatives_match_the_closed_forms():
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    x = x[x != 0]  # ReLU has no derivative at 0
    curves = activation_curves(x)
    sigmoid, dsigmoid = curves["sigmoid"]
    torch.testing.assert_close(dsigmoid, sigmoid * (1 - sigmoid))
    tanh, dtanh = curves["tanh"]
    torch.testing.assert_close(dtanh, 1 - tanh**2)
    relu, drelu = curves["relu"]
    torch.testing.assert_close(relu, x.clamp(min=0))
    torch.testing.assert_close(drelu, (x > 0).to(x.dtype))


def test_without_a_nonlinearity_stacked_layers_collapse_to_one_linear_map():
    """Linear(W2) o Linear(W1) == Linear(W2 W1, W2 b1 + b2): depth adds nothing."""
    torch.manual_seed(0)
    deep = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.Identity(), nn.Linear(256, 10))
    first, second = deep[1], deep[3]
    single = nn.Linear(784, 10)
    with torch.no_grad():
        single.weight.copy_(second.weight @ first.weight)
        single.bias.copy_(second.weight @ first.bias + second.bias)
    x = torch.rand(16, 28, 28)
    torch.testing.assert_close(deep(x), single(x.flatten(1)), rtol=1e-5, atol=1e-5)
    # With ReLU in between, the composed weights no longer reproduce the net.
    deep[2] = nn.ReLU()
    assert not torch.allclose(deep(x), single(x.flatten(1)), atol=1e-3)


def test_cli_writes_the_figure(tmp_path):
    out = tmp_path / "reports" / "activations.png"
    result = CliRunner().invoke(app, ["activations", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
