//! Networks built only from hoa's kernels, with module and field names that mirror the
//! checkpoint keys, so loading is a direct lookup.

pub mod attention;
pub mod autoencoder_kl;
pub mod clip;
pub mod consistency_decoder;
pub mod nn;
pub mod resnet;
pub mod t5;
pub mod unet_2d;
pub mod unet_2d_blocks;
pub mod unet_2d_condition;

use crate::error::{Error, Result};

/// Errors unless `shape` is [B, `channels`, H, W], naming the config field the channels come
/// from; `hw` names the spatial dims in the message ("H, W" for pixels, "h, w" for latents).
pub(crate) fn check_nchw(
    op: &'static str,
    what: &str,
    shape: &[usize],
    hw: &str,
    (channels, field): (usize, &str),
) -> Result<()> {
    if shape.len() != 4 || shape[1] != channels {
        return Err(Error::shape(
            op,
            format!("{what} {shape:?} must be [B, {channels}, {hw}] ({field})"),
        ));
    }
    Ok(())
}
