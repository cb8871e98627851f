//! hoa: a portable text-to-image engine whose numeric kernels are hand-written WGSL compute
//! shaders run through `wgpu` (Vulkan, Metal, DX12, and WebGPU in the browser).
//!
//! This crate is built bottom-up: [`gpu`] is the runtime (adapter, device, tensors, buffer pool,
//! pipeline cache), [`kernels`] the WGSL kernel library with its CPU references, [`bench`] the
//! microbenchmarks behind `hoa bench`. [`config`] and [`activation`] parse model configs and
//! depend on no GPU code.

pub mod activation;
pub mod bench;
pub mod clip;
pub mod clip_vocab;
pub mod config;
pub mod download_plan;
pub mod error;
pub mod generation;
pub mod gpu;
pub mod image_io;
pub mod kernels;
pub mod lora;
pub mod model_defaults;
pub mod model_files;
pub mod model_info;
pub mod model_summary;
pub mod models;
pub mod noise;
pub mod options;
pub mod pipeline;
pub mod prompt_upsampling;
pub mod request;
pub mod resolve;
pub mod rewriter;
pub mod schedulers;
pub mod single_file;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod weights;

pub use error::{Error, Result};
pub use gpu::{Context, ContextOptions, DType, Tensor};
