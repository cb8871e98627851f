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
