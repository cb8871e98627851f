//! Networks built only from hoa's kernels, with module and field names that mirror the
//! checkpoint keys, so loading is a direct lookup.

pub mod clip;
pub mod nn;
pub mod t5;
