//! hoa's side of tools/peers: runs a diffusers folder's U-Net (one step) and VAE decoder on the
//! inputs tools/peers wrote, so that the harness compares hoa's outputs with PyTorch's on the
//! same weights and inputs (timing is `hoa bench --model`'s job, with its FMA ceiling).
//!
//! Usage: cargo run --release --example peer_outputs -- FOLDER IN.safetensors OUT.safetensors
//! IN holds `sample` [B, 4, h, w], `timestep` [1], `encoder_hidden_states` [B, 77, 768] and
//! `latent` [1, 4, h, w]; OUT gets `unet` and `vae` (f32).

use anyhow::{bail, Context as _, Result};
use hoa::config::{AutoencoderKLConfig, UNet2DConditionModelConfig};
use hoa::models::autoencoder_kl::AutoencoderKL;
use hoa::models::unet_2d_condition::UNet2DConditionModel;
use hoa::weights::{Loader, Weights};
use hoa::{Context, ContextOptions, DType, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// One f32 tensor of the inputs file, with its shape.
fn input(st: &SafeTensors, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let t = st
        .tensor(name)
        .with_context(|| format!("inputs: no `{name}`"))?;
    if t.dtype() != Dtype::F32 {
        bail!("inputs: `{name}` is {:?}, want F32", t.dtype());
    }
    let v = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((v, t.shape().to_vec()))
}

/// A component's config and weights (`unet/`, `vae/`), memory-mapped.
fn component(folder: &Path, sub: &str) -> Result<(Vec<u8>, Weights)> {
    let dir = folder.join(sub);
    let cfg = std::fs::read(dir.join("config.json"))
        .with_context(|| format!("{}: config.json", dir.display()))?;
    let file = dir.join("diffusion_pytorch_model.safetensors");
    Ok((cfg, Weights::open_mmap(&file, sub)?))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [folder, inp, out] = args.as_slice() else {
        bail!("usage: peer_outputs FOLDER IN.safetensors OUT.safetensors");
    };
    let folder = Path::new(folder);
    let ctx = Context::new_blocking(ContextOptions::from_env())?;
    eprintln!("adapter: {}", ctx.describe());
    let bytes = std::fs::read(inp).with_context(|| inp.clone())?;
    let st = SafeTensors::deserialize(&bytes)?;
    let dt = DType::F32;

    let (cfg, w) = component(folder, "unet")?;
    let unet = UNet2DConditionModel::load(
        &Loader::new(&ctx, &w, dt),
        &UNet2DConditionModelConfig::from_json(&cfg)?,
    )?;
    let (s, ss) = input(&st, "sample")?;
    let (e, es) = input(&st, "encoder_hidden_states")?;
    let (t, _) = input(&st, "timestep")?;
    let sample = Tensor::from_f32(&ctx, &s, &ss, dt)?;
    let enc = Tensor::from_f32(&ctx, &e, &es, dt)?;
    let eps = unet.forward(&ctx, &sample, &t, &enc)?.sample;
    let (eps_shape, eps) = (eps.shape().to_vec(), eps.to_vec(&ctx)?);
    drop(unet);

    let (cfg, w) = component(folder, "vae")?;
    let vae = AutoencoderKL::load(
        &Loader::new(&ctx, &w, dt),
        &AutoencoderKLConfig::from_json(&cfg)?,
    )?;
    let (l, ls) = input(&st, "latent")?;
    let img = vae.decode_auto(&ctx, &Tensor::from_f32(&ctx, &l, &ls, dt)?)?;
    let (img_shape, img) = (img.shape().to_vec(), img.to_vec(&ctx)?);

    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (eb, ib) = (le(&eps), le(&img));
    let views = [
        (
            "unet",
            safetensors::tensor::TensorView::new(Dtype::F32, eps_shape, &eb)?,
        ),
        (
            "vae",
            safetensors::tensor::TensorView::new(Dtype::F32, img_shape, &ib)?,
        ),
    ];
    safetensors::serialize_to_file(views, None, Path::new(out))?;
    eprintln!("wrote {out}");
    Ok(())
}
