"""Prompt upsampling for the shape world (DALL-E 3 rewrites a short prompt into the kind of descriptive caption it was
trained on). Every caption the shipped model saw gave each object a size and a texture, so a prompt that leaves them
out gets "large" and "solid" ("a red circle" -> "a large solid red circle"); and its three-object captions gave the
layout, so the evaluation's bare list ("three shapes on a gray background: a red circle, a blue star and a green
ring") gets one: the first left of the second, the third below both. RULES goes into the shipped hoa.json as
``prompt_upsampling``; hoa applies it (src/prompt_upsampling.rs, `hoa generate --no-upsample` to skip) and
``upsample`` here is the same rewrite for diffusers runs (generate_torch --upsample, export's check image).

Picked by measurement (weights/README.md, "Prompt upsampling"): large and solid beat solid alone and large alone;
the layout took three-object prompts' objects from ~70% to ~95% right.
"""

import re

from .scene import SHAPES, SIZES, TEXTURES


def _obj(group):
    """An object phrase after the defaults; `group` captures its name ("red circle", how captions refer to it)."""
    return rf"a (?:\w+ )*?(?P<{group}>\w+ (?:{'|'.join(SHAPES)}))(?: with \w+)?"


RULES = {
    "nouns": list(SHAPES),
    "defaults": [
        {"words": list(SIZES), "word": "large"},
        {"words": list(TEXTURES) + ["plain", "stripes", "dots"], "word": "solid"},
    ],
    "rewrites": [{
        "pattern": rf"(?i)^(?P<list>(?:there are )?three shapes on (?:a )?\w+ background: {_obj('a')}, {_obj('b')} and "
                   rf"{_obj('c')})\.?$",
        "replacement": "${list}. the ${a} is left of the ${b}, the ${c} is below the ${a} and the ${c} is below "
                       "the ${b}.",
    }],
}
_TOKEN = re.compile(r"[\w']+|[^\w\s]")
ARTICLES = ("a", "an")


def upsample(prompt, rules=RULES):
    """The rewrite src/prompt_upsampling.rs does (see there for the rules)."""
    toks = [(m.start(), m.group().lower(), m.group()[0].isalnum() or m.group()[0] == "'")
            for m in _TOKEN.finditer(prompt)]
    nouns = {n.lower() for n in rules["nouns"]}
    slot = {w.lower(): k for k, d in reversed(list(enumerate(rules["defaults"]))) for w in d["words"]}
    ends = lambda t: not t[2] or t[1] in ARTICLES
    edits = []
    for i, (off, w, is_word) in enumerate(toks):
        if not (is_word and w in ARTICLES):
            continue
        j, noun = i + 1, None
        while j < len(toks) and not ends(toks[j]):
            if toks[j][1] in nouns:
                noun = j
                break
            j += 1
        if noun is None:
            continue
        j = noun + 1
        while j < len(toks) and not ends(toks[j]):
            j += 1
        stated = {slot[t[1]] for t in toks[i + 1:noun] + toks[noun + 1:j] if t[1] in slot}
        lead = []
        for jj in range(i + 1, noun):
            if toks[jj][1] not in slot:
                break
            lead.append((jj, slot[toks[jj][1]]))
        after_lead = lead[-1][0] + 1 if lead else i + 1
        for k, d in enumerate(rules["defaults"]):
            if k in stated:
                continue
            at = next((jj for jj, s in lead if s > k), after_lead)
            first = all(e[0] != toks[at][0] for e in edits)
            if first and at == i + 1 and w == "an" and not d["word"].startswith(tuple("aeiou")):
                edits.append((off, off + 2, "A" if prompt[off] == "A" else "a"))
            edits.append((toks[at][0], toks[at][0], d["word"] + " "))
    out, pos = [], 0
    for start, end, text in edits:
        out += [prompt[pos:start], text]
        pos = end
    text = "".join(out) + prompt[pos:]
    for r in rules.get("rewrites", []):
        # Rust's regex replacement syntax ${name} -> Python's \g<name>.
        text = re.sub(r["pattern"], re.sub(r"\$\{(\w+)\}", r"\\g<\1>", r["replacement"]), text, count=1)
    return text
