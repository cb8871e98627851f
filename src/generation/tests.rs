//! Greedy and beam search against exhaustive search on a toy decoder whose logits depend on
//! each row's whole prefix (so a wrong cache reorder changes the result).

use super::*;

/// Logits from a hash of (prefix, token): a deterministic "language model".
struct Toy {
    vocab: usize,
    prefixes: Vec<Vec<u32>>,
    steps: usize,
}

fn toy_logit(prefix: &[u32], tok: u32) -> f32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &t in prefix.iter().chain([tok].iter()) {
        h = (h ^ t as u64).wrapping_mul(0x100000001b3);
        h ^= h >> 29;
    }
    (h % 1000) as f32 / 200.0
}

impl StepDecoder for Toy {
    async fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.steps += 1;
        if self.prefixes.is_empty() {
            self.prefixes = vec![vec![]; tokens.len()];
        }
        let mut out = Vec::new();
        for (p, &t) in self.prefixes.iter_mut().zip(tokens) {
            p.push(t);
            out.extend((0..self.vocab as u32).map(|v| toy_logit(p, v)));
        }
        Ok(out)
    }
    fn reorder(&mut self, rows: &[u32]) -> Result<()> {
        self.prefixes = rows
            .iter()
            .map(|&r| self.prefixes[r as usize].clone())
            .collect();
        Ok(())
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
}

fn settings(max_length: usize, num_beams: usize, lp: f32, es: EarlyStopping) -> Settings {
    Settings {
        max_length,
        num_beams,
        length_penalty: lp,
        early_stopping: es,
        decoder_start: 0,
        eos: vec![1],
        pad: Some(0),
        no_repeat_ngram_size: 0,
    }
}

/// The score beam search maximizes for a finished hypothesis `seq` (start token first).
fn score(seq: &[u32], lp: f32) -> f64 {
    let mut lps = Vec::new();
    let mut total = 0f64;
    for i in 1..seq.len() {
        let row: Vec<f32> = (0..4).map(|v| toy_logit(&seq[..i], v)).collect();
        log_softmax(&row, &mut lps);
        total += lps[seq[i] as usize] as f64;
    }
    total / ((seq.len() - 1) as f64).powf(lp as f64)
}

/// Every hypothesis that ends at eos or at `max_length`, with its score.
fn exhaustive(max_length: usize, lp: f32) -> (Vec<u32>, f64) {
    let mut best = (vec![], f64::NEG_INFINITY);
    let mut stack = vec![vec![0u32]];
    while let Some(s) = stack.pop() {
        for t in 0..4 {
            let mut n = s.clone();
            n.push(t);
            if t == 1 || n.len() >= max_length {
                let sc = score(&n, lp);
                if sc > best.1 {
                    best = (n, sc);
                }
            } else {
                stack.push(n);
            }
        }
    }
    best
}

#[test]
fn beam_search_with_every_beam_is_exhaustive_search() {
    for lp in [0.0, 1.0, 2.0] {
        let s = settings(5, 64, lp, EarlyStopping::Never);
        let mut toy = Toy {
            vocab: 4,
            prefixes: vec![],
            steps: 0,
        };
        let got = pollster::block_on(beam_search(&mut toy, 1, &s)).unwrap();
        let (want, _) = exhaustive(5, lp);
        let mut g = got[0].clone();
        // transformers fills after eos with the first eos (pad is 0).
        while g.len() > want.len() && g.last() == Some(&1) {
            g.pop();
        }
        assert_eq!(g, want, "length_penalty {lp}");
    }
}

#[test]
fn greedy_search_takes_the_argmax_and_pads_finished_rows() {
    let s = settings(7, 1, 1.0, EarlyStopping::False);
    let mut toy = Toy {
        vocab: 4,
        prefixes: vec![],
        steps: 0,
    };
    let got = pollster::block_on(greedy_search(&mut toy, 1, &s)).unwrap();
    let mut want = vec![0u32];
    while want.len() < 7 && want.last() != Some(&1) {
        let row: Vec<f32> = (0..4).map(|v| toy_logit(&want, v)).collect();
        want.push(argmax(&row) as u32);
    }
    assert_eq!(got[0], want);
    assert_eq!(toy.steps, want.len() - 1);
}

#[test]
fn beam_search_of_one_beam_is_greedy() {
    let s = settings(9, 1, 1.0, EarlyStopping::False);
    let mut a = Toy {
        vocab: 4,
        prefixes: vec![],
        steps: 0,
    };
    let mut b = Toy {
        vocab: 4,
        prefixes: vec![],
        steps: 0,
    };
    let g = pollster::block_on(greedy_search(&mut a, 1, &s)).unwrap();
    let mut bs = pollster::block_on(beam_search(&mut b, 1, &s)).unwrap();
    bs[0].truncate(g[0].len());
    assert_eq!(g, bs);
}

#[test]
fn generation_config_refuses_what_hoa_does_not_run() {
    let c = GenerationConfig::from_json(
        br#"{"max_new_tokens": 5, "num_beams": 3, "early_stopping": "never", "eos_token_id": [1, 2],
             "length_penalty": 0.5, "do_sample": false, "transformers_version": "5.23.0"}"#,
    )
    .unwrap();
    assert_eq!(c.total_length(), 6);
    assert_eq!(c.early_stopping, EarlyStopping::Never);
    assert_eq!(c.eos_token_id, Some(vec![1, 2]));
    for (json, field) in [
        (r#"{"do_sample": true}"#, "do_sample"),
        (r#"{"repetition_penalty": 1.2}"#, "repetition_penalty"),
        (r#"{"no_repeat_ngram_size": -3}"#, "no_repeat_ngram_size"),
        (r#"{"early_stopping": 2}"#, "early_stopping"),
        (r#"{"max_length": -1}"#, "max_length"),
    ] {
        let e = GenerationConfig::from_json(json.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("generation_config.json: `{field}`")),
            "{e}"
        );
    }
    let e = Settings::resolve(
        &GenerationConfig {
            max_length: 1,
            max_new_tokens: None,
            ..c.clone()
        },
        Some(0),
        None,
        None,
        9,
    );
    assert!(e.is_err());
    let e = Settings::resolve(&c, Some(0), None, None, 2)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("eos_token_id 2 is outside the vocabulary of 2"),
        "{e}"
    );
}

#[test]
fn beam_search_without_eos_runs_to_max_length() {
    // transformers fills with -1 when there is no eos, which never shows: every hypothesis
    // reaches max_length (this used to be refused).
    let s = Settings {
        eos: vec![],
        ..settings(6, 3, 1.0, EarlyStopping::False)
    };
    let mut toy = Toy {
        vocab: 4,
        prefixes: vec![],
        steps: 0,
    };
    let got = pollster::block_on(beam_search(&mut toy, 2, &s)).unwrap();
    assert!(got.iter().all(|r| r.len() == 6 && r[0] == 0), "{got:?}");
    assert_eq!(toy.steps, 5);
}

#[test]
fn no_repeat_ngram_bans_what_would_repeat_a_bigram() {
    let mut row = vec![0.0f32; 6];
    // seq ends in 4; bigrams (4, 5) and (4, 2) were seen: 5 and 2 are banned.
    ban_repeated_ngrams(&[0, 4, 5, 3, 4, 2, 4], 2, &mut row);
    let banned: Vec<usize> = (0..6).filter(|&i| row[i] == f32::NEG_INFINITY).collect();
    assert_eq!(banned, vec![2, 5]);
    // Trigrams: the last two tokens (3, 4) were followed by 2 once.
    let mut row = vec![0.0f32; 6];
    ban_repeated_ngrams(&[0, 3, 4, 2, 3, 4], 3, &mut row);
    assert_eq!(row.iter().filter(|x| x.is_infinite()).count(), 1);
    assert!(row[2].is_infinite());
    // Greedy with bigrams banned never repeats one (while some continuation is left: with 4
    // tokens a token followed by all 4 leaves only -inf, where argmax takes 0, as torch's).
    let s = Settings {
        no_repeat_ngram_size: 2,
        eos: vec![],
        ..settings(10, 1, 1.0, EarlyStopping::False)
    };
    let mut toy = Toy {
        vocab: 4,
        prefixes: vec![],
        steps: 0,
    };
    let got = pollster::block_on(greedy_search(&mut toy, 1, &s)).unwrap();
    let pairs: Vec<_> = got[0].windows(2).collect();
    let mut uniq = pairs.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), pairs.len(), "{got:?}");
}
