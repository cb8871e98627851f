//! ConsistencyDecoderVAE (and its UNet2DModel) vs a diffusers fixture written by
//! tools/fixtures/make_fixtures.py: tiny random config, batch 2, 24x32 images whose latent is
//! 3x4 (scale factor 8). The fixture keeps the noise diffusers drew, so the 2-step decode is
//! reproduced exactly. Tolerance: max |err| <= 1e-3 x max |reference| in f32, 1e-2 in f16, per
//! block then end to end.

mod common;
#[path = "common/fixture.rs"]
mod fixture;
use common::*;
use fixture::*;
use hoa::config::{ConsistencyDecoderVAEConfig, UNet2DModelConfig};
use hoa::models::consistency_decoder::{ConsistencyDecoderScheduler, ConsistencyDecoderVAE};
use hoa::weights::Loader;
use hoa::DType;

const NAME: &str = "consistency_decoder";

fn check(checks: Vec<(String, &hoa::Tensor)>, io: &Io, dt: DType, c: &hoa::Context) -> f64 {
    let mut worst = 0f64;
    for (key, got) in checks {
        let r = close_rel(
            &format!("{NAME} {dt:?} {key}"),
            got,
            &io.f32(&key),
            rel_tol(dt),
            c,
        )
        .unwrap();
        worst = worst.max(r);
    }
    worst
}

#[test]
fn scheduler_constants_match_diffusers() {
    let io = Io::load(NAME);
    let s = ConsistencyDecoderScheduler::default();
    let ts = s.timesteps(2).unwrap();
    let (want_ts, _) = io.f32("sched.timesteps");
    assert_eq!(ts.iter().map(|&t| t as f32).collect::<Vec<_>>(), want_ts);
    for (key, table) in [
        ("sched.c_skip", &s.c_skip),
        ("sched.c_out", &s.c_out),
        ("sched.c_in", &s.c_in),
        ("sched.sqrt_alphas_cumprod", &s.sqrt_alphas_cumprod),
        (
            "sched.sqrt_one_minus_alphas_cumprod",
            &s.sqrt_one_minus_alphas_cumprod,
        ),
    ] {
        let (want, _) = io.f32(key);
        for (&t, &w) in ts.iter().zip(&want) {
            let got = table[t];
            // torch computes these in f32: a few ulps apart.
            assert!(
                (got - w as f64).abs() <= 1e-6 * (w as f64).abs().max(1e-3),
                "{key}[{t}]: {got} vs torch {w}"
            );
        }
    }
    assert!(s.timesteps(3).is_err());
}

#[test]
fn decoder_unet_matches_diffusers() {
    let Some(c) = ctx() else { return };
    let cfg = ConsistencyDecoderVAEConfig::from_json(&config(NAME)).unwrap();
    let w = diffusers_weights(NAME);
    let io = Io::load(NAME);
    let (t, _) = io.f32("unet.timestep");
    for dt in dtypes(c) {
        let model = ConsistencyDecoderVAE::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let out = model
            .decoder_unet
            .forward(c, &io.tensor(c, "unet.sample", dt), &t)
            .unwrap();
        let mut checks = vec![
            ("unet.time_embedding".to_string(), &out.emb),
            ("unet.conv_in".to_string(), &out.conv_in),
        ];
        checks.extend(
            out.down
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("unet.down_blocks.{i}"), x)),
        );
        checks.extend(out.mid.iter().map(|x| ("unet.mid_block".to_string(), x)));
        checks.extend(
            out.up
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("unet.up_blocks.{i}"), x)),
        );
        checks.push(("unet.out".to_string(), &out.sample));
        let worst = check(checks, &io, dt, c);
        eprintln!("{NAME} decoder_unet {dt:?}: worst max|err|/max|ref| over blocks = {worst:.2e}");
    }
}

#[test]
fn encode_and_two_step_decode_match_diffusers() {
    let Some(c) = ctx() else { return };
    let cfg = ConsistencyDecoderVAEConfig::from_json(&config(NAME)).unwrap();
    assert_eq!(cfg.scale_factor(), 8);
    let w = diffusers_weights(NAME);
    let io = Io::load(NAME);
    for dt in dtypes(c) {
        let model = ConsistencyDecoderVAE::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let enc = model.encode(c, &io.tensor(c, "image", dt)).unwrap();
        let n0 = io.tensor(c, "noise.0", dt);
        let n1 = io.tensor(c, "noise.1", dt);
        let dec = model
            .decode(c, &io.tensor(c, "z", dt), &[&n0, &n1])
            .unwrap();
        assert_eq!(
            dec.steps.iter().map(|s| s.timestep).collect::<Vec<_>>(),
            [1008, 512]
        );
        let checks = vec![
            ("mean".to_string(), &enc.mean),
            ("logvar".to_string(), &enc.logvar),
            // The first step's U-Net input (latent normalization, 8x nearest upsampling,
            // init_noise_sigma, c_in, concat) and output.
            ("unet.sample".to_string(), &dec.steps[0].model_input),
            ("unet.out".to_string(), &dec.steps[0].model_output),
            ("decoded".to_string(), &dec.sample),
        ];
        let worst = check(checks, &io, dt, c);
        eprintln!("{NAME} encode + decode {dt:?}: worst max|err|/max|ref| = {worst:.2e}");
    }
}

#[test]
fn consistency_decoder_rejects_bad_inputs_and_configs() {
    let Some(c) = ctx() else { return };
    let cfg = ConsistencyDecoderVAEConfig::from_json(&config(NAME)).unwrap();
    let w = diffusers_weights(NAME);
    let model = ConsistencyDecoderVAE::load(&Loader::new(c, &w, DType::F32), &cfg).unwrap();
    let t = |s: &[usize]| hoa::Tensor::full(c, s, 0.0, DType::F32).unwrap();
    let n = t(&[2, 3, 24, 32]);
    let err = |r: hoa::Result<()>| r.expect_err("accepted").to_string();
    let e = err(model.decode(c, &t(&[2, 3, 3, 4]), &[&n, &n]).map(|_| ()));
    assert!(
        e.contains("[2, 3, 3, 4]") && e.contains("latent_channels"),
        "{e}"
    );
    let e = err(model.decode(c, &t(&[2, 4, 3, 4]), &[&n]).map(|_| ()));
    assert!(e.contains("1 noise tensors"), "{e}");
    let bad = t(&[2, 3, 24, 24]);
    let e = err(model.decode(c, &t(&[2, 4, 3, 4]), &[&n, &bad]).map(|_| ()));
    assert!(
        e.contains("noise[1]") && e.contains("[2, 3, 24, 32]"),
        "{e}"
    );
    let e = err(model.encode(c, &t(&[1, 3, 24, 30])).map(|_| ()));
    assert!(e.contains("24x30") && e.contains("divisible by 8"), "{e}");
    let u = &model.decoder_unet;
    let e = err(u.forward(c, &t(&[1, 7, 24, 32]), &[1008.5]).map(|_| ()));
    assert!(
        e.contains("1008.5") && e.contains("num_train_timesteps"),
        "{e}"
    );
    let e = err(u.forward(c, &t(&[1, 7, 24, 32]), &[1024.0]).map(|_| ()));
    assert!(e.contains("1024"), "{e}");
    let e = err(u.forward(c, &t(&[1, 7, 22, 32]), &[10.0]).map(|_| ()));
    assert!(e.contains("22x32") && e.contains("divisible by 4"), "{e}");
    let e = err(u.forward(c, &t(&[1, 6, 24, 32]), &[10.0]).map(|_| ()));
    assert!(e.contains("in_channels"), "{e}");

    let base: serde_json::Value = serde_json::from_slice(&config(NAME)).unwrap();
    for (field, value) in [
        ("decoder_add_attention", "true"),
        (
            "decoder_down_block_types",
            "[\"DownBlock2D\", \"ResnetDownsampleBlock2D\", \"ResnetDownsampleBlock2D\"]",
        ),
        ("decoder_up_block_types", "[\"ResnetUpsampleBlock2D\"]"),
        ("decoder_resnet_time_scale_shift", "\"spatial\""),
        ("decoder_time_embedding_type", "\"fourier\""),
        ("decoder_norm_num_groups", "5"),
        ("decoder_in_channels", "6"),
        ("encoder_act_fn", "\"gelu\""),
        ("encoder_double_z", "false"),
        ("latent_channels", "8"),
    ] {
        let mut v = base.clone();
        v[field] = serde_json::from_str(value).unwrap();
        let e = ConsistencyDecoderVAEConfig::from_json(v.to_string().as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{field} = {value} was accepted"))
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    // UNet2DModel's own defaults are an attention U-Net: refused, naming the field.
    let e = UNet2DModelConfig::from_json(b"{}")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("down_block_types"), "{e}");
}

/// `ResnetBlock2D(down=True)`'s `avg_pool2d(2, 2)` (strided views, no kernel of its own):
/// odd heights and widths floor like PyTorch's.
#[test]
fn avg_pool_2x2_matches_reference_on_odd_sizes() {
    use hoa::models::nn::avg_pool2d_2x2;
    let Some(c) = ctx() else { return };
    let mut r = rng(11);
    for dt in dtypes(c) {
        for &(b, ch, h, w) in &[(1, 1, 2, 2), (2, 3, 7, 9), (1, 5, 6, 33)] {
            let x = round_to(dt, &randn(&mut r, b * ch * h * w, 1.0));
            let t = hoa::Tensor::from_f32(c, &x, &[b, ch, h, w], dt).unwrap();
            let got = avg_pool2d_2x2(c, &t).unwrap();
            let (ho, wo) = (h / 2, w / 2);
            assert_eq!(got.shape(), [b, ch, ho, wo]);
            let mut want = Vec::new();
            for p in 0..b * ch {
                for i in 0..ho {
                    for j in 0..wo {
                        let at =
                            |di: usize, dj: usize| x[p * h * w + (2 * i + di) * w + 2 * j + dj];
                        want.push((at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0);
                    }
                }
            }
            all_close(
                &format!("avg_pool2d {b}x{ch}x{h}x{w} {dt:?}"),
                &got.to_vec(c).unwrap(),
                &want,
                &tol_for(dt, false),
            );
        }
        let one_row = hoa::Tensor::full(c, &[1, 1, 1, 4], 0.0, dt).unwrap();
        assert!(avg_pool2d_2x2(c, &one_row).is_err());
    }
}
