//! `hoa info --model PATH`: what a diffusers folder or a single-file checkpoint is (family,
//! prediction type, parameters and dtypes per component), read without a device.

use anyhow::Result;
use clap::Args;
use hoa::model_files::{open_model, ModelFiles};
use hoa::model_summary::{count, summarize};
use hoa::single_file::SingleFile;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A diffusers model folder or a single-file checkpoint (FILE.safetensors).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// With a single-file --model: the diffusers folder whose configs apply to it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn millions(n: u64) -> String {
    format!("{:.2} M", n as f64 / 1e6)
}

pub fn run(a: &InfoArgs) -> Result<()> {
    let Some(path) = &a.model else {
        return Ok(());
    };
    let single = path.is_file() && open_model(path, a.config.as_deref()).is_ok();
    let (files, summary, total): (Box<dyn ModelFiles>, _, _) = if single {
        let config = match &a.config {
            Some(c) => Some(Box::new(hoa::model_files::DirFiles::open(c)?) as Box<dyn ModelFiles>),
            None => None,
        };
        let f = SingleFile::open(path, config)?;
        let s = summarize(&f, Some(f.detected()))?;
        let t = count("file", f.weights(), |_| true);
        (Box::new(f), s, Some(t))
    } else {
        let f = open_model(path, a.config.as_deref())?;
        let s = summarize(f.as_ref(), None)?;
        (f, s, None)
    };
    println!("model:      {}", files.describe());
    println!("family:     {}", summary.family);
    println!(
        "prediction: {} ({})",
        summary.prediction, summary.prediction_from
    );
    let mut used = 0;
    for c in &summary.components {
        used += c.parameters;
        let dtypes: Vec<String> = c
            .dtypes
            .iter()
            .map(|(d, n)| format!("{d} {}", millions(*n)))
            .collect();
        println!(
            "{:<13} {:>12} parameters, {:>5} tensors ({})",
            format!("{}:", c.name),
            millions(c.parameters),
            c.tensors,
            dtypes.join(", ")
        );
    }
    if let Some(t) = total {
        println!(
            "{:<13} {:>12} parameters, {:>5} tensors in the file; {} not loaded (EMA, \
             scheduler buffers, position ids, text layers past the one conditioned on)",
            "file:",
            millions(t.parameters),
            t.tensors,
            millions(t.parameters.saturating_sub(used))
        );
    }
    Ok(())
}
