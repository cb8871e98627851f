//! transformers' vectorized `_beam_search` (generation/utils.py, 4.50+), step for step: each
//! step keeps the top `(1 + eos count, at least 2) × num_beams` continuations of every batch
//! item, continues the best `num_beams` unfinished ones and merges the finished ones (scored
//! with the length penalty) into a `num_beams`-best list; the same stopping heuristics
//! (`early_stopping` true / false / "never") and the same f32 score arithmetic.

use super::{log_softmax, EarlyStopping, Settings, StepDecoder};
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
    // transformers' `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`;
    // without eos every hypothesis runs to max_length and no fill shows.
    let fill = s.eos.first().map(|&e| match s.pad {
        Some(p) if p != 0 => p,
        _ => e,
    });
    let mut items: Vec<Item> = (0..batch)
        .map(|_| Item {
            running: vec![vec![s.decoder_start]; nb],
            running_scores: (0..nb).map(|j| if j == 0 { 0.0 } else { NEG }).collect(),
            finished: vec![vec![s.decoder_start]; nb],
            finished_scores: vec![NEG; nb],
            finished_lens: vec![0; nb],
            is_sent_finished: vec![false; nb],
            improvable: true,
        })
        .collect();
    let mut tokens = vec![s.decoder_start; batch * nb];
    let mut lp = Vec::with_capacity(vocab);
    let mut cur_len = 1;
    loop {
        let logits = dec.step(&tokens).await?;
        let mut all_hit = true;
        let mut rows = Vec::with_capacity(batch * nb);
        for (b, item) in items.iter_mut().enumerate() {
            // b. accumulated log-probabilities of every (beam, token) continuation
            let mut acc = Vec::with_capacity(nb * vocab);
            for j in 0..nb {
                let r = b * nb + j;
                log_softmax(&logits[r * vocab..(r + 1) * vocab], &mut lp);
                acc.extend(lp.iter().map(|&x| x + item.running_scores[j]));
            }
            // c. the top `keep` continuations
            let top = topk(&acc, keep);
            let cand: Vec<(usize, u32, f32)> = top
                .iter()
                .map(|&i| (i / vocab, (i % vocab) as u32, acc[i]))
                .collect();
            // d. which of them stop (eos or max length)
            let hits: Vec<bool> = cand
                .iter()
                .map(|&(_, t, _)| cur_len + 1 >= s.max_length || s.eos.contains(&t))
                .collect();
            all_hit &= hits.iter().all(|&h| h);
            let seq = |k: usize| {
                let mut v = item.running[cand[k].0].clone();
                v.push(cand[k].1);
                v
            };
            // e. the best unfinished continuations run on
            let run_scores: Vec<f32> = cand
                .iter()
                .zip(&hits)
                .map(|(c, &h)| c.2 + if h { NEG } else { 0.0 })
                .collect();
            let next = topk(&run_scores, nb);
            // f. finished ones among the top `num_beams` join the finished list
            let gen_len = cur_len; // cur_len + 1 - decoder_prompt_len
            let full =
                item.is_sent_finished.iter().all(|&f| f) && s.early_stopping == EarlyStopping::True;
            let mut merged_scores = item.finished_scores.clone();
            for (k, c) in cand.iter().enumerate() {
                let mut x = penalized(c.2, gen_len, s.length_penalty);
                if full {
                    x += NEG;
                }
                if !item.improvable {
                    x += NEG;
                }
                if !(hits[k] && k < nb) {
                    x += NEG;
                }
                merged_scores.push(x);
            }
            let best = topk(&merged_scores, nb);
            let (mut fin, mut fin_lens, mut fin_done) = (vec![], vec![], vec![]);
            for &m in &best {
                if m < nb {
                    fin.push(item.finished[m].clone());
                    fin_lens.push(item.finished_lens[m]);
                    fin_done.push(item.is_sent_finished[m]);
                } else {
                    let k = m - nb;
                    fin.push(seq(k));
                    fin_lens.push(gen_len);
                    fin_done.push(hits[k] && k < nb);
                }
            }
            let new_running: Vec<Vec<u32>> = next.iter().map(|&k| seq(k)).collect();
            item.running_scores = next.iter().map(|&k| run_scores[k]).collect();
            item.finished_scores = best.iter().map(|&m| merged_scores[m]).collect();
            item.running = new_running;
            (item.finished, item.finished_lens, item.is_sent_finished) = (fin, fin_lens, fin_done);
            rows.extend(next.iter().map(|&k| (b * nb + cand[k].0) as u32));
        }
        // g. the caches follow their beams; the heuristic and the stopping condition
        dec.reorder(&rows)?;
        cur_len += 1;
        for item in &mut items {
            let best_len = if s.early_stopping == EarlyStopping::Never && s.length_penalty > 0.0 {
                s.max_length - 1
            } else {
                cur_len - 1
            };
            let best_possible = penalized(item.running_scores[0], best_len, s.length_penalty);
            let worst = item
                .finished_scores
                .iter()
                .fold(f32::INFINITY, |a, &b| a.min(b));
            item.improvable &= item
                .is_sent_finished
                .iter()
                .any(|&f| best_possible > if f { worst } else { NEG });
        }
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
