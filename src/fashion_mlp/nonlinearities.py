"""The activation registry: each name params.yaml accepts and the torch.nn layer it builds.

`params.ModelSpec` validates `activation` against this mapping and `model.build_mlp` builds from
it; the `activations` stage plots every entry. A new activation is one line here. The layers are
named, not imported, so that validating params (in torch-free stages) does not load torch.
"""

from typing import Any

# Name in params.yaml -> class in torch.nn.
ACTIVATIONS = {
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "gelu": "GELU",
    "elu": "ELU",
}


def activation_layer(name: str) -> Any:
    """A fresh torch.nn layer for the activation `name` (a key of ACTIVATIONS)."""
    from torch import nn

    return getattr(nn, ACTIVATIONS[name])()
