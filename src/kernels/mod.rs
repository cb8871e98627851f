//! The WGSL kernel library. One file per shader family; each holds the params struct (field for
//! field the WGSL one), the dispatch functions, and a `reference` module: a plain CPU
//! implementation with f64 accumulation that the tests compare against.

pub mod attention;
pub mod concat;
pub mod conv2d;
pub mod elementwise;
pub mod embedding;
pub mod group_norm;
pub mod layer_norm;
pub mod matmul;
pub mod resample;
pub mod scheduler;
pub mod softmax;
pub mod tile_blend;

// Configs parse activation names without the kernel layer; kernels take it from here.
pub use crate::activation::Activation;
use crate::error::{Error, Result};
use crate::gpu::{ShaderFamily, Tensor};

/// Every shader family, for validation and for warming the pipeline cache.
pub const SHADERS: &[ShaderFamily] = &[
    crate::bench::case::SHADER,
    attention::SHADER,
    attention::SHADER_SG,
    concat::SHADER,
    conv2d::SHADER,
    conv2d::SHADER_SG,
    elementwise::SHADER,
    embedding::SHADER,
    group_norm::SHADER,
    layer_norm::SHADER,
    matmul::SHADER,
    matmul::SHADER_SG,
    resample::SHADER,
    scheduler::SHADER,
    softmax::SHADER,
    tile_blend::SHADER,
];

/// Errors unless every tensor has the same dtype.
pub(crate) fn same_dtype(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    if let Some(t) = ts.iter().find(|t| t.dtype() != ts[0].dtype()) {
        return Err(Error::shape(
            op,
            format!(
                "mixed dtypes: {} and {}",
                ts[0].dtype().name(),
                t.dtype().name()
            ),
        ));
    }
    Ok(())
}

/// Errors unless the tensor has `n` dimensions.
pub(crate) fn rank(op: &'static str, what: &str, t: &Tensor, n: usize) -> Result<()> {
    if t.shape().len() != n {
        return Err(Error::shape(
            op,
            format!("{what} must have {n} dimensions, got shape {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Checks that a count fits the u32 the shaders index with.
pub(crate) fn to_u32(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::Limit {
        op,
        limit: "u32 indexing",
        needed: n as u64,
        max: u32::MAX as u64,
        hint: format!("{what} is too large for one dispatch"),
    })
}
