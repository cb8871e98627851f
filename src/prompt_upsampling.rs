//! Prompt upsampling: DALL-E 3 trains on descriptive captions and so rewrites a user's short
//! prompt into one before sampling (the paper uses GPT-4). A model folder may declare the
//! simplest useful form of it in `hoa.json`: the attributes its captions always state, and the
//! word to use when a prompt leaves one out. hoa's shipped model was trained on captions that
//! give every object a size and a texture, so "a red circle" becomes "a large solid red circle".
//!
//! ```json
//! "prompt_upsampling": {
//!   "nouns": ["circle", "square"],
//!   "defaults": [
//!     {"words": ["small", "large"], "word": "large"},
//!     {"words": ["solid", "plain", "striped", "dotted", "stripes", "dots"], "word": "solid"}
//!   ]
//! }
//! ```
//!
//! An object phrase runs from an article ("a", "an") to the next noun, its tail from there to
//! the next article or punctuation ("a red circle with stripes left of"). A default whose words
//! appear nowhere in the phrase or its tail is inserted among the words before the noun, after
//! those of the defaults listed before it ("a small red circle" -> "a small solid red circle").
//!
//! Then `rewrites`, in order: `{"pattern": REGEX, "replacement": TEXT}`, the first match of
//! each replaced (`regex` syntax; `${name}` in the replacement is a named group). The shipped
//! model's captions always gave three objects' layout, so its bare list "three shapes on a gray
//! background: a red circle, a blue star and a green ring" gets one: "... the red circle is
//! left of the blue star, the green ring is below the red circle and ...".

use crate::error::{Error, Result};
use regex::Regex;
use serde::Deserialize;
use std::sync::OnceLock;

/// One attribute a model's captions always state: any of `words` states it, `word` is the
/// default.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AttributeDefault {
    pub words: Vec<String>,
    pub word: String,
}

/// A regex replacement applied after the defaults.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Rewrite {
    pub pattern: String,
    pub replacement: String,
}

/// `hoa.json`'s `prompt_upsampling`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PromptUpsampling {
    /// The nouns that end an object phrase.
    pub nouns: Vec<String>,
    pub defaults: Vec<AttributeDefault>,
    #[serde(default)]
    pub rewrites: Vec<Rewrite>,
    /// `rewrites` compiled on first use (a few ms each; a prompt file upsamples every line), so
    /// edit `rewrites` before the first `upsample`, not after.
    #[serde(skip)]
    compiled: OnceLock<Vec<Option<Regex>>>,
}

const ARTICLES: [&str; 2] = ["a", "an"];
const VOWELS: [char; 5] = ['a', 'e', 'i', 'o', 'u'];

#[derive(Clone, Copy)]
enum Kind {
    Word,
    Punct,
}

/// Words (alphanumeric runs, lowercased) and single punctuation marks, with byte offsets.
fn tokens(text: &str) -> Vec<(usize, String, Kind)> {
    let mut out: Vec<(usize, String, Kind)> = Vec::new();
    let mut word: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_alphanumeric() || c == '\'' {
            word.get_or_insert(i);
            continue;
        }
        if let Some(s) = word.take() {
            out.push((s, text[s..i].to_lowercase(), Kind::Word));
        }
        if !c.is_whitespace() {
            out.push((i, c.to_string(), Kind::Punct));
        }
    }
    if let Some(s) = word {
        out.push((s, text[s..].to_lowercase(), Kind::Word));
    }
    out
}

impl PromptUpsampling {
    /// Refuses rules that could not work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| {
            Err(Error::Checkpoint(format!(
                "hoa.json prompt_upsampling: {what}"
            )))
        };
        if self.nouns.is_empty() {
            return bad("`nouns` is empty: list the nouns that end an object phrase".into());
        }
        for (k, d) in self.defaults.iter().enumerate() {
            let one_word = |w: &str| !w.is_empty() && w.chars().all(char::is_alphanumeric);
            if !one_word(&d.word) || d.words.iter().any(|w| !one_word(w)) {
                return bad(format!(
                    "defaults[{k}]: `word` and `words` must be single words, got {:?} / {:?}",
                    d.word, d.words
                ));
            }
            if !d.words.iter().any(|w| w.eq_ignore_ascii_case(&d.word)) {
                return bad(format!(
                    "defaults[{k}]: `word` {:?} is not one of its `words` {:?}, so it would be \
                     inserted again on every run",
                    d.word, d.words
                ));
            }
        }
        for (k, r) in self.rewrites.iter().enumerate() {
            if let Err(e) = Regex::new(&r.pattern) {
                return bad(format!(
                    "rewrites[{k}]: `pattern` is not a valid regex: {e}"
                ));
            }
        }
        Ok(())
    }

    /// The slot (index into `defaults`) a word states, if any.
    fn slot(&self, word: &str) -> Option<usize> {
        self.defaults
            .iter()
            .position(|d| d.words.iter().any(|w| w.eq_ignore_ascii_case(word)))
    }

    /// `prompt` with every object phrase's missing attributes filled in, then the rewrites
    /// applied; unchanged when nothing is missing and no pattern matches. Rules whose rewrites
    /// match their own output would not be idempotent; the shipped ones are.
    pub fn upsample(&self, prompt: &str) -> String {
        let mut text = self.fill_defaults(prompt);
        let compiled = self.compiled.get_or_init(|| {
            // validate() refused bad patterns; one that still fails to compile is skipped.
            self.rewrites
                .iter()
                .map(|r| Regex::new(&r.pattern).ok())
                .collect()
        });
        for (r, re) in self.rewrites.iter().zip(compiled) {
            if let Some(re) = re {
                text = re.replace(&text, r.replacement.as_str()).into_owned();
            }
        }
        text
    }

    fn fill_defaults(&self, prompt: &str) -> String {
        let toks = tokens(prompt);
        let is_article = |t: &(usize, String, Kind)| {
            matches!(t.2, Kind::Word) && ARTICLES.contains(&t.1.as_str())
        };
        let is_noun = |t: &(usize, String, Kind)| {
            matches!(t.2, Kind::Word) && self.nouns.iter().any(|n| n.eq_ignore_ascii_case(&t.1))
        };
        let ends = |t: &(usize, String, Kind)| matches!(t.2, Kind::Punct) || is_article(t);
        // (start, end, replacement) byte ranges of the prompt; an insertion is empty.
        let mut edits: Vec<(usize, usize, String)> = Vec::new();
        for i in 0..toks.len() {
            if !is_article(&toks[i]) {
                continue;
            }
            let Some(noun) = (i + 1..toks.len())
                .take_while(|&j| !ends(&toks[j]))
                .find(|&j| is_noun(&toks[j]))
            else {
                continue;
            };
            let tail = (noun + 1..toks.len()).take_while(|&j| !ends(&toks[j]));
            let stated: Vec<usize> = (i + 1..noun)
                .chain(tail)
                .filter_map(|j| self.slot(&toks[j].1))
                .collect();
            // The leading modifiers that state a slot, where the defaults go in slot order.
            let lead: Vec<(usize, usize)> = (i + 1..noun)
                .map_while(|j| self.slot(&toks[j].1).map(|s| (j, s)))
                .collect();
            let after_lead = lead.last().map_or(i + 1, |&(j, _)| j + 1);
            for (k, d) in self.defaults.iter().enumerate() {
                if stated.contains(&k) {
                    continue;
                }
                let at = lead
                    .iter()
                    .find(|&&(_, s)| s > k)
                    .map_or(after_lead, |&(j, _)| j);
                // "an orange ring" -> "a large solid orange ring", not "an large".
                let first = !edits.iter().any(|e| e.0 == toks[at].0);
                if first && at == i + 1 && toks[i].1 == "an" && !d.word.starts_with(VOWELS) {
                    let a = if prompt[toks[i].0..].starts_with('A') {
                        "A"
                    } else {
                        "a"
                    };
                    edits.push((toks[i].0, toks[i].0 + 2, a.into()));
                }
                edits.push((toks[at].0, toks[at].0, format!("{} ", d.word)));
            }
        }
        let mut out = String::with_capacity(prompt.len() + 16 * edits.len());
        let mut pos = 0;
        // Edits are made in prompt order already; insertions at one offset stay in slot order.
        for (start, end, text) in edits {
            out.push_str(&prompt[pos..start]);
            out.push_str(&text);
            pos = end;
        }
        out.push_str(&prompt[pos..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped model's rules (weights/default/hoa.json).
    fn shapes() -> PromptUpsampling {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect();
        PromptUpsampling {
            nouns: words(&["circle", "square", "triangle", "star", "ring", "cross"]),
            defaults: vec![
                AttributeDefault {
                    words: words(&["small", "large"]),
                    word: "large".into(),
                },
                AttributeDefault {
                    words: words(&["solid", "plain", "striped", "dotted", "stripes", "dots"]),
                    word: "solid".into(),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn fills_what_each_object_leaves_out() {
        let u = shapes();
        for (prompt, want) in [
            (
                "a red circle left of a blue square on a gray background",
                "a large solid red circle left of a large solid blue square on a gray background",
            ),
            ("a small red star", "a small solid red star"),
            ("a striped red star", "a large striped red star"),
            ("a small dotted red star", "a small dotted red star"),
            (
                "a red circle with stripes",
                "a large red circle with stripes",
            ),
            (
                "a red circle with stripes that is small",
                "a red circle with stripes that is small",
            ),
            (
                "three shapes on a sky background: a red circle, a small blue square and a \
                 green star",
                "three shapes on a sky background: a large solid red circle, a small solid blue \
                 square and a large solid green star",
            ),
            // The article changes with the word after it; capitals are kept.
            ("An orange ring.", "A large solid orange ring."),
            ("an ORANGE Ring", "a large solid ORANGE Ring"),
            // "a picture of" ends at the next article: only the object is filled.
            ("a picture of a circle", "a picture of a large solid circle"),
            // No noun of the model's, no change.
            ("a gray background", "a gray background"),
            ("", ""),
            ("the red circle", "the red circle"),
        ] {
            assert_eq!(u.upsample(prompt), want, "{prompt:?}");
            assert_eq!(u.upsample(want), want, "twice: {want:?}");
        }
    }

    #[test]
    fn rewrites_apply_after_the_defaults_with_named_groups() {
        let mut u = shapes();
        let obj = |g: &str| format!(r"a (?:\w+ )*?(?P<{g}>\w+ (?:circle|star|ring))(?: with \w+)?");
        u.rewrites.push(Rewrite {
            pattern: format!(
                r"^(?P<list>three shapes: {}, {} and {})\.?$",
                obj("a"),
                obj("b"),
                obj("c")
            ),
            replacement: "${list}. the ${a} is left of the ${b}, the ${c} is below both.".into(),
        });
        assert!(u.validate().is_ok());
        let typed = "three shapes: a red circle, a small blue star with dots and a green ring.";
        let want = "three shapes: a large solid red circle, a small blue star with dots and a \
                    large solid green ring. the red circle is left of the blue star, the green \
                    ring is below both.";
        assert_eq!(u.upsample(typed), want);
        assert_eq!(u.upsample(want), want, "twice");
        // Only what the pattern matches is rewritten.
        let other = "three shapes: a red circle and a green ring";
        assert_eq!(
            u.upsample(other),
            "three shapes: a large solid red circle and a large solid green ring"
        );
        u.rewrites[0].pattern = "(unclosed".into();
        let e = u.validate().unwrap_err().to_string();
        assert!(
            e.contains("rewrites[0]: `pattern` is not a valid regex"),
            "{e}"
        );
    }

    #[test]
    fn an_is_kept_before_a_vowel() {
        let mut u = shapes();
        u.defaults[0].word = "enormous".into();
        u.defaults[0].words.push("enormous".into());
        assert_eq!(u.upsample("an red star"), "an enormous solid red star");
    }

    #[test]
    fn unworkable_rules_are_refused() {
        let mut u = shapes();
        u.defaults[1].word = "glossy".into();
        let e = u.validate().unwrap_err().to_string();
        assert!(e.contains("not one of its `words`"), "{e}");
        let mut u = shapes();
        u.nouns.clear();
        assert!(u.validate().unwrap_err().to_string().contains("nouns"));
        let mut u = shapes();
        u.defaults[0].words.push("very large".into());
        assert!(u
            .validate()
            .unwrap_err()
            .to_string()
            .contains("single words"));
        assert!(shapes().validate().is_ok());
    }
}
