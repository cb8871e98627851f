//! Time per prompt and per generated token of a ~5M-parameter `T5ForConditionalGeneration`
//! (random weights: d_model 256, 4 + 4 layers, 4 heads of 64, ReLU d_ff 512, a byte-sized
//! vocabulary of 384), the size of the prompt rewriter issue 31 plans. Eos is disabled so every
//! run generates exactly `--new` tokens.
//!
//!     cargo run --release --example t5_generate_bench -- [--prompt 20] [--new 20] [--beams 1,4]

use hoa::config::T5Config;
use hoa::generation::GenerationConfig;
use hoa::models::t5_decoder::{DecoderState, T5ForConditionalGeneration};
use hoa::weights::{Loader, Weights};
use hoa::{Context, ContextOptions, DType};
use std::time::Instant;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> hoa::Result<()> {
    let prompt: usize = arg("--prompt", "20").parse().expect("--prompt N");
    let new: usize = arg("--new", "20").parse().expect("--new N");
    let beams: Vec<usize> = arg("--beams", "1,4")
        .split(',')
        .map(|b| b.parse().expect("--beams 1,4"))
        .collect();
    let ctx = Context::new_blocking(ContextOptions::from_env())?;
    println!("adapter: {}", ctx.describe());
    let config = T5Config {
        vocab_size: 384,
        d_model: 256,
        d_kv: 64,
        d_ff: 512,
        num_layers: 4,
        num_heads: 4,
        decoder_start_token_id: Some(0),
        eos_token_id: None,
        ..T5Config::default()
    };
    let (d, ff, v) = (256usize, 512usize, 384usize);
    let params = v * d + 4 * (4 * d * d + 2 * d * ff) + 4 * (8 * d * d + 2 * d * ff);
    println!(
        "parameters: {:.2}M (head tied to the embedding)",
        params as f64 / 1e6
    );
    let empty = Weights::from_files(vec![])?;
    let model =
        T5ForConditionalGeneration::load(&Loader::random(&ctx, &empty, DType::F32, 7), &config)?;
    let ids: Vec<u32> = (0..prompt as u32).map(|i| 2 + (i * 37) % 380).collect();
    for &nb in &beams {
        let cfg = GenerationConfig {
            max_new_tokens: Some(new),
            num_beams: nb,
            ..GenerationConfig::default()
        };
        // Warm-up compiles every pipeline.
        model.generate(&ctx, std::slice::from_ref(&ids), &cfg)?;
        // Minimum of a few runs: the shared machine's load only ever adds time.
        let runs = 5;
        let mut per_prompt = f64::INFINITY;
        for _ in 0..runs {
            let t = Instant::now();
            let out = model.generate(&ctx, std::slice::from_ref(&ids), &cfg)?;
            per_prompt = per_prompt.min(t.elapsed().as_secs_f64());
            assert_eq!(out[0].len(), new + 1);
        }
        // The encoder alone, to split the prompt time.
        let mut enc_s = f64::INFINITY;
        for _ in 0..runs {
            let t = Instant::now();
            let (enc, _) = model.encode(&ctx, &ids, 1, None)?;
            enc.to_vec(&ctx)?;
            enc_s = enc_s.min(t.elapsed().as_secs_f64());
        }
        // Steps only: the cache path per token.
        let (enc, _) = model.encode(&ctx, &ids, 1, None)?;
        let mut state = DecoderState::new(&model, &ctx, &enc, None, 1, nb, new + 1)?;
        let mut step_s = f64::INFINITY;
        for _ in 0..new {
            let t = Instant::now();
            state.step_tensor(&vec![0; nb])?.to_vec(&ctx)?;
            step_s = step_s.min(t.elapsed().as_secs_f64());
        }
        println!(
            "num_beams {nb}: {prompt}-token prompt -> {new} tokens: {:.1} ms per prompt \
             ({:.2} ms per generated token overall; encoder {:.1} ms; fastest decoder step of \
             {nb} rows incl. logits readback {:.2} ms); minimum of {runs} runs",
            per_prompt * 1e3,
            per_prompt * 1e3 / new as f64,
            enc_s * 1e3,
            step_s * 1e3
        );
    }
    Ok(())
}
