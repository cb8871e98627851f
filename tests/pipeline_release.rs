//! Releasing components early (what `hoa generate` does for its last prompt): stage 1 alone,
//! then the text encoders dropped, gives the same images as one `generate`, and a later
//! encode is a clear error.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use common::ctx;
use hoa::model_files::DirFiles;
use hoa::pipeline::{GenerateOptions, Pipeline, TextEncoder};
use hoa::DType;

#[test]
fn encode_then_release_gives_the_same_images_and_refuses_a_second_prompt() {
    let Some(c) = ctx() else { return };
    let files = DirFiles::open(fixture::dir("pipeline_tiny")).unwrap();
    let mut p = Pipeline::load(c, &files, DType::F32).unwrap();
    let opts = GenerateOptions {
        prompt: "a red circle left of a blue square".into(),
        negative_prompt: "green".into(),
        width: 32,
        height: 24,
        steps: 3,
        guidance: 4.0,
        seed: 5,
        ..Default::default()
    };
    let whole = pollster::block_on(p.generate(c, &opts, &mut |_| {})).unwrap();
    let encoded = pollster::block_on(p.encode(c, &opts, &mut |_| {})).unwrap();
    p.release_text_encoders();
    c.trim_pool();
    assert!(p.text_encoders_released());
    assert!(matches!(p.text_encoder, TextEncoder::None));
    let after = pollster::block_on(p.generate_encoded(c, &opts, encoded, &mut |_| {})).unwrap();
    assert_eq!(whole.len(), after.len());
    for (a, b) in whole.iter().zip(&after) {
        assert!(
            a.data == b.data,
            "the images differ after releasing the encoder"
        );
    }
    let e = match pollster::block_on(p.generate(c, &opts, &mut |_| {})) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a released pipeline encoded a prompt"),
    };
    assert!(e.contains("text encoders were released"), "{e}");
}

/// `hoa generate`'s one-shot path: the encoders loaded alone, each network released after its
/// stage, the U-Net loaded after the text encoders are gone, the VAE after the U-Net: the same
/// images as one `generate` on a fully loaded pipeline; a released U-Net and a missing VAE are
/// clear errors.
#[test]
fn one_network_at_a_time_gives_the_same_images() {
    let Some(c) = ctx() else { return };
    let files = DirFiles::open(fixture::dir("pipeline_tiny")).unwrap();
    let opts = GenerateOptions {
        prompt: "a red star above a green ring".into(),
        width: 24,
        height: 32,
        steps: 2,
        guidance: 3.0,
        seed: 11,
        batch: 2,
        ..Default::default()
    };
    let full = Pipeline::load(c, &files, DType::F32).unwrap();
    let whole = pollster::block_on(full.generate(c, &opts, &mut |_| {})).unwrap();
    drop(full);
    let info = hoa::model_info::ModelInfo::read(&files).unwrap();
    let loras = hoa::lora::LoraSet::default();
    let mut p = Pipeline::load_encoders(c, &files, info, DType::F32, &loras).unwrap();
    let img2img = GenerateOptions {
        init: Some(hoa::pipeline::InitImage {
            image: whole[0].clone(),
            strength: 0.5,
            mask: None,
        }),
        batch: 1,
        ..opts.clone()
    };
    let e = match pollster::block_on(p.generate(c, &img2img, &mut |_| {})) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("img2img ran without a VAE"),
    };
    assert!(
        e.contains("VAE is not loaded") && e.contains("load_vae"),
        "{e}"
    );
    let encoded = pollster::block_on(p.encode(c, &opts, &mut |_| {})).unwrap();
    p.release_text_encoders();
    p.load_unet(c, &files, &loras).unwrap();
    let denoised = pollster::block_on(p.denoise_encoded(c, &opts, encoded, &mut |_| {})).unwrap();
    p.release_unet();
    c.trim_pool();
    p.load_vae(c, &files).unwrap();
    let after = pollster::block_on(p.decode_denoised(c, &opts, denoised, &mut |_| {})).unwrap();
    assert_eq!(whole.len(), 2);
    assert_eq!(after.len(), 2);
    for (a, b) in whole.iter().zip(&after) {
        assert!(a.data == b.data, "the images differ when staged");
    }
    let mut q = Pipeline::load(c, &files, DType::F32).unwrap();
    q.release_unet();
    let e = match pollster::block_on(q.generate(c, &opts, &mut |_| {})) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a pipeline without its U-Net generated"),
    };
    assert!(e.contains("U-Net is not loaded"), "{e}");
}
