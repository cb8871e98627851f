//! Model fixtures written by tools/fixtures/make_fixtures.py: the folder, its reference
//! tensors (io.safetensors), and the relative comparison the model tests use.
#![allow(dead_code)]

use hoa::weights::Weights;
use hoa::{Context, DType, Tensor};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

pub fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copies a fixture folder (or any folder) recursively, for tests that alter a copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

pub fn config(name: &str) -> Vec<u8> {
    std::fs::read(dir(name).join("config.json")).expect("fixture config.json")
}

/// The weights of a diffusers fixture (`diffusion_pytorch_model.safetensors`).
pub fn diffusers_weights(name: &str) -> Weights {
    let f = "diffusion_pytorch_model.safetensors";
    Weights::from_bytes(
        f,
        std::fs::read(dir(name).join(f)).expect("fixture weights"),
    )
    .unwrap()
}

/// The reference tensors of a fixture's io.safetensors, as (values, shape).
pub struct Io(Vec<u8>);

impl Io {
    pub fn load(name: &str) -> Io {
        Io(std::fs::read(dir(name).join("io.safetensors")).expect("fixture io"))
    }

    pub fn f32(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture lacks {key}"));
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    }

    /// The tensor on the device in `dt`.
    pub fn tensor(&self, c: &Context, key: &str, dt: DType) -> Tensor {
        let (v, s) = self.f32(key);
        Tensor::from_f32(c, &v, &s, dt).unwrap()
    }

    pub fn has(&self, key: &str) -> bool {
        SafeTensors::deserialize(&self.0)
            .unwrap()
            .tensor(key)
            .is_ok()
    }
}

/// The relative tolerance of the model tests: max |err| <= rel x max |ref|, 1e-3 in f32; f16
/// storage rounds every weight and activation to 11 bits: 1e-2.
pub fn rel_tol(dt: DType) -> f64 {
    if dt == DType::F32 {
        1e-3
    } else {
        1e-2
    }
}

/// Checks max |got - want| <= rel * max |want| (shape included); returns the observed ratio
/// max |err| / max |want| so tests can print it.
pub fn close_rel(
    what: &str,
    got: &Tensor,
    want: &(Vec<f32>, Vec<usize>),
    rel: f64,
    c: &Context,
) -> Result<f64, String> {
    if got.shape() != want.1.as_slice() {
        return Err(format!(
            "{what}: shape {:?}, reference {:?}",
            got.shape(),
            want.1
        ));
    }
    let g = got.to_vec(c).unwrap();
    let scale = want.0.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let (i, err) = g
        .iter()
        .zip(&want.0)
        .map(|(&a, &b)| {
            if a.is_nan() {
                f64::INFINITY
            } else {
                (a as f64 - b as f64).abs()
            }
        })
        .enumerate()
        .fold((0, 0f64), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    if err > rel * scale {
        return Err(format!(
            "{what}: max error {err:.3e} at [{i}] (got {} want {}) exceeds {rel} x max |ref| {scale:.3e}",
            g[i], want.0[i]
        ));
    }
    Ok(err / scale.max(f64::MIN_POSITIVE))
}
