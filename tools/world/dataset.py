"""Rendered datasets of the shape world."""

import numpy as np

from .scene import IMAGE_SIZE, render, sample_scene


def make_dataset(n, seed, split="train", objects_p=None):
    """(images uint8 [n, 64, 64, 3], scenes) deterministic per (n, seed, split, objects_p).
    objects_p: probabilities of 1, 2, 3 objects per scene, exact after the split's filter (the default
    world mix loses multi-object scenes to the held-out filter: ~52% of train scenes are single)."""
    rng = np.random.default_rng(seed)
    if objects_p is None:
        scenes = [sample_scene(rng, split) for _ in range(n)]
    else:
        ks = rng.choice([1, 2, 3], size=n, p=np.asarray(objects_p, float) / np.sum(objects_p))
        scenes = [sample_scene(rng, split, n_objects=int(k)) for k in ks]
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for i, s in enumerate(scenes):
        images[i] = render(s)
    return images, scenes
