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

/// Loading streams each tensor to the device in chunks, bit for bit what a whole-tensor upload
/// gives, and hands every tensor's stored bytes back (a memory map drops those pages) as soon
/// as it is on the device: the host never holds a second copy of the model.
#[test]
fn upload_is_chunked_exact_and_releases_each_tensor() {
    let Some(c) = ctx() else { return };
    use std::sync::{Arc, Mutex};
    // Past one upload chunk (1 << 20 elements), with an odd count so the last f16 chunk pads.
    let n = (1 << 20) + 3;
    let mut r = rng(7);
    let big: Vec<f32> = (0..n)
        .map(|_| rand::Rng::random_range(&mut r, -2.0..2.0f32))
        .collect();
    let small = [0.5f32, -1.25, 3.0, 1.0e-3, -7.5, 2.0];
    let bytes = file(&[
        ("big", Dtype::F32, vec![n], f32_bytes(&big)),
        ("half", Dtype::F16, vec![n], f16_bytes(&big)),
        ("bf", Dtype::BF16, vec![2, 3], bf16_bytes(&small)),
    ]);
    let released: Arc<Mutex<Vec<std::ops::Range<usize>>>> = Arc::default();
    let sink = released.clone();
    let w = Weights::from_shared_with_release(
        "m.safetensors",
        Arc::new(bytes.clone()),
        Arc::new(move |r| sink.lock().unwrap().push(r)),
    )
    .unwrap();
    for dt in dtypes(c) {
        released.lock().unwrap().clear();
        let l = Loader::new(c, &w, dt);
        for (name, shape) in [("big", vec![n]), ("half", vec![n]), ("bf", vec![2, 3])] {
            let got = l.get(name, &shape).unwrap().to_vec(c).unwrap();
            let whole = hoa::Tensor::from_f32(c, &w.read_f32(name).unwrap(), &shape, dt).unwrap();
            let want = whole.to_vec(c).unwrap();
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && got.len() == want.len(), "{name} in {dt:?} differs");
        }
        l.finish().unwrap();
        // Each tensor's data range, from the file's start, released once.
        let (hlen, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut want: Vec<_> = meta
            .tensors()
            .values()
            .map(|i| 8 + hlen + i.data_offsets.0..8 + hlen + i.data_offsets.1)
            .collect();
        let mut got = released.lock().unwrap().clone();
        want.sort_by_key(|r| r.start);
        got.sort_by_key(|r| r.start);
        assert_eq!(got, want, "{dt:?}");
    }
}

/// Queued writes are staged in host memory until a submit: uploads submit every
/// `STAGING_LIMIT` bytes, so a model's load never stages its whole size at once.
#[test]
fn uploads_stage_at_most_the_limit() {
    let Some(c) = ctx() else { return };
    let limit = hoa::gpu::STAGING_LIMIT as usize;
    let v = vec![1.0f32; limit / 4 / 3 + 1];
    let mut keep = Vec::new();
    for _ in 0..4 {
        keep.push(hoa::Tensor::from_f32(c, &v, &[v.len()], DType::F32).unwrap());
        assert!(
            c.staged_bytes() < limit as u64,
            "{} bytes staged",
            c.staged_bytes()
        );
    }
}

/// A lookup table larger than one storage binding (CLIP's f32 token table is 145 MiB, past
/// WebGPU's 128 MiB) loads as row blocks; a lookup across blocks gives the table's rows exactly.
#[test]
fn embedding_table_split_over_bindings_looks_up_exact_rows() {
    let Some(c) = ctx() else { return };
    use hoa::kernels::embedding::EmbeddingTable;
    let (rows, dim) = (37, 6);
    let mut r = rng(3);
    let table: Vec<f32> = (0..rows * dim)
        .map(|_| rand::Rng::random_range(&mut r, -2.0..2.0f32))
        .collect();
    let bytes = file(&[("emb.weight", Dtype::F32, vec![rows, dim], f32_bytes(&table))]);
    let w = Weights::from_bytes("m.safetensors", bytes).unwrap();
    let ids = [36u32, 0, 5, 4, 17, 35, 36, 10];
    for dt in dtypes(c) {
        // A lowered limit: 5 rows a block, so 8 blocks, the last of 2 rows.
        let max = (5 * dim * dt.size()) as u64;
        let l = Loader::new(c, &w, dt);
        let t = EmbeddingTable::load(&l.pp("emb"), "weight", [rows, dim], max).unwrap();
        l.finish().unwrap();
        assert_eq!((t.blocks.len(), t.rows_per_block), (8, 5));
        assert_eq!(t.blocks[7].shape(), [2, dim]);
        let got = t.lookup(c, &ids).unwrap();
        assert_eq!(got.shape(), [ids.len(), dim]);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| round_to(dt, &table[i as usize * dim..(i as usize + 1) * dim]))
            .collect();
        assert_eq!(got.to_vec(c).unwrap(), want, "{dt:?}");
        let e = t.lookup(c, &[37]).err().unwrap().to_string();
        assert!(e.contains("outside the vocabulary of 37"), "{e}");
        // Within the limit: one block, as `get` loads it.
        let one = EmbeddingTable::load(&l.pp("emb"), "weight", [rows, dim], 1 << 20).unwrap();
        assert_eq!(one.blocks.len(), 1);
        assert_eq!(one.lookup(c, &ids).unwrap().to_vec(c).unwrap(), want);
    }
}
