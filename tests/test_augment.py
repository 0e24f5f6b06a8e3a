"""augment: shifts and flips keep shapes and labels, follow the seed, and treat the whole batch
with tensor operations (checked against a plain per-image reference)."""

import torch

from fashion_mlp.augment import augment


def batch(count: int = 64) -> torch.Tensor:
    return torch.rand(count, 28, 28, generator=torch.Generator().manual_seed(0))


def per_image_reference(images, shift, flip, generator):
    """The same draws as `augment`, applied one image at a time with slicing."""
    count = len(images)
    mirrored = (
        torch.rand(count, generator=generator) < 0.5 if flip else torch.zeros(count, dtype=bool)
    )
    offsets = torch.randint(-shift, shift + 1, (2, count), generator=generator)
    out = torch.zeros_like(images)
    for index, image in enumerate(images):
        image = image.flip(-1) if mirrored[index] else image
        dy, dx = int(offsets[0, index]), int(offsets[1, index])
        # out[r, c] = image[r + dy, c + dx] where that lies inside the image, else 0.
        rows = slice(max(0, -dy), min(28, 28 - dy))
        cols = slice(max(0, -dx), min(28, 28 - dx))
        source_rows = slice(rows.start + dy, rows.stop + dy)
        source_cols = slice(cols.start + dx, cols.stop + dx)
        out[index, rows, cols] = image[source_rows, source_cols]
    return out


def test_shifts_and_flips_match_a_per_image_reference():
    images = batch()
    ours = augment(images, 3, True, torch.Generator().manual_seed(7))
    reference = per_image_reference(images, 3, True, torch.Generator().manual_seed(7))
    assert torch.equal(ours, reference)
    assert ours.shape == images.shape and ours.dtype == images.dtype


def test_same_seed_same_batch_other_seed_other_batch():
    images = batch()
    first = augment(images, 2, True, torch.Generator().manual_seed(1))
    second = augment(images, 2, True, torch.Generator().manual_seed(1))
    third = augment(images, 2, True, torch.Generator().manual_seed(2))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_a_flip_mirrors_and_a_shift_moves_without_changing_the_content():
    images = torch.zeros(2, 28, 28)
    images[:, 10, 3] = 1.0  # one lit pixel, left of centre
    flipped = augment(images, 0, True, torch.Generator().manual_seed(0))
    for image in flipped:
        assert image.sum() == 1 and image[10, 3] + image[10, 24] == 1
    moved = augment(images, 2, False, torch.Generator().manual_seed(0))
    assert torch.equal(moved.sum(dim=(1, 2)), torch.ones(2))  # the pixel is still there
    rows, cols = moved.nonzero()[:, 1], moved.nonzero()[:, 2]
    assert ((rows - 10).abs() <= 2).all() and ((cols - 3).abs() <= 2).all()


def test_the_batch_is_augmented_by_tensor_operations_not_a_loop_over_images():
    """The number of torch operations is the same for 8 images and for 4096."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountOps(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            CountOps.calls += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for count in (8, 4096):
        images, generator = batch(count), torch.Generator().manual_seed(0)
        CountOps.calls = 0
        with CountOps():
            augment(images, 2, True, generator)
        counts.append(CountOps.calls)
    assert counts[0] == counts[1] and counts[0] < 40


def test_with_both_options_off_nothing_is_drawn_and_nothing_changes():
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    images = batch()
    assert torch.equal(augment(images, 0, False, generator), images)
    assert torch.equal(generator.get_state(), state)
