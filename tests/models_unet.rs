//! UNet2DConditionModel vs diffusers fixtures written by tools/fixtures/make_fixtures.py
//! (tiny random configs, non-square latents). Tolerance: max |err| <= 1e-3 x max |reference|
//! in f32, 1e-2 in f16, checked per block first so a failure names the first block that
//! diverges, then end to end.

mod common;
#[path = "common/fixture.rs"]
mod fixture;
use common::*;
use fixture::*;
use hoa::config::UNet2DConditionModelConfig;
use hoa::models::unet_2d_condition::UNet2DConditionModel;
use hoa::weights::Loader;
use hoa::DType;

fn unet_case(name: &str) {
    let Some(c) = ctx() else { return };
    let cfg = UNet2DConditionModelConfig::from_json(&config(name)).unwrap();
    let w = diffusers_weights(name);
    let io = Io::load(name);
    let (t, _) = io.f32("timestep");
    for dt in dtypes(c) {
        let rel = rel_tol(dt);
        let model = UNet2DConditionModel::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let sample = io.tensor(c, "sample", dt);
        let ctx_states = io.tensor(c, "encoder_hidden_states", dt);
        let out = model.forward(c, &sample, &t, &ctx_states).unwrap();
        let mut checks = vec![
            ("time_embedding".to_string(), &out.emb),
            ("conv_in".to_string(), &out.conv_in),
        ];
        checks.extend(
            out.down
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("down_blocks.{i}"), x)),
        );
        checks.extend(out.mid.iter().map(|x| ("mid_block".to_string(), x)));
        checks.extend(
            out.up
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("up_blocks.{i}"), x)),
        );
        checks.push(("out".to_string(), &out.sample));
        let mut worst = 0f64;
        for (key, got) in checks {
            let r = close_rel(&format!("{name} {dt:?} {key}"), got, &io.f32(&key), rel, c).unwrap();
            worst = worst.max(r);
        }
        eprintln!("{name} {dt:?}: worst max|err|/max|ref| over blocks and output = {worst:.2e}");
    }
}

#[test]
fn unet_sd15_style_matches_diffusers() {
    unet_case("unet_sd15");
}

#[test]
fn unet_sd2_linear_projection_matches_diffusers() {
    unet_case("unet_sd2_linear");
}

#[test]
fn unet_refuses_unsupported_configs_naming_the_field() {
    let base = String::from_utf8(config("unet_sd15")).unwrap();
    for (field, value) in [
        ("class_embed_type", "\"timestep\""),
        ("addition_embed_type", "\"text_image\""),
        // LCM's guidance embedding needs two frequencies (256 runs: tests/pipeline_lcm.rs).
        ("time_cond_proj_dim", "2"),
        (
            "down_block_types",
            "[\"CrossAttnDownBlock2D\", \"SimpleCrossAttnDownBlock2D\"]",
        ),
        ("mid_block_type", "\"UNetMidBlock2DSimpleCrossAttn\""),
        ("act_fn", "\"gelu\""),
        ("attention_head_dim", "[4, 4, 4]"),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&base).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        let e = UNet2DConditionModelConfig::from_json(v.to_string().as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{field} = {value} was accepted"))
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

#[test]
fn unet_rejects_bad_inputs_with_clear_errors() {
    let Some(c) = ctx() else { return };
    let name = "unet_sd15";
    let cfg = UNet2DConditionModelConfig::from_json(&config(name)).unwrap();
    let w = diffusers_weights(name);
    let model = UNet2DConditionModel::load(&Loader::new(c, &w, DType::F32), &cfg).unwrap();
    let t = |s: &[usize]| hoa::Tensor::full(c, s, 0.0, DType::F32).unwrap();
    let enc = t(&[2, 7, 48]);
    let err = |s: &hoa::Tensor, ts: &[f32], e: &hoa::Tensor| {
        model.forward(c, s, ts, e).err().unwrap().to_string()
    };
    let e = err(&t(&[2, 3, 8, 12]), &[1.0], &enc);
    assert!(
        e.contains("[2, 3, 8, 12]") && e.contains("in_channels"),
        "{e}"
    );
    let e = err(&t(&[2, 4, 8, 13]), &[1.0], &enc);
    assert!(e.contains("8x13") && e.contains("divisible by 2"), "{e}");
    let e = err(&t(&[2, 4, 8, 12]), &[1.0], &t(&[2, 7, 64]));
    assert!(
        e.contains("[2, 7, 64]") && e.contains("cross_attention_dim"),
        "{e}"
    );
    let e = err(&t(&[2, 4, 8, 12]), &[1.0, 2.0, 3.0], &enc);
    assert!(e.contains("3 timesteps"), "{e}");
    // A guidance embedding for a U-Net without time_cond_proj_dim.
    let e = model.time_cond(c, &t(&[2, 32])).err().unwrap().to_string();
    assert!(e.contains("time_cond_proj_dim"), "{e}");
    let e = (model.forward_cond(
        c,
        &t(&[2, 4, 8, 12]),
        &[1.0],
        &enc,
        None,
        Some(&t(&[2, 32])),
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("time_cond") && e.contains("[2, 32]"), "{e}");
    // A checkpoint that does not match the config names the tensors.
    let mut more = cfg.clone();
    more.layers_per_block = hoa::config::PerBlock::One(3);
    let e = UNet2DConditionModel::load(&Loader::new(c, &w, DType::F32), &more)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing") && e.contains("down_blocks.0.attentions.2.norm.weight"),
        "{e}"
    );
}

#[test]
fn feed_forward_in_chunks_of_tokens_equals_the_whole() {
    // What large images take when the GEGLU projection would exceed one binding.
    use hoa::models::attention::FeedForward;
    use hoa::models::nn::Linear;
    let Some(c) = ctx() else { return };
    let mut r = rng(9);
    let (dim, inner) = (16, 32);
    let t = |v: Vec<f32>, s: &[usize]| hoa::Tensor::from_f32(c, &v, s, DType::F32).unwrap();
    let ff = FeedForward {
        proj: Linear {
            weight: t(randn(&mut r, 2 * inner * dim, 0.3), &[2 * inner, dim]),
            bias: Some(t(randn(&mut r, 2 * inner, 0.3), &[2 * inner])),
        },
        out: Linear {
            weight: t(randn(&mut r, dim * inner, 0.3), &[dim, inner]),
            bias: Some(t(randn(&mut r, dim, 0.3), &[dim])),
        },
    };
    let x = t(randn(&mut r, 2 * 37 * dim, 1.0), &[2, 37, dim]);
    let whole = ff.forward(c, &x).unwrap();
    for chunk in [1, 10, 37, 73] {
        let parts = ff.forward_in_chunks(c, &x, chunk).unwrap();
        assert_eq!(parts.shape(), whole.shape());
        all_close(
            &format!("chunks of {chunk}"),
            &parts.to_vec(c).unwrap(),
            &whole.to_vec(c).unwrap(),
            &F32,
        );
    }
}
