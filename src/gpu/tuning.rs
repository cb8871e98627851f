//! Adapter-aware tuning: which variant and tile each kernel family that has several
//! (conv2d, matmul, attention) takes on this adapter, read from the cache `hoa tune` writes.
//! The cache is a small JSON file keyed by adapter (name, vendor, device id, backend), driver
//! (driver + driver_info) and hoa's version; [`crate::Context::new`] loads the entry for its
//! adapter, and a stale or unreadable one is ignored with one line on stderr, never an error.
//! Without an entry every kernel keeps its built-in default, so outputs stay bit-identical.
//! Every variant computes the same math in another order, so a cache changes speed and
//! rounding only (`hoa tune` keeps a variant only if it matches the default's output within
//! the kernel's tolerance).

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// conv2d: the subgroup implicit GEMM (`conv2d_sg`) where it applies, with `wg` invocations
/// and `tr` output channels per workgroup; or the register-tiled kernel everywhere (`wg`
/// invocations, `tc` channels each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "path", rename_all = "snake_case", deny_unknown_fields)]
pub enum Conv2dChoice {
    Subgroup { wg: u32, tr: u32 },
    Tiled { wg: u32, tc: u32 },
}

/// matmul: the subgroup kernel (`matmul_sg`) where it applies, `wg` invocations owning `tr`
/// rows; or `matmul_tiled` everywhere with a `tm` x `tn` register tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "path", rename_all = "snake_case", deny_unknown_fields)]
pub enum MatmulChoice {
    Subgroup { wg: u32, tr: u32 },
    Tiled { wg: u32, tm: u32, tn: u32 },
}

/// attention: the subgroup kernel (`attention_sg`) where it applies, or the flash kernel
/// everywhere; `wg` invocations (4 query rows each) per workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "path", rename_all = "snake_case", deny_unknown_fields)]
pub enum AttentionChoice {
    Subgroup { wg: u32 },
    Flash { wg: u32 },
}

/// The measured winners; `None` keeps a family's built-in default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choices {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv2d: Option<Conv2dChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matmul: Option<MatmulChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<AttentionChoice>,
}

impl Choices {
    /// Checks every tile against what the shaders accept (a hand-edited or corrupt cache must
    /// not reach a kernel): workgroups of 1..=256 invocations (WebGPU's minimum limit),
    /// conv2d_sg's `tr` a multiple of 8 up to 32 (the packed weight then also serves the tiled
    /// kernel), `tc` 4 or 8, matmul_sg's `tr` 1..=32, matmul_tiled's `tm` 4, 8, .. 32 and
    /// `tn` 1..=4.
    pub fn check(&self) -> std::result::Result<(), String> {
        let wg_ok = |wg: u32| (1..=256).contains(&wg);
        let ok = match self.conv2d {
            None => true,
            Some(Conv2dChoice::Subgroup { wg, tr }) => wg_ok(wg) && [8, 16, 24, 32].contains(&tr),
            Some(Conv2dChoice::Tiled { wg, tc }) => wg_ok(wg) && (tc == 4 || tc == 8),
        } && match self.matmul {
            None => true,
            Some(MatmulChoice::Subgroup { wg, tr }) => wg_ok(wg) && (1..=32).contains(&tr),
            Some(MatmulChoice::Tiled { wg, tm, tn }) => {
                wg_ok(wg) && tm % 4 == 0 && (4..=32).contains(&tm) && (1..=4).contains(&tn)
            }
        } && match self.attention {
            None => true,
            Some(AttentionChoice::Subgroup { wg } | AttentionChoice::Flash { wg }) => wg_ok(wg),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("a tile out of range: {self:?}"))
        }
    }
}

/// A context's tuning: the choices kernels look up where they pick a variant, and how many
/// lookups found a tuned choice (so tests and `hoa tune` can see a cache being used).
#[derive(Debug, Default)]
pub struct Tuning {
    choices: RwLock<Choices>,
    taken: AtomicU64,
}

impl Tuning {
    pub fn new(choices: Choices) -> Tuning {
        Tuning {
            choices: RwLock::new(choices),
            taken: AtomicU64::new(0),
        }
    }

    /// The choices in force.
    pub fn choices(&self) -> Choices {
        *self.choices.read().unwrap()
    }

    /// Replaces the choices (what `hoa tune` does to time each variant). Weights packed
    /// before keep their layout (conv2d's channel tile); kernels stay correct either way.
    pub fn set(&self, choices: Choices) {
        *self.choices.write().unwrap() = choices;
    }

    /// How many kernel lookups found a tuned (cached) choice since the context was made.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    fn take<T: Copy>(&self, pick: impl Fn(&Choices) -> Option<T>) -> Option<T> {
        let c = pick(&self.choices.read().unwrap());
        if c.is_some() {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        c
    }

    pub fn conv2d(&self) -> Option<Conv2dChoice> {
        self.take(|c| c.conv2d)
    }

    pub fn matmul(&self) -> Option<MatmulChoice> {
        self.take(|c| c.matmul)
    }

    pub fn attention(&self) -> Option<AttentionChoice> {
        self.take(|c| c.attention)
    }
}

/// Where the cache lives: `HOA_TUNE_CACHE=path` (or `off`), else the platform cache folder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TuneCache {
    /// `$XDG_CACHE_HOME/hoa/tune.json`, else `~/.cache/hoa/tune.json` (`%LOCALAPPDATA%\hoa`
    /// on Windows, `~/Library/Caches/hoa` on macOS).
    #[default]
    Platform,
    /// No cache: every kernel keeps its default (`HOA_TUNE_CACHE=off`).
    Off,
    File(std::path::PathBuf),
}

impl TuneCache {
    /// `HOA_TUNE_CACHE`: `off`, a file path, or unset / empty for the platform default.
    pub fn from_env() -> TuneCache {
        match std::env::var_os("HOA_TUNE_CACHE") {
            Some(v) if v == "off" => TuneCache::Off,
            Some(v) if !v.is_empty() => TuneCache::File(v.into()),
            _ => TuneCache::Platform,
        }
    }

    /// The file, or None when off (or when no cache folder is known).
    pub fn path(&self) -> Option<std::path::PathBuf> {
        match self {
            TuneCache::Off => None,
            TuneCache::File(p) => Some(p.clone()),
            TuneCache::Platform => platform_cache_dir().map(|d| d.join("hoa").join("tune.json")),
        }
    }
}

fn platform_cache_dir() -> Option<std::path::PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(Into::into)
    };
    if cfg!(windows) {
        return var("LOCALAPPDATA");
    }
    let home: Option<std::path::PathBuf> = var("HOME");
    if cfg!(target_os = "macos") {
        return home.map(|h| h.join("Library").join("Caches"));
    }
    var("XDG_CACHE_HOME").or_else(|| home.map(|h| h.join(".cache")))
}

/// The `format` field that marks a file as hoa's tune cache.
pub const FORMAT: &str = "hoa-tune-cache";
/// The layout of the file (bumped when it changes; another one is ignored).
pub const FORMAT_VERSION: u32 = 1;

/// What an entry is valid for: the adapter (name, vendor, device id, backend), its driver and
/// hoa's version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub name: String,
    pub vendor: u32,
    pub device: u32,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    pub hoa_version: String,
}

impl CacheKey {
    /// The key of `info` under this build of hoa.
    pub fn of(info: &wgpu::AdapterInfo) -> CacheKey {
        CacheKey {
            name: info.name.clone(),
            vendor: info.vendor,
            device: info.device,
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            hoa_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn same_adapter(&self, o: &CacheKey) -> bool {
        (&self.name, self.vendor, self.device, &self.backend)
            == (&o.name, o.vendor, o.device, &o.backend)
    }

    /// Why an entry for the same adapter does not apply here, or None when it does.
    fn stale(&self, entry: &CacheKey) -> Option<String> {
        if (&entry.driver, &entry.driver_info) != (&self.driver, &self.driver_info) {
            return Some(format!(
                "measured with driver {} {}, this is {} {}",
                entry.driver, entry.driver_info, self.driver, self.driver_info
            ));
        }
        if entry.hoa_version != self.hoa_version {
            return Some(format!(
                "measured with hoa {}, this is hoa {}",
                entry.hoa_version, self.hoa_version
            ));
        }
        None
    }
}

/// One adapter's winners. `choices` stays raw JSON until its entry is picked, so that an entry
/// another hoa version wrote (other families, other variants) never spoils the others.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheEntry {
    pub key: CacheKey,
    pub choices: serde_json::Value,
}

/// The whole file: one entry per adapter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheFile {
    pub format: String,
    pub format_version: u32,
    pub entries: Vec<CacheEntry>,
}

impl CacheFile {
    /// Parses `bytes`; an error when they are not a hoa tune cache of this format version.
    pub fn parse(bytes: &[u8]) -> std::result::Result<CacheFile, String> {
        let f: CacheFile = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a hoa tune cache (`hoa tune` writes one): {e}"))?;
        if f.format != FORMAT {
            return Err(format!("`format` is {:?}, not {FORMAT:?}", f.format));
        }
        if f.format_version != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this hoa reads {FORMAT_VERSION})",
                f.format_version
            ));
        }
        Ok(f)
    }

    /// The choices for `key`: Ok(None) when no entry is for this adapter, Err(why) when the
    /// entry for it is stale or malformed.
    pub fn lookup(&self, key: &CacheKey) -> std::result::Result<Option<Choices>, String> {
        let Some(e) = self.entries.iter().find(|e| e.key.same_adapter(key)) else {
            return Ok(None);
        };
        if let Some(why) = key.stale(&e.key) {
            return Err(format!("the entry for {} is stale ({why})", key.name));
        }
        let c: Choices = serde_json::from_value(e.choices.clone())
            .map_err(|err| format!("the entry for {} is malformed: {err}", key.name))?;
        c.check()
            .map_err(|err| format!("the entry for {} is malformed: {err}", key.name))?;
        Ok(Some(c))
    }

    /// Puts `choices` under `key`, replacing any entry for the same adapter.
    pub fn insert(&mut self, key: CacheKey, choices: &Choices) -> crate::Result<()> {
        let choices = serde_json::to_value(choices)
            .map_err(|e| crate::Error::invalid("tuning cache", format!("{e}")))?;
        self.entries.retain(|e| !e.key.same_adapter(&key));
        self.entries.push(CacheEntry { key, choices });
        Ok(())
    }
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            entries: Vec::new(),
        }
    }
}

/// The tuning a new context starts with: the cache's entry for `info`, else the defaults. A
/// missing file or no entry for this adapter is silent; a stale entry, an unreadable or
/// malformed file gives one line on stderr and the defaults.
#[cfg(not(target_arch = "wasm32"))]
pub fn load(cache: &TuneCache, info: &wgpu::AdapterInfo) -> Tuning {
    let Some(path) = cache.path() else {
        return Tuning::default();
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Tuning::default(),
        Err(e) => {
            eprintln!("hoa: tuning cache {}: {e}; ignored", path.display());
            return Tuning::default();
        }
    };
    match CacheFile::parse(&bytes).and_then(|f| f.lookup(&CacheKey::of(info))) {
        Ok(c) => Tuning::new(c.unwrap_or_default()),
        Err(why) => {
            eprintln!(
                "hoa: tuning cache {}: {why}; ignored (run `hoa tune` to measure again)",
                path.display()
            );
            Tuning::default()
        }
    }
}

/// The cache at `path` as `hoa tune` will update it: empty when there is none, an error when
/// the file there is not a hoa tune cache (unless `force`) or cannot be read. `hoa tune` calls
/// it before measuring, so that a file it must not replace fails at once.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_for_update(path: &std::path::Path, force: bool) -> crate::Result<CacheFile> {
    let shown = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match CacheFile::parse(&bytes) {
            Ok(f) => Ok(f),
            Err(_) if force => Ok(CacheFile::default()),
            Err(why) => Err(crate::Error::invalid(
                shown,
                format!(
                    "exists and is {why}; not overwritten (pass --force to replace it, or set \
                     HOA_TUNE_CACHE to another file)"
                ),
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CacheFile::default()),
        Err(e) => Err(crate::Error::invalid(shown, format!("cannot read: {e}"))),
    }
}

/// Writes `choices` for `key` into the cache at `path`, keeping the other adapters' entries.
/// Atomic: a temporary file in the same folder, renamed over the cache. A file there that is
/// not a hoa tune cache is never replaced unless `force`.
#[cfg(not(target_arch = "wasm32"))]
pub fn save(
    path: &std::path::Path,
    key: CacheKey,
    choices: &Choices,
    force: bool,
) -> crate::Result<()> {
    let mut file = read_for_update(path, force)?;
    file.insert(key, choices)?;
    let shown = path.display().to_string();
    let io = |what: &str, e: std::io::Error| crate::Error::invalid(&shown, format!("{what}: {e}"));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| io("cannot create its folder", e))?;
    let name = path
        .file_name()
        .map_or("tune.json".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut text = serde_json::to_string_pretty(&file)
        .map_err(|e| crate::Error::invalid(&shown, format!("{e}")))?;
    text.push('\n');
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("cannot write", e)
    })
}
