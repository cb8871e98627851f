"""Captions for the shape world: alt-text (the web baseline), short and descriptive synthetic
captions (DALL-E 3's recaptioning), the evaluation prompt, and the vocabulary check.

Every word used here is in the shipped tokenizer's 63-token vocabulary (check_vocab enforces it):
striped objects are "striped" or "with stripes", dotted ones "dotted" or "with dots", solid ones
"solid" or "plain". All functions are pure given the rng.
"""

import json
import os
import re

import numpy as np

from .scene import BACKGROUNDS, COLORS, IMAGE_SIZE, INVERSE, SHAPES, heldout_pair

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TOKENIZER_JSON = os.path.join(ROOT, "weights", "default", "tokenizer", "tokenizer.json")
VOCAB_FALLBACK = (
    "<pad> </s> <unk> a the . is small large and background star , shapes circle square cross solid "
    "on triangle of ring with that cyan red dotted yellow striped green orange purple white blue two shape "
    "other : one left sand gray sky above below sits picture dots stripes right plain there three "
    "image among next to are clipart simple geometric alone icon").split()
_WORD = re.compile(r"\w+|[^\w\s]+")  # the Whitespace pre-tokenizer's split


def vocab():
    try:
        with open(TOKENIZER_JSON) as f:
            return list(json.load(f)["model"]["vocab"])
    except (OSError, KeyError, ValueError):
        return list(VOCAB_FALLBACK)


_VOCAB = set(vocab()) - {"<pad>", "</s>", "<unk>"}


def words(text):
    return _WORD.findall(text.lower())


def check_vocab(text):
    """Raise ValueError on any word outside the shipped vocabulary; returns the text."""
    bad = [w for w in words(text) if w not in _VOCAB]
    if bad:
        raise ValueError(f"out-of-vocabulary words {bad} in {text!r}")
    return text


NUM = {1: "one", 2: "two", 3: "three"}


def _pick(rng, xs):
    return xs[int(rng.integers(len(xs)))]


def name(o):
    """The unique reference of an object in its scene: "red circle" (color-shape pairs are unique)."""
    return f"{o['color']} {o['shape']}"


def mentions(scene):
    """(color word, shape word, u, v) of every object, u, v its center in [-1, 1] (right, down): a caption
    names an object by the adjacent words "<color> <shape>" (unique in a scene), which is how train_unet's
    layout loss finds the tokens that should carry the object's position."""
    return [(o["color"], o["shape"], o["x"] / IMAGE_SIZE * 2 - 1, o["y"] / IMAGE_SIZE * 2 - 1)
            for o in scene["objects"]]


def obj_phrase(o, rng, size=True, texture=True, article="a"):
    """An object with its attributes bound, in one of several word orders."""
    c, s, z, t = o["color"], o["shape"], o["size"], o["texture"]
    zs = f"{z} " if size else ""
    if not texture:
        return f"{article} {zs}{c} {s}"
    k = int(rng.integers(4))
    if t == "striped" and k == 3 and size:
        return f"{article} {c} {s} with stripes that is {z}"
    pre = {"solid": _pick(rng, ["solid", "plain"]), "dotted": "dotted", "striped": "striped"}[t]
    post = {"solid": None, "dotted": "with dots", "striped": "with stripes"}[t]
    if k == 0 and post:
        return f"{article} {zs}{c} {s} {post}"
    if k == 1 and size:
        return f"{article} {c} {s} that is {z} and {pre}"
    return f"{article} {zs}{pre} {c} {s}"


def _rel_phrase(rng, a, r, b, objs):
    """'<A> left of <B>' with A, B full phrases (varied), sometimes mirrored."""
    if rng.random() < 0.5:
        a, b, r = b, a, INVERSE[r]
    A, B = obj_phrase(objs[a], rng), obj_phrase(objs[b], rng)
    r2 = r if r in ("above", "below") or rng.random() < 0.7 else f"to the {r}"
    verb = _pick(rng, ["", "", "sits ", "is "])
    return f"{A} {verb}{r2} {B}"


def _rel_sentence(rng, a, r, b, objs):
    if rng.random() < 0.5:
        a, b, r = b, a, INVERSE[r]
    r2 = r if r in ("above", "below") or rng.random() < 0.7 else f"to the {r}"
    verb = _pick(rng, ["is", "is", "sits"])
    return f"the {name(objs[a])} {verb} {r2} the {name(objs[b])}"


def descriptive_caption(scene, rng, list_only=0.0):
    """Every object with all its attributes, the relations of every pair, and the background; with probability
    ``list_only`` a two- or three-object caption lists the objects without their relations ("three shapes on a gray
    background: a red circle, a blue star and a green ring."). ``list_only`` is one share for both, or a pair
    (two objects, three objects)."""
    objs, bg, rels = scene["objects"], scene["background"], scene["relations"]
    n = len(objs)
    p2, p3 = list_only if isinstance(list_only, (tuple, list)) else (list_only, list_only)
    bgp = _pick(rng, [f"on a {bg} background", f"on {bg} background"])
    if n == 1:
        A = obj_phrase(objs[0], rng)
        out = _pick(rng, [
            f"{A} {bgp}.",
            f"one shape: {A}. the background is {bg}.",
            f"a picture of {A} alone {bgp}.",
            f"there is one shape {bgp}: {A}.",
            f"{A} sits alone {bgp}.",
            f"{A}. the background is {bg}.",
            f"image of {A} {bgp}.",
        ])
    elif n == 2:
        a, r, b = rels[0]
        k = int(rng.integers(5))
        if p2 > 0 and rng.random() < p2:
            i, j = (a, b) if rng.random() < 0.5 else (b, a)
            out = f"two shapes {bgp}: {obj_phrase(objs[i], rng)} and {obj_phrase(objs[j], rng)}."
        elif k == 0:
            out = f"two shapes: {_rel_phrase(rng, a, r, b, objs)}. the background is {bg}."
        elif k == 1:
            out = f"{_rel_phrase(rng, a, r, b, objs)} {bgp}."
        elif k == 2:
            out = f"there are two shapes {bgp}: {_rel_phrase(rng, a, r, b, objs)}."
        elif k == 3:
            i, j = (a, b) if rng.random() < 0.5 else (b, a)
            out = (f"{obj_phrase(objs[i], rng)} and {obj_phrase(objs[j], rng)} {bgp}. "
                   f"{_rel_sentence(rng, a, r, b, objs)}.")
        else:
            out = (f"two shapes {bgp}. {_rel_sentence(rng, a, r, b, objs)}. "
                   f"the {name(objs[a])} is {objs[a]['size']} and "
                   f"{ {'solid': 'solid', 'striped': 'striped', 'dotted': 'dotted'}[objs[a]['texture']] }, "
                   f"the {name(objs[b])} is {objs[b]['size']} and "
                   f"{ {'solid': 'plain', 'striped': 'with stripes', 'dotted': 'with dots'}[objs[b]['texture']] }.")
    else:
        order = list(rng.permutation(n))
        lst = [obj_phrase(objs[i], rng) for i in order]
        lst = f"{lst[0]}, {lst[1]} and {lst[2]}"
        rs = [_rel_sentence(rng, a, r, b, objs) for a, r, b in (rels[k] for k in rng.permutation(len(rels)))]
        rs = f"{rs[0]}, {rs[1]} and {rs[2]}."
        if p3 > 0 and rng.random() < p3:
            out = _pick(rng, [f"three shapes {bgp}: {lst}.", f"there are three shapes {bgp}: {lst}."])
        else:
            out = _pick(rng, [
                f"three shapes {bgp}: {lst}. {rs}",
                f"there are three shapes: {lst}. {rs} the background is {bg}.",
                f"a picture of three shapes {bgp}: {lst}. {rs}",
            ])
    return check_vocab(out)


def _main_object(scene):
    objs = scene["objects"]
    large = [o for o in objs if o["size"] == "large"]
    return (large or objs)[0]


def short_caption(scene, rng):
    """The main subject (the first large object) with its attributes bound, and the background."""
    o, n, bg = _main_object(scene), len(scene["objects"]), scene["background"]
    A = obj_phrase(o, rng, size=rng.random() < 0.8, texture=rng.random() < 0.8)
    rest = "" if n == 1 else _pick(rng, [" and other shapes", " among other shapes",
                                         f" and {NUM[n - 1]} other shape{'s' if n > 2 else ''}"])
    out = _pick(rng, [f"{A}{rest} on a {bg} background", f"{A}{rest}", f"{A}{rest} on {bg}"])
    return check_vocab(out)


def _wrong(rng, o):
    """A copy of o with a wrong color or shape (never a held-out color-shape pair)."""
    while True:
        w = dict(o)
        if rng.random() < 0.5:
            w["color"] = _pick(rng, [c for c in COLORS if c != o["color"]])
        else:
            w["shape"] = _pick(rng, [s for s in SHAPES if s != o["shape"]])
        if not heldout_pair(w):
            return w


def alt_text(scene, rng):
    """Web-like alt-text: short, incomplete, no relations, often generic (about 40% name neither a
    color nor a shape); 25% start from a wrong color or shape, so ~15% of the alt-texts that name
    one are wrong (~9% of all)."""
    o = _main_object(scene)
    if rng.random() < 0.25:
        o = _wrong(rng, o)
    c, s = o["color"], o["shape"]
    out = _pick(rng, [
        "shapes", "simple geometric shapes", "clipart", "icon", "image", "picture", "geometric shapes",
        "shapes clipart", "geometric shapes image",
        f"{s}", f"{s} icon", f"{s} clipart", f"a {s}", f"{s} image", f"simple {s} icon", f"{s} shape",
        f"{c} {s}", f"{c} {s} icon", f"{c} {s} clipart", f"{c} shapes", f"{c} {s} image",
        f"picture of a {s}", f"{scene['background']} background", f"{s} on {scene['background']}",
        f"{c} {s} next to other shapes",
    ])
    return check_vocab(out)


def training_caption(scene, rng, mode="synthetic", list_only=0.0):
    """mode "synthetic": 75% descriptive, 20% short, 5% alt-text (DALL-E 3's blend);
    mode "alt": alt-text only (the ablation). Unconditional dropout is the trainer's job ("").
    list_only: passed to descriptive_caption."""
    if mode == "alt":
        return alt_text(scene, rng)
    assert mode == "synthetic", mode
    r = rng.random()
    if r < 0.05:
        return alt_text(scene, rng)
    if r < 0.25:
        return short_caption(scene, rng)
    return descriptive_caption(scene, rng, list_only)


def prompt_object(o, size=False, texture=False):
    z = f"{o['size']} " if size else ""
    t = f"{o['texture']} " if texture else ""
    return f"a {z}{t}{o['color']} {o['shape']}"


def prompt_for(scene, size=False, texture=False):
    """The canonical evaluation prompt: "a red circle left of a blue square on a gray background",
    "a large striped red star on a sand background", "three shapes on a sky background: a red circle,
    a blue square and a green star". size/texture: name them (for every object)."""
    objs, bg = scene["objects"], scene["background"]
    ph = [prompt_object(o, size, texture) for o in objs]
    if len(objs) == 1:
        out = f"{ph[0]} on a {bg} background"
    elif len(objs) == 2:
        a, r, b = scene["relations"][0]
        out = f"{ph[a]} {r} {ph[b]} on a {bg} background"
    else:
        out = f"three shapes on a {bg} background: {ph[0]}, {ph[1]} and {ph[2]}"
    return check_vocab(out)
