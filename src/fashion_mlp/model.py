"""The MLP, its self-describing checkpoint, and the tensor helpers every user of a model needs.

`build_mlp` makes Flatten, then for each hidden width Linear (+ batch norm) + activation
(+ dropout), then a Linear to the 10 classes, as in d2l's MLP chapter; weights ~ normal(0,
init_std), biases zero. A checkpoint stores the state dict with the architecture, so `evaluate`
rebuilds the network without `params.yaml`, and loads with `weights_only=True`, so a foreign
pickle is never executed.
"""

from itertools import pairwise
from pathlib import Path

import torch
from torch import nn

from fashion_mlp.atomic import atomic_path
from fashion_mlp.dataset import IN_FEATURES, NUM_CLASSES
from fashion_mlp.errors import PipelineError
from fashion_mlp.nonlinearities import ACTIVATIONS
from fashion_mlp.params import ModelSpec

EVAL_BATCH_SIZE = 8192


def build_mlp(spec: ModelSpec, init_std: float, generator: torch.Generator) -> nn.Sequential:
    sizes = [IN_FEATURES, *spec.hidden, NUM_CLASSES]
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (width_in, width_out) in enumerate(pairwise(sizes)):
        linear = nn.Linear(width_in, width_out)
        nn.init.normal_(linear.weight, mean=0.0, std=init_std, generator=generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if index < len(sizes) - 2:
            if spec.batch_norm:
                layers.append(nn.BatchNorm1d(width_out))
            layers.append(ACTIVATIONS[spec.activation]())
            if spec.dropout:
                layers.append(nn.Dropout(spec.dropout))
    return nn.Sequential(*layers)


def as_inputs(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], converted once for the whole split (on `device`)."""
    return images.to(device).to(torch.float32).div_(255.0)


@torch.inference_mode()
def predict_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in inputs.split(EVAL_BATCH_SIZE)])


def save_checkpoint(model: nn.Module, spec: ModelSpec, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model_spec": spec.model_dump(), "state_dict": model.state_dict()}, tmp)


def load_checkpoint(path: Path) -> tuple[nn.Sequential, ModelSpec]:
    """Rebuild the saved MLP. Anything that is not one of our checkpoints is a PipelineError."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        spec = ModelSpec.model_validate(saved["model_spec"])
        model = build_mlp(spec, init_std=1.0, generator=torch.Generator())
        model.load_state_dict(saved["state_dict"])
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp train` first") from None
    except Exception as err:  # unpickling refused, wrong keys, wrong shapes: all mean "not ours"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PipelineError(f"{path}: not a fashion-mlp checkpoint ({reason})") from None
    model.eval()
    return model, spec
