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

/// Weights go through one reusable upload buffer (natively): tensors past its size, odd
/// element counts (f16 pads the last element pair), and many small tensors staged side by side
/// all arrive bit for bit as `queue.write_buffer` (`Tensor::from_f32`) writes them; a kernel
/// recorded between two uploads reads the first one's data.
#[test]
fn upload_buffer_is_exact_across_its_boundaries_and_in_order() {
    let Some(c) = ctx() else { return };
    let cap = hoa::gpu::UPLOAD_BUFFER_BYTES as usize;
    let mut r = rng(11);
    let mut vals = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rand::Rng::random_range(&mut r, -3.0..3.0f32))
            .collect()
    };
    // f32 past the buffer (2 fills and a bit), then odd sizes that straddle the next fills.
    let sizes = [cap / 4 * 2 + 5, 1, 3, 7, cap / 4 - 1, 257, (1 << 20) + 1, 2];
    let data: Vec<Vec<f32>> = sizes.iter().map(|&n| vals(n)).collect();
    let names: Vec<String> = (0..sizes.len()).map(|i| format!("t{i}")).collect();
    let entries: Vec<_> = names
        .iter()
        .zip(&data)
        .enumerate()
        .map(|(i, (n, v))| match i % 2 {
            0 => (n.as_str(), Dtype::F32, vec![v.len()], f32_bytes(v)),
            _ => (n.as_str(), Dtype::F16, vec![v.len()], f16_bytes(v)),
        })
        .collect();
    let w = Weights::from_bytes("m.safetensors", file(&entries)).unwrap();
    for dt in dtypes(c) {
        let l = Loader::new(c, &w, dt);
        let mut got = Vec::new();
        let mut doubled = None;
        for (i, (n, v)) in names.iter().zip(&data).enumerate() {
            let t = l.get(n, &[v.len()]).unwrap();
            // A kernel recorded between uploads (read after the later ones are staged) must
            // see this tensor's data.
            if i == 3 {
                doubled = Some(hoa::kernels::elementwise::scale(c, &t, 2.0).unwrap());
            }
            got.push(t);
        }
        let want: Vec<f32> = round_to(dt, &w.read_f32(&names[3]).unwrap())
            .iter()
            .map(|x| 2.0 * x)
            .collect();
        let doubled = doubled.unwrap().to_vec(c).unwrap();
        assert_eq!(doubled, round_to(dt, &want), "{dt:?}");
        l.finish().unwrap();
        for ((n, v), t) in names.iter().zip(&data).zip(&got) {
            let whole = hoa::Tensor::from_f32(c, &w.read_f32(n).unwrap(), &[v.len()], dt);
            let want = whole.unwrap().to_vec(c).unwrap();
            let got = t.to_vec(c).unwrap();
            let same = got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{n} ({} elements) in {dt:?} differs", v.len());
        }
    }
}

/// Conv weights are packed for the implicit-GEMM kernels on the host as they load
/// (`PackedConv2dWeight::load`), so the device never holds the unpacked weight beside the
/// packed one: the same bits as packing on the device, on channel counts that are not a
/// multiple of the kernel's tile, for 3x3 and 1x1 kernels and f32 / f16 files.
#[test]
fn conv_weights_packed_on_the_host_match_the_device_packing() {
    let Some(c) = ctx() else { return };
    use hoa::kernels::conv2d::{conv2d, Conv2dOptions};
    use hoa::models::nn::Conv2d;
    // The last crosses the host transpose's 64x64 blocks in both directions.
    let cases = [(5, 3, 3), (37, 4, 1), (64, 7, 3), (70, 9, 3)];
    let mut r = rng(13);
    let mut vals = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rand::Rng::random_range(&mut r, -1.0..1.0f32))
            .collect()
    };
    let data: Vec<_> = cases
        .iter()
        .map(|&(co, ci, k)| (vals(co * ci * k * k), vals(co), vals(2 * ci * 9 * 8)))
        .collect();
    let names: Vec<_> = (0..cases.len())
        .map(|i| (format!("c{i}.weight"), format!("c{i}.bias")))
        .collect();
    let mut entries = Vec::new();
    for (i, ((&(co, ci, k), (w, b, _)), (wn, bn))) in
        cases.iter().zip(&data).zip(&names).enumerate()
    {
        let (dt, bytes) = match i % 2 {
            0 => (Dtype::F32, f32_bytes(w)),
            _ => (Dtype::F16, f16_bytes(w)),
        };
        entries.push((wn.as_str(), dt, vec![co, ci, k, k], bytes));
        entries.push((bn.as_str(), Dtype::F32, vec![co], f32_bytes(b)));
    }
    let w = Weights::from_bytes("m.safetensors", file(&entries)).unwrap();
    for dt in dtypes(c) {
        let l = Loader::new(c, &w, dt);
        for (i, &(co, ci, k)) in cases.iter().enumerate() {
            let conv = Conv2d::load(&l.pp(format!("c{i}")), ci, co, k, 1).unwrap();
            let x = hoa::Tensor::from_f32(c, &data[i].2, &[2, ci, 9, 8], dt).unwrap();
            let got = conv.forward(c, &x).unwrap().to_vec(c).unwrap();
            let weight =
                hoa::Tensor::from_f32(c, &w.read_f32(&names[i].0).unwrap(), &[co, ci, k, k], dt);
            let bias = hoa::Tensor::from_f32(c, &data[i].1, &[co], dt).unwrap();
            let o = Conv2dOptions {
                padding: (k - 1) / 2,
                bias: Some(&bias),
                ..Default::default()
            };
            let want = conv2d(c, &x, &weight.unwrap(), &o)
                .unwrap()
                .to_vec(c)
                .unwrap();
            let same = got.len() == want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "conv {co}x{ci}x{k}x{k} in {dt:?} differs");
        }
        l.finish().unwrap();
    }
}
