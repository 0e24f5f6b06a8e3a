"""Train one tiny network of every family the pipeline uses on synthetic data; print JSON
{family: SHA-256 of the kept weights}. tests/test_numerics.py runs it natively and under QEMU
emulating other CPUs, and compares the digests with the committed ones.

    python tests/helpers/golden_trainings.py [--threads N]
    qemu-x86_64 -cpu EPYC-Rome .venv/bin/python tests/helpers/golden_trainings.py

It runs as its own program (QEMU runs a whole process), with the CLI's numerics.
"""

import argparse
import hashlib
import json

from fashion_mlp.numerics import apply_numerics_env

apply_numerics_env()  # before torch loads, as the CLI does

import torch  # noqa: E402

from fashion_mlp.linalg import pin_numerics  # noqa: E402
from fashion_mlp.params import ModelSpec, TrainParams  # noqa: E402
from fashion_mlp.splits import Split  # noqa: E402
from fashion_mlp.train import fit, seeded_model  # noqa: E402

D2L = dict(
    epochs=2,
    batch_size=32,
    lr=0.1,
    optimizer="sgd",
    momentum=0.0,
    weight_decay=0.0,
    lr_schedule="constant",
    init_std=0.01,
    seed=0,
    device="cpu",
    numerics="portable",
    warmup_epochs=0,
    label_smoothing=0.0,
    ema_decay=0.0,
    augment_shift=0,
    augment_flip=False,
)
PLAIN = dict(dropout=0.0, batch_norm=False)
# Family -> (architecture, train params over D2L): each activation, mlp_best's recipe (batch
# norm, dropout, momentum, weight decay, warm-up then cosine, augmentation, label smoothing,
# weight averaging) and mlp_strong's (Adam).
FAMILIES = {
    "relu-sgd": (dict(hidden=[48], activation="relu", **PLAIN), {}),
    "sigmoid": (dict(hidden=[48], activation="sigmoid", **PLAIN), {"lr": 0.5}),
    "tanh": (dict(hidden=[48], activation="tanh", **PLAIN), {}),
    "elu": (dict(hidden=[48], activation="elu", **PLAIN), {}),
    "gelu": (dict(hidden=[48], activation="gelu", **PLAIN), {}),
    "best-recipe": (
        dict(hidden=[48, 40], activation="relu", dropout=0.2, batch_norm=True),
        dict(
            lr=0.07,
            momentum=0.9,
            weight_decay=1e-4,
            lr_schedule="cosine",
            warmup_epochs=1,
            init_std=0.05,
            label_smoothing=0.1,
            ema_decay=0.9,
            augment_shift=2,
            augment_flip=True,
        ),
    ),
    "adam": (
        dict(hidden=[48, 32], activation="relu", dropout=0.2, batch_norm=False),
        dict(optimizer="adam", lr=0.001, lr_schedule="cosine"),
    ),
}


def synthetic_splits() -> tuple[Split, Split]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (160, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (160,), generator=generator)
    return Split(images[:128], labels[:128]), Split(images[128:], labels[128:])


def train_every_family() -> dict[str, str]:
    pin_numerics()
    train, test = synthetic_splits()
    digests = {}
    for family, (architecture, overrides) in FAMILIES.items():
        params = TrainParams(**(D2L | overrides))
        model, generator = seeded_model(ModelSpec(**architecture), params)
        kept = fit(model, train, test, params, generator).model
        weights = b"".join(t.detach().numpy().tobytes() for t in kept.state_dict().values())
        digests[family] = hashlib.sha256(weights).hexdigest()
    return digests


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    torch.set_num_threads(parser.parse_args().threads)
    print(json.dumps(train_every_family()))
