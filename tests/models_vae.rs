//! AutoencoderKL vs a diffusers fixture written by tools/fixtures/make_fixtures.py (tiny
//! random config, 24x30 images, so the latent is 12x15 after the asymmetric-pad downsample).
//! Tolerance: max |err| <= 1e-3 x max |reference| in f32, 1e-2 in f16, per block then end to
//! end. The `vae_tiled` fixture (block_out_channels (8, 16), `enable_tiling()`) checks the tiled
//! decode and encode the same way.

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

/// diffusers' `tiled_decode` (`enable_tiling()`, tiles of 32 pixels = 16 latent, stride 12,
/// blend 8, crop 24) of a [2, 4, 24, 40] latent: 2x4 tiles with partial ones at the bottom and
/// right. Same tolerance as above (max |err| <= 1e-3 x max |ref| in f32, 1e-2 in f16); the
/// fixture's tiled output differs from the untiled one by far more, so this checks the tiling.
#[test]
fn vae_tiled_decode_matches_diffusers() {
    let Some(c) = ctx() else { return };
    let name = "vae_tiled";
    let cfg = AutoencoderKLConfig::from_json(&config(name)).unwrap();
    let w = diffusers_weights(name);
    let io = Io::load(name);
    let (tiled, untiled) = (io.f32("decoded"), io.f32("decoded_untiled"));
    let scale = tiled.0.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let diff = tiled
        .0
        .iter()
        .zip(&untiled.0)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
    assert!(
        diff > 10.0 * rel_tol(DType::F16) * scale,
        "the fixture's tiled and untiled decodes must differ ({diff:.2e})"
    );
    for dt in dtypes(c) {
        let rel = rel_tol(dt);
        let model = AutoencoderKL::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let opts = model.tile_options().unwrap();
        assert_eq!((opts.tile_sample_size, opts.overlap_factor), (32, 0.25));
        let latent = io.tensor(c, "latent", dt);
        let got = model.decode_tiled(c, &latent, opts).unwrap();
        let r = close_rel(&format!("{name} {dt:?} tiled"), &got, &tiled, rel, c).unwrap();
        let whole = model.decode(c, &latent).unwrap().sample;
        let r2 = close_rel(&format!("{name} {dt:?} untiled"), &whole, &untiled, rel, c).unwrap();
        eprintln!("{name} {dt:?}: max|err|/max|ref| tiled {r:.2e}, untiled {r2:.2e}");
    }
}

/// decode_auto decodes whole while every activation fits the binding limit and tiled (as
/// diffusers' `tiled_decode`) when it would not; the limit is lowered instead of growing the
/// image, so the test stays small.
#[test]
fn vae_decode_auto_tiles_when_a_binding_would_not_fit() {
    use hoa::gpu::BufferPool;
    use hoa::models::autoencoder_kl::{TileOptions, TilePlan};
    let Some(c) = ctx() else { return };
    let name = "vae_tiled";
    let cfg = AutoencoderKLConfig::from_json(&config(name)).unwrap();
    let w = diffusers_weights(name);
    let io = Io::load(name);
    let dt = DType::F32;
    let model = AutoencoderKL::load(&Loader::new(c, &w, dt), &cfg).unwrap();
    let latent = io.tensor(c, "latent", dt);
    let shape = latent.shape().to_vec();
    // The widest activation: up_blocks.0's upsampler, [2, 16, 48, 80] f32.
    let peak = model.decode_peak_bytes(2, 24, 40, dt);
    assert_eq!(peak, BufferPool::size_class(2 * 16 * 48 * 80 * 4));
    // A 16x16-latent tile's: [2, 16, 32, 32].
    let tile_peak = model.decode_peak_bytes(2, 16, 16, dt);
    assert_eq!(tile_peak, BufferPool::size_class(2 * 16 * 32 * 32 * 4));

    assert_eq!(
        model.decode_plan(&shape, dt, peak).unwrap(),
        TilePlan::Whole
    );
    let whole = model.decode_auto_within(c, &latent, peak).unwrap();
    close_rel(
        "decode_auto whole",
        &whole,
        &io.f32("decoded_untiled"),
        1e-3,
        c,
    )
    .unwrap();

    // One byte short of the whole decode: diffusers' tiles (sample_size 32) fit.
    let plan = model.decode_plan(&shape, dt, peak - 1).unwrap();
    assert_eq!(plan, TilePlan::Tiled(model.tile_options().unwrap()));
    let tiled = model.decode_auto_within(c, &latent, peak - 1).unwrap();
    let r = close_rel("decode_auto tiled", &tiled, &io.f32("decoded"), 1e-3, c).unwrap();
    eprintln!("decode_auto tiled: max|err|/max|ref| {r:.2e}");

    // Below one 16x16 tile: the tile shrinks to 12 latent pixels (a multiple of 4).
    let plan = model.decode_plan(&shape, dt, tile_peak - 1).unwrap();
    assert_eq!(
        plan,
        TilePlan::Tiled(TileOptions {
            tile_sample_size: 24,
            overlap_factor: 0.25
        })
    );
    let small = model.decode_auto_within(c, &latent, tile_peak - 1).unwrap();
    assert_eq!(small.shape(), &[2, 3, 48, 80]);
    assert!(small.to_vec(c).unwrap().iter().all(|x| x.is_finite()));

    // Nothing fits: a clear error.
    let e = model.decode_plan(&shape, dt, 1000).unwrap_err().to_string();
    assert!(
        e.contains("max_storage_buffer_binding_size") && e.contains("fewer images"),
        "{e}"
    );
    let e = model
        .decode_tiled(
            c,
            &latent,
            TileOptions {
                tile_sample_size: 2,
                overlap_factor: 0.25,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("tile_sample_size 2"), "{e}");
}

/// diffusers' `_tiled_encode` (tiles of 32 pixels, stride 24, blend 4 latent rows, crop 12) of
/// a [2, 3, 48, 80] image, then `DiagonalGaussianDistribution`; and encode_auto choosing it
/// when a binding would not hold the whole encode. Tolerance as above.
#[test]
fn vae_tiled_encode_matches_diffusers() {
    use hoa::models::autoencoder_kl::TilePlan;
    let Some(c) = ctx() else { return };
    let name = "vae_tiled";
    let cfg = AutoencoderKLConfig::from_json(&config(name)).unwrap();
    let w = diffusers_weights(name);
    let io = Io::load(name);
    let (mean, untiled) = (io.f32("mean"), io.f32("mean_untiled"));
    let scale = mean.0.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let diff = mean
        .0
        .iter()
        .zip(&untiled.0)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
    assert!(
        diff > 10.0 * rel_tol(DType::F16) * scale,
        "the fixture's tiled and untiled encodes must differ ({diff:.2e})"
    );
    for dt in dtypes(c) {
        let rel = rel_tol(dt);
        let model = AutoencoderKL::load(&Loader::new(c, &w, dt), &cfg).unwrap();
        let image = io.tensor(c, "image", dt);
        let got = model
            .encode_tiled(c, &image, model.tile_options().unwrap())
            .unwrap();
        let r1 = close_rel(&format!("{name} {dt:?} mean"), &got.mean, &mean, rel, c).unwrap();
        let r2 = close_rel(
            &format!("{name} {dt:?} logvar"),
            &got.logvar,
            &io.f32("logvar"),
            rel,
            c,
        )
        .unwrap();
        eprintln!("{name} {dt:?} encode: max|err|/max|ref| mean {r1:.2e}, logvar {r2:.2e}");
    }
    let dt = DType::F32;
    let model = AutoencoderKL::load(&Loader::new(c, &w, dt), &cfg).unwrap();
    let image = io.tensor(c, "image", dt);
    // The widest activation: the first down block's [2, 8, 48, 80].
    let peak = model.encode_peak_bytes(2, 48, 80, dt);
    assert_eq!(peak, hoa::gpu::BufferPool::size_class(2 * 8 * 48 * 80 * 4));
    let shape = image.shape().to_vec();
    assert_eq!(
        model.encode_plan(&shape, dt, peak).unwrap(),
        TilePlan::Whole
    );
    let whole = model.encode_auto_within(c, &image, peak).unwrap();
    close_rel("encode_auto whole", &whole.mean, &untiled, 1e-3, c).unwrap();
    assert_eq!(
        model.encode_plan(&shape, dt, peak - 1).unwrap(),
        TilePlan::Tiled(model.tile_options().unwrap())
    );
    let tiled = model.encode_auto_within(c, &image, peak - 1).unwrap();
    close_rel("encode_auto tiled", &tiled.mean, &mean, 1e-3, c).unwrap();
}

/// The plans for SD 1.5's VAE (random weights; only the config matters) under WebGPU's default
/// 128 MiB binding limit: 512x512 in f32 needs [1, 256, 512, 512] = 256 MiB, so it tiles with
/// the largest multiple-of-4 latent tile that fits (44 -> 352 pixels: [1, 256, 352, 352] f32 =
/// 121 MiB); in f16 the same activation is exactly 128 MiB and decodes whole; 1792x1024 tiles
/// in both (its mid attention's scores alone would be 28672^2 elements).
#[test]
fn sd15_vae_plans_fit_webgpu_default_limits() {
    use hoa::config::AutoencoderKLConfig;
    use hoa::models::autoencoder_kl::{TileOptions, TilePlan};
    use hoa::weights::Weights;
    let Some(c) = ctx() else { return };
    let cfg = AutoencoderKLConfig::stable_diffusion();
    let empty = Weights::from_files(vec![]).unwrap();
    let vae = AutoencoderKL::load(&Loader::random(c, &empty, DType::F32, 1), &cfg).unwrap();
    let webgpu = 128 << 20;
    let tiled = |px| {
        TilePlan::Tiled(TileOptions {
            tile_sample_size: px,
            overlap_factor: 0.25,
        })
    };
    let plan = |h, w, dt| vae.decode_plan(&[1, 4, h, w], dt, webgpu).unwrap();
    assert_eq!(vae.decode_peak_bytes(1, 64, 64, DType::F32), 256 << 20);
    assert_eq!(plan(64, 64, DType::F32), tiled(352));
    assert_eq!(plan(64, 64, DType::F16), TilePlan::Whole);
    assert_eq!(plan(128, 224, DType::F32), tiled(352));
    assert_eq!(plan(128, 224, DType::F16), tiled(512));
    assert_eq!(plan(32, 32, DType::F32), TilePlan::Whole);
    // Encoding: the first down block's [1, 128, 512, 512] f32 is exactly 128 MiB, so 512x512
    // encodes whole and larger images in diffusers' own 512-pixel tiles.
    let eplan = |h, w, dt| vae.encode_plan(&[1, 3, h, w], dt, webgpu).unwrap();
    assert_eq!(eplan(512, 512, DType::F32), TilePlan::Whole);
    assert_eq!(eplan(1024, 1792, DType::F32), tiled(512));
    assert_eq!(eplan(1024, 1792, DType::F16), tiled(512));
}
