//! Where a diffusers-layout model folder's files come from: a directory on disk (the CLI) or
//! bytes the browser fetched. The pipeline only ever asks for a file by its relative path, so
//! both share one loader. A single-file checkpoint ([`crate::single_file::SingleFile`]) is one
//! too: its configs are synthesized and its components are views of the one file.

use crate::download_plan::weight_candidates;
use crate::error::{Error, Result};
use crate::weights::Weights;
use std::collections::HashMap;

/// A model folder: `model_index.json`, `unet/config.json`, ...
pub trait ModelFiles {
    /// The bytes of `path` ('/'-separated, relative to the folder), `None` if there is no such
    /// file; an `Err` only when it exists but cannot be read.
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Whether `path` exists, without reading it.
    fn exists(&self, path: &str) -> bool;
    /// The folder's name for messages.
    fn describe(&self) -> String;

    /// Component `dir`'s weights when this source holds them other than as files (a
    /// single-file checkpoint's views); `None`: read them from `dir/*.safetensors`.
    fn component_weights(&self, dir: &str) -> Result<Option<Weights>> {
        let _ = dir;
        Ok(None)
    }

    /// Like [`ModelFiles::read`], but a missing file is an error that names it.
    fn require(&self, path: &str) -> Result<Vec<u8>> {
        self.read(path)?.ok_or_else(|| {
            Error::Checkpoint(format!(
                "{}: missing `{path}` (is this a diffusers model folder? it needs \
                 model_index.json and one sub-folder per component)",
                self.describe()
            ))
        })
    }
}

/// Files held in memory, e.g. fetched by the browser page.
#[derive(Default)]
pub struct MemoryFiles {
    pub name: String,
    pub files: HashMap<String, Vec<u8>>,
}

impl ModelFiles for MemoryFiles {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.get(path).cloned())
    }
    fn exists(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A folder on disk.
#[cfg(not(target_arch = "wasm32"))]
pub struct DirFiles {
    pub root: std::path::PathBuf,
}

#[cfg(not(target_arch = "wasm32"))]
impl DirFiles {
    /// Checks that `root` is a folder with a `model_index.json`.
    pub fn open(root: impl Into<std::path::PathBuf>) -> Result<DirFiles> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::Checkpoint(format!(
                "model folder {} does not exist (pass --model DIR: a diffusers folder with \
                 model_index.json, unet/, vae/, text_encoder/, tokenizer/)",
                root.display()
            )));
        }
        let files = DirFiles { root };
        if !files.exists("model_index.json") {
            return Err(Error::Checkpoint(format!(
                "{} has no model_index.json: not a diffusers model folder",
                files.describe()
            )));
        }
        Ok(files)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ModelFiles for DirFiles {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = self.root.join(path);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Checkpoint(format!("{}: {e}", p.display()))),
        }
    }
    fn exists(&self, path: &str) -> bool {
        self.root.join(path).is_file()
    }
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    /// A component's single weights file, memory-mapped (no copy in memory; each tensor's
    /// pages are dropped once it is on the device). Sharded weights are read whole.
    fn component_weights(&self, dir: &str) -> Result<Option<Weights>> {
        let name = weight_candidates(dir, false)
            .into_iter()
            .find(|n| self.exists(n));
        match name {
            Some(n) if !n.ends_with(".index.json") => {
                Weights::open_mmap(&self.root.join(&n), &n).map(Some)
            }
            _ => Ok(None),
        }
    }
}

/// The bytes of safetensors weights at `path`: the file itself, or every `.safetensors` file in
/// a folder's component folders; 0 where nothing can be read (the load reports why).
#[cfg(not(target_arch = "wasm32"))]
pub fn weight_bytes(path: &std::path::Path) -> u64 {
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    if path.is_file() {
        return size(path);
    }
    let entries = |p: &std::path::Path| std::fs::read_dir(p).into_iter().flatten().flatten();
    let components = entries(path).filter(|e| e.path().is_dir());
    let files = components.flat_map(|c| entries(&c.path()).collect::<Vec<_>>());
    files
        .filter(|f| f.path().extension().is_some_and(|x| x == "safetensors"))
        .map(|f| size(&f.path()))
        .sum()
}

/// What `--model PATH` names: a `.safetensors` file opens as a single-file checkpoint (with
/// `config`, a diffusers folder whose configs and tokenizer apply to it), anything else as a
/// diffusers folder. Pickle checkpoints are refused with how to convert them.
#[cfg(not(target_arch = "wasm32"))]
pub fn open_model(
    path: &std::path::Path,
    config: Option<&std::path::Path>,
) -> Result<Box<dyn ModelFiles>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("ckpt" | "pt" | "pth" | "bin") => Err(Error::Checkpoint(format!(
            "{}: a PyTorch pickle checkpoint; hoa never unpickles (it can run code). Convert it \
             once to safetensors, e.g. `python -c \"import torch, safetensors.torch as s; \
             sd = torch.load('IN', weights_only=True); s.save_file(sd.get('state_dict', sd), \
             'OUT.safetensors')\"`, and pass the .safetensors file",
            path.display()
        ))),
        _ if path.is_file() => {
            let config = match config {
                Some(c) => Some(Box::new(DirFiles::open(c)?) as Box<dyn ModelFiles>),
                None => None,
            };
            Ok(Box::new(crate::single_file::SingleFile::open(
                path, config,
            )?))
        }
        _ => {
            if config.is_some() {
                return Err(Error::invalid(
                    "--config",
                    "applies to a single-file checkpoint (--model FILE.safetensors), not a folder",
                ));
            }
            Ok(Box::new(DirFiles::open(path)?))
        }
    }
}

/// The weights of component `dir` (`unet`, `text_encoder`, ...) in any of the names diffusers
/// and transformers save: `diffusion_pytorch_model[.fp16].safetensors`,
/// `model[.fp16].safetensors`, or a sharded `*.safetensors.index.json`.
pub fn component_weights(files: &dyn ModelFiles, dir: &str) -> Result<Weights> {
    if let Some(w) = files.component_weights(dir)? {
        return Ok(w);
    }
    for name in weight_candidates(dir, false) {
        let Some(bytes) = files.read(&name)? else {
            continue;
        };
        if name.ends_with(".index.json") {
            return Weights::from_index(&bytes, |shard| files.require(&format!("{dir}/{shard}")));
        }
        return Weights::from_bytes(&name, bytes);
    }
    let pickle = ["diffusion_pytorch_model.bin", "pytorch_model.bin"]
        .iter()
        .any(|f| files.exists(&format!("{dir}/{f}")));
    Err(Error::Checkpoint(if pickle {
        format!(
            "{}/{dir}: only PyTorch pickle (.bin) weights; hoa reads safetensors (convert with \
             `safetensors.torch.save_file` or diffusers' `save_pretrained(safe_serialization=True)`)",
            files.describe()
        )
    } else {
        format!(
            "{}/{dir}: no weights (expected diffusion_pytorch_model.safetensors or \
             model.safetensors)",
            files.describe()
        )
    }))
}
