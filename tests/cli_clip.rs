//! `hoa clip` run as a process on the CLIP fixture folder (tests/fixtures/clip_model): the
//! printed probabilities, cosines and CLIP scores against the numbers transformers computed
//! for the same images and prompts (io.safetensors), and each bad input a clear message.

#[path = "common/cli.rs"]
mod cli;
mod common;
use cli::hoa;
#[path = "common/fixture.rs"]
mod fixture;

use fixture::{dir, Io};
use std::path::PathBuf;
use std::process::Output;

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "hoa failed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    assert!(!o.status.success(), "hoa should have failed");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hoa-cli-clip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fixture: model folder, its image files (io's row order) and prompts.
struct Fixture {
    name: String,
    model: String,
    images: Vec<String>,
    prompts: Vec<String>,
    io: Io,
    dim: usize,
}

fn fixture() -> Fixture {
    fixture_named("clip_model")
}

/// A fixture folder; its model is the folder itself or `prompts.json`'s `model` (a path from
/// the repository root: the shipped toy CLIP).
fn fixture_named(name: &str) -> Fixture {
    let d = dir(name);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("prompts.json")).unwrap()).unwrap();
    let list = |k: &str| -> Vec<String> {
        meta[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let io = Io::load(name);
    let dim = io.f32("text_embeds").1[1];
    let model = match meta["model"].as_str() {
        Some(m) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(m),
        None => d.clone(),
    };
    Fixture {
        name: name.to_string(),
        model: model.display().to_string(),
        images: list("images"),
        prompts: list("prompts"),
        io,
        dim,
    }
}

impl Fixture {
    fn image_path(&self, name: &str) -> String {
        dir(&self.name)
            .join("images")
            .join(name)
            .display()
            .to_string()
    }

    /// transformers' cosine of image `i` (io row) with prompt `t`.
    fn cosine(&self, i: usize, t: usize) -> f32 {
        let (img, txt) = (self.io.f32("image_embeds").0, self.io.f32("text_embeds").0);
        let d = self.dim;
        (0..d).map(|k| img[i * d + k] * txt[t * d + k]).sum()
    }

    fn row(&self, name: &str) -> usize {
        self.images.iter().position(|n| n == name).unwrap()
    }
}

#[test]
fn classify_prints_transformers_probabilities() {
    if common::ctx().is_none() {
        return;
    }
    // The fixture's prompts are "a photo of " + the labels.
    classify_matches(&fixture(), "a photo of {}");
}

/// The shipped toy CLIP (weights/clip, its word-level tokenizer) run by hoa == transformers on
/// held-out renders (tools/fixtures/clip_toy.py).
#[test]
fn shipped_toy_clip_classifies_as_transformers() {
    if common::ctx().is_none() {
        return;
    }
    classify_matches(&fixture_named("clip_toy"), "{}");
}

/// `hoa clip classify` of every fixture image over the labels its prompts make with `template`
/// prints the softmax of transformers' `logits_per_image`.
fn classify_matches(f: &Fixture, template: &str) {
    let prefix = &template[..template.find("{}").unwrap()];
    let labels: Vec<&str> = f.prompts.iter().map(|p| &p[prefix.len()..]).collect();
    let paths: Vec<String> = f.images.iter().map(|n| f.image_path(n)).collect();
    let mut args = vec!["clip", "classify"];
    args.extend(paths.iter().map(String::as_str));
    let joined = labels.join(",");
    args.extend([
        "--labels",
        &joined,
        "--template",
        template,
        "--model",
        &f.model,
    ]);
    let out = stdout(&hoa(&args));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("image") && lines[0].ends_with("best"),
        "{out}"
    );
    let logits = f.io.f32("logits_per_image").0;
    let n = labels.len();
    for (i, line) in lines[1..].iter().enumerate() {
        assert!(line.starts_with(&paths[i]), "row {i}: {line}");
        let probs: Vec<f32> = line[paths[i].len()..]
            .split_whitespace()
            .take(n)
            .map(|v| v.parse().unwrap())
            .collect();
        // softmax of transformers' logits_per_image row
        let row = &logits[i * n..(i + 1) * n];
        let m = row.iter().fold(f32::MIN, |a, &b| a.max(b));
        let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        for (j, (&got, want)) in probs.iter().zip(e.iter().map(|v| v / s)).enumerate() {
            // printed with 4 decimals
            assert!(
                (got - want).abs() <= 1.5e-4,
                "{}: {} got {got} want {want}",
                f.images[i],
                labels[j]
            );
        }
        let best = (0..n).fold(0, |b, j| if row[j] > row[b] { j } else { b });
        assert!(line.ends_with(labels[best]), "{line}");
    }
    assert_eq!(lines.len(), 1 + f.images.len());
}

#[test]
fn index_then_search_by_text_and_by_image() {
    if common::ctx().is_none() {
        return;
    }
    let f = fixture();
    let d = tmp("index");
    let idx = d.join("images.safetensors").display().to_string();
    let imgs = dir("clip_model").join("images").display().to_string();
    stdout(&hoa(&[
        "clip", "index", &imgs, "--out", &idx, "--model", &f.model,
    ]));
    let e = stderr(&hoa(&[
        "clip", "index", &imgs, "--out", &idx, "--model", &f.model,
    ]));
    assert!(
        e.contains(&format!("--out {idx}: exists (pass --force")),
        "{e}"
    );
    stdout(&hoa(&[
        "clip", "index", &imgs, "--out", &idx, "--model", &f.model, "--force",
    ]));
    // By text: the model is the index's own; cosines as transformers' embeddings give them.
    let out = stdout(&hoa(&["clip", "search", &idx, &f.prompts[1], "-k", "3"]));
    let mut want: Vec<(f32, &str)> = f
        .images
        .iter()
        .enumerate()
        .map(|(i, n)| (f.cosine(i, 1), n.as_str()))
        .collect();
    want.sort_by(|a, b| b.0.total_cmp(&a.0));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    for (r, row) in rows.iter().enumerate() {
        assert_eq!(row[0], (r + 1).to_string());
        assert_eq!(row[2], want[r].1, "rank {r}: {out}");
        let cos: f32 = row[1].parse().unwrap();
        assert!((cos - want[r].0).abs() <= 1.5e-4, "{cos} vs {}", want[r].0);
    }
    // By image: the image itself first, at cosine 1.
    let probe = f.image_path(&f.images[2]);
    let out = stdout(&hoa(&[
        "clip", "search", &idx, "--image", &probe, "-k", "1",
    ]));
    let top: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(top[1..], ["1.0000", f.images[2].as_str()], "{out}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn score_is_the_mean_clamped_cosine_times_100() {
    if common::ctx().is_none() {
        return;
    }
    let f = fixture();
    let d = tmp("score");
    // Images pair with lines in name order: gray, landscape, portrait, rgba, tiny.
    let mut names = f.images.clone();
    names.sort();
    let picks = [0, 1, 2, 1, 0];
    let lines: Vec<&str> = picks.iter().map(|&p| f.prompts[p].as_str()).collect();
    std::fs::write(d.join("prompts.txt"), lines.join("\n") + "\n\n").unwrap();
    let imgs = dir("clip_model").join("images").display().to_string();
    let pf = d.join("prompts.txt").display().to_string();
    let out = stdout(&hoa(&[
        "clip",
        "score",
        "--images",
        &imgs,
        "--prompts",
        &pf,
        "--model",
        &f.model,
        "--mismatched",
    ]));
    let want: Vec<f32> = names
        .iter()
        .zip(picks)
        .map(|(n, p)| (100.0 * f.cosine(f.row(n), p)).max(0.0))
        .collect();
    for (line, (n, w)) in out.lines().skip(1).zip(names.iter().zip(&want)) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], n);
        let got: f32 = cols[0].parse().unwrap();
        assert!((got - w).abs() <= 0.006, "{n}: {got} vs {w}");
    }
    let mean = want.iter().sum::<f32>() / want.len() as f32;
    let line = |start: &str| -> f32 {
        let l = out.lines().find(|l| l.starts_with(start)).expect(start);
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let got = line("CLIP score (mean of 5): ");
    assert!((got - mean).abs() <= 1e-3, "{got} vs {mean}");
    // Each image with the next one's prompt.
    let other: f32 = (0..5)
        .map(|k| (100.0 * f.cosine(f.row(&names[k]), picks[(k + 1) % 5])).max(0.0))
        .sum::<f32>()
        / 5.0;
    let got = line("mismatched (each image with the next one's prompt): ");
    assert!((got - other).abs() <= 1e-3, "{got} vs {other}");
    // One prompt short: refused, naming the file and the counts.
    std::fs::write(d.join("prompts.txt"), lines[..4].join("\n")).unwrap();
    let e = stderr(&hoa(&[
        "clip",
        "score",
        "--images",
        &imgs,
        "--prompts",
        &pf,
        "--model",
        &f.model,
    ]));
    assert!(
        e.contains(&format!("--prompts {pf}: 4 prompts for 5 images")),
        "{e}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_inputs_are_one_clear_line() {
    if common::ctx().is_none() {
        return;
    }
    let f = fixture();
    let img = f.image_path(&f.images[0]);
    let d = tmp("bad");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--labels".into(), " ,a cat".into(), "--model".into(), f.model.clone()],
            "--labels: needs a comma-separated list of non-empty labels".into(),
        ),
        (
            vec!["--labels".into(), "a".into(), "--template".into(), "a photo".into(), "--model".into(), f.model.clone()],
            "--template: \"a photo\" must contain `{}` exactly once".into(),
        ),
        (
            vec!["--labels".into(), "a".into(), "--model".into(), dir("clip_text").display().to_string()],
            "config.json: `architectures` = [\"CLIPTextModel\"]: this file is not a CLIPModel config".into(),
        ),
        (
            vec!["--labels".into(), "a".into(), "--model".into(), "/no/such/dir".into()],
            "--model /no/such/dir: no such folder".into(),
        ),
    ];
    for (extra, want) in cases {
        let mut args: Vec<&str> = vec!["clip", "classify", &img];
        args.extend(extra.iter().map(String::as_str));
        let e = stderr(&hoa(&args));
        assert!(e.contains(&want), "{args:?}: {e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
    // A file that is not an image, named in the error.
    let bad = d.join("notes.png");
    std::fs::write(&bad, "hello").unwrap();
    let b = bad.display().to_string();
    let e = stderr(&hoa(&[
        "clip", "classify", &b, "--labels", "a", "--model", &f.model,
    ]));
    assert!(
        e.contains(&format!("{b}: cannot decode it as PNG or JPEG")),
        "{e}"
    );
    // Not an index.
    let e = stderr(&hoa(&["clip", "search", &b, "a cat"]));
    assert!(e.contains(&format!("{b}: not a safetensors file")), "{e}");
    // A folder with one broken image: named, before the model loads; no index written.
    let folder = d.join("imgs");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(&img, folder.join("a.png")).unwrap();
    std::fs::write(folder.join("zz.png"), "not an image").unwrap();
    let (fo, idx) = (folder.display().to_string(), d.join("i.st"));
    let is = idx.display().to_string();
    let e = stderr(&hoa(&[
        "clip", "index", &fo, "--out", &is, "--model", &f.model,
    ]));
    let zz = folder.join("zz.png").display().to_string();
    assert!(
        e.contains(&format!("{zz}: cannot decode it as PNG or JPEG")),
        "{e}"
    );
    assert!(!idx.exists());
    // An index whose model folder has gone: says so and how to go on.
    std::fs::remove_file(folder.join("zz.png")).unwrap();
    let m = d.join("model");
    fixture::copy_dir(&dir("clip_model"), &m);
    let ms = m.display().to_string();
    stdout(&hoa(&["clip", "index", &fo, "--out", &is, "--model", &ms]));
    std::fs::remove_dir_all(&m).unwrap();
    let e = stderr(&hoa(&["clip", "search", &is, "a cat"]));
    assert!(e.contains("is not there; pass --model DIR"), "{e}");
    stdout(&hoa(&["clip", "search", &is, "a cat", "--model", &f.model]));
    std::fs::remove_dir_all(&d).unwrap();
}
