//! Networks built only from hoa's kernels, with module and field names that mirror the
//! checkpoint keys, so loading is a direct lookup.

pub mod attention;
pub mod autoencoder_kl;
pub mod clip;
pub mod clip_model;
pub mod clip_vision;
pub mod consistency_decoder;
pub mod nn;
pub mod prior_transformer;
pub mod resnet;
pub mod t5;
pub mod t5_decoder;
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

#[cfg(test)]
mod tests {
    use super::check_nchw;

    #[test]
    fn check_nchw_names_the_input_and_the_config_field() {
        let latent = (4, "latent_channels");
        assert!(check_nchw("VAE", "latent", &[2, 4, 8, 6], "h, w", latent).is_ok());
        for bad in [&[2, 3, 8, 6][..], &[4, 8, 6]] {
            let e = check_nchw("VAE", "latent", bad, "h, w", latent).unwrap_err();
            let want = format!("VAE: latent {bad:?} must be [B, 4, h, w] (latent_channels)");
            assert_eq!(e.to_string(), want);
        }
        let e = check_nchw("UNet", "sample", &[1, 3], "H, W", (4, "in_channels")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "UNet: sample [1, 3] must be [B, 4, H, W] (in_channels)"
        );
    }
}
