//! safetensors loading: dtypes, shards, and one clear error for each kind of bad checkpoint.

mod common;
use common::*;
use hoa::weights::{Loader, Weights};
use hoa::DType;
use safetensors::tensor::{Dtype, TensorView};

fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect()
}

#[test]
fn loads_f32_f16_bf16_into_either_compute_dtype() {
    let Some(c) = ctx() else { return };
    let v = [0.5f32, -1.25, 3.0, 1.0e-3, -7.5, 2.0];
    let bytes = file(&[
        ("a.weight", Dtype::F32, vec![2, 3], f32_bytes(&v)),
        ("b.weight", Dtype::F16, vec![6], f16_bytes(&v)),
        ("c.weight", Dtype::BF16, vec![3, 2], bf16_bytes(&v)),
    ]);
    let w = Weights::from_bytes("model.safetensors", bytes).unwrap();
    for dt in dtypes(c) {
        let l = Loader::new(c, &w, dt);
        let a = l.get("a.weight", &[2, 3]).unwrap();
        let b = l.pp("b").get("weight", &[6]).unwrap();
        let cc = l.pp("c").get("weight", &[3, 2]).unwrap();
        l.finish().unwrap();
        all_close(
            "f32",
            &a.to_vec(c).unwrap(),
            &round_to(dt, &v),
            &Tol {
                atol: 0.0,
                rtol: 0.0,
            },
        );
        all_close(
            "f16",
            &b.to_vec(c).unwrap(),
            &round_to(DType::F16, &v),
            &Tol {
                atol: 0.0,
                rtol: 0.0,
            },
        );
        let bf: Vec<f32> = v
            .iter()
            .map(|x| half::bf16::from_f32(*x).to_f32())
            .collect();
        all_close(
            "bf16",
            &cc.to_vec(c).unwrap(),
            &round_to(dt, &bf),
            &Tol {
                atol: 0.0,
                rtol: 0.0,
            },
        );
    }
}

#[test]
fn sharded_checkpoint_via_index() {
    let Some(c) = ctx() else { return };
    let s1 = file(&[("x", Dtype::F32, vec![2], f32_bytes(&[1.0, 2.0]))]);
    let s2 = file(&[("y", Dtype::F32, vec![1], f32_bytes(&[3.0]))]);
    let index = br#"{"metadata": {}, "weight_map": {"x": "m-00001.safetensors", "y": "m-00002.safetensors"}}"#;
    let w = Weights::from_index(index, |name| {
        Ok(match name {
            "m-00001.safetensors" => s1.clone(),
            _ => s2.clone(),
        })
    })
    .unwrap();
    let l = Loader::new(c, &w, DType::F32);
    assert_eq!(l.get("y", &[1]).unwrap().to_vec(c).unwrap(), [3.0]);
    assert_eq!(l.get("x", &[2]).unwrap().to_vec(c).unwrap(), [1.0, 2.0]);
    l.finish().unwrap();

    let bad_index = br#"{"weight_map": {"x": "m-00001.safetensors", "z": "m-00001.safetensors"}}"#;
    let e = Weights::from_index(bad_index, |_| Ok(s1.clone()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`z`") || e.contains(" z"), "{e}");
}

#[test]
fn truncated_file_is_a_clear_error() {
    let bytes = file(&[("w", Dtype::F32, vec![64], f32_bytes(&[1.0; 64]))]);
    let cut = bytes[..bytes.len() - 10].to_vec();
    let e = Weights::from_bytes("unet.safetensors", cut)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unet.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
}

#[test]
fn corrupted_header_is_a_clear_error() {
    let mut bytes = file(&[("w", Dtype::F32, vec![4], f32_bytes(&[1.0; 4]))]);
    bytes[9] = b'#'; // the header's first key loses its opening quote
    let e = Weights::from_bytes("vae.safetensors", bytes)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("vae.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    let e = Weights::from_bytes("empty.safetensors", vec![1, 2, 3])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("empty.safetensors"), "{e}");
}

#[test]
fn mismatched_checkpoint_lists_every_offending_tensor() {
    let Some(c) = ctx() else { return };
    let bytes = file(&[
        (
            "conv_in.weight",
            Dtype::F32,
            vec![8, 4, 3, 3],
            f32_bytes(&[0.0; 288]),
        ),
        ("conv_in.bias", Dtype::F32, vec![8], f32_bytes(&[0.0; 8])),
        ("extra.weight", Dtype::F32, vec![2], f32_bytes(&[0.0; 2])),
        ("ids", Dtype::I64, vec![1], vec![0; 8]),
    ]);
    let w = Weights::from_bytes("unet/diffusion_pytorch_model.safetensors", bytes).unwrap();
    let l = Loader::new(c, &w, DType::F32);
    let conv = l.pp("conv_in");
    conv.get("weight", &[16, 4, 3, 3]).unwrap(); // wrong shape: a placeholder comes back
    conv.get("bias", &[8]).unwrap();
    l.get("time_embedding.linear_1.weight", &[32, 8]).unwrap(); // missing
    l.get("ids", &[1]).unwrap(); // unsupported dtype
    let e = l.finish().unwrap_err().to_string();
    for needle in [
        "unet/diffusion_pytorch_model.safetensors",
        "conv_in.weight: expected [16, 4, 3, 3], found [8, 4, 3, 3]",
        "missing (1): time_embedding.linear_1.weight [32, 8]",
        "unexpected (1): extra.weight",
        "`ids` has dtype I64",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
}

/// What the CLI sizes a model by when it picks f16 or f32: weights only, in component folders.
#[test]
fn weight_bytes_counts_the_components_safetensors_only() {
    let d = std::env::temp_dir().join(format!("hoa-weight-bytes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    for (path, n) in [
        ("unet/diffusion_pytorch_model.safetensors", 300),
        ("unet/config.json", 1000),
        ("vae/diffusion_pytorch_model.safetensors", 20),
        ("top.safetensors", 5000),
    ] {
        let p = d.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, vec![0u8; n]).unwrap();
    }
    assert_eq!(hoa::model_files::weight_bytes(&d), 320);
    assert_eq!(
        hoa::model_files::weight_bytes(&d.join("top.safetensors")),
        5000
    );
    assert_eq!(hoa::model_files::weight_bytes(&d.join("missing")), 0);
    let _ = std::fs::remove_dir_all(&d);
}
