//! transformers' `generate` for encoder-decoder models (`generation/utils.py`): greedy search
//! (`_sample` without sampling) and beam search (`_beam_search`), with the bookkeeping on the
//! CPU and the model behind [`StepDecoder`], which runs one token per row on the GPU and hands
//! back one row of logits per sequence. The searches are async because reading the logits
//! back is (in the browser); native callers block on them.

mod beam_search;
mod config;

pub use beam_search::beam_search;
pub use config::{EarlyStopping, GenerationConfig};

use crate::error::{Error, Result};

/// A decoder that advances `rows` sequences by one token.
// Only hoa's own futures implement it (no Send bound wanted: wgpu is single-threaded on wasm).
#[allow(async_fn_in_trait)]
pub trait StepDecoder {
    /// Feeds one token per row (at the next position) and returns the logits of the next
    /// token, `[rows * vocab]`.
    async fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Row `i` continues what row `rows[i]` has seen so far (beam search's `_reorder_cache`).
    fn reorder(&mut self, rows: &[u32]) -> Result<()>;
    fn vocab_size(&self) -> usize;
}

/// A [`GenerationConfig`] with its special tokens resolved and its lengths checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_length: usize,
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub decoder_start: u32,
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
    pub no_repeat_ngram_size: usize,
}

/// The longest decoder sequence `generate` accepts (the KV cache is preallocated to it).
pub const MAX_LENGTH: usize = 1 << 14;

impl Settings {
    /// `cfg`'s special tokens, missing ones taken from the model (`model_*`); transformers
    /// falls back from a missing pad token to the first eos token.
    pub fn resolve(
        cfg: &GenerationConfig,
        model_start: Option<u32>,
        model_eos: Option<Vec<u32>>,
        model_pad: Option<u32>,
        vocab: usize,
    ) -> Result<Settings> {
        let max_length = cfg.total_length();
        if !(2..=MAX_LENGTH).contains(&max_length) {
            return Err(Error::invalid(
                "generate",
                format!(
                    "max_length {max_length} (max_new_tokens + 1) must be between 2 and \
                     {MAX_LENGTH}"
                ),
            ));
        }
        if cfg.num_beams == 0 || cfg.num_beams > 256 {
            return Err(Error::invalid(
                "generate",
                format!("num_beams {} must be between 1 and 256", cfg.num_beams),
            ));
        }
        let decoder_start = cfg.decoder_start_token_id.or(model_start).ok_or_else(|| {
            Error::invalid(
                "generate",
                "no decoder_start_token_id in the generation config or the model's config.json",
            )
        })?;
        let eos = cfg.eos_token_id.clone().or(model_eos).unwrap_or_default();
        let pad = cfg.pad_token_id.or(model_pad).or(eos.first().copied());
        for (what, id) in [
            ("decoder_start_token_id", Some(decoder_start)),
            ("pad_token_id", pad),
        ]
        .into_iter()
        .chain(eos.iter().map(|&e| ("eos_token_id", Some(e))))
        {
            if let Some(id) = id.filter(|&i| i as usize >= vocab) {
                return Err(Error::invalid(
                    "generate",
                    format!("{what} {id} is outside the vocabulary of {vocab}"),
                ));
            }
        }
        Ok(Settings {
            max_length,
            num_beams: cfg.num_beams,
            length_penalty: cfg.length_penalty,
            early_stopping: cfg.early_stopping,
            decoder_start,
            eos,
            pad,
            no_repeat_ngram_size: cfg.no_repeat_ngram_size,
        })
    }
}

/// `NoRepeatNGramLogitsProcessor` for one row: tokens that would complete an `n`-gram already
/// in `seq` (the decoder sequence so far, start token included) get -inf.
pub(crate) fn ban_repeated_ngrams(seq: &[u32], n: usize, row: &mut [f32]) {
    if n == 0 || seq.len() + 1 < n {
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for w in seq.windows(n) {
        if &w[..n - 1] == prefix {
            if let Some(x) = row.get_mut(w[n - 1] as usize) {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// Index of the first largest value (`torch.argmax`).
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] || (row[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best
}

/// Greedy search over `batch` rows, as `generate(num_beams=1, do_sample=False)`: each row
/// starts with the decoder start token; a finished row (eos) is padded while others go on;
/// returns transformers' `sequences` (start token first, all rows the same length).
pub async fn greedy_search(
    dec: &mut impl StepDecoder,
    batch: usize,
    s: &Settings,
) -> Result<Vec<Vec<u32>>> {
    let vocab = dec.vocab_size();
    let mut seqs = vec![vec![s.decoder_start]; batch];
    let mut unfinished = vec![true; batch];
    let mut tokens = vec![s.decoder_start; batch];
    loop {
        let mut logits = dec.step(&tokens).await?;
        for b in 0..batch {
            let row = &mut logits[b * vocab..(b + 1) * vocab];
            ban_repeated_ngrams(&seqs[b], s.no_repeat_ngram_size, row);
            let next = if unfinished[b] {
                argmax(row) as u32
            } else {
                s.pad.ok_or_else(|| {
                    Error::invalid("generate", "a row finished but there is no pad_token_id")
                })?
            };
            seqs[b].push(next);
            tokens[b] = next;
            let done = seqs[b].len() >= s.max_length || s.eos.contains(&next);
            unfinished[b] &= !done;
        }
        if !unfinished.contains(&true) {
            return Ok(seqs);
        }
    }
}

/// `log_softmax` of one row in f32, as PyTorch computes it (x - max - log(sum(exp(x - max)))),
/// accumulated in f64.
pub(crate) fn log_softmax(row: &[f32], out: &mut Vec<f32>) {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f64 = row.iter().map(|&x| ((x - m) as f64).exp()).sum();
    let lse = sum.ln() as f32;
    out.clear();
    out.extend(row.iter().map(|&x| x - m - lse));
}

#[cfg(test)]
mod tests;
