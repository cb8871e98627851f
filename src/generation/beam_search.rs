//! transformers' vectorized `_beam_search` (generation/utils.py, 4.50+), step for step: each
//! step keeps the top `(1 + eos count, at least 2) × num_beams` continuations of every batch
//! item, continues the best `num_beams` unfinished ones and merges the finished ones (scored
//! with the length penalty) into a `num_beams`-best list; the same stopping heuristics
//! (`early_stopping` true / false / "never") and the same f32 score arithmetic.

use super::{ban_repeated_ngrams, log_softmax, EarlyStopping, Settings, StepDecoder};
use crate::error::{Error, Result};

/// transformers' "very large negative value" for excluded candidates.
const NEG: f32 = -1.0e9;

/// One batch item's beams: `running` continue, `finished` are the best completed ones.
struct Item {
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    finished: Vec<Vec<u32>>,
    finished_scores: Vec<f32>,
    /// How many tokens of each finished hypothesis were generated (`beam_indices` != -1).
    finished_lens: Vec<usize>,
    is_sent_finished: Vec<bool>,
    /// `is_early_stop_heuristic_unsatisfied`: the finished list may still improve.
    improvable: bool,
}

/// Indices of the `k` largest values, largest first (`torch.topk`; ties keep the lower
/// index first).
fn topk(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// `x / (len ** length_penalty)`, the power in f64 as Python computes it, the division in f32.
fn penalized(x: f32, len: usize, length_penalty: f32) -> f32 {
    x / (len as f64).powf(length_penalty as f64) as f32
}

/// One step's candidates of an item: (source beam, token, accumulated log-probability), and
/// whether each stops (eos or max length).
struct Candidates {
    cand: Vec<(usize, u32, f32)>,
    hits: Vec<bool>,
}

impl Item {
    fn new(s: &Settings) -> Item {
        let nb = s.num_beams;
        Item {
            running: vec![vec![s.decoder_start]; nb],
            running_scores: (0..nb).map(|j| if j == 0 { 0.0 } else { NEG }).collect(),
            finished: vec![vec![s.decoder_start]; nb],
            finished_scores: vec![NEG; nb],
            finished_lens: vec![0; nb],
            is_sent_finished: vec![false; nb],
            improvable: true,
        }
    }

    /// b.-d. (`_get_top_k_continuations` and the stopping criteria): the top `keep` of every
    /// beam's accumulated log-probabilities; `logits` holds this item's beams' rows.
    fn candidates(&self, logits: &[f32], keep: usize, cur_len: usize, s: &Settings) -> Candidates {
        let vocab = logits.len() / s.num_beams;
        let mut acc = Vec::with_capacity(logits.len());
        let mut lp = Vec::with_capacity(vocab);
        for (j, row) in logits.chunks_exact(vocab).enumerate() {
            log_softmax(row, &mut lp);
            ban_repeated_ngrams(&self.running[j], s.no_repeat_ngram_size, &mut lp);
            acc.extend(lp.iter().map(|&x| x + self.running_scores[j]));
        }
        let cand: Vec<(usize, u32, f32)> = topk(&acc, keep)
            .into_iter()
            .map(|i| (i / vocab, (i % vocab) as u32, acc[i]))
            .collect();
        let hits = cand
            .iter()
            .map(|&(_, t, _)| cur_len + 1 >= s.max_length || s.eos.contains(&t))
            .collect();
        Candidates { cand, hits }
    }

    /// e.-f. (`_get_running_beams_for_next_iteration`, `_update_finished_beams`): the best
    /// unfinished candidates run on, finished ones among the top `num_beams` join the finished
    /// list with the length penalty. Returns the source beam of each new running beam.
    fn advance(&mut self, c: &Candidates, cur_len: usize, s: &Settings) -> Vec<usize> {
        let nb = s.num_beams;
        let seq = |k: usize| {
            let mut v = self.running[c.cand[k].0].clone();
            v.push(c.cand[k].1);
            v
        };
        let run_scores: Vec<f32> = c
            .cand
            .iter()
            .zip(&c.hits)
            .map(|(x, &h)| x.2 + if h { NEG } else { 0.0 })
            .collect();
        let next = topk(&run_scores, nb);
        let gen_len = cur_len; // cur_len + 1 - decoder_prompt_len
        let full =
            self.is_sent_finished.iter().all(|&f| f) && s.early_stopping == EarlyStopping::True;
        let mut merged = self.finished_scores.clone();
        for (k, x) in c.cand.iter().enumerate() {
            // Added one by one in f32, as transformers does.
            let mut v = penalized(x.2, gen_len, s.length_penalty);
            for exclude in [full, !self.improvable, !(c.hits[k] && k < nb)] {
                if exclude {
                    v += NEG;
                }
            }
            merged.push(v);
        }
        let best = topk(&merged, nb);
        let (mut fin, mut lens, mut done) = (vec![], vec![], vec![]);
        for &m in &best {
            if m < nb {
                fin.push(self.finished[m].clone());
                lens.push(self.finished_lens[m]);
                done.push(self.is_sent_finished[m]);
            } else {
                fin.push(seq(m - nb));
                lens.push(gen_len);
                done.push(c.hits[m - nb] && m - nb < nb);
            }
        }
        self.running = next.iter().map(|&k| seq(k)).collect();
        self.running_scores = next.iter().map(|&k| run_scores[k]).collect();
        self.finished_scores = best.iter().map(|&m| merged[m]).collect();
        (self.finished, self.finished_lens, self.is_sent_finished) = (fin, lens, done);
        next.iter().map(|&k| c.cand[k].0).collect()
    }

    /// `_check_early_stop_heuristic` after `cur_len` grew.
    fn check_early_stop(&mut self, cur_len: usize, s: &Settings) {
        let best_len = if s.early_stopping == EarlyStopping::Never && s.length_penalty > 0.0 {
            s.max_length - 1
        } else {
            cur_len - 1
        };
        let best_possible = penalized(self.running_scores[0], best_len, s.length_penalty);
        let worst = self
            .finished_scores
            .iter()
            .fold(f32::INFINITY, |a, &b| a.min(b));
        self.improvable &= self
            .is_sent_finished
            .iter()
            .any(|&f| best_possible > if f { worst } else { NEG });
    }
}

/// Beam search over `batch` items (decoder rows `b * num_beams + j`); returns each item's best
/// hypothesis as transformers' `sequences` (start token first, filled to the longest with
/// the pad token, or with the first eos when the pad token is 0 or absent, as transformers'
/// `pad_token_id or eos_token_id[0]` does).
pub async fn beam_search(
    dec: &mut impl StepDecoder,
    batch: usize,
    s: &Settings,
) -> Result<Vec<Vec<u32>>> {
    let (nb, vocab) = (s.num_beams, dec.vocab_size());
    let keep = 2usize.max(1 + s.eos.len()) * nb;
    if keep > nb * vocab {
        return Err(Error::invalid(
            "generate",
            format!(
                "{nb} beams need a vocabulary of at least {} tokens",
                keep.div_ceil(nb)
            ),
        ));
    }
    let mut items: Vec<Item> = (0..batch).map(|_| Item::new(s)).collect();
    let mut tokens = vec![s.decoder_start; batch * nb];
    let mut cur_len = 1;
    loop {
        let logits = dec.step(&tokens).await?;
        let (mut all_hit, mut rows) = (true, Vec::with_capacity(batch * nb));
        for (b, item) in items.iter_mut().enumerate() {
            let c = item.candidates(
                &logits[b * nb * vocab..(b + 1) * nb * vocab],
                keep,
                cur_len,
                s,
            );
            all_hit &= c.hits.iter().all(|&h| h);
            let src = item.advance(&c, cur_len, s);
            rows.extend(src.iter().map(|&j| (b * nb + j) as u32));
        }
        // g. the caches follow their beams; the heuristic and the stopping condition
        dec.reorder(&rows)?;
        cur_len += 1;
        items
            .iter_mut()
            .for_each(|i| i.check_early_stop(cur_len, s));
        let improvement_possible = items.iter().any(|i| i.improvable);
        let all_finished = items.iter().all(|i| i.is_sent_finished.iter().all(|&f| f));
        let open = !(all_finished && s.early_stopping == EarlyStopping::True);
        if !(improvement_possible && open && !all_hit) {
            break;
        }
        for (b, item) in items.iter().enumerate() {
            for j in 0..nb {
                tokens[b * nb + j] = *item.running[j].last().unwrap_or(&s.decoder_start);
            }
        }
    }
    best_sequences(&items, s)
}

/// Step 5, each item's best finished hypothesis, cropped to the longest and filled: transformers'
/// `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1` (without eos every
/// hypothesis reaches max_length and no fill shows).
fn best_sequences(items: &[Item], s: &Settings) -> Result<Vec<Vec<u32>>> {
    let fill = s.eos.first().map(|&e| match s.pad {
        Some(p) if p != 0 => p,
        _ => e,
    });
    let out_len = 1 + items.iter().map(|i| i.finished_lens[0]).max().unwrap_or(0);
    items
        .iter()
        .map(|i| {
            let mut v = i.finished[0].clone();
            v.truncate(out_len);
            match fill {
                Some(f) => v.resize(out_len, f),
                None if v.len() < out_len => {
                    return Err(Error::invalid(
                        "generate",
                        "a hypothesis ended early without an eos token",
                    ))
                }
                None => {}
            }
            Ok(v)
        })
        .collect()
}
