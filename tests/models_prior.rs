//! diffusers' `PriorTransformer` (unCLIP's prior) vs fixtures written by
//! tools/fixtures/unclip.py (tests/fixtures/unclip_prior): Karlo's layout (prd token, linear
//! text projection) and Kandinsky's switches (norm_in, embedding_proj_norm, other time /
//! projection / output widths), with the text mask (plus diffusers' causal mask) and without
//! any mask, and `post_process_latents`. Tolerance: max |err| <= 1e-5 x max |reference| in f32
//! (2 blocks of 16 wide; observed ~1e-7), 1e-2 in f16.

mod common;
#[path = "common/fixture.rs"]
mod fixture;
use common::*;
use fixture::*;
use hoa::config::PriorTransformerConfig;
use hoa::models::prior_transformer::PriorTransformer;
use hoa::weights::{Loader, Weights};
use hoa::DType;

const NAME: &str = "unclip_prior";

fn tol(dt: DType) -> f64 {
    if dt == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

fn prior_case(sub: &str, prefix: &str) {
    let Some(c) = ctx() else { return };
    let d = dir(NAME).join(sub);
    let cfg =
        PriorTransformerConfig::from_json(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    let f = "diffusion_pytorch_model.safetensors";
    let w = Weights::from_bytes(f, std::fs::read(d.join(f)).unwrap()).unwrap();
    let io = Io::load(NAME);
    let key = |k: &str| format!("{prefix}{k}");
    let (t, _) = io.f32(&key("timestep"));
    let (mask, _) = io.f32(&key("attention_mask"));
    assert!(mask.contains(&0.0), "the fixture masks some text tokens");
    for dt in dtypes(c) {
        let m = PriorTransformer::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let x = io.tensor(c, &key("hidden_states"), dt);
        let proj = io.tensor(c, &key("proj_embedding"), dt);
        let ehs = io.tensor(c, &key("encoder_hidden_states"), dt);
        let out = m
            .forward(c, &x, &t, &proj, Some(&ehs), Some(&mask))
            .unwrap();
        let nomask = m.forward(c, &x, &t, &proj, Some(&ehs), None).unwrap();
        let post = m.post_process_latents(c, &out).unwrap();
        for (k, got) in [("out", &out), ("out_nomask", &nomask), ("post", &post)] {
            let r = close_rel(
                &format!("{sub} {dt:?} {k}"),
                got,
                &io.f32(&key(k)),
                tol(dt),
                c,
            )
            .unwrap();
            eprintln!("prior {prefix}{k} {dt:?}: max|err|/max|ref| = {r:.2e}");
        }
        // The mask matters: the unmasked output differs from the masked one.
        let (a, b) = (out.to_vec(c).unwrap(), nomask.to_vec(c).unwrap());
        assert!(a.iter().zip(&b).any(|(p, q)| (p - q).abs() > 1e-3));
    }
}

#[test]
fn prior_transformer_matches_diffusers() {
    prior_case("", "");
}

#[test]
fn prior_transformer_with_kandinsky_switches_matches_diffusers() {
    prior_case("kandinsky", "kandinsky.");
}

#[test]
fn prior_inputs_of_the_wrong_shape_are_named() {
    let Some(c) = ctx() else { return };
    let d = dir(NAME);
    let cfg =
        PriorTransformerConfig::from_json(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    let w = diffusers_weights(NAME);
    let m = PriorTransformer::load(&Loader::new(c, &w, DType::F32), &cfg).unwrap();
    let io = Io::load(NAME);
    let x = io.tensor(c, "hidden_states", DType::F32);
    let proj = io.tensor(c, "proj_embedding", DType::F32);
    let ehs = io.tensor(c, "encoder_hidden_states", DType::F32);
    let e = m
        .forward(c, &x, &[1.0], &proj, Some(&ehs), Some(&[1.0; 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention_mask holds 3 values"), "{e}");
    let e = m
        .forward(c, &x, &[1.0], &x, None, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("proj_embedding [2, 12]") || e.contains("encoder_hidden_states"),
        "{e}"
    );
    let e = m
        .forward(c, &x, &[1.0], &proj, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("requires encoder_hidden_states"), "{e}");
    // A config diffusers itself refuses is named by its field.
    let bad = br#"{"_class_name": "PriorTransformer", "norm_in_type": "group"}"#;
    let e = PriorTransformerConfig::from_json(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`norm_in_type`"), "{e}");
}
