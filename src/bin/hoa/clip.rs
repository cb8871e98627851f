//! `hoa clip`: images and text in CLIP's joint space (zero-shot classification, an embedding
//! index and its search, CLIP score). Reads files and prints; the model, the preprocessing and
//! the arithmetic live in `hoa::clip`.

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use hoa::clip::index::EmbeddingIndex;
use hoa::clip::{clip_scores, decode_image, prompts, Clip};
use hoa::image_io::{read_png_parameters, RgbImage};
use hoa::model_files::DirFiles;
use hoa::{Context, DType};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ClipArgs {
    #[command(subcommand)]
    pub command: ClipCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClipCommand {
    /// Zero-shot classification: each image's probability for each label (softmax over
    /// logit_scale x cosine, as CLIPModel's logits_per_image).
    Classify {
        /// PNG or JPEG files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Comma-separated labels, e.g. "a red circle,a blue star".
        #[arg(long)]
        labels: String,
        /// The prompt each label is put into; `{}` marks where ("a photo of {}").
        #[arg(long, default_value = "{}")]
        template: String,
        #[command(flatten)]
        model: ModelArg,
    },
    /// Embed every PNG / JPEG in a folder (sorted by name) into a safetensors index.
    Index {
        dir: PathBuf,
        /// The index file to write (refused if it exists, unless --force).
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        model: ModelArg,
    },
    /// The images of an index most similar to a text query or to an image.
    Search {
        /// An index written by `hoa clip index`.
        index: PathBuf,
        /// What to look for, in words.
        query: Option<String>,
        /// Look for images like this one instead.
        #[arg(long, conflicts_with = "query")]
        image: Option<PathBuf>,
        /// How many results.
        #[arg(short, default_value_t = 5)]
        k: usize,
        /// Default: the model the index was made with.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// CLIP score (DALL-E 3's protocol, torchmetrics' CLIPScore): max(100 x cosine, 0) of each
    /// image with its prompt, and the mean. Images are taken from the folder sorted by name
    /// (numbers compared as numbers: img-2 before img-10) and paired in that order with the
    /// lines of --prompts; without --prompts, each PNG's own prompt (the `parameters` text
    /// `hoa generate` writes).
    Score {
        #[arg(long)]
        images: PathBuf,
        /// One prompt per line (blank lines skipped), in the images' order.
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Also score each image against the next image's prompt (the last against the
        /// first's): the baseline a prompt-following score should clear.
        #[arg(long)]
        mismatched: bool,
        #[command(flatten)]
        model: ModelArg,
    },
}

#[derive(Args, Debug)]
pub struct ModelArg {
    /// A transformers CLIPModel folder: config.json, model.safetensors, tokenizer.json (or
    /// vocab.json + merges.txt), preprocessor_config.json.
    #[arg(long)]
    model: PathBuf,
}

pub fn run(ctx: &Context, args: ClipArgs) -> Result<()> {
    match args.command {
        ClipCommand::Classify {
            images,
            labels,
            template,
            model,
        } => classify(ctx, &images, &labels, &template, &model.model),
        ClipCommand::Index {
            dir,
            out,
            force,
            model,
        } => index(ctx, &dir, &out, force, &model.model),
        ClipCommand::Search {
            index,
            query,
            image,
            k,
            model,
        } => search(ctx, &index, query, image, k, model),
        ClipCommand::Score {
            images,
            prompts,
            mismatched,
            model,
        } => score(ctx, &images, prompts.as_deref(), mismatched, &model.model),
    }
}

fn load(ctx: &Context, dir: &Path) -> Result<Clip> {
    if !dir.is_dir() {
        bail!(
            "--model {}: no such folder (a transformers CLIPModel folder: config.json, \
             model.safetensors, tokenizer.json, preprocessor_config.json)",
            dir.display()
        );
    }
    let files = DirFiles {
        root: dir.to_path_buf(),
    };
    Clip::load(ctx, &files, DType::F32).with_context(|| format!("--model {}", dir.display()))
}

fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    Ok(decode_image(&bytes, &path.display().to_string())?)
}

fn classify(
    ctx: &Context,
    paths: &[PathBuf],
    labels: &str,
    template: &str,
    m: &Path,
) -> Result<()> {
    let labels: Vec<String> = labels.split(',').map(|l| l.trim().to_string()).collect();
    let texts = prompts(&labels, template)?;
    let images = paths
        .iter()
        .map(|p| read_image(p))
        .collect::<Result<Vec<_>>>()?;
    let clip = load(ctx, m)?;
    warn_truncated(&clip, &texts)?;
    let probs = pollster::block_on(clip.classify(ctx, &images, &texts))?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let w0 = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let widths: Vec<usize> = labels.iter().map(|l| l.chars().count().max(6)).collect();
    let mut head = format!("{:<w0$}", "image");
    for (l, w) in labels.iter().zip(&widths) {
        head += &format!("  {l:>w$}");
    }
    println!("{head}  best");
    for (name, row) in names.iter().zip(probs.chunks_exact(labels.len())) {
        let mut line = format!("{name:<w0$}");
        for (p, w) in row.iter().zip(&widths) {
            line += &format!("  {p:>w$.4}");
        }
        let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
        println!("{line}  {}", labels[best]);
    }
    Ok(())
}

fn warn_truncated(clip: &Clip, texts: &[String]) -> Result<()> {
    for t in texts {
        if let (_, Some(cut)) = clip.tokenize(t)? {
            eprintln!("warning: {t:?} is longer than the text tower's context; dropped: {cut:?}");
        }
    }
    Ok(())
}

/// Fails on the first file whose header is not a readable PNG / JPEG, before the model loads.
fn check_images(files: &[PathBuf]) -> Result<()> {
    for p in files {
        image::image_dimensions(p)
            .map_err(|e| anyhow!("{}: cannot decode it as PNG or JPEG ({e})", p.display()))?;
    }
    Ok(())
}

/// Image embeddings of `files`, decoded a chunk at a time so a large folder never sits in
/// memory whole; `progress` prints a line per chunk.
fn embed_files(ctx: &Context, clip: &Clip, files: &[PathBuf], progress: bool) -> Result<Vec<f32>> {
    const CHUNK: usize = 64;
    let mut out = Vec::with_capacity(files.len() * clip.dim());
    for (k, chunk) in files.chunks(CHUNK).enumerate() {
        let images = chunk
            .iter()
            .map(|p| read_image(p))
            .collect::<Result<Vec<_>>>()?;
        out.extend(pollster::block_on(clip.embed_images(ctx, &images))?);
        if progress && files.len() > CHUNK {
            eprintln!("embedded {} of {}", k * CHUNK + chunk.len(), files.len());
        }
    }
    Ok(out)
}

/// The PNG / JPEG files of `dir`, sorted by name with digit runs compared as numbers.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))?;
    let mut files = Vec::new();
    for e in rd {
        let p = e.with_context(|| format!("{}", dir.display()))?.path();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if p.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            files.push(p);
        }
    }
    files.sort_by_key(|p| natural_key(&p.file_name().unwrap_or_default().to_string_lossy()));
    if files.is_empty() {
        bail!("{}: no .png / .jpg / .jpeg files", dir.display());
    }
    Ok(files)
}

/// Digit runs as numbers, the rest as text: "img-2" < "img-10".
fn natural_key(s: &str) -> Vec<(u8, u128, String)> {
    let mut key = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        let digit = c.is_ascii_digit();
        let mut run = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_digit() != digit {
                break;
            }
            run.push(c);
            chars.next();
        }
        key.push(if digit {
            (0, run.parse().unwrap_or(u128::MAX), run)
        } else {
            (1, 0, run)
        });
    }
    key
}

fn index(ctx: &Context, dir: &Path, out: &Path, force: bool, m: &Path) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "--out {}: exists (pass --force to replace it)",
            out.display()
        );
    }
    let files = image_files(dir)?;
    check_images(&files)?;
    let clip = load(ctx, m)?;
    let embeds = embed_files(ctx, &clip, &files, true)?;
    let model = std::fs::canonicalize(m).unwrap_or_else(|_| m.to_path_buf());
    let idx = EmbeddingIndex {
        model: model.display().to_string(),
        names: files
            .iter()
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        dim: clip.dim(),
        embeds,
    };
    // Written beside the target, then renamed: a failed run never leaves half an index.
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, idx.to_safetensors()?)
        .with_context(|| format!("--out {}", out.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("--out {}", out.display()))?;
    eprintln!(
        "indexed {} images of {} into {}",
        idx.names.len(),
        dir.display(),
        out.display()
    );
    Ok(())
}

fn search(
    ctx: &Context,
    file: &Path,
    query: Option<String>,
    image: Option<PathBuf>,
    k: usize,
    model: Option<PathBuf>,
) -> Result<()> {
    if query.is_none() && image.is_none() {
        bail!("search needs a text query or --image IMG");
    }
    if k == 0 {
        bail!("-k: must be at least 1");
    }
    let bytes = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
    let idx = EmbeddingIndex::from_safetensors(&bytes, &file.display().to_string())?;
    if model.is_none() && !Path::new(&idx.model).is_dir() {
        bail!(
            "{}: the model it was made with ({}) is not there; pass --model DIR",
            file.display(),
            idx.model
        );
    }
    let m = model.unwrap_or_else(|| PathBuf::from(&idx.model));
    let probe = image.as_deref().map(read_image).transpose()?;
    let clip = load(ctx, &m)?;
    if clip.dim() != idx.dim {
        bail!(
            "{}: embeddings of width {} but --model {} embeds into {} (use the index's model)",
            file.display(),
            idx.dim,
            m.display(),
            clip.dim()
        );
    }
    let q = match (probe, query) {
        (Some(img), _) => pollster::block_on(clip.embed_images(ctx, &[img]))?,
        (None, Some(text)) => {
            warn_truncated(&clip, std::slice::from_ref(&text))?;
            pollster::block_on(clip.embed_texts(ctx, &[text]))?
        }
        (None, None) => unreachable!("checked above"),
    };
    println!("rank  cosine  image");
    for (rank, (row, cos)) in idx.search(&q, k).into_iter().enumerate() {
        println!("{:>4}  {cos:>6.4}  {}", rank + 1, idx.names[row]);
    }
    Ok(())
}

fn score(
    ctx: &Context,
    dir: &Path,
    prompts_file: Option<&Path>,
    mismatched: bool,
    m: &Path,
) -> Result<()> {
    let files = image_files(dir)?;
    let texts: Vec<String> = match prompts_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("--prompts {}", f.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None => files.iter().map(|p| png_prompt(p)).collect::<Result<_>>()?,
    };
    if let Some(f) = prompts_file {
        if texts.len() != files.len() {
            bail!(
                "--prompts {}: {} prompts for {} images in {} (they pair in order)",
                f.display(),
                texts.len(),
                files.len(),
                dir.display()
            );
        }
    }
    check_images(&files)?;
    let clip = load(ctx, m)?;
    warn_truncated(&clip, &texts)?;
    let i = embed_files(ctx, &clip, &files, false)?;
    let t = pollster::block_on(clip.embed_texts(ctx, &texts))?;
    let scores = clip_scores(&i, &t, clip.dim());
    println!("score  image  prompt");
    for ((s, f), p) in scores.iter().zip(&files).zip(&texts) {
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        println!("{s:>5.2}  {name}  {p}");
    }
    let mean = |s: &[f32]| s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
    println!(
        "CLIP score (mean of {}): {:.4}",
        scores.len(),
        mean(&scores)
    );
    if mismatched {
        if texts.len() < 2 {
            bail!("--mismatched needs at least two images");
        }
        let d = clip.dim();
        let shifted: Vec<f32> = t[d..].iter().chain(&t[..d]).copied().collect();
        let other = clip_scores(&i, &shifted, d);
        println!(
            "mismatched (each image with the next one's prompt): {:.4}",
            mean(&other)
        );
    }
    Ok(())
}

/// The prompt `hoa generate` wrote into a PNG (first line of its `parameters` text).
fn png_prompt(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("{}", p.display()))?;
    let text = read_png_parameters(&bytes).ok().flatten().ok_or_else(|| {
        anyhow!(
            "{}: no `parameters` text with a prompt (pass --prompts FILE, one line per image)",
            p.display()
        )
    })?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

#[cfg(test)]
mod tests {
    use super::natural_key;

    #[test]
    fn natural_order_compares_numbers_as_numbers() {
        let mut v = ["hoa-10.png", "hoa-2.png", "hoa.png", "hoa-1.png"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["hoa-1.png", "hoa-2.png", "hoa-10.png", "hoa.png"]);
    }
}
