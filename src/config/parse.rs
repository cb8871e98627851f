//! What every config parser shares (diffusers' `configuration_utils` role): reading a
//! `config.json` as a JSON object, naming the key of a value that does not deserialize,
//! refusing a foreign `_class_name` / `architectures`, and the bounds checks that keep sizes
//! and divisors sane before any of them reaches arithmetic.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The most channels (or hidden size, heads, head dim, padding) a config may ask for: twice
/// the widest released model (T5-11B's `d_ff` 65536); more is a broken file, not a model.
pub const MAX_DIM: usize = 1 << 17;
/// The most layers per block (or encoder layers) a config may ask for.
pub const MAX_LAYERS: usize = 1 << 10;
/// The most levels (`block_out_channels` entries): each halves the resolution.
pub const MAX_LEVELS: usize = 16;
/// The most rows of an embedding table (vocabulary, learned timesteps).
pub const MAX_VOCAB: usize = 1 << 22;

/// Where a config's values came from, for errors: the file within the model folder and a
/// prefix that maps an inner config's keys onto the file's (`ConsistencyDecoderVAE` stores its
/// encoder's `act_fn` as `encoder_act_fn`).
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub file: &'a str,
    pub prefix: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(file: &'a str) -> Self {
        Source { file, prefix: "" }
    }

    /// The same file, with `prefix` in front of every key.
    pub fn prefixed(self, prefix: &'a str) -> Self {
        Source { prefix, ..self }
    }

    /// The key as the file spells it.
    pub fn key(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    pub fn err(&self, field: &str, why: impl Into<String>) -> Error {
        Error::config(self.file, self.key(field), why)
    }

    /// A value diffusers / transformers accept that hoa does not run.
    pub fn refuse(&self, field: &str, why: impl std::fmt::Display) -> Error {
        self.err(field, format!("{why}: hoa does not implement it"))
    }

    /// A setting hoa runs one value of: `v == want`.
    pub fn only(&self, field: &str, v: &str, want: &str) -> Result<()> {
        if v != want {
            return Err(self.refuse(field, format!("= {v:?} (hoa runs {want:?})")));
        }
        Ok(())
    }

    /// `1 <= v <= max`: a size or a divisor.
    pub fn positive(&self, field: &str, v: usize, max: usize) -> Result<()> {
        if v == 0 {
            return Err(self.err(field, "is 0; it must be at least 1"));
        }
        self.at_most(field, v, max)
    }

    /// `v <= max`.
    pub fn at_most(&self, field: &str, v: usize, max: usize) -> Result<()> {
        if v > max {
            return Err(self.err(
                field,
                format!("= {v} is larger than any model has (at most {max}); the file is broken"),
            ));
        }
        Ok(())
    }

    /// Every entry of a per-block list: `1 <= v <= max`.
    pub fn all_positive(&self, field: &str, vs: &[usize], max: usize) -> Result<()> {
        vs.iter().try_for_each(|&v| self.positive(field, v, max))
    }

    /// An epsilon: not negative.
    pub fn eps(&self, field: &str, v: f64) -> Result<()> {
        if v < 0.0 {
            return Err(self.err(field, format!("= {v} must not be negative")));
        }
        Ok(())
    }

    /// A scale something is divided by: positive.
    pub fn scale(&self, field: &str, v: f64) -> Result<()> {
        if v <= 0.0 {
            return Err(self.err(field, format!("= {v} must be positive")));
        }
        Ok(())
    }

    /// A `sample_size` (one number or a list of them, or null): each `1 <= v <= max`.
    pub fn sample_size(&self, field: &str, v: &Value, max: usize) -> Result<()> {
        let each = |x: &Value| match x.as_u64() {
            Some(n) => self.positive(field, usize::try_from(n).unwrap_or(usize::MAX), max),
            None => Err(self.err(field, format!("= {} is not a whole number", short(x)))),
        };
        match v {
            Value::Null => Ok(()),
            Value::Array(a) => a.iter().try_for_each(each),
            x => each(x),
        }
    }

    /// `groups` divides every entry of `channels_field` (`GroupNorm` over each block's
    /// channels, which are all entries of `block_out_channels`).
    pub fn groups_divide(
        &self,
        groups_field: &str,
        groups: usize,
        channels_field: &str,
        channels: &[usize],
    ) -> Result<()> {
        self.positive(groups_field, groups, MAX_DIM)?;
        match channels.iter().find(|&&ch| ch % groups != 0) {
            Some(ch) => Err(self.err(
                groups_field,
                format!(
                    "= {groups} does not divide the {ch} channels of `{}`",
                    self.key(channels_field)
                ),
            )),
            None => Ok(()),
        }
    }

    /// The lists every diffusers U-Net / VAE config shares: `block_out_channels`, one entry per
    /// level, and `down_block_types` / `up_block_types` of the same length, each a type hoa
    /// runs. Returns the number of levels.
    pub fn block_lists(
        &self,
        channels: &[usize],
        down: (&[String], &[&str]),
        up: (&[String], &[&str]),
    ) -> Result<usize> {
        let n = channels.len();
        if n == 0 {
            return Err(self.err("block_out_channels", "is empty"));
        }
        self.at_most("block_out_channels", n, MAX_LEVELS)
            .map_err(|_| {
                self.err(
                    "block_out_channels",
                    format!("has {n} levels (at most {MAX_LEVELS}); the file is broken"),
                )
            })?;
        self.all_positive("block_out_channels", channels, MAX_DIM)?;
        for (field, (types, known)) in [("down_block_types", down), ("up_block_types", up)] {
            if types.len() != n {
                return Err(self.err(
                    field,
                    format!(
                        "has {} entries, `{}` {n}",
                        types.len(),
                        self.key("block_out_channels")
                    ),
                ));
            }
            if let Some(t) = types.iter().find(|t| !known.contains(&t.as_str())) {
                return Err(self.refuse(
                    field,
                    format!("contains {t:?} (known: {})", known.join(", ")),
                ));
            }
        }
        Ok(n)
    }
}

/// A config value that is either one value for every block or a list with one per block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// One value per block; a list of the wrong length is an error naming `field`.
    pub fn expand(&self, src: Source, field: &str, blocks: usize) -> Result<Vec<T>> {
        match self {
            PerBlock::One(v) => Ok(vec![v.clone(); blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(src.err(
                field,
                format!("has {} entries for {blocks} blocks", v.len()),
            )),
        }
    }
}

/// The class names a config may declare: diffusers' `_class_name` or transformers'
/// `architectures` list; absent is fine (hand-written configs), anything else is refused.
pub struct Class {
    pub key: &'static str,
    pub known: &'static [&'static str],
}

impl Class {
    /// diffusers' `_class_name`.
    pub const fn diffusers(known: &'static [&'static str]) -> Class {
        Class {
            key: "_class_name",
            known,
        }
    }

    /// transformers' `architectures`.
    pub const fn transformers(known: &'static [&'static str]) -> Class {
        Class {
            key: "architectures",
            known,
        }
    }
}

/// Every model config's `from_json`: [`parse`], then the config's own `validate`.
pub fn parse_valid<T: DeserializeOwned>(
    file: &str,
    json: &[u8],
    class: &Class,
    validate: impl FnOnce(&T) -> Result<()>,
) -> Result<T> {
    let c: T = parse(file, json, class)?;
    validate(&c)?;
    Ok(c)
}

/// Parses `json` (the file `file`) as `T`: a JSON object (serde would read an array as the
/// struct's fields in order), of `class`, every bad value named by its key.
pub fn parse<T: DeserializeOwned>(file: &str, json: &[u8], class: &Class) -> Result<T> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| Error::Checkpoint(format!("{file}: not valid JSON ({e})")))?;
    let Value::Object(map) = value else {
        return Err(Error::Checkpoint(format!(
            "{file}: expected a JSON object ({{\"key\": value, ...}}), found {}",
            short(&value)
        )));
    };
    check_class(file, &map, class)?;
    T::deserialize(&Value::Object(map.clone())).map_err(|e| bad_key::<T>(file, &map, e))
}

fn check_class(file: &str, map: &Map<String, Value>, class: &Class) -> Result<()> {
    let Some(v) = map.get(class.key) else {
        return Ok(());
    };
    let names: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    if names
        .iter()
        .all(|n| n.as_str().is_some_and(|s| class.known.contains(&s)))
    {
        return Ok(());
    }
    Err(Error::config(
        file,
        class.key,
        format!(
            "= {}: this file is not a {} config",
            short(v),
            class.known.join(" / ")
        ),
    ))
}

/// Names the key whose value `T` cannot take: the first one that fails alone.
fn bad_key<T: DeserializeOwned>(
    file: &str,
    map: &Map<String, Value>,
    e: serde_json::Error,
) -> Error {
    for (k, v) in map {
        let one = Value::Object(Map::from_iter([(k.clone(), v.clone())]));
        if let Err(e) = T::deserialize(&one) {
            return Error::config(file, k, format!("= {} cannot be read: {e}", short(v)));
        }
    }
    Error::Checkpoint(format!("{file}: {e}"))
}

/// A value for a message, cut to a readable length.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}
