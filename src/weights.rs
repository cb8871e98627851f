//! Checkpoint loading: safetensors bytes (one file or a sharded set with its
//! `*.safetensors.index.json`) to device tensors, looked up by the checkpoint's own key names.
//! The core takes bytes, never paths, so the CLI and the browser share it. A [`Loader`]
//! collects every missing, unexpected, wrongly shaped or unsupported tensor and reports them
//! all at once in [`Loader::finish`]. A [`Weights::view`] renames and reshapes another
//! checkpoint's tensors without copying its bytes (single-file checkpoints in foreign layouts).
//! Tensors upload in chunks converted one at a time ([`Weights::upload`]), and a memory map's
//! pages are handed back as each tensor reaches the device: loading never holds a second copy
//! of the model in host memory.

use crate::error::{Error, Result};
use crate::gpu::{Context, DType, Tensor};
use safetensors::tensor::{Dtype, TensorInfo};
use safetensors::SafeTensors;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

/// A checkpoint's bytes, shared read-only: a `Vec<u8>` (the browser, tests) or a memory map
/// (native single files), so views of one file never copy it.
pub type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// Called with the byte range of a file (from its start) whose tensor is on the device: a
/// memory map drops those pages from the process (they stay in the page cache).
pub type Release = Arc<dyn Fn(std::ops::Range<usize>) + Send + Sync>;

/// Elements converted and written per upload chunk (4 MiB of f32).
const UPLOAD_CHUNK: usize = 1 << 20;

#[derive(Clone)]
struct File {
    name: String,
    bytes: Bytes,
    data_start: usize,
    metadata: HashMap<String, String>,
    release: Option<Release>,
}

/// How a [`Weights::view`] entry derives its values from the stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// The tensor as stored.
    Identity,
    /// Rows `part * n / of .. (part + 1) * n / of` of dimension 0 (a fused q/k/v projection
    /// split in three).
    Rows { part: usize, of: usize },
    /// Trailing size-1 dimensions dropped (a 1x1 conv `[O, I, 1, 1]` read as a linear `[O, I]`).
    Squeeze,
    /// A 2-D matrix transposed.
    Transpose,
}

#[derive(Clone)]
struct Entry {
    file: usize,
    /// The stored tensor.
    info: TensorInfo,
    /// The shape lookups see (after `transform`).
    shape: Vec<usize>,
    transform: Transform,
}

/// The tensors of one checkpoint, possibly spread over shards.
pub struct Weights {
    files: Vec<File>,
    index: HashMap<String, Entry>,
}

impl Weights {
    /// One `.safetensors` file; `name` is used in error messages.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Weights> {
        Weights::from_files(vec![(name.to_string(), bytes)])
    }

    /// One `.safetensors` file held as shared bytes (a memory map natively).
    pub fn from_shared(name: &str, bytes: Bytes) -> Result<Weights> {
        Weights::from_shared_files(vec![(name.to_string(), bytes)])
    }

    /// Several shards; a tensor present in two shards is an error.
    pub fn from_files(files: Vec<(String, Vec<u8>)>) -> Result<Weights> {
        let shared = files
            .into_iter()
            .map(|(n, b)| (n, Arc::new(b) as Bytes))
            .collect();
        Weights::from_shared_files(shared)
    }

    /// One file whose tensors' bytes are handed to `release` once each is on the device.
    pub fn from_shared_with_release(name: &str, bytes: Bytes, release: Release) -> Result<Weights> {
        let mut w = Weights::from_shared(name, bytes)?;
        w.files[0].release = Some(release);
        Ok(w)
    }

    /// A memory-mapped file: no copy of its bytes is made, and the pages of each tensor are
    /// dropped from the process once it is on the device.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_mmap(name: &str, map: Arc<memmap2::Mmap>) -> Result<Weights> {
        #[cfg(unix)]
        {
            let m = map.clone();
            let release: Release = Arc::new(move |r: std::ops::Range<usize>| {
                // Safety: a read-only shared file mapping: DONTNEED discards no data, later
                // reads see the file's bytes again.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, r.start, r.len())
                };
            });
            Weights::from_shared_with_release(name, map, release)
        }
        #[cfg(not(unix))]
        Weights::from_shared(name, map)
    }

    /// Memory-maps the safetensors file at `path`; `name` is used in messages.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_mmap(path: &std::path::Path, name: &str) -> Result<Weights> {
        let file =
            std::fs::File::open(path).map_err(|e| Error::Checkpoint(format!("{name}: {e}")))?;
        // Safety: the map is read-only; a file changed on disk while mapped is the user's
        // doing, as with every memory-mapped loader (safetensors' own, candle's).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::Checkpoint(format!("{name}: cannot be mapped ({e})")))?;
        Weights::from_mmap(name, Arc::new(map))
    }

    /// [`Weights::from_files`] over shared bytes.
    pub fn from_shared_files(files: Vec<(String, Bytes)>) -> Result<Weights> {
        let mut w = Weights {
            files: Vec::new(),
            index: HashMap::new(),
        };
        for (name, bytes) in files {
            let raw: &[u8] = (*bytes).as_ref();
            sniff(&name, raw)?;
            let (n, meta) = SafeTensors::read_metadata(raw).map_err(|e| Error::Safetensors {
                file: name.clone(),
                msg: explain(e),
            })?;
            let fi = w.files.len();
            for (key, info) in meta.tensors() {
                if let Some(other) = w.index.get(&key) {
                    return Err(Error::Checkpoint(format!(
                        "tensor `{key}` is in both {} and {name}",
                        w.files[other.file].name
                    )));
                }
                let entry = Entry {
                    file: fi,
                    shape: info.shape.clone(),
                    info: info.clone(),
                    transform: Transform::Identity,
                };
                w.index.insert(key, entry);
            }
            let metadata = meta.metadata().clone().unwrap_or_default();
            w.files.push(File {
                name,
                bytes,
                data_start: 8 + n,
                metadata,
                release: None,
            });
        }
        Ok(w)
    }

    /// A checkpoint whose tensor `name` is `transform` of this one's `source`, for each
    /// `(name, source, transform)`; it shares this checkpoint's bytes. A missing source or a
    /// shape the transform does not fit is an error naming the tensor.
    pub fn view(
        &self,
        entries: impl IntoIterator<Item = (String, String, Transform)>,
    ) -> Result<Weights> {
        let mut index = HashMap::new();
        for (name, source, transform) in entries {
            let src = self.index.get(&source).ok_or_else(|| {
                Error::Checkpoint(format!("{}: no tensor `{source}`", self.describe()))
            })?;
            let bad = |why: &str| {
                Error::Checkpoint(format!(
                    "{}: tensor `{source}` {:?} {why}",
                    self.describe(),
                    src.shape
                ))
            };
            if src.transform != Transform::Identity {
                return Err(bad("is itself transformed"));
            }
            let shape = match transform {
                Transform::Identity => src.shape.clone(),
                Transform::Rows { part, of } => match src.shape.split_first() {
                    Some((&n, rest)) if of > 0 && part < of && n % of == 0 => {
                        [&[n / of], rest].concat()
                    }
                    _ => return Err(bad(&format!("cannot be split into {of} row blocks"))),
                },
                Transform::Squeeze => {
                    let keep = src.shape.iter().rposition(|&d| d != 1).map_or(0, |i| i + 1);
                    src.shape[..keep.max(1)].to_vec()
                }
                Transform::Transpose => match src.shape[..] {
                    [a, b] => vec![b, a],
                    _ => return Err(bad("is not a matrix to transpose")),
                },
            };
            let entry = Entry {
                shape,
                transform,
                ..src.clone()
            };
            index.insert(name, entry);
        }
        Ok(Weights {
            files: self.files.clone(),
            index,
        })
    }

    /// The file names, for messages.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        names.join(", ")
    }

    /// A string of the files' `__metadata__` (e.g. `modelspec.prediction_type`).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.files
            .iter()
            .find_map(|f| f.metadata.get(key).map(String::as_str))
    }

    /// The stored dtype of `name` (`F16`, `F32`, ...).
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.index.get(name).map(|e| e.info.dtype)
    }

    /// A sharded checkpoint: `index_json` is the `*.safetensors.index.json` text; `read`
    /// returns the bytes of a shard by its file name.
    pub fn from_index(
        index_json: &[u8],
        mut read: impl FnMut(&str) -> Result<Vec<u8>>,
    ) -> Result<Weights> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let idx: Index = serde_json::from_slice(index_json).map_err(|e| {
            Error::Checkpoint(format!(
                "safetensors index: {e} (expected a `weight_map` object)"
            ))
        })?;
        let shards: BTreeSet<&String> = idx.weight_map.values().collect();
        let files = shards
            .into_iter()
            .map(|s| Ok((s.clone(), read(s)?)))
            .collect::<Result<Vec<_>>>()?;
        let w = Weights::from_files(files)?;
        let missing: Vec<&String> = idx
            .weight_map
            .keys()
            .filter(|k| !w.index.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Checkpoint(format!(
                "the index lists tensors its shards lack: {}",
                join_sorted(missing.iter().map(|s| s.as_str()))
            )));
        }
        Ok(w)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.index
            .get(name)
            .ok_or_else(|| Error::Checkpoint(format!("no tensor named `{name}`")))
    }

    /// The stored bytes of `e` (a row block's part only) and their range in the file.
    fn stored(&self, e: &Entry) -> (&[u8], std::ops::Range<usize>) {
        let f = &self.files[e.file];
        let (mut a, mut b) = e.info.data_offsets;
        if let Transform::Rows { part, of } = e.transform {
            // Rows are contiguous: the part is a byte range of the stored tensor.
            let block = (b - a) / of;
            (a, b) = (a + part * block, a + (part + 1) * block);
        }
        let range = f.data_start + a..f.data_start + b;
        let all: &[u8] = (*f.bytes).as_ref();
        (&all[range.clone()], range)
    }

    /// The tensor's values as f32 (from f32, f16, bf16 or f64).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        let (bytes, _) = self.stored(e);
        let v = to_f32(bytes, e.info.dtype, || self.unsupported(e, name))?;
        Ok(match (e.transform, &e.info.shape[..]) {
            (Transform::Transpose, &[rows, cols]) => (0..rows * cols)
                .map(|i| v[(i % rows) * cols + i / rows])
                .collect(),
            _ => v,
        })
    }

    fn unsupported(&self, e: &Entry, name: &str) -> Error {
        Error::Checkpoint(format!(
            "{}: tensor `{name}` has dtype {:?}; hoa loads F32, F16, BF16 and F64",
            self.files[e.file].name, e.info.dtype
        ))
    }

    /// Tensor `name` on the device in `dtype`, the same values as
    /// `Tensor::from_f32(read_f32(name))` but converted and written a chunk at a time, so no
    /// converted copy of a whole tensor is ever held; then its stored bytes are released
    /// (see [`Weights::release`]).
    pub fn upload(&self, ctx: &Context, name: &str, dtype: DType) -> Result<Tensor> {
        let e = self.entry(name)?;
        let t = if e.transform == Transform::Transpose {
            let t = Tensor::empty_owned(ctx, &e.shape, dtype)?;
            write_f32(ctx, &t, 0, &self.read_f32(name)?)?;
            t
        } else {
            self.upload_stored(ctx, e, name, self.stored(e).0, &e.shape, dtype)?
        };
        self.release(name);
        Ok(t)
    }

    /// Rows `start..start + count` of tensor `name` (dimension 0) as a tensor of their own,
    /// converted like [`Weights::upload`]: a table too large for one storage binding loads as
    /// several. The stored bytes are not released (the caller does, after the last block).
    pub fn upload_rows(
        &self,
        ctx: &Context,
        name: &str,
        start: usize,
        count: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let e = self.entry(name)?;
        let rows = e.shape.first().copied().unwrap_or(0);
        if e.transform == Transform::Transpose || start + count > rows {
            return Err(Error::Checkpoint(format!(
                "{}: rows {start}..{} of tensor `{name}` {:?} cannot be loaded on their own",
                self.files[e.file].name,
                start + count,
                e.shape
            )));
        }
        let (bytes, _) = self.stored(e);
        let row = bytes.len() / rows;
        let mut shape = e.shape.clone();
        shape[0] = count;
        let part = &bytes[start * row..(start + count) * row];
        self.upload_stored(ctx, e, name, part, &shape, dtype)
    }

    /// `bytes` (stored as `e`'s dtype) to a new tensor of `shape`, a chunk at a time.
    fn upload_stored(
        &self,
        ctx: &Context,
        e: &Entry,
        name: &str,
        bytes: &[u8],
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let t = Tensor::empty_owned(ctx, shape, dtype)?;
        let size = e.info.dtype.bitsize() / 8;
        for (i, chunk) in bytes.chunks(UPLOAD_CHUNK * size).enumerate() {
            let v = to_f32(chunk, e.info.dtype, || self.unsupported(e, name))?;
            write_f32(ctx, &t, i * UPLOAD_CHUNK, &v)?;
        }
        Ok(t)
    }

    /// Hands tensor `name`'s stored bytes back where the file allows it (a memory map's pages;
    /// a later read faults them in again).
    pub fn release(&self, name: &str) {
        let Some(e) = self.index.get(name) else {
            return;
        };
        if let Some(release) = &self.files[e.file].release {
            release(self.stored(e).1);
        }
    }
}

/// Little-endian `dtype` values as f32; `unsupported` for dtypes hoa does not load.
fn to_f32(bytes: &[u8], dtype: Dtype, unsupported: impl Fn() -> Error) -> Result<Vec<f32>> {
    let conv = |chunk: usize, g: fn(&[u8]) -> f32| bytes.chunks_exact(chunk).map(g).collect();
    Ok(match dtype {
        Dtype::F32 => conv(4, |c| f32::from_le_bytes(c.try_into().unwrap())),
        Dtype::F16 => conv(2, |c| {
            half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()
        }),
        Dtype::BF16 => conv(2, |c| {
            half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()
        }),
        Dtype::F64 => conv(8, |c| f64::from_le_bytes(c.try_into().unwrap()) as f32),
        _ => return Err(unsupported()),
    })
}

/// Writes `v` into `t` from element `start` on, converted to `t`'s dtype as
/// [`Tensor::from_f32`] converts.
fn write_f32(ctx: &Context, t: &Tensor, start: usize, v: &[f32]) -> Result<()> {
    let offset = (start * t.dtype().size()) as u64;
    match t.dtype() {
        DType::F32 => ctx.write_weights_at(
            t.buffer(),
            offset,
            &crate::gpu::pad4(bytemuck::cast_slice(v)),
        ),
        DType::F16 => {
            let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            ctx.write_weights_at(
                t.buffer(),
                offset,
                &crate::gpu::pad4(bytemuck::cast_slice(&h)),
            )
        }
    }
}

/// safetensors' error, with a truncated download said to be one.
fn explain(e: safetensors::SafeTensorError) -> String {
    match e {
        safetensors::SafeTensorError::MetadataIncompleteBuffer => {
            "the file is truncated: its header describes more data than it holds (download it \
             again)"
                .to_string()
        }
        e => e.to_string(),
    }
}

#[derive(Default)]
struct Report {
    used: BTreeSet<String>,
    missing: Vec<String>,
    wrong_shape: Vec<String>,
    other: Vec<String>,
}

/// Changes tensors as they load, by key: LoRA merges ([`crate::lora`]), kept out of each
/// model's load code.
pub trait Patch {
    /// Whether the tensor `key` (its full key) is changed.
    fn patches(&self, key: &str) -> bool;
    /// The tensor to keep for `key`, in `dtype`, given its checkpoint values on the device as f32.
    fn apply(&self, ctx: &Context, key: &str, w: Tensor, dtype: DType) -> Result<Tensor>;
}

/// Loads a model's tensors by key under a prefix (`vb.pp("down_blocks").pp(0)`), in the
/// compute dtype. Problems are collected, not returned one by one: a lookup that fails
/// yields a placeholder so that construction goes on, and [`Loader::finish`] reports them all.
#[derive(Clone)]
pub struct Loader<'a> {
    ctx: &'a Context,
    weights: &'a Weights,
    dtype: DType,
    prefix: String,
    report: Rc<RefCell<Report>>,
    /// `Some(state)`: no checkpoint, every lookup returns random values (benchmarks).
    random: Option<Rc<std::cell::Cell<u64>>>,
    patch: Option<&'a dyn Patch>,
}

impl<'a> Loader<'a> {
    pub fn new(ctx: &'a Context, weights: &'a Weights, dtype: DType) -> Loader<'a> {
        Loader {
            ctx,
            weights,
            dtype,
            prefix: String::new(),
            report: Rc::default(),
            random: None,
            patch: None,
        }
    }

    /// This loader with `patch` applied to the tensors it names (see [`Patch`]).
    pub fn with_patches(mut self, patch: &'a dyn Patch) -> Loader<'a> {
        self.patch = Some(patch);
        self
    }

    /// A loader without a checkpoint (pass an empty [`Weights`]): every `get` returns values
    /// drawn from `seed`: 1-D `weight`s (norm scales) are 1, 1-D `bias`es 0, and matrices /
    /// kernels uniform with variance 1 / fan_in, so activations keep a sane scale. For
    /// benchmarking architectures without downloading them.
    pub fn random(ctx: &'a Context, weights: &'a Weights, dtype: DType, seed: u64) -> Loader<'a> {
        let mut l = Loader::new(ctx, weights, dtype);
        l.random = Some(Rc::new(std::cell::Cell::new(seed | 1)));
        l
    }

    fn random_values(&self, name: &str, shape: &[usize]) -> Option<Vec<f32>> {
        let state = self.random.as_ref()?;
        let n: usize = shape.iter().product();
        // Norm scales and biases (1-d), and scalars such as CLIP's `logit_scale` (0-d).
        if shape.len() <= 1 {
            return Some(vec![if name == "weight" { 1.0 } else { 0.0 }; n]);
        }
        let fan_in: usize = shape[1..].iter().product();
        let a = (3.0 / fan_in.max(1) as f64).sqrt() as f32;
        let mut x = state.get();
        let v = (0..n)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
            })
            .collect();
        state.set(x);
        Some(v)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are loaded onto (for tensors a model derives from host values).
    pub fn context(&self) -> &'a Context {
        self.ctx
    }

    /// The loader for a sub-module: keys get `name.` in front.
    pub fn pp(&self, name: impl std::fmt::Display) -> Loader<'a> {
        let mut l = self.clone();
        l.prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        l
    }

    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Marks `prefix.name` as expected even though no lookup reads it (buffers such as
    /// `position_ids` that a model derives itself).
    pub fn ignore(&self, name: &str) {
        self.report.borrow_mut().used.insert(self.key(name));
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.index.contains_key(&self.key(name))
    }

    /// The tensor `prefix.name`, which must have `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(v) = self.random_values(name, shape) {
            // As a checkpoint's weights load: a buffer of its own, through the upload buffer.
            let t = Tensor::empty_owned(self.ctx, shape, self.dtype)?;
            for (i, chunk) in v.chunks(UPLOAD_CHUNK).enumerate() {
                write_f32(self.ctx, &t, i * UPLOAD_CHUNK, chunk)?;
            }
            return Ok(t);
        }
        let key = self.key(name);
        let mut r = self.report.borrow_mut();
        r.used.insert(key.clone());
        match self.weights.shape(&key) {
            None => r.missing.push(format!("{key} {shape:?}")),
            Some(got) if got != shape => r
                .wrong_shape
                .push(format!("{key}: expected {shape:?}, found {got:?}")),
            Some(_) => {
                drop(r);
                // An unreadable tensor is reported with the others at `finish`.
                let unreadable = match self.patch.filter(|p| p.patches(&key)) {
                    Some(p) => match self.weights.read_f32(&key) {
                        Ok(v) => {
                            self.weights.release(&key);
                            let w = Tensor::from_f32(self.ctx, &v, shape, DType::F32)?;
                            return p.apply(self.ctx, &key, w, self.dtype);
                        }
                        Err(e) => e,
                    },
                    None => match self.weights.upload(self.ctx, &key, self.dtype) {
                        Err(e @ Error::Checkpoint(_)) => e,
                        t => return t,
                    },
                };
                self.report.borrow_mut().other.push(unreadable.to_string());
                return Tensor::empty(self.ctx, shape, self.dtype);
            }
        }
        drop(r);
        Tensor::empty(self.ctx, shape, self.dtype)
    }

    /// Tensor `name` of `shape` rearranged on the host by `map` (f32 values in, `out_shape`'s
    /// out), then on the device in the compute dtype, converted as [`Loader::get`] converts:
    /// a layout a kernel wants, without the original on the device beside it. `None` when a
    /// patch (a LoRA) changes the tensor: patches merge on the device, where the caller
    /// rearranges it instead. Problems are recorded like `get`'s.
    pub fn get_mapped(
        &self,
        name: &str,
        shape: &[usize],
        out_shape: &[usize],
        map: impl FnOnce(&[f32]) -> Vec<f32>,
    ) -> Result<Option<Tensor>> {
        let key = self.key(name);
        if self.random.is_none() && self.patch.is_some_and(|p| p.patches(&key)) {
            return Ok(None);
        }
        let v = map(&self.get_host(name, shape));
        self.weights.release(&key);
        let t = Tensor::empty_owned(self.ctx, out_shape, self.dtype)?;
        for (i, chunk) in v.chunks(UPLOAD_CHUNK).enumerate() {
            write_f32(self.ctx, &t, i * UPLOAD_CHUNK, chunk)?;
        }
        Ok(Some(t))
    }

    /// Tensor `prefix.name` of `shape` as blocks of rows (dimension 0) of at most
    /// `max_bytes` each, with the rows per block: one block when it fits, as [`Loader::get`]
    /// gives it. For lookup tables larger than one storage binding.
    pub fn get_row_blocks(
        &self,
        name: &str,
        shape: &[usize],
        max_bytes: u64,
    ) -> Result<(Vec<Tensor>, usize)> {
        let rows = shape.first().copied().unwrap_or(0);
        let width: usize = shape.get(1..).unwrap_or_default().iter().product();
        let row_bytes = (width * self.dtype.size()).max(1);
        let per = ((max_bytes / row_bytes as u64) as usize).max(1);
        let key = self.key(name);
        let stored = self.weights.shape(&key) == Some(shape) && self.patch.is_none();
        if rows <= per || !(self.random.is_some() || stored) {
            // Fits, or a problem `get` reports (or a patch `get` applies).
            return Ok((vec![self.get(name, shape)?], rows.max(per)));
        }
        let random = self.random_values(name, shape);
        let mut blocks = Vec::new();
        for start in (0..rows).step_by(per) {
            let count = per.min(rows - start);
            let mut s = shape.to_vec();
            s[0] = count;
            blocks.push(match &random {
                Some(v) => {
                    let part = &v[start * width..(start + count) * width];
                    Tensor::from_f32(self.ctx, part, &s, self.dtype)?
                }
                None => self
                    .weights
                    .upload_rows(self.ctx, &key, start, count, self.dtype)?,
            });
        }
        self.report.borrow_mut().used.insert(key.clone());
        self.weights.release(&key);
        Ok((blocks, per))
    }

    /// The values of `prefix.name` on the host (small tables the CPU uses, such as T5's
    /// relative attention bias). Problems are recorded like [`Loader::get`]'s.
    pub fn get_host(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        if let Some(v) = self.random_values(name, shape) {
            return v;
        }
        let key = self.key(name);
        let mut r = self.report.borrow_mut();
        r.used.insert(key.clone());
        match self.weights.shape(&key) {
            None => r.missing.push(format!("{key} {shape:?}")),
            Some(got) if got != shape => r
                .wrong_shape
                .push(format!("{key}: expected {shape:?}, found {got:?}")),
            Some(_) => match self.weights.read_f32(&key) {
                Ok(v) => return v,
                Err(e) => r.other.push(e.to_string()),
            },
        }
        vec![0.0; shape.iter().product()]
    }

    /// Errors with every problem found so far, plus every tensor in the checkpoint that no
    /// lookup used (a sign of a different architecture or config).
    pub fn finish(&self) -> Result<()> {
        let r = self.report.borrow();
        let unexpected: Vec<&str> = self
            .weights
            .names()
            .filter(|n| !r.used.contains(*n))
            .collect();
        if r.missing.is_empty()
            && r.wrong_shape.is_empty()
            && r.other.is_empty()
            && unexpected.is_empty()
        {
            return Ok(());
        }
        let mut msg = format!(
            "checkpoint {} does not match the model's config:",
            self.weights.describe()
        );
        let mut section = |title: &str, items: Vec<&str>| {
            if !items.is_empty() {
                msg.push_str(&format!(
                    "\n  {title} ({}): {}",
                    items.len(),
                    join_sorted(items.into_iter())
                ));
            }
        };
        section("missing", r.missing.iter().map(String::as_str).collect());
        section(
            "wrong shape",
            r.wrong_shape.iter().map(String::as_str).collect(),
        );
        section("unreadable", r.other.iter().map(String::as_str).collect());
        section("unexpected", unexpected);
        msg.push_str("\n  check that config.json belongs to these weights");
        Err(Error::Checkpoint(msg))
    }
}

/// Sorted, comma-separated, at most 20 names (a wrong checkpoint can have thousands).
fn join_sorted<'s>(items: impl Iterator<Item = &'s str>) -> String {
    let mut v: Vec<&str> = items.collect();
    v.sort_unstable();
    let more = v.len().saturating_sub(20);
    v.truncate(20);
    let mut s = v.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// A file that cannot be safetensors at all (text, an image, a pickle) is said to be so,
/// rather than reported as a "header too large" from its first eight bytes.
fn sniff(name: &str, bytes: &[u8]) -> Result<()> {
    let not = |what: &str| {
        Err(Error::Safetensors {
            file: name.to_string(),
            msg: format!(
                "{what}; a safetensors file starts with an 8-byte header length and a JSON header"
            ),
        })
    };
    if bytes.len() < 10 {
        return not(&format!("only {} bytes", bytes.len()));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
    if n > (bytes.len() - 8) as u64 || bytes[8] != b'{' {
        let kind = if bytes.starts_with(b"PK") || bytes.starts_with(&[0x80]) {
            "it looks like a PyTorch pickle/zip checkpoint (convert it with safetensors.torch.save_file)"
        } else if bytes[..8]
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        {
            "it starts with text, not a safetensors header"
        } else {
            "its first bytes are no safetensors header"
        };
        return not(kind);
    }
    Ok(())
}
