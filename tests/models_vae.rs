//! AutoencoderKL vs a diffusers fixture written by tools/fixtures/make_fixtures.py (tiny
//! random config, 24x30 images, so the latent is 12x15 after the asymmetric-pad downsample).
//! Tolerance: max |err| <= 1e-3 x max |reference| in f32, 1e-2 in f16, per block then end to
//! end.

mod common;
#[path = "common/fixture.rs"]
mod fixture;
use common::*;
use fixture::*;
use hoa::config::AutoencoderKLConfig;
use hoa::models::autoencoder_kl::AutoencoderKL;
use hoa::weights::Loader;
use hoa::DType;

#[test]
fn vae_kl_encode_and_decode_match_diffusers() {
    let Some(c) = ctx() else { return };
    let name = "vae_kl";
    let cfg = AutoencoderKLConfig::from_json(&config(name)).unwrap();
    let w = diffusers_weights(name);
    let io = Io::load(name);
    for dt in dtypes(c) {
        let rel = rel_tol(dt);
        let model = AutoencoderKL::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let enc = model.encode(c, &io.tensor(c, "image", dt)).unwrap();
        let mut checks = vec![("encoder.conv_in".to_string(), &enc.conv_in)];
        checks.extend(
            enc.down
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("encoder.down_blocks.{i}"), x)),
        );
        checks.push(("encoder.mid_block".into(), &enc.mid));
        checks.push(("encoder.conv_out".into(), &enc.conv_out));
        checks.push(("mean".into(), &enc.mean));
        checks.push(("logvar".into(), &enc.logvar));
        let dec = model.decode(c, &io.tensor(c, "latent", dt)).unwrap();
        checks.push(("decoder.conv_in".into(), &dec.conv_in));
        checks.push(("decoder.mid_block".into(), &dec.mid));
        checks.extend(
            dec.up
                .iter()
                .enumerate()
                .map(|(i, x)| (format!("decoder.up_blocks.{i}"), x)),
        );
        checks.push(("decoded".into(), &dec.sample));
        let mut worst = 0f64;
        for (key, got) in checks {
            let r = close_rel(&format!("{name} {dt:?} {key}"), got, &io.f32(&key), rel, c).unwrap();
            worst = worst.max(r);
        }
        eprintln!("{name} {dt:?}: worst max|err|/max|ref| over blocks and outputs = {worst:.2e}");
    }
}

#[test]
fn vae_rejects_bad_inputs_and_configs() {
    let Some(c) = ctx() else { return };
    let name = "vae_kl";
    let cfg = AutoencoderKLConfig::from_json(&config(name)).unwrap();
    assert!((cfg.scaling_factor - 0.18215).abs() < 1e-12);
    let w = diffusers_weights(name);
    let model = AutoencoderKL::load(&Loader::new(c, &w, DType::F32), &cfg).unwrap();
    let t = |s: &[usize]| hoa::Tensor::full(c, s, 0.0, DType::F32).unwrap();
    let e = model
        .encode(c, &t(&[1, 4, 24, 30]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("[1, 4, 24, 30]") && e.contains("in_channels"),
        "{e}"
    );
    let e = model
        .encode(c, &t(&[1, 3, 24, 31]))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("24x31") && e.contains("divisible by 2"), "{e}");
    let e = model
        .decode(c, &t(&[1, 3, 12, 15]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("[1, 3, 12, 15]") && e.contains("latent_channels"),
        "{e}"
    );

    let base: serde_json::Value = serde_json::from_slice(&config(name)).unwrap();
    for (field, value) in [
        (
            "down_block_types",
            "[\"DownEncoderBlock2D\", \"AttnDownEncoderBlock2D\"]",
        ),
        ("act_fn", "\"relu\""),
        ("norm_num_groups", "7"),
    ] {
        let mut v = base.clone();
        v[field] = serde_json::from_str(value).unwrap();
        let e = AutoencoderKLConfig::from_json(v.to_string().as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{field} = {value} was accepted"))
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

/// The SD VAE's mid attention has one 512-wide head, past the flash kernel's MAX_HEAD_DIM: the
/// matmul-softmax-matmul fallback must agree with the f64 reference.
#[test]
fn wide_single_head_attention_falls_back_correctly() {
    use hoa::kernels::attention::{reference, MAX_HEAD_DIM};
    use hoa::models::attention::scaled_dot_product_attention;
    let Some(c) = ctx() else { return };
    let mut r = rng(5);
    let (b, lq, lk, d) = (2, 37, 29, MAX_HEAD_DIM + 36);
    for dt in dtypes(c) {
        let q = round_to(dt, &randn(&mut r, b * lq * d, 0.2));
        let k = round_to(dt, &randn(&mut r, b * lk * d, 0.2));
        let v = round_to(dt, &randn(&mut r, b * lk * d, 1.0));
        let t = |x: &[f32], l| hoa::Tensor::from_f32(c, x, &[b, l, d], dt).unwrap();
        let got = scaled_dot_product_attention(c, &t(&q, lq), &t(&k, lk), &t(&v, lk), 1)
            .unwrap()
            .to_vec(c)
            .unwrap();
        let dims = reference::Dims {
            batch: b,
            lq,
            lk,
            heads: 1,
            d,
            dv: d,
        };
        let want = reference::attention(&q, &k, &v, &dims, 1.0 / (d as f64).sqrt(), false, None);
        all_close(
            &format!("attention fallback d={d} {dt:?}"),
            &got,
            &want,
            &tol_for(dt, true),
        );
    }
}
