"""Prompt upsampling for the shape world (DALL-E 3 rewrites a short prompt into the kind of descriptive caption it was
trained on). Every caption the shipped model saw gave each object a size and a texture, so a prompt that leaves them
out gets "large" and "solid" ("a red circle" -> "a large solid red circle"); and its three-object captions gave the
layout, so the evaluation's bare list ("three shapes on a gray background: a red circle, a blue star and a green
ring") gets one: the first left of the second, the third below both. RULES goes into the shipped hoa.json as
``prompt_upsampling``; hoa applies it (src/prompt_upsampling.rs, `hoa generate --no-upsample` to skip) and
``upsample`` here is the same rewrite for diffusers runs (generate_torch --upsample, export's check image).

Picked by measurement (weights/README.md, "Prompt upsampling"): large and solid beat solid alone and large alone;
the layout took three-object prompts' objects from ~70% to ~95% right.

The grammar (an object phrase, its tail, where the defaults go) and the word lists are src/prompt_upsampling.rs's,
line for line; tests/fixtures/prompt_upsampling holds this file's output, which the Rust side must reproduce.
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

# The bounds (bytes of UTF-8): a longer prompt is refused, a rewrite that grows the text past MAX_OUTPUT fails.
MAX_PROMPT = 16 * 1024
MAX_OUTPUT = 64 * 1024
# Words that open an object phrase: the defaults go after them.
ARTICLES = ("a", "an")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "several", "many", "multiple", "few", "some")
# Words that make the phrase after them a known object ("the red circle"), not a new one: never filled.
DETERMINERS = ("the", "this", "these", "those", "its", "their", "his", "her", "my", "your", "our", "each", "every",
               "no", "another", "other", "both", "either", "neither", "which", "whose", "what")
# Relation and function words: not an object's modifiers, so an object phrase never spans one.
FUNCTION_WORDS = (
    "of", "on", "in", "at", "to", "from", "by", "with", "without", "above", "below", "under", "over", "beneath",
    "beside", "besides", "between", "among", "behind", "near", "next", "left", "right", "top", "bottom", "inside",
    "outside", "into", "onto", "around", "across", "against", "along", "beyond", "through", "toward", "towards",
    "within", "upon", "underneath", "up", "down", "front", "back", "side", "middle", "center", "centre", "corner",
    "alone", "together", "apart", "and", "or", "but", "nor", "plus", "while", "whereas", "than", "then", "so", "as",
    "if", "not", "only", "just", "also", "too", "is", "are", "was", "were", "be", "been", "being", "am", "has",
    "have", "had", "having", "do", "does", "did", "sits", "sit", "sitting", "lies", "lie", "lying", "stands",
    "stand", "standing", "shows", "show", "showing", "draw", "drawn", "drawing", "depicting", "depicts", "paint",
    "painted", "render", "rendered", "make", "made", "there", "here", "it", "they", "them", "that", "who", "whom",
    "where", "when", "how", "why")
_SIBILANT = ("s", "x", "z", "ch", "sh")
# Words (letters, digits, apostrophes) and single other marks, as src/prompt_upsampling.rs splits them.
_TOKEN = re.compile(r"(?:[^\W_]|')+|[^\w\s]|_")


def _is_noun(w, nouns):
    """A noun or its plural: +es after a sibilant ("crosses"), +s otherwise ("circles")."""
    if w in nouns:
        return True
    if w.endswith("es") and w[:-2] in nouns and w[:-2].endswith(_SIBILANT):
        return True
    return w.endswith("s") and w[:-1] in nouns and not w[:-1].endswith(_SIBILANT)


def _kinds(toks, nouns):
    """Each token's part in the grammar: noun, opener, determiner, function, modifier or punct."""
    out = []
    for _, w, is_word, _ in toks:
        if not is_word:
            out.append("punct")
        elif _is_noun(w, nouns):
            out.append("noun")
        elif w in ARTICLES or w in NUMBERS or (w.isascii() and w.isdigit()):
            out.append("opener")
        elif w in DETERMINERS:
            out.append("determiner")
        elif w in FUNCTION_WORDS:
            out.append("function")
        else:
            out.append("modifier")
    return out


def _phrases(kinds):
    """(opener start, first modifier, noun) of every object phrase: openers*, modifiers*, then the noun, not right
    after a determiner."""
    out = []
    for n, k in enumerate(kinds):
        if k != "noun":
            continue
        m = n
        while m > 0 and kinds[m - 1] == "modifier":
            m -= 1
        o = m
        while o > 0 and kinds[o - 1] == "opener":
            o -= 1
        if o > 0 and kinds[o - 1] == "determiner":
            continue
        out.append((o, m, n))
    return out


def _fill(prompt, rules):
    toks = [(m.start(), m.group().lower(), m.group()[0].isalnum() or m.group()[0] == "'", m.group())
            for m in _TOKEN.finditer(prompt)]
    nouns = {n.lower() for n in rules["nouns"]}
    slot = {w.lower(): k for k, d in reversed(list(enumerate(rules["defaults"]))) for w in d["words"]}
    kinds = _kinds(toks, nouns)
    phrases = _phrases(kinds)
    edits = []
    for q, (o, m, n) in enumerate(phrases):
        # The tail: what follows the noun up to a mark, an opener, a determiner or the next object.
        end = phrases[q + 1][0] if q + 1 < len(phrases) else len(toks)
        j = n + 1
        while j < end and kinds[j] not in ("punct", "opener", "determiner"):
            j += 1
        stated = {slot[t[1]] for t in toks[m:n] + toks[n + 1:j] if t[1] in slot}
        lead = []
        for jj in range(m, n):
            if toks[jj][1] not in slot:
                break
            lead.append((jj, slot[toks[jj][1]]))
        after_lead = lead[-1][0] + 1 if lead else m
        mine = len(edits)
        for k, d in enumerate(rules["defaults"]):
            if k in stated:
                continue
            at = next((jj for jj, s in lead if s > k), after_lead)
            first = all(e[0] != toks[at][0] for e in edits)
            if first and at == m and o < m and toks[m - 1][1] == "an" and not d["word"].startswith(tuple("aeiou")):
                off = toks[m - 1][0]
                edits.append((off, off + 2, "A" if prompt[off] == "A" else "a"))
            edits.append((toks[at][0], toks[at][0], d["word"] + " "))
        _move_capital(prompt, toks, edits, mine, o, m)
    return edits


def _move_capital(prompt, toks, edits, mine, o, m):
    """"Red star." -> "Large solid red star.": a phrase without an opener that starts with a capital gives it to the
    first word put before it (and lowers its own first letter unless the word has other capitals, "RED")."""
    off = toks[m][0]
    at_start = [e for e in range(mine, len(edits)) if edits[e][0] == off]
    if o < m or not at_start or not prompt[off].isupper():
        return
    s, t, text = edits[at_start[0]]
    edits[at_start[0]] = (s, t, text[0].upper() + text[1:])
    if not any(c.isupper() for c in toks[m][3][1:]):
        s, t, text = edits[at_start[-1]]
        edits[at_start[-1]] = (s, off + 1, text + prompt[off].lower())


def upsample(prompt, rules=RULES):
    """The rewrite src/prompt_upsampling.rs does (see there for the rules); ValueError past its bounds."""
    if len(prompt.encode()) > MAX_PROMPT:
        raise ValueError(f"the prompt is {len(prompt.encode())} bytes, more than upsampling takes ({MAX_PROMPT})")
    edits = _fill(prompt, rules)
    out, pos = [], 0
    for start, end, text in edits:
        out += [prompt[pos:start], text]
        pos = end
    text = "".join(out) + prompt[pos:]
    if len(text.encode()) > MAX_OUTPUT:
        raise ValueError(f"prompt_upsampling.defaults grow the prompt past {MAX_OUTPUT} bytes")
    for k, r in enumerate(rules.get("rewrites", [])):
        # Rust's regex replacement syntax ${name} -> Python's \g<name>.
        text = re.sub(r["pattern"], re.sub(r"\$\{(\w+)\}", r"\\g<\1>", r["replacement"]), text, count=1)
        if len(text.encode()) > MAX_OUTPUT:
            raise ValueError(f"prompt_upsampling.rewrites[{k}] grows the prompt past {MAX_OUTPUT} bytes")
    return text
