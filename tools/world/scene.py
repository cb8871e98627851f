"""The procedural world of hoa's toy model: scene graphs and their exact renderer.

A scene is a JSON-serializable dict
    {"background": "sand", "objects": [{"shape", "color", "size", "texture", "x", "y", "radius"}, ...],
     "relations": [[i, "left of", j], ...]}
with 1-3 non-overlapping objects, placed so that every pair's relation is unambiguous (the centers
differ by >= REL_MARGIN px more along the relation's axis than along the other one).
Coordinates are in 64x64 pixel units (x right, y down; pixel (r, c) covers [c, c+1) x [r, r+1)).
`radius` is the nominal size; each shape is scaled so that shapes of one size look alike (EXTENT).

Held-out combinations (never in split="train", at least one in every split="unseen" scene):
  HELDOUT_PAIRS   8 of the 48 color-shape pairs, every color once, triangle and star twice.
  HELDOUT_TRIPLES 4 (shape, relation, shape) triples; a triple also matches in its mirrored form
                  (circle left of square == square right of circle), in any pair of a scene.
"""

import numpy as np

IMAGE_SIZE = 64
SS = 4  # supersampling factor of render()

SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (245, 220, 30),
    "green": (40, 170, 60),
    "cyan": (30, 210, 220),
    "blue": (40, 70, 220),
    "purple": (150, 60, 200),
    "white": (250, 250, 250),
}
DARK = (25, 25, 25)  # stripes and dots
SIZES = ["small", "large"]
RADIUS = {"small": (7.0, 8.0), "large": (12.5, 13.5)}
TEXTURES = ["solid", "striped", "dotted"]
BACKGROUNDS = {"sand": (205, 188, 150), "gray": (150, 150, 150), "sky": (163, 195, 228)}
RELATIONS = ["left of", "right of", "above", "below"]
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
REL_MARGIN = 6.0  # px: |major axis difference| - |minor axis difference| >= this
GAP = 5.0  # px between the circumscribed circles of two objects
STRIPE_PERIOD, STRIPE_WIDTH = 5, 2  # pixel-aligned horizontal dark rows
DOT_PERIOD, DOT_WIDTH = 5, 2  # pixel-aligned dark 2x2 squares

# shape geometry relative to `radius`
TRI_R = 1.15  # circumradius of the triangle
STAR_R, STAR_INNER = 1.2, 0.45  # outer radius, inner/outer ratio
SQUARE_H = 0.85  # half side
RING_INNER = 0.5
CROSS_L, CROSS_W = 1.0, 0.36  # half length, half width of the arms
EXTENT = {"circle": 1.0, "ring": 1.0, "square": SQUARE_H * np.sqrt(2), "triangle": TRI_R,
          "star": STAR_R, "cross": np.hypot(CROSS_L, CROSS_W)}

HELDOUT_PAIRS = [("red", "triangle"), ("orange", "ring"), ("yellow", "square"), ("green", "star"),
                 ("cyan", "circle"), ("blue", "cross"), ("purple", "triangle"), ("white", "star")]
HELDOUT_TRIPLES = [("circle", "left of", "square"), ("star", "above", "ring"),
                   ("triangle", "right of", "cross"), ("square", "below", "triangle")]
_PAIRS = set(HELDOUT_PAIRS)
_TRIPLES = set(HELDOUT_TRIPLES) | {(b, INVERSE[r], a) for a, r, b in HELDOUT_TRIPLES}


def relation(a, b):
    """Relation of object a to object b from their centers ("left of": a is left of b)."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def heldout_pair(o):
    return (o["color"], o["shape"]) in _PAIRS


def heldout_triple(shape_a, rel, shape_b):
    return (shape_a, rel, shape_b) in _TRIPLES


def is_unseen(scene) -> bool:
    objs = scene["objects"]
    if any(heldout_pair(o) for o in objs):
        return True
    for i, r, j in scene["relations"]:
        if heldout_triple(objs[i]["shape"], r, objs[j]["shape"]):
            return True
    return False


def _place(rng, objs, tries=200):
    ext = [o["radius"] * EXTENT[o["shape"]] for o in objs]
    for _ in range(tries):
        pos = []
        for e in ext:
            lo, hi = e + 1.5, IMAGE_SIZE - e - 1.5
            pos.append((rng.uniform(lo, hi), rng.uniform(lo, hi)))
        ok = True
        for i in range(len(pos)):
            for j in range(i + 1, len(pos)):
                dx, dy = abs(pos[i][0] - pos[j][0]), abs(pos[i][1] - pos[j][1])
                if np.hypot(dx, dy) < ext[i] + ext[j] + GAP or abs(dx - dy) < REL_MARGIN:
                    ok = False
        if ok:
            return pos
    return None


def _sample_any(rng, n=None):
    while True:
        k = n if n is not None else int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
        objs, seen = [], set()
        while len(objs) < k:
            o = {"shape": SHAPES[rng.integers(6)], "color": list(COLORS)[rng.integers(8)],
                 "size": SIZES[rng.integers(2)], "texture": TEXTURES[rng.integers(3)]}
            if (o["color"], o["shape"]) in seen:
                continue
            seen.add((o["color"], o["shape"]))
            lo, hi = RADIUS[o["size"]]
            o["radius"] = round(float(rng.uniform(lo, hi)), 2)
            objs.append(o)
        pos = _place(rng, objs)
        if pos is None:
            continue
        for o, (x, y) in zip(objs, pos):
            o["x"], o["y"] = round(float(x), 2), round(float(y), 2)
        objs = [{k2: o[k2] for k2 in ("shape", "color", "size", "texture", "x", "y", "radius")} for o in objs]
        rels = [[i, relation(objs[i], objs[j]), j] for i in range(k) for j in range(i + 1, k)]
        return {"background": list(BACKGROUNDS)[rng.integers(3)], "objects": objs, "relations": rels}


def sample_scene(rng: np.random.Generator, split: str = "train", n_objects=None, where=None) -> dict:
    """A random scene. split: "train" (no held-out combination), "unseen" (at least one), "any".
    n_objects: force the object count; where: optional extra predicate scene -> bool."""
    assert split in ("train", "unseen", "any"), split
    while True:
        s = _sample_any(rng, n_objects)
        if split == "train" and is_unseen(s):
            continue
        if split == "unseen" and not is_unseen(s):
            continue
        if where is not None and not where(s):
            continue
        return s


# ---------------------------------------------------------------- rendering

def shape_mask(shape, u, v, r):
    """Inside test in local coordinates (u right, v down) around the center, nominal radius r."""
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "ring":
        d = u * u + v * v
        return (d <= r * r) & (d >= (RING_INNER * r) ** 2)
    if shape == "square":
        h = SQUARE_H * r
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "cross":
        L, w = CROSS_L * r, CROSS_W * r
        au, av = np.abs(u), np.abs(v)
        return ((au <= w) & (av <= L)) | ((av <= w) & (au <= L))
    if shape == "triangle":
        R = TRI_R * r  # upright, centroid at the center
        m = np.ones(np.broadcast(u, v).shape, bool)
        for a in (-90, 30, 150):  # outward normals point to the edge midpoints (opposite vertices)
            t = np.deg2rad(a + 180)
            m &= u * np.cos(t) + v * np.sin(t) <= R / 2
        return m
    if shape == "star":
        Ro, Ri = STAR_R * r, STAR_R * STAR_INNER * r
        th = np.arctan2(v, u) + np.pi / 2  # 0 = up
        phi = np.mod(th, 2 * np.pi / 5)
        phi = np.minimum(phi, 2 * np.pi / 5 - phi)
        s36 = np.sin(np.pi / 5)
        t = Ro * Ri * s36 / (Ri * s36 * np.cos(phi) + (Ro - Ri * np.cos(np.pi / 5)) * np.sin(phi))
        return u * u + v * v <= t * t
    raise ValueError(shape)


def render(scene) -> np.ndarray:
    """uint8 (64, 64, 3), deterministic, 4x supersampled then box-filtered. Textures are aligned to
    the pixel grid (stripes: rows where (row - round(y)) % 5 < 2; dots: 2x2 squares every 5 px)."""
    bg = np.array(BACKGROUNDS[scene["background"]], np.float32)
    lo = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    lo[:] = bg
    for o in scene["objects"]:  # objects never overlap: composite each in its own pixel box
        e = o["radius"] * EXTENT[o["shape"]] + 1
        c0, c1 = max(int(o["x"] - e), 0), min(int(np.ceil(o["x"] + e)), IMAGE_SIZE)
        r0, r1 = max(int(o["y"] - e), 0), min(int(np.ceil(o["y"] + e)), IMAGE_SIZE)
        X = (np.arange(c0 * SS, c1 * SS) + 0.5) / SS
        Y = (np.arange(r0 * SS, r1 * SS) + 0.5) / SS
        m = shape_mask(o["shape"], X[None, :] - o["x"], Y[:, None] - o["y"], o["radius"])
        hi = np.empty(m.shape + (3,), np.float32)
        hi[:] = bg
        hi[m] = COLORS[o["color"]]
        if o["texture"] != "solid":
            py = (np.arange(r0 * SS, r1 * SS) // SS) - int(round(o["y"])) + 1
            px = (np.arange(c0 * SS, c1 * SS) // SS) - int(round(o["x"])) + 1
            if o["texture"] == "striped":
                dark = np.broadcast_to((np.mod(py, STRIPE_PERIOD) < STRIPE_WIDTH)[:, None], m.shape)
            else:
                dark = (np.mod(py, DOT_PERIOD) < DOT_WIDTH)[:, None] & (np.mod(px, DOT_PERIOD) < DOT_WIDTH)[None, :]
            hi[m & dark] = DARK
        lo[r0:r1, c0:c1] = hi.reshape(r1 - r0, SS, c1 - c0, SS, 3).mean(axis=(1, 3))
    return np.clip(np.rint(lo), 0, 255).astype(np.uint8)
