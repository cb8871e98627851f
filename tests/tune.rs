//! The tuning cache (`hoa tune`, `hoa::gpu::tuning`): a fresh entry for this adapter is loaded
//! by a new context and its variants are taken (outputs within the kernels' tolerance of the
//! default and of the f64 reference); a stale one (other driver, other hoa version, other
//! adapter, garbage) is ignored; the file is written atomically and a file that is not a cache
//! is never replaced without --force; `hoa tune --quick` writes a cache the next context loads.

mod common;
use common::*;
use hoa::gpu::tuning::{
    self, AttentionChoice, CacheFile, CacheKey, Choices, Conv2dChoice, MatmulChoice, TuneCache,
};
use hoa::kernels::attention::{self, AttentionOptions};
use hoa::kernels::conv2d::{self, Conv2dOptions};
use hoa::kernels::matmul::{self, linear};
use hoa::kernels::Activation;
use hoa::{Context, ContextOptions, DType, Tensor};
use std::path::{Path, PathBuf};

/// A fresh folder under the target dir for one test's cache files.
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tune-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Non-default variants every adapter runs (the fallbacks, other tiles).
fn tuned() -> Choices {
    Choices {
        conv2d: Some(Conv2dChoice::Tiled { wg: 32, tc: 4 }),
        matmul: Some(MatmulChoice::Tiled {
            wg: 32,
            tm: 4,
            tn: 4,
        }),
        attention: Some(AttentionChoice::Flash { wg: 32 }),
    }
}

fn write_cache(path: &Path, key: CacheKey, choices: &Choices) {
    let mut f = CacheFile::default();
    f.insert(key, choices).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(&f).unwrap()).unwrap();
}

/// What a new context on the test adapter loads from the cache at `path`.
fn loaded(c: &Context, path: &Path) -> Choices {
    tuning::load(&TuneCache::File(path.into()), &c.info).choices()
}

fn ctx_with_cache(path: &Path) -> Context {
    Context::new_blocking(ContextOptions {
        poison: true,
        tune_cache: TuneCache::File(path.into()),
        ..ContextOptions::from_env()
    })
    .expect("a second context on the test adapter")
}

#[test]
fn stale_or_broken_caches_are_ignored() {
    let Some(c) = ctx() else { return };
    let dir = scratch("stale");
    let path = dir.join("tune.json");
    let fresh = CacheKey::of(&c.info);
    write_cache(&path, fresh.clone(), &tuned());
    assert_eq!(loaded(c, &path), tuned(), "the fresh entry is the control");
    let stale = [
        CacheKey {
            driver_info: format!("{} (older)", fresh.driver_info),
            ..fresh.clone()
        },
        CacheKey {
            driver: format!("other-{}", fresh.driver),
            ..fresh.clone()
        },
        CacheKey {
            hoa_version: "0.0.0-other".into(),
            ..fresh.clone()
        },
        CacheKey {
            name: format!("{} (another adapter)", fresh.name),
            ..fresh.clone()
        },
        CacheKey {
            device: fresh.device.wrapping_add(1),
            ..fresh.clone()
        },
    ];
    for key in stale {
        write_cache(&path, key.clone(), &tuned());
        assert_eq!(loaded(c, &path), Choices::default(), "{key:?}");
    }
    let garbage: [&[u8]; 5] = [
        b"\x00\x01not json",
        b"{\"format\": \"something-else\", \"format_version\": 1, \"entries\": []}",
        b"[1, 2, 3]",
        b"",
        // The right adapter with a tile no shader accepts.
        br#"{"format": "hoa-tune-cache", "format_version": 1, "entries": [{"key": KEY,
            "choices": {"matmul": {"path": "subgroup", "wg": 8, "tr": 99}}}]}"#,
    ];
    let key_json = serde_json::to_string(&fresh).unwrap();
    for g in garbage {
        let text = String::from_utf8_lossy(g).replace("KEY", &key_json);
        std::fs::write(&path, text.as_bytes()).unwrap();
        assert_eq!(loaded(c, &path), Choices::default(), "{text:?}");
    }
    // A missing file and `off` are the defaults too.
    assert_eq!(loaded(c, &dir.join("none.json")), Choices::default());
    let off = tuning::load(&TuneCache::Off, &c.info);
    assert_eq!(off.choices(), Choices::default());
}

#[test]
fn entries_for_other_adapters_are_kept_and_each_adapter_finds_its_own() {
    let Some(c) = ctx() else { return };
    let dir = scratch("several");
    let path = dir.join("tune.json");
    let here = CacheKey::of(&c.info);
    let other = CacheKey {
        name: "Some Other GPU".into(),
        ..here.clone()
    };
    let theirs = Choices {
        matmul: Some(MatmulChoice::Subgroup { wg: 16, tr: 16 }),
        ..Default::default()
    };
    tuning::save(&path, other.clone(), &theirs, false).unwrap();
    tuning::save(&path, here.clone(), &tuned(), false).unwrap();
    let f = CacheFile::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(f.entries.len(), 2);
    assert_eq!(f.lookup(&other).unwrap(), Some(theirs));
    assert_eq!(f.lookup(&here).unwrap(), Some(tuned()));
    // Writing again replaces this adapter's entry only.
    tuning::save(&path, here.clone(), &Choices::default(), false).unwrap();
    let f = CacheFile::parse(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(f.entries.len(), 2);
    assert_eq!(f.lookup(&here).unwrap(), Some(Choices::default()));
    // Atomic: the temporary file was renamed, nothing else is left in the folder.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["tune.json"]);
}

#[test]
fn a_file_that_is_not_a_cache_is_never_replaced_without_force() {
    let Some(c) = ctx() else { return };
    let dir = scratch("foreign");
    let path = dir.join("notes.json");
    std::fs::write(&path, "{\"my\": \"notes\"}").unwrap();
    let key = CacheKey::of(&c.info);
    let e = tuning::save(&path, key.clone(), &tuned(), false).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("notes.json") && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"my\": \"notes\"}"
    );
    tuning::save(&path, key, &tuned(), true).unwrap();
    assert_eq!(loaded(c, &path), tuned());
    // The CLI refuses before it measures anything.
    std::fs::write(&path, "not a cache").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args(["tune", "--quick"])
        .env("HOA_TUNE_CACHE", &path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("notes.json") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a cache");
}

/// Runs conv2d, linear and attention on `c` with fixed random inputs; returns their outputs
/// and the f64 references.
fn run_kernels(c: &Context) -> Vec<(&'static str, Vec<f32>, Vec<f32>, Tol)> {
    let mut r = rng(30);
    let mut v = Vec::new();
    // conv2d 3x3, padding 1: 8 -> 12 channels on 2x8x12 (Wo % 4 == 0: the subgroup path's
    // shape, so the tuned tiled kernel is a real change).
    let (xs, ws) = ([2, 8, 8, 12], [12, 8, 3, 3]);
    let x = randn(&mut r, xs.iter().product(), 1.0);
    let w = randn(&mut r, ws.iter().product(), 0.3);
    let b = randn(&mut r, 12, 0.1);
    let xt = Tensor::from_f32(c, &x, &xs, DType::F32).unwrap();
    let wt = Tensor::from_f32(c, &w, &ws, DType::F32).unwrap();
    let bt = Tensor::from_f32(c, &b, &[12], DType::F32).unwrap();
    let o = Conv2dOptions {
        padding: 1,
        bias: Some(&bt),
        ..Default::default()
    };
    let got = conv2d::conv2d(c, &xt, &wt, &o).unwrap().to_vec(c).unwrap();
    let (want, _) = conv2d::reference::conv2d(&x, xs, &w, ws, Some(&b), 1, 1, Activation::None);
    v.push(("conv2d", got, want, F32));
    // linear 37x64 . 20x64^T (K and N multiples of 4: the subgroup path's shape).
    let (m, k, n) = (37, 64, 20);
    let a = randn(&mut r, m * k, 1.0);
    let wl = randn(&mut r, n * k, 0.2);
    let at = Tensor::from_f32(c, &a, &[m, k], DType::F32).unwrap();
    let wlt = Tensor::from_f32(c, &wl, &[n, k], DType::F32).unwrap();
    let got = linear(c, &at, &wlt, None, Activation::None)
        .unwrap()
        .to_vec(c)
        .unwrap();
    let want = matmul::reference::matmul(
        &a,
        &wl,
        None,
        1,
        m,
        n,
        k,
        false,
        true,
        false,
        false,
        1.0,
        Activation::None,
    );
    v.push(("linear", got, want, F32_REDUCE));
    // attention: 2 heads of 8, 19 queries, 23 keys.
    let d = attention::reference::Dims {
        batch: 1,
        lq: 19,
        lk: 23,
        heads: 2,
        d: 8,
        dv: 8,
    };
    let q = randn(&mut r, d.lq * 16, 1.0);
    let kk = randn(&mut r, d.lk * 16, 1.0);
    let vv = randn(&mut r, d.lk * 16, 1.0);
    let t = |data: &[f32], l| Tensor::from_f32(c, data, &[1, l, 16], DType::F32).unwrap();
    let got = attention::attention(
        c,
        &t(&q, d.lq),
        &t(&kk, d.lk),
        &t(&vv, d.lk),
        &AttentionOptions::new(2),
    )
    .unwrap()
    .to_vec(c)
    .unwrap();
    let want = attention::reference::attention(&q, &kk, &vv, &d, 1.0 / 8f64.sqrt(), false, None);
    v.push(("attention", got, want, F32_REDUCE));
    v
}

#[test]
fn a_fresh_cache_is_loaded_and_its_variants_are_taken() {
    let Some(c) = ctx() else { return };
    let dir = scratch("fresh");
    let path = dir.join("tune.json");
    write_cache(&path, CacheKey::of(&c.info), &tuned());
    let tc = ctx_with_cache(&path);
    assert_eq!(tc.tuning().choices(), tuned());
    assert_eq!(tc.tuning().taken(), 0);
    let with = run_kernels(&tc);
    // Every kernel asked and got the cached choice (conv2d asks when packing and launching).
    assert!(tc.tuning().taken() >= 4, "taken {}", tc.tuning().taken());
    let without = run_kernels(c);
    for ((name, got, want, tol), (_, def, _, _)) in with.iter().zip(&without) {
        all_close(&format!("{name} tuned vs reference"), got, want, tol);
        all_close(&format!("{name} tuned vs default"), got, def, tol);
    }
    // HOA_TUNE_CACHE=off: nothing loaded, nothing taken.
    let off = Context::new_blocking(ContextOptions {
        tune_cache: TuneCache::Off,
        ..ContextOptions::from_env()
    })
    .unwrap();
    assert_eq!(off.tuning().choices(), Choices::default());
    drop(run_kernels(&off));
    assert_eq!(off.tuning().taken(), 0);
}

#[test]
fn without_a_cache_outputs_are_bit_identical_to_the_defaults() {
    let Some(c) = ctx() else { return };
    let dir = scratch("none");
    // An entry whose choices are all the defaults, and no file at all: the same bits as a
    // context that never looked.
    let path = dir.join("tune.json");
    write_cache(&path, CacheKey::of(&c.info), &Choices::default());
    let off = Context::new_blocking(ContextOptions {
        tune_cache: TuneCache::Off,
        ..ContextOptions::from_env()
    })
    .unwrap();
    let base = run_kernels(&off);
    for p in [path, dir.join("missing.json")] {
        let tc = ctx_with_cache(&p);
        for ((name, got, _, _), (_, want, _, _)) in run_kernels(&tc).iter().zip(&base) {
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{name}"
            );
        }
        assert_eq!(tc.tuning().taken(), 0);
    }
}

#[test]
fn hoa_tune_quick_writes_a_cache_the_next_context_loads() {
    let Some(c) = ctx() else { return };
    let dir = scratch("cli");
    let path = dir.join("sub").join("tune.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args(["tune", "--quick", "--reps", "1"])
        .env("HOA_TUNE_CACHE", &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    for family in ["conv2d", "matmul", "attention"] {
        assert!(
            stdout.contains(&format!("{family:<10} winner:")),
            "{family}"
        );
    }
    assert!(stdout.contains("% FMA"));
    let f = CacheFile::parse(&std::fs::read(&path).unwrap()).unwrap();
    let key = CacheKey::of(&c.info);
    let written = f.lookup(&key).unwrap().expect("an entry for this adapter");
    let tc = ctx_with_cache(&path);
    assert_eq!(tc.tuning().choices(), written);
    // Whatever won, the kernels stay within tolerance of the reference.
    for (name, got, want, tol) in run_kernels(&tc) {
        all_close(&format!("{name} after hoa tune"), &got, &want, &tol);
    }
}
