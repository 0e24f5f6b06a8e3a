"""The activation registry: the torch.nn layer each activation name of choices.py builds.

`model.build_mlp` builds from it; the `activations` stage plots every entry. A new activation is
its name in choices.ACTIVATIONS and one line here. torch is imported only to build a layer.
"""

from typing import Any

from fashion_mlp.choices import ACTIVATIONS, check_registry

# Name in params.yaml -> class in torch.nn.
TORCH_LAYERS = {
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "gelu": "GELU",
    "elu": "ELU",
}
check_registry("nonlinearities.TORCH_LAYERS", ACTIVATIONS, TORCH_LAYERS)


def activation_layer(name: str) -> Any:
    """A fresh torch.nn layer for the activation `name` (one of choices.ACTIVATIONS)."""
    from torch import nn

    return getattr(nn, TORCH_LAYERS[name])()
