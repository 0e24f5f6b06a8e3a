"""The activation registry: each name params.yaml accepts (`params.Activation`) and its layer.

`model.build_mlp` builds networks from it and the `activations` stage plots every entry, so a
new activation is one line here (and its name in `params.Activation`; a test checks they agree).
"""

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
}
