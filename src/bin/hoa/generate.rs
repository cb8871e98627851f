//! `hoa generate`: read the inputs, resolve them into options (the library's one policy),
//! generate, write PNGs that carry their parameters. Nothing model-independent waits for the
//! model: bad flags, inputs and output paths fail before the load.

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use hoa::image_io::{decode_mask, decode_rgb, encode_png};
use hoa::lora::{LoraFile, LoraSet};
use hoa::model_files::{open_model, ModelFiles};
use hoa::model_info::ModelInfo;
use hoa::pipeline::{Event, Pipeline};
use hoa::request::{Latents, LoraRequest, Mask, Origin, Request};
use hoa::resolve::{resolve, resolve_two_stage, DeviceLimits, Resolved};
use hoa::weights::Weights;
use hoa::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// Every choice is optional: what is not given comes from the model (its hoa.json, its
/// scheduler config, its size), then from hoa's defaults, all decided in `hoa::resolve`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: Option<String>,
    /// Many prompts, one per line (blank lines skipped), in one run: the model loads once.
    /// Prompt j is seeded seed + j x batch and written as OUT-jjjj.png.
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_file: Option<PathBuf>,
    /// What to steer away from (the unconditional half of classifier-free guidance).
    #[arg(long)]
    pub negative: Option<String>,
    /// A diffusers model folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
    /// scheduler/), or a single-file SD 1.x/2.x checkpoint (FILE.safetensors in the original
    /// LDM layout, as A1111 and ComfyUI load). Default: the shipped model in weights/default.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// With a single-file --model: a diffusers folder whose configs, scheduler and tokenizer
    /// apply to the file (diffusers' `config=`), for checkpoints whose sizes cannot be inferred.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// What the U-Net predicts: epsilon or v_prediction. Default: the model's scheduler config
    /// (for a single file: detected; SD 2.x 768 models are v_prediction, 2.x-base epsilon).
    #[arg(long)]
    pub prediction: Option<String>,
    /// Denoising steps. Default: the model's (hoa.json), else 25.
    #[arg(long, allow_negative_numbers = true)]
    pub steps: Option<i64>,
    /// Classifier-free guidance scale (1 turns guidance off). Default: the model's (hoa.json),
    /// else 7.5.
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f64>,
    /// Guidance scale for the high-noise steps (timestep ≥ --guidance-high-from), where the
    /// layout and the number of objects are decided. Default: the model's (hoa.json) unless
    /// --guidance is given, else none (--guidance throughout).
    #[arg(long, allow_negative_numbers = true)]
    pub guidance_high: Option<f64>,
    /// The timestep (of the scheduler's 1000) from which --guidance-high applies. Default: the
    /// model's, else 500.
    #[arg(long, allow_negative_numbers = true)]
    pub guidance_high_from: Option<f64>,
    /// Use the prompt as typed, without the model's prompt rewrite (hoa.json `rewriter`: a small
    /// T5 that rewrites the request into the descriptive caption form the model was trained on,
    /// as DALL-E 3 rewrites prompts; else `prompt_upsampling`, rules that fill in the
    /// attributes its training captions always stated).
    #[arg(long)]
    pub no_upsample: bool,
    /// Run the guidance halves (prompt and negative prompt) as two U-Net batches (true) or
    /// one (false): the same image, two batches with half the activation memory. Default:
    /// true on a CPU adapter (device memory is host memory; no slower there), else false.
    #[arg(long)]
    pub split_guidance: Option<bool>,
    /// ddim, euler, euler_a, dpm++2m, dpm++2m-karras or lcm. Default: the model's own.
    #[arg(long)]
    pub scheduler: Option<String>,
    /// DDIM's eta: 0 (default) is deterministic, 1 adds DDPM's variance of fresh noise each
    /// step (diffusers' `eta`; other schedulers ignore it).
    #[arg(long, allow_negative_numbers = true)]
    pub eta: Option<f64>,
    /// Noise seed; image k of a batch uses seed + k. Default 0.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Image width. Default: the U-Net's sample_size x the VAE factor (or the init image's).
    #[arg(long, allow_negative_numbers = true)]
    pub width: Option<i64>,
    /// Image height.
    #[arg(long, allow_negative_numbers = true)]
    pub height: Option<i64>,
    /// Images to make at once. Default 1 (or the --latents batch).
    #[arg(long, allow_negative_numbers = true)]
    pub batch: Option<i64>,
    /// vae (default), or consistency (the model folder's consistency_decoder/).
    #[arg(long)]
    pub decoder: Option<String>,
    /// Output PNG, or an existing folder to write hoa.png in (batch: name-0.png, name-1.png,
    /// ...). An existing file is never overwritten without --force: a free name is picked.
    #[arg(long, short, default_value = "hoa.png")]
    pub out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
    /// Start from these latents: a safetensors file with one tensor [batch, C, H/f, W/f]
    /// (diffusers' `latents=`), instead of seeded noise.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// img2img: start from this image (PNG or JPEG; the output takes its size).
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// img2img: how much to repaint, in (0, 1]. Default 0.75.
    #[arg(long, allow_negative_numbers = true)]
    pub strength: Option<f64>,
    /// Inpainting: white = repaint, black = keep (needs --init-image; same size).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Image variations (DALL-E 2's unCLIP, as diffusers' StableUnCLIPImg2ImgPipeline): new
    /// images from this image's CLIP embedding, with a stable unCLIP --model (its
    /// image_encoder/, image_normalizer/, image_noising_scheduler/). The prompt is optional.
    #[arg(long, value_name = "IMAGE")]
    pub variation: Option<PathBuf>,
    /// --variation: the noise added to the image embedding, from 0 (default, diffusers') to
    /// the image noising scheduler's timesteps - 1; higher strays further from the image.
    #[arg(long, allow_negative_numbers = true)]
    pub noise_level: Option<i64>,
    #[command(flatten)]
    pub dtype: crate::dtype::DTypeArgs,
    /// SDXL: the size the U-Net is told the training image had, WIDTHxHEIGHT (diffusers'
    /// `original_size`). Default: the output size.
    #[arg(long, value_parser = width_x_height, allow_hyphen_values = true)]
    pub original_size: Option<[i64; 2]>,
    /// SDXL: the crop's top-left corner, TOP,LEFT in pixels (diffusers'
    /// `crops_coords_top_left`). Default 0,0.
    #[arg(long, value_parser = top_left, allow_hyphen_values = true)]
    pub crops_coords_top_left: Option<[i64; 2]>,
    /// SDXL: the target size, WIDTHxHEIGHT (diffusers' `target_size`). Default: the output size.
    #[arg(long, value_parser = width_x_height, allow_hyphen_values = true)]
    pub target_size: Option<[i64; 2]>,
    /// SDXL: --original-size for the negative prompt. Default: --original-size.
    #[arg(long, value_parser = width_x_height, allow_hyphen_values = true)]
    pub negative_original_size: Option<[i64; 2]>,
    /// SDXL: --crops-coords-top-left for the negative prompt.
    #[arg(long, value_parser = top_left, allow_hyphen_values = true)]
    pub negative_crops_coords_top_left: Option<[i64; 2]>,
    /// SDXL: --target-size for the negative prompt.
    #[arg(long, value_parser = width_x_height, allow_hyphen_values = true)]
    pub negative_target_size: Option<[i64; 2]>,
    /// A LoRA merged into the model at load: FILE or FILE:SCALE (default 1), a kohya or
    /// diffusers/PEFT .safetensors. Repeat for several; they merge in order.
    #[arg(long, value_name = "FILE[:SCALE]")]
    pub lora: Vec<String>,
    /// SDXL: a refiner (folder or single file) that runs the last steps after the base, on
    /// its latents (diffusers' base `denoising_end` -> refiner `denoising_start`).
    #[arg(long)]
    pub refiner: Option<PathBuf>,
    /// With a single-file --refiner: the diffusers folder whose configs apply to it.
    #[arg(long, requires = "refiner")]
    pub refiner_config: Option<PathBuf>,
    /// SDXL: the fraction of the schedule the base runs before the refiner, in (0, 1).
    /// Default 0.8 with --refiner.
    #[arg(long, allow_negative_numbers = true)]
    pub denoising_end: Option<f64>,
    /// SDXL refiner: the aesthetic score the prompt is conditioned on. Default 6.
    #[arg(long, allow_negative_numbers = true)]
    pub aesthetic_score: Option<f64>,
    /// SDXL refiner: the negative prompt's aesthetic score. Default 2.5.
    #[arg(long, allow_negative_numbers = true)]
    pub negative_aesthetic_score: Option<f64>,
}

/// `WIDTHxHEIGHT` as diffusers' (height, width).
fn width_x_height(s: &str) -> std::result::Result<[i64; 2], String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 1024x768"))?;
    let n = |v: &str| v.trim().parse::<i64>().map_err(|e| format!("`{s}`: {e}"));
    Ok([n(h)?, n(w)?])
}

/// `TOP,LEFT`.
fn top_left(s: &str) -> std::result::Result<[i64; 2], String> {
    let (t, l) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}`: expected TOP,LEFT, e.g. 0,0"))?;
    let n = |v: &str| v.trim().parse::<i64>().map_err(|e| format!("`{s}`: {e}"));
    Ok([n(t)?, n(l)?])
}

/// weights/default beside the working directory, else the one in this source tree.
fn default_model() -> PathBuf {
    let here = PathBuf::from("weights/default");
    if here.join("model_index.json").is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default")
}

fn read_prompts(a: &GenerateArgs) -> Result<Vec<String>> {
    match (&a.prompt, &a.prompt_file) {
        (Some(p), None) => Ok(vec![p.clone()]),
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
            Ok(v)
        }
        // A variation's prompt is optional (diffusers' default "").
        (None, None) if a.variation.is_some() => Ok(vec![String::new()]),
        _ => bail!("give a prompt, or --prompt-file FILE"),
    }
}

fn read_latents(path: &Path) -> Result<Latents> {
    let what = format!("--latents {}", path.display());
    let bytes = std::fs::read(path).with_context(|| what.clone())?;
    let w = Weights::from_bytes(&what, bytes)?;
    let names: Vec<&str> = w.names().collect();
    let name = match names.as_slice() {
        [one] => one.to_string(),
        _ if names.contains(&"latents") => "latents".to_string(),
        _ => bail!("{what}: expected one tensor (or one named `latents`), found {names:?}"),
    };
    let shape = w.shape(&name).unwrap_or_default().to_vec();
    if shape.len() != 4 {
        bail!(
            "{what}: tensor `{name}` is {shape:?}; expected [batch, channels, height/f, width/f]"
        );
    }
    Ok(Latents {
        values: w.read_f32(&name)?,
        shape,
    })
}

/// The `--lora` files, read and checked (formats, keys) before the model loads, with the
/// request entries that name them (their hashes go into the PNG).
fn read_loras(args: &[String]) -> Result<(Vec<LoraRequest>, Vec<LoraFile>)> {
    let mut reqs = Vec::new();
    let mut files = Vec::new();
    for arg in args {
        let mut r = hoa::lora::parse_arg(arg)?;
        let f = LoraFile::from_bytes(&r.file, read_file("--lora", Path::new(&r.file))?)?;
        r.hash = Some(f.short_hash.clone());
        reqs.push(r);
        files.push(f);
    }
    Ok((reqs, files))
}

fn read_file(flag: &str, p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))
}

/// The request the flags make (without the prompt and seed, set per prompt).
fn request(a: &GenerateArgs) -> Result<Request> {
    let init_image = match &a.init_image {
        Some(p) => {
            let what = format!("--init-image {}", p.display());
            Some(decode_rgb(&read_file("--init-image", p)?, &what)?)
        }
        None => None,
    };
    let variation = match &a.variation {
        Some(p) => {
            let what = format!("--variation {}", p.display());
            // As CLIPImageProcessor reads it: transparency composited onto white.
            Some(hoa::clip::decode_image(
                &read_file("--variation", p)?,
                &what,
            )?)
        }
        None => None,
    };
    let mask = match &a.mask {
        Some(p) => {
            let what = format!("--mask {}", p.display());
            let (width, height, values) = decode_mask(&read_file("--mask", p)?, &what)?;
            Some(Mask {
                width,
                height,
                values,
            })
        }
        None => None,
    };
    Ok(Request {
        prompt: None,
        negative_prompt: a.negative.clone(),
        steps: a.steps,
        guidance: a.guidance,
        guidance_high: a.guidance_high,
        guidance_high_from: a.guidance_high_from,
        scheduler: a.scheduler.clone(),
        eta: a.eta,
        seed: a.seed,
        width: a.width,
        height: a.height,
        batch: a.batch,
        decoder: a.decoder.clone(),
        upsample: Some(!a.no_upsample),
        strength: a.strength,
        preview_every: None,
        split_guidance: a.split_guidance,
        lora: None,
        prediction: a.prediction.clone(),
        noise_level: a.noise_level,
        init_image,
        variation,
        mask,
        latents: a.latents.as_deref().map(read_latents).transpose()?,
        original_size: a.original_size,
        crops_coords_top_left: a.crops_coords_top_left,
        target_size: a.target_size,
        negative_original_size: a.negative_original_size,
        negative_crops_coords_top_left: a.negative_crops_coords_top_left,
        negative_target_size: a.negative_target_size,
        denoising_end: a.denoising_end,
        aesthetic_score: a.aesthetic_score,
        negative_aesthetic_score: a.negative_aesthetic_score,
        origin: Origin::Cli,
    })
}

/// Where the PNGs go: `--out` itself, or `hoa.png` inside it when it is a folder; checked to
/// be writable before the model loads.
fn output_path(out: &Path) -> Result<PathBuf> {
    let path = if out.is_dir() {
        out.join("hoa.png")
    } else {
        out.to_path_buf()
    };
    let ext = path.extension().map(|e| e.to_ascii_lowercase());
    if ext.as_deref() != Some("png".as_ref()) {
        bail!(
            "--out {}: hoa writes PNG files; give a name ending in .png or an existing folder",
            out.display()
        );
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!(
            "--out {}: the folder {} does not exist; create it first",
            out.display(),
            dir.display()
        );
    }
    let probe = dir.join(format!(".hoa-write-check-{}", std::process::id()));
    std::fs::File::create(&probe)
        .map(|_| std::fs::remove_file(&probe))
        .with_context(|| format!("--out {}: cannot write in {}", out.display(), dir.display()))?
        .ok();
    Ok(path)
}

/// Writes `bytes` at `path`, or, unless `force`, at the first free `stem-N.png`: each name is
/// created with `create_new`, so two runs never pick the same one.
fn write_new(path: &Path, bytes: &[u8], force: bool) -> Result<PathBuf> {
    use std::io::Write;
    if force {
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        return Ok(path.to_path_buf());
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let names = std::iter::once(path.to_path_buf())
        .chain((1..100_000).map(|n| path.with_file_name(format!("{stem}-{n}.png"))));
    for p in names {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(mut f) => {
                f.write_all(bytes)
                    .with_context(|| format!("writing {}", p.display()))?;
                return Ok(p);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
        }
    }
    bail!("{}: no free name left beside it", path.display())
}

/// What `resolve` may allow on this device before the model loads.
fn device_limits(ctx: &Context, dtype: hoa::DType) -> DeviceLimits {
    DeviceLimits {
        max_binding_bytes: ctx.max_binding_bytes(),
        dtype_size: dtype.size(),
        host_memory: ctx.host_memory(),
    }
}

/// The files and LoRAs a pipeline loaded by [`Pipeline::load_encoders`] loads its U-Net and
/// VAE from when their stage comes.
struct Deferred {
    files: Box<dyn ModelFiles>,
    loras: LoraSet,
}

/// The last prompt's stages, each network released when its stage is done (its buffers go
/// back to the driver once its last submit is done) and, with `deferred`, the next loaded
/// only then, so that the peak is one network's weights with its activations.
async fn one_network_at_a_time(
    ctx: &Context,
    pipe: &mut Pipeline,
    opts: &hoa::pipeline::GenerateOptions,
    deferred: Option<&Deferred>,
    events: &mut dyn FnMut(Event),
) -> hoa::Result<Vec<hoa::image_io::RgbImage>> {
    let report = std::env::var_os("HOA_MEMORY_REPORT").is_some_and(|v| v != "0");
    let mem = |stage: &str| {
        if report {
            eprintln!("memory {stage}: {}", ctx.memory_report());
        }
    };
    mem("after loading");
    let encoded = pipe.encode(ctx, opts, events).await?;
    mem("after encoding");
    pipe.release_text_encoders();
    ctx.sync()?;
    ctx.trim_pool();
    mem("without the text encoders");
    if let Some(d) = deferred {
        pipe.load_unet(ctx, d.files.as_ref(), &d.loras)?;
        mem("with the U-Net");
    }
    let denoised = pipe.denoise_encoded(ctx, opts, encoded, events).await?;
    mem("after denoising");
    pipe.release_unet();
    ctx.sync()?;
    ctx.trim_pool();
    mem("without the U-Net");
    if let Some(d) = deferred {
        pipe.load_vae(ctx, d.files.as_ref())?;
        mem("with the VAE");
    }
    let images = pipe.decode_denoised(ctx, opts, denoised, events).await;
    mem("after decoding");
    images
}

/// The name of image `k` of prompt `j`.
fn image_name(out: &Path, prompts: usize, j: usize, images: usize, k: usize) -> PathBuf {
    let stem = out.file_stem().unwrap_or_default().to_string_lossy();
    match (prompts > 1, images > 1) {
        (false, false) => out.to_path_buf(),
        (false, true) => out.with_file_name(format!("{stem}-{k}.png")),
        (true, false) => out.with_file_name(format!("{stem}-{j:04}.png")),
        (true, true) => out.with_file_name(format!("{stem}-{j:04}-{k}.png")),
    }
}

fn progress_bar(steps: usize) -> Result<ProgressBar> {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:30}] {elapsed} < {eta}, {per_sec} {msg}",
        )
        .map_err(|e| anyhow!("{e}"))?
        .progress_chars("=> "),
    );
    Ok(bar)
}

/// One prompt's images, with a progress bar; `refiner` runs the last steps. With `last` (no
/// prompt follows) each network is dropped once its stage is done: the text encoders after
/// encoding, the U-Net before decoding; with `deferred` the pipeline holds only its encoders
/// and the U-Net and the VAE load from those files when their stage comes.
fn generate_one(
    ctx: &Context,
    pipe: &mut Pipeline,
    r: &Resolved,
    refiner: Option<(&Pipeline, &Resolved)>,
    last: bool,
    deferred: Option<&Deferred>,
) -> Result<Vec<hoa::image_io::RgbImage>> {
    if let Some(u) = &r.upsampled {
        eprintln!("upsampled prompt (--no-upsample to use it as typed): {u}");
    }
    for w in r
        .warnings
        .iter()
        .chain(refiner.iter().flat_map(|x| &x.1.warnings))
    {
        eprintln!("warning: {w}");
    }
    let bar = progress_bar(r.options.steps)?;
    let t = std::time::Instant::now();
    let mut events = |ev: Event| match ev {
        Event::Warning(w) => bar.suspend(|| eprintln!("warning: {w}")),
        Event::Step { step, total, .. } => {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
        }
        Event::Decoding => bar.set_message("decoding"),
        Event::Preview { .. } => {}
    };
    let images = match refiner {
        None if last => pollster::block_on(one_network_at_a_time(
            ctx,
            pipe,
            &r.options,
            deferred,
            &mut events,
        )),
        None => pollster::block_on(pipe.generate(ctx, &r.options, &mut events)),
        Some((rp, rr)) => pollster::block_on(pipe.generate_with_refiner(
            rp,
            ctx,
            &r.options,
            &rr.options,
            &mut events,
        )),
    }?;
    bar.finish_with_message("done");
    let o = &r.options;
    eprintln!(
        "{} image(s) {}x{} in {:.1} s",
        images.len(),
        o.width,
        o.height,
        t.elapsed().as_secs_f64()
    );
    Ok(images)
}

pub fn run(ctx: &Context, a: GenerateArgs) -> Result<()> {
    let prompts = read_prompts(&a)?;
    let out = output_path(&a.out)?;
    let model_dir = a.model.clone().unwrap_or_else(default_model);
    let files = open_main_model(&model_dir, &a)?;
    let info = ModelInfo::read(files.as_ref())?;
    let mut req = request(&a)?;
    let (lora_reqs, lora_files) = read_loras(&a.lora)?;
    req.lora = (!lora_reqs.is_empty()).then_some(lora_reqs);
    let refiner_files = match &a.refiner {
        Some(p) => Some(open_model(p, a.refiner_config.as_deref())?),
        None => None,
    };
    let refiner_info = match &refiner_files {
        Some(f) => Some(ModelInfo::read(f.as_ref())?),
        None => None,
    };
    let dtype = a.dtype.pick(
        ctx,
        std::iter::once(model_dir.as_path()).chain(a.refiner.as_deref()),
    )?;
    let limits = device_limits(ctx, dtype);
    // Everything the request can get wrong, before the slow load.
    req.prompt = Some(prompts[0].clone());
    let resolve_all = |req: &Request, info: &ModelInfo| match &refiner_info {
        None => resolve(req, info, limits).map(|r| (r, None)),
        Some(ri) => resolve_two_stage(req, info, ri, limits).map(|(b, r)| (b, Some(r))),
    };
    let mut first = Some(resolve_all(&req, &info)?);
    let batch = first.as_ref().map_or(1, |r| r.0.options.batch);

    eprintln!("adapter: {}", ctx.describe());
    let scales = first.as_ref().map(|r| r.0.loras.iter().map(|l| l.scale));
    let loras = LoraSet {
        loras: lora_files
            .into_iter()
            .zip(scales.into_iter().flatten())
            .collect(),
    };
    // One text-to-image prompt: each network loads when the previous one is released.
    let one_shot = prompts.len() == 1
        && first
            .as_ref()
            .is_some_and(|(r, rr)| rr.is_none() && r.options.init.is_none());
    let (mut pipe, deferred) = load_pipeline(ctx, files, info, dtype, loras, &model_dir, one_shot)?;
    let refiner = match (refiner_files, refiner_info.clone(), &a.refiner) {
        (Some(files), Some(info), Some(path)) => {
            Some(load_refiner(ctx, &*files, info, path, dtype)?)
        }
        _ => None,
    };
    // A1111 names a checkpoint by its file stem.
    let model_name = model_dir
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let seed = a.seed.unwrap_or(0);
    for (j, prompt) in prompts.iter().enumerate() {
        req.prompt = Some(prompt.clone());
        req.seed = Some(seed.wrapping_add((j as u64).wrapping_mul(batch as u64)));
        let (mut r, mut rr) = match first.take() {
            Some(r) => r,
            None => resolve_all(&req, &pipe.info)?,
        };
        rewrite(ctx, &pipe, &mut r, rr.as_mut())?;
        let stage2 = refiner.as_ref().zip(rr.as_ref());
        let last = j + 1 == prompts.len();
        let images = generate_one(ctx, &mut pipe, &r, stage2, last, deferred.as_ref())?;
        for (k, img) in images.iter().enumerate() {
            let params = parameters(&r, &model_name, k, a.refiner.as_deref());
            let png = encode_png(img, Some(&params))?;
            let name = image_name(&out, prompts.len(), j, images.len(), k);
            println!("{}", write_new(&name, &png, a.force)?.display());
        }
    }
    Ok(())
}

/// The model with its LoRAs merged; the files (a single file's memory map) and the LoRAs are
/// dropped once the weights are on the device, unless `one_shot`: then only the encoders
/// load now, and the files and LoRAs are returned for the U-Net and the VAE.
fn load_pipeline(
    ctx: &Context,
    files: Box<dyn ModelFiles>,
    info: ModelInfo,
    dtype: hoa::DType,
    loras: LoraSet,
    model_dir: &Path,
    one_shot: bool,
) -> Result<(Pipeline, Option<Deferred>)> {
    let t0 = std::time::Instant::now();
    let pipe = match one_shot {
        true => Pipeline::load_encoders(ctx, files.as_ref(), info, dtype, &loras)?,
        false => Pipeline::load_with_loras(ctx, files.as_ref(), info, dtype, &loras)?,
    };
    eprintln!(
        "loaded {}{} in {:.1} s",
        model_dir.display(),
        if one_shot {
            " (its encoders; each network loads when its stage comes)"
        } else {
            ""
        },
        t0.elapsed().as_secs_f64()
    );
    Ok((pipe, one_shot.then_some(Deferred { files, loras })))
}

/// `--model DIR` (or the shipped default model, with a hint when it is missing), opened.
fn open_main_model(model_dir: &Path, a: &GenerateArgs) -> Result<Box<dyn ModelFiles>> {
    if !model_dir.join("model_index.json").is_file() && a.model.is_none() {
        bail!(
            "the default model is not there: {} has no model_index.json. It is trained by \
             tools/train (see weights/README.md); or pass --model DIR with a diffusers folder",
            model_dir.display()
        );
    }
    Ok(open_model(model_dir, a.config.as_deref())?)
}

/// The model's rewriter, when resolve chose it, runs on the GPU now the model is loaded; a
/// refiner stage takes the same rewritten prompt.
fn rewrite(
    ctx: &Context,
    pipe: &Pipeline,
    r: &mut Resolved,
    refiner: Option<&mut Resolved>,
) -> Result<()> {
    let tokenizer = Some(&pipe.tokenizer);
    pollster::block_on(hoa::rewriter::apply(
        r,
        ctx,
        pipe.rewriter.as_ref(),
        tokenizer,
    ))?;
    if let Some(rr) = refiner {
        rr.options.prompt.clone_from(&r.options.prompt);
    }
    Ok(())
}

fn load_refiner(
    ctx: &Context,
    files: &dyn ModelFiles,
    info: ModelInfo,
    path: &Path,
    dtype: hoa::DType,
) -> Result<Pipeline> {
    let t0 = std::time::Instant::now();
    let p = Pipeline::load_with(ctx, files, info, dtype)?;
    eprintln!(
        "loaded refiner {} in {:.1} s",
        path.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(p)
}

/// Image `k`'s A1111 `parameters` text, naming the refiner (A1111's key, before the switch
/// fraction) when there is one.
fn parameters(r: &Resolved, model_name: &str, k: usize, refiner: Option<&Path>) -> String {
    let mut params = r.parameters(model_name, k);
    if let Some(p) = refiner {
        let name = p.file_stem().map(|n| n.to_string_lossy().into_owned());
        let at = params.extra.iter().position(|e| e.0 == "Refiner switch at");
        let entry = ("Refiner".to_string(), name.unwrap_or_default());
        params.extra.insert(at.unwrap_or(params.extra.len()), entry);
    }
    params.to_text()
}
