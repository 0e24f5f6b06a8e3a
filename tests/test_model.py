"""The MLP: d2l's architecture and init, checked against plain matrix arithmetic; checkpoints
that rebuild it, and refuse (without running) anything that is not one."""

import typing

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fashion_mlp.choices import ACTIVATIONS
from fashion_mlp.cli import app
from fashion_mlp.errors import PipelineError
from fashion_mlp.layers import Linear
from fashion_mlp.model import build_mlp, checkpoint_bytes, load_checkpoint, save_checkpoint
from fashion_mlp.nonlinearities import TORCH_LAYERS, activation_layer
from fashion_mlp.params import Activation, ModelSpec
from helpers.data import declared_params, write_params


def spec(hidden, activation="relu", dropout=0.0, batch_norm=False) -> ModelSpec:
    return ModelSpec(hidden=hidden, activation=activation, dropout=dropout, batch_norm=batch_norm)


def test_every_activation_params_accept_is_one_the_registry_builds():
    assert set(typing.get_args(Activation)) == set(ACTIVATIONS) == set(TORCH_LAYERS)
    for name in ACTIVATIONS:
        layer = activation_layer(name)
        assert isinstance(layer, nn.Module) and layer(torch.zeros(2)).shape == (2,)


def test_layers_follow_the_spec():
    model = build_mlp(spec([256, 128], "tanh"), 0.01, torch.Generator())
    kinds = [type(layer) for layer in model]
    assert kinds == [nn.Flatten, Linear, nn.Tanh, Linear, nn.Tanh, Linear]
    shapes = [tuple(layer.weight.shape) for layer in model if isinstance(layer, nn.Linear)]
    assert shapes == [(256, 784), (128, 256), (10, 128)]


def test_dropout_follows_each_hidden_activation_and_is_off_in_eval():
    model = build_mlp(spec([64, 32], "relu", dropout=0.5), 0.01, torch.Generator())
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == ["Flatten", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    # In eval mode dropout passes everything through: the same as the net without it.
    plain = build_mlp(spec([64, 32], "relu"), 0.01, torch.Generator())
    linears = [layer for layer in model if isinstance(layer, nn.Linear)]
    targets = [layer for layer in plain if isinstance(layer, nn.Linear)]
    for target, source in zip(targets, linears, strict=True):
        target.load_state_dict(source.state_dict())
    x = torch.rand(8, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), plain(x))
    # In training mode it zeroes about half the hidden units.
    model.train()
    assert not torch.allclose(model(x), plain(x))


def test_batch_norm_sits_between_each_hidden_linear_and_its_activation():
    model = build_mlp(spec([64, 32], "gelu", dropout=0.1, batch_norm=True), 0.01, torch.Generator())
    kinds = [type(layer).__name__ for layer in model]
    assert kinds == [
        "Flatten",
        *["Linear", "BatchNorm1d", "GELU", "Dropout"] * 2,
        "Linear",
    ]
    assert spec([64, 32], "gelu", 0.1, True).describe() == "784-64-32-10 gelu dropout 0.1 batchnorm"


def test_weights_are_normal_with_init_std_and_biases_zero():
    model = build_mlp(spec([256], "relu"), 0.01, torch.Generator())
    weights = model[1].weight
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert weights.mean().item() == pytest.approx(0.0, abs=5e-4)
    assert all(torch.count_nonzero(layer.bias) == 0 for layer in model if hasattr(layer, "bias"))


def test_forward_equals_the_d2l_formula():
    """H = relu(X W1^T + b1), O = H W2^T + b2, computed by hand."""
    model = build_mlp(spec([32], "relu"), 0.1, torch.Generator())
    x = torch.rand(4, 28, 28)
    w1, b1, w2, b2 = model[1].weight, model[1].bias, model[3].weight, model[3].bias
    expected = torch.relu(x.reshape(4, -1) @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(model(x), expected)


def test_same_seed_same_weights_other_seed_other_weights():
    shape = spec([64], "relu")
    first = build_mlp(shape, 0.01, torch.Generator().manual_seed(3))
    second = build_mlp(shape, 0.01, torch.Generator().manual_seed(3))
    third = build_mlp(shape, 0.01, torch.Generator().manual_seed(4))
    assert torch.equal(first[1].weight, second[1].weight)
    assert not torch.equal(first[1].weight, third[1].weight)


def test_checkpoint_rebuilds_the_model_without_params(tmp_path):
    shape = spec([16, 8], "sigmoid", batch_norm=True)
    model = build_mlp(shape, 0.05, torch.Generator().manual_seed(0)).eval()
    save_checkpoint(model, shape, tmp_path / "model.safetensors")
    loaded, loaded_spec = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded_spec == shape
    x = torch.rand(3, 28, 28)
    torch.testing.assert_close(loaded(x), model(x))


def test_the_same_weights_give_the_same_checkpoint_bytes_wherever_they_are_written(tmp_path):
    """torch.save's zip embeds the file's name and a random id; our checkpoint is the weights
    and the architecture only, so DVC sees an unchanged file when the weights did not change."""
    shape = spec([16], "relu", dropout=0.1)
    first = build_mlp(shape, 0.05, torch.Generator().manual_seed(0))
    again = build_mlp(shape, 0.05, torch.Generator().manual_seed(0))
    save_checkpoint(first, shape, tmp_path / "a" / "model.safetensors")
    save_checkpoint(again, shape, tmp_path / "b" / "elsewhere.safetensors")
    assert (tmp_path / "a/model.safetensors").read_bytes() == (
        tmp_path / "b/elsewhere.safetensors"
    ).read_bytes()
    other = build_mlp(shape, 0.05, torch.Generator().manual_seed(1))
    assert checkpoint_bytes(other, shape) != checkpoint_bytes(first, shape)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint", b"\x10\x00\x00\x00\x00\x00\x00\x00{}"],
    ids=["empty", "text", "no-metadata"],
)
def test_a_file_that_is_not_our_checkpoint_is_one_line(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(PipelineError, match=r"model.safetensors: not a fashion-mlp checkpoint"):
        load_checkpoint(tmp_path / "model.safetensors")


class _CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_foreign_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"payload": _CreatesFileWhenUnpickled(marker)}, tmp_path / "model.safetensors")
    with pytest.raises(PipelineError, match="not a fashion-mlp checkpoint"):
        load_checkpoint(tmp_path / "model.safetensors")
    assert not marker.exists()


def test_evaluate_given_a_foreign_pickle_refuses_it_without_executing_it(workdir, params):
    marker = workdir / "executed"
    model_dir = workdir / "models" / "mlp1"
    model_dir.mkdir(parents=True)
    payload = {"payload": _CreatesFileWhenUnpickled(marker)}
    torch.save(payload, model_dir / "model.safetensors")
    write_params(workdir / "params.yaml", declared_params(params, "evaluate", "mlp1"))
    result = CliRunner().invoke(app, ["evaluate", "mlp1"])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: models/mlp1/model.safetensors: not a fashion-mlp checkpoint")
    assert not marker.exists()
    assert not (workdir / "metrics").exists()
