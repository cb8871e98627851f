//! `hoa generate`: prompt to PNG files, with a progress bar and the parameters recorded in
//! each PNG.

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use hoa::image_io::{decode_mask, decode_rgb, encode_png, GenerationParameters};
use hoa::model_defaults::ModelDefaults;
use hoa::model_files::DirFiles;
use hoa::pipeline::{Decoder, Event, GenerateOptions, GuidanceHigh, InitImage, Pipeline};
use hoa::schedulers::{eta_parameter, SchedulerKind};
use hoa::weights::Weights;
use hoa::{Context, DType};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: Option<String>,
    /// Many prompts, one per line (blank lines skipped), in one run: the model loads once.
    /// Prompt j is seeded seed + j x batch and written as OUT-jjjj.png.
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// What to steer away from (the unconditional half of classifier-free guidance).
    #[arg(long, default_value = "")]
    pub negative: String,
    /// A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
    /// scheduler/). Default: the shipped model in weights/default.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Denoising steps.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 turns guidance off). Default: the model's
    /// (hoa.json in the model folder), else 7.5.
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Guidance scale for the high-noise steps (timestep ≥ --guidance-high-from), where the
    /// layout and the number of objects are decided. Default: the model's (hoa.json) unless
    /// --guidance is given, else none (--guidance throughout).
    #[arg(long)]
    pub guidance_high: Option<f32>,
    /// The timestep (of the scheduler's 1000) from which --guidance-high applies. Default: the
    /// model's, else 500.
    #[arg(long, requires = "guidance_high")]
    pub guidance_high_from: Option<f32>,
    /// Use the prompt as typed, without the model's prompt upsampling (hoa.json
    /// `prompt_upsampling`: the attributes its training captions always stated, filled in where
    /// the prompt leaves them out, as DALL-E 3 rewrites prompts into the captions it was trained
    /// on).
    #[arg(long)]
    pub no_upsample: bool,
    /// ddim, euler, euler_a, dpm++2m, dpm++2m-karras or lcm. Default: the model's own.
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// DDIM's eta: 0 (default) is deterministic, 1 adds DDPM's variance of fresh noise each
    /// step (diffusers' `eta`; other schedulers ignore it).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f32,
    /// Noise seed; image k of a batch uses seed + k.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image width, a multiple of 8. Default: the U-Net's sample_size x the VAE factor.
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height, a multiple of 8.
    #[arg(long)]
    pub height: Option<usize>,
    /// Images to make at once.
    #[arg(long)]
    pub batch: Option<usize>,
    /// vae, or consistency (the model folder's consistency_decoder/).
    #[arg(long, default_value = "vae")]
    pub decoder: Decoder,
    /// Output PNG (batch: name-0.png, name-1.png, ...). An existing file is never overwritten
    /// without --force: a free name is picked instead.
    #[arg(long, short, default_value = "hoa.png")]
    pub out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Start from these latents: a safetensors file with one tensor [batch, C, H/f, W/f]
    /// (diffusers' `latents=`), instead of seeded noise.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// img2img: start from this image (PNG or JPEG of the output size).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// img2img: how much to repaint, in (0, 1].
    #[arg(long, default_value_t = 0.75)]
    pub strength: f32,
    /// Inpainting: white = repaint, black = keep (needs --init-image; same size).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Store weights and activations in f16 (needs the adapter's shader-f16).
    #[arg(long)]
    pub f16: bool,
}

/// weights/default beside the working directory, else the one in this source tree.
fn default_model() -> PathBuf {
    let here = PathBuf::from("weights/default");
    if here.join("model_index.json").is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default")
}

/// The high-noise guidance: the user's, else the model's unless the user set --guidance (a
/// model's split is tuned to its own scale).
fn guidance_high(a: &GenerateArgs, defaults: &ModelDefaults) -> Option<GuidanceHigh> {
    match a.guidance_high {
        Some(scale) => Some(GuidanceHigh {
            scale,
            from_timestep: a
                .guidance_high_from
                .or(defaults.guidance_high.map(|h| h.from_timestep))
                .unwrap_or(500.0),
        }),
        None if a.guidance.is_none() => defaults.guidance_high,
        None => None,
    }
}

/// `path`, or if it exists (and not `force`) the first free `stem-N.ext`.
fn free_name(path: &Path, force: bool, taken: &[PathBuf]) -> PathBuf {
    if force || (!path.exists() && !taken.contains(&path.to_path_buf())) {
        return path.to_path_buf();
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (1..)
        .map(|n| path.with_file_name(format!("{stem}-{n}.{ext}")))
        .find(|p| !p.exists() && !taken.contains(p))
        .expect("some name is free")
}

fn read_latents(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).with_context(|| format!("--latents {}", path.display()))?;
    let w = Weights::from_bytes(&path.display().to_string(), bytes)?;
    let names: Vec<&str> = w.names().collect();
    let name = match names.as_slice() {
        [one] => one.to_string(),
        _ if names.contains(&"latents") => "latents".to_string(),
        _ => bail!(
            "--latents {}: expected one tensor (or one named `latents`), found {names:?}",
            path.display()
        ),
    };
    let shape = w.shape(&name).unwrap_or_default().to_vec();
    if shape.len() != 4 {
        bail!(
            "--latents {}: tensor `{name}` is {shape:?}; expected [batch, channels, height/f, \
             width/f]",
            path.display()
        );
    }
    Ok((w.read_f32(&name)?, shape))
}

pub fn run(ctx: &Context, a: GenerateArgs) -> Result<()> {
    // Checks that need no model first, so bad input fails before the slow load.
    for (name, v) in [("width", a.width), ("height", a.height)] {
        if let Some(v) = v {
            if v == 0 || v % 8 != 0 {
                bail!("--{name} {v} is not a positive multiple of 8");
            }
        }
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if a.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    if !(0.0..=1.0).contains(&a.eta) {
        bail!(
            "--eta {} is outside [0, 1]: 0 is deterministic DDIM, 1 adds DDPM's variance",
            a.eta
        );
    }
    let prompts: Vec<String> = match (&a.prompt, &a.prompt_file) {
        (Some(p), None) => vec![p.clone()],
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--prompt-file {}", f.display()))?;
            let v: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            if v.is_empty() {
                bail!("--prompt-file {} has no prompts", f.display());
            }
            v
        }
        _ => bail!("give a prompt, or --prompt-file FILE"),
    };
    if a.mask.is_some() && a.init_image.is_none() {
        bail!("--mask needs --init-image (the picture to inpaint)");
    }
    let model_dir = a.model.clone().unwrap_or_else(default_model);
    if !model_dir.join("model_index.json").is_file() && a.model.is_none() {
        bail!(
            "the default model is not there: {} has no model_index.json. It is trained by \
             tools/train (see weights/README.md); or pass --model DIR with a diffusers folder",
            model_dir.display()
        );
    }
    let files = DirFiles::open(&model_dir)?;
    let defaults = ModelDefaults::load(&files)?;
    let upsampling = defaults
        .prompt_upsampling
        .as_ref()
        .filter(|_| !a.no_upsample);
    let latents = a.latents.as_deref().map(read_latents).transpose()?;
    let init = match &a.init_image {
        None => None,
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("--init-image {}", p.display()))?;
            let image = decode_rgb(&bytes, &format!("--init-image {}", p.display()))?;
            let mask = match &a.mask {
                None => None,
                Some(m) => {
                    let bytes =
                        std::fs::read(m).with_context(|| format!("--mask {}", m.display()))?;
                    let (w, h, v) = decode_mask(&bytes, &format!("--mask {}", m.display()))?;
                    if (w, h) != (image.width, image.height) {
                        bail!(
                            "--mask {} is {w}x{h} but the init image is {}x{}",
                            m.display(),
                            image.width,
                            image.height
                        );
                    }
                    Some(v)
                }
            };
            Some(InitImage {
                image,
                strength: a.strength,
                mask,
            })
        }
    };

    eprintln!("adapter: {}", ctx.describe());
    let dtype = if a.f16 { DType::F16 } else { DType::F32 };
    let t0 = std::time::Instant::now();
    let pipe = Pipeline::load(ctx, &files, dtype)?;
    eprintln!(
        "loaded {} in {:.1} s",
        model_dir.display(),
        t0.elapsed().as_secs_f64()
    );

    let f = pipe.vae_scale_factor();
    let native = pipe.unet_config.sample_size.unwrap_or(64) * f;
    let (mut width, mut height) = (a.width.unwrap_or(native), a.height.unwrap_or(native));
    if let Some(init) = &init {
        width = a.width.unwrap_or(init.image.width);
        height = a.height.unwrap_or(init.image.height);
    }
    let mut batch = a.batch.unwrap_or(1);
    if let Some((_, shape)) = &latents {
        let (lb, lh, lw) = (shape[0], shape[2], shape[3]);
        if a.batch.is_none() {
            batch = lb;
        }
        if a.width.is_none() && a.height.is_none() {
            (width, height) = (lw * f, lh * f);
        }
    }
    let steps = if a.steps == 25 {
        defaults.steps.unwrap_or(25)
    } else {
        a.steps
    };
    let mut opts = GenerateOptions {
        prompt: prompts[0].clone(),
        negative_prompt: a.negative.clone(),
        width,
        height,
        steps,
        guidance: a.guidance.or(defaults.guidance).unwrap_or(7.5),
        guidance_high: guidance_high(&a, &defaults),
        scheduler: a.scheduler,
        eta: a.eta,
        seed: a.seed,
        batch,
        decoder: a.decoder,
        latents: latents.map(|(v, _)| v),
        init,
        split_guidance: false,
        preview_every: 0,
    };
    pipe.validate(ctx, &opts)?;
    let kind = pipe.scheduler_kind(&opts)?;
    let sampler = kind.name().to_string();
    let model_name = model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    let mut written = Vec::new();
    for (j, prompt) in prompts.iter().enumerate() {
        opts.prompt = match upsampling {
            Some(u) => u.upsample(prompt)?,
            None => prompt.clone(),
        };
        let upsampled = (opts.prompt != *prompt).then(|| opts.prompt.clone());
        if let Some(u) = &upsampled {
            eprintln!("upsampled prompt (--no-upsample to use it as typed): {u}");
        }
        opts.seed = a.seed.wrapping_add((j * batch) as u64);
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} step {pos}/{len} [{bar:30}] {elapsed} < {eta}, {per_sec} {msg}",
            )
            .map_err(|e| anyhow!("{e}"))?
            .progress_chars("=> "),
        );
        let t1 = std::time::Instant::now();
        let images = pollster::block_on(pipe.generate(ctx, &opts, &mut |ev| match ev {
            Event::Warning(w) => bar.suspend(|| eprintln!("warning: {w}")),
            Event::Step { step, total, .. } => {
                bar.set_length(total as u64);
                bar.set_position(step as u64);
            }
            Event::Decoding => bar.set_message("decoding"),
            Event::Preview { .. } => {}
        }))?;
        bar.finish_with_message("done");
        eprintln!(
            "{} image(s) {width}x{height} in {:.1} s",
            images.len(),
            t1.elapsed().as_secs_f64()
        );

        for (k, img) in images.iter().enumerate() {
            let stem = a.out.file_stem().unwrap_or_default().to_string_lossy();
            let name = match (prompts.len() > 1, images.len() > 1) {
                (false, false) => a.out.clone(),
                (false, true) => a.out.with_file_name(format!("{stem}-{k}.png")),
                (true, false) => a.out.with_file_name(format!("{stem}-{j:04}.png")),
                (true, true) => a.out.with_file_name(format!("{stem}-{j:04}-{k}.png")),
            };
            let path = free_name(&name, a.force, &written);
            let mut extra = Vec::new();
            if let Some(init) = &opts.init {
                extra.push(("Denoising strength".to_string(), init.strength.to_string()));
                if init.mask.is_some() {
                    extra.push(("Mask".to_string(), "yes".to_string()));
                }
            }
            extra.extend(opts.guidance_high.map(|h| h.parameter()));
            if let Some(u) = &upsampled {
                extra.push(("Upsampled prompt".to_string(), u.clone()));
            }
            extra.extend(eta_parameter(kind, a.eta));
            if a.latents.is_some() {
                extra.push(("Latents".to_string(), "file".to_string()));
            }
            let params = GenerationParameters {
                prompt: prompt.clone(),
                negative_prompt: opts.negative_prompt.clone(),
                steps,
                sampler: sampler.clone(),
                guidance: opts.guidance,
                seed: opts.seed + k as u64,
                width,
                height,
                model: model_name.clone(),
                decoder: opts.decoder.name().to_string(),
                extra,
            };
            let png = encode_png(img, Some(&params.to_text()))?;
            std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
            println!("{}", path.display());
            written.push(path);
        }
    }
    Ok(())
}
