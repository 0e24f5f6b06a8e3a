"""The textbook training loop, the reference that `run.py` races and the tests check against.

As in d2l's MLP chapter, in plain PyTorch: torchvision's `FashionMNIST` dataset with
`ToTensor()`, `DataLoader(batch_size=256, shuffle=True)`, a Python loop over its batches that
sums loss and accuracy as it goes, and test accuracy through a second loader. Every epoch decodes
each image again through PIL and collates batches one sample at a time: that is its cost.
"""

import gzip
import shutil
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from fashion_mlp.dataset import RAW_FILES


def torchvision_layout(raw_dir: Path, root: Path) -> Path:
    """Decompress our gzip files into the `root/FashionMNIST/raw/` layout torchvision reads."""
    target = Path(root) / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for file_name in RAW_FILES.values():
        unpacked = target / file_name.removesuffix(".gz")
        with gzip.open(Path(raw_dir) / file_name) as source, unpacked.open("wb") as out:
            shutil.copyfileobj(source, out)
    return Path(root)


def make_loaders(
    root: Path, batch_size: int, generator: torch.Generator
) -> tuple[DataLoader, DataLoader]:
    def dataset(train: bool) -> torchvision.datasets.FashionMNIST:
        return torchvision.datasets.FashionMNIST(root, train=train, transform=ToTensor())

    train = DataLoader(dataset(True), batch_size=batch_size, shuffle=True, generator=generator)
    test = DataLoader(dataset(False), batch_size=batch_size)
    return train, test


def train_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer
) -> tuple[float, float]:
    """One pass over the loader; (mean loss, accuracy), summed per batch as d2l's loop does."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += len(y)
    return loss_sum / seen, correct / seen


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / len(loader.dataset)
