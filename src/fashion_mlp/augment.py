"""Data augmentation on whole batches: random shifts and horizontal flips, one tensor op each.

Fashion-MNIST's garments are centred and upright, but their exact position varies by a pixel or
two and most are left-right symmetric, so shifted and mirrored copies are plausible new images.
Everything is drawn from the training generator (on the CPU, like the shuffle), so a seed fixes
the augmented batches on every device; with both options off nothing is drawn at all and
training is bit-for-bit what it is without this module.
"""

import torch
from torch.nn import functional as F


def augment(
    images: torch.Tensor, shift: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """A B x H x W batch with each image mirrored with probability 1/2 (if `flip`) and moved by
    up to `shift` pixels in each direction (uncovered pixels are 0, the background)."""
    count, height, width = images.shape
    device = images.device
    if flip:
        mirrored = torch.rand(count, generator=generator).to(device) < 0.5
        images = torch.where(mirrored[:, None, None], images.flip(-1), images)
    if shift:
        offsets = torch.randint(-shift, shift + 1, (2, count), generator=generator).to(device)
        padded = F.pad(images, (shift, shift, shift, shift))
        # Each image reads its own window of the padded batch: one gather for the whole batch.
        rows = torch.arange(height, device=device) + shift + offsets[0, :, None]
        cols = torch.arange(width, device=device) + shift + offsets[1, :, None]
        batch = torch.arange(count, device=device)[:, None, None]
        images = padded[batch, rows[:, :, None], cols[:, None, :]]
    return images
