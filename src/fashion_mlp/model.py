"""The MLP, its self-describing checkpoint, and the tensor helpers every user of a model needs.

`build_mlp` makes Flatten, then for each hidden width Linear (+ batch norm) + activation
(+ dropout), then a Linear to the 10 classes, as in d2l's MLP chapter; weights ~ normal(0,
init_std), biases zero. Its layers are those `train.numerics` names (LAYERS): layers.py's,
whose numbers are the same on every x86-64 CPU, or torch's own, faster and CPU-dependent. Both
have the same parameters, so a checkpoint loads into either.

A checkpoint (`models/MODEL/model.safetensors`) is a safetensors file: the state dict, with the
architecture in its metadata, so `evaluate` rebuilds the network without `params.yaml`. The
format holds tensors and text only, so loading one never runs code, and its bytes are a function
of the weights alone (torch.save's zip archive embeds the file's name and a random id): the same
weights give the same file, and DVC's cache and run-cache see it as unchanged.
"""

from itertools import pairwise
from pathlib import Path

import torch
from torch import nn

from fashion_mlp import layers
from fashion_mlp.artifacts import checkpoint_metadata, checkpoint_spec, safetensors_metadata
from fashion_mlp.atomic import write_bytes_atomic
from fashion_mlp.choices import NUMERICS, check_registry
from fashion_mlp.dataset import IN_FEATURES, NUM_CLASSES
from fashion_mlp.errors import PipelineError
from fashion_mlp.nonlinearities import activation_layer
from fashion_mlp.params import ModelSpec

EVAL_BATCH_SIZE = 8192
# train.numerics -> the Linear, BatchNorm1d and Dropout classes that compute.
LAYERS = {
    "portable": (layers.Linear, layers.BatchNorm1d, layers.Dropout),
    "native": (nn.Linear, nn.BatchNorm1d, nn.Dropout),
}
check_registry("train.numerics (model.LAYERS)", NUMERICS, LAYERS)


def layer_sizes(spec: ModelSpec) -> list[int]:
    return [IN_FEATURES, *spec.hidden, NUM_CLASSES]


def training_memory(spec: ModelSpec, batch_size: int) -> tuple[int, int]:
    """The model's weight count, and a generous estimate of the bytes training it takes:
    weights, gradients and two optimizer slots, and the activations of the largest batch
    (a training batch, or an evaluation chunk) with their gradients, all float32."""
    sizes = layer_sizes(spec)
    weights = sum(fan_in * fan_out + fan_out for fan_in, fan_out in pairwise(sizes))
    largest_batch = max(batch_size, EVAL_BATCH_SIZE)
    return weights, 4 * (4 * weights + 4 * largest_batch * sum(sizes))


def build_mlp(
    spec: ModelSpec, init_std: float, generator: torch.Generator, numerics: str = "portable"
) -> nn.Sequential:
    Linear, BatchNorm1d, Dropout = LAYERS[numerics]
    sizes = layer_sizes(spec)
    layers: list[nn.Module] = [nn.Flatten()]
    for index, (width_in, width_out) in enumerate(pairwise(sizes)):
        linear = Linear(width_in, width_out)
        nn.init.normal_(linear.weight, mean=0.0, std=init_std, generator=generator)
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if index < len(sizes) - 2:
            if spec.batch_norm:
                layers.append(BatchNorm1d(width_out))
            layers.append(activation_layer(spec.activation))
            if spec.dropout:
                layers.append(Dropout(spec.dropout))
    return nn.Sequential(*layers)


def as_inputs(images: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], converted once for the whole split (on `device`)."""
    return images.to(device).to(torch.float32).div_(255.0)


@torch.inference_mode()
def predict_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in inputs.split(EVAL_BATCH_SIZE)])


def checkpoint_bytes(model: nn.Module, spec: ModelSpec) -> bytes:
    """The checkpoint file's content: the same weights and architecture give the same bytes."""
    from safetensors.torch import save

    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    return save(state, metadata=checkpoint_metadata(spec))


def save_checkpoint(model: nn.Module, spec: ModelSpec, path: Path) -> None:
    write_bytes_atomic(Path(path), checkpoint_bytes(model, spec))


def load_checkpoint(path: Path) -> tuple[nn.Sequential, ModelSpec]:
    """Rebuild the saved MLP. Anything that is not one of our checkpoints is a PipelineError."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run `fashion-mlp train` first") from None
    except IsADirectoryError:
        raise PipelineError(f"{path}: is a folder, expected a checkpoint file") from None
    return network_from_checkpoint(content, str(path))


def network_from_checkpoint(content: bytes, source: str) -> tuple[nn.Sequential, ModelSpec]:
    """The MLP a checkpoint file's bytes hold (from `source`, named in errors), in eval mode.
    Loading one reads tensors and text only: no code runs."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        spec = checkpoint_spec(safetensors_metadata(content, len(content)))
        # Inference on the CPU-independent layers: a prediction is the same on every machine.
        model = build_mlp(spec, 1.0, torch.Generator(), "portable")
        model.load_state_dict(load(content))
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise PipelineError(f"{source}: not a fashion-mlp checkpoint ({reason}); retrain") from None
    model.eval()
    return model, spec
