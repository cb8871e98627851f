"""Rendered datasets of the shape world."""

import numpy as np

from .scene import IMAGE_SIZE, render, sample_scene


def make_dataset(n, seed, split="train"):
    """(images uint8 [n, 64, 64, 3], scenes) deterministic per (n, seed, split)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, split) for _ in range(n)]
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, s in enumerate(scenes):
        images[i] = render(s)
    return images, scenes
