//! The library's one error type: every failure names the op, the shapes or the limit involved.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "no GPU adapter found ({detail}). On Linux without a GPU install Mesa's software Vulkan \
         driver (`apt-get install mesa-vulkan-drivers`); choose a backend with HOA_BACKEND \
         (vulkan, metal, dx12, gl, webgpu) and an adapter with HOA_ADAPTER (a name substring)"
    )]
    NoAdapter { detail: String },

    #[error("the adapter refused to create a device: {0}")]
    RequestDevice(String),

    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error(
        "{op}: needs {} for `{limit}` but this device allows at most {}; {hint}",
        amount(*.needed, .limit),
        amount(*.max, .limit)
    )]
    Limit {
        op: &'static str,
        limit: &'static str,
        needed: u64,
        max: u64,
        hint: String,
    },

    #[error("{op}: the adapter lacks the `{feature}` feature ({hint})")]
    MissingFeature {
        op: &'static str,
        feature: &'static str,
        hint: &'static str,
    },

    #[error("GPU error in {context}: {msg}")]
    Gpu { context: String, msg: String },

    #[error("reading a buffer back from the GPU failed: {0}")]
    Map(String),

    #[error("{file}: not a valid safetensors file ({msg}); re-download or re-export it")]
    Safetensors { file: String, msg: String },

    #[error("{0}")]
    Checkpoint(String),

    /// A bad value in a model file: `file` is the path within the model (e.g.
    /// `unet/config.json`, `hoa.json`), `field` the key, `why` what is wrong and what to do.
    #[error("{file}: `{field}` {why}")]
    Config {
        file: String,
        field: String,
        why: String,
    },

    /// A bad generation option: `what` names where it came from as the user typed it (the
    /// CLI flag `--steps`, the request field `steps`), `why` what is wrong and what to do.
    #[error("{what}: {why}")]
    InvalidOption { what: String, why: String },

    /// A sampler configuration or call hoa cannot honour (`hoa::schedulers`).
    #[error("scheduler: {0}")]
    Scheduler(String),

    /// The run was stopped through [`crate::options::Cancel`] (no image).
    #[error("the generation was cancelled")]
    Cancelled,
}

impl Error {
    pub fn config(
        file: impl Into<String>,
        field: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        Error::Config {
            file: file.into(),
            field: field.into(),
            why: why.into(),
        }
    }

    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidOption {
            what: what.into(),
            why: why.into(),
        }
    }

    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}

/// A limit's amount as a person reads it: bytes in MiB or GiB, counts as they are.
fn amount(n: u64, limit: &str) -> String {
    if !limit.ends_with("size") {
        return n.to_string();
    }
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{n} bytes"),
    }
}
