//! `hoa serve` run as a process on the tiny fixture model, spoken to over plain HTTP/1.1: a
//! generation returns the PNG `hoa generate` writes for the same inputs, bad requests get
//! OpenAI's error object naming the field, a full queue a 429, and the server stays up.

#[path = "common/fixture.rs"]
mod fixture;

use base64::Engine as _;
use fixture::dir;
use hoa::image_io::read_png_parameters;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// The server process, killed when the test ends, however it ends.
struct Server {
    child: Child,
    addr: String,
    /// Its `url` images' folder (a killed server cannot remove its own).
    data: Option<std::path::PathBuf>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.data {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn xdg() -> String {
    std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into())
}

/// Starts `hoa serve` on a free loopback port with `extra` flags; returns once it listens.
fn start(extra: &[&str]) -> Server {
    start_env(extra, &[])
}

/// [`start`] with these environment variables set for the server.
fn start_env(extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let model = format!("pipeline_tiny={}", dir("pipeline_tiny").display());
    static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let data = (!extra.contains(&"--data-dir"))
        .then(|| std::env::temp_dir().join(format!("hoa-serve-test-{}-{n}", std::process::id())));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args(["serve", "--model", &model, "--bind", "127.0.0.1:0"])
        .args(
            data.iter()
                .flat_map(|d| [std::ffi::OsStr::new("--data-dir"), d.as_os_str()]),
        )
        .args(extra)
        .env("XDG_RUNTIME_DIR", xdg())
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run hoa serve");
    let stdout = child.stdout.take().unwrap();
    let mut server = Server {
        child,
        addr: String::new(),
        data,
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    server.addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    server
}

/// One request; returns (status, headers lowercased, body).
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    request(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

/// One request with these headers (a chunked answer is put back together).
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it reads the whole body.
    let _ = c.write_all(body);
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = raw[end + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[line + 2..line + 2 + n]);
        b = &b[line + 4 + n..];
    }
}

fn post(s: &Server, body: &Value) -> (u16, Value) {
    let (status, _, b) = http(
        &s.addr,
        "POST",
        "/v1/images/generations",
        body.to_string().as_bytes(),
    );
    (status, serde_json::from_slice(&b).expect("a JSON body"))
}

/// The error object's `param`, after checking its shape.
fn error_param(v: &Value) -> Value {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], "invalid_request_error", "{v}");
    e["param"].clone()
}

fn healthy(s: &Server) {
    let (status, _, body) = http(&s.addr, "GET", "/healthz", b"");
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let (status, _, body) = http(&s.addr, "GET", "/readyz", b"");
    assert_eq!((status, body.as_slice()), (200, b"ready".as_slice()));
}

#[test]
fn a_generation_is_the_png_hoa_generate_writes() {
    let s = start(&[]);
    let (status, v) = post(
        &s,
        &json!({"prompt": "a red circle", "model": "pipeline_tiny", "size": "32x24",
                "steps": 2, "seed": 7, "negative_prompt": "blue", "quality": "standard"}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["created"].as_u64().is_some(), "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["revised_prompt"], "a red circle");
    let png = base64::engine::general_purpose::STANDARD
        .decode(data[0]["b64_json"].as_str().unwrap())
        .unwrap();

    let out = std::env::temp_dir().join(format!("hoa-serve-{}.png", std::process::id()));
    let gen = Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args(["generate", "a red circle", "--negative", "blue", "--model"])
        .arg(dir("pipeline_tiny"))
        .args([
            "--width", "32", "--height", "24", "--steps", "2", "--seed", "7",
        ])
        .arg("--force")
        .arg("--out")
        .arg(&out)
        .env("XDG_RUNTIME_DIR", xdg())
        .output()
        .unwrap();
    assert!(gen.status.success(), "{gen:?}");
    let want = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let params = read_png_parameters(&png)
        .unwrap()
        .expect("parameters chunk");
    assert_eq!(Some(params), read_png_parameters(&want).unwrap());
    assert!(png == want, "same inputs, same PNG");

    // n makes a batch: image k is seeded seed + k, as in `hoa generate --batch`.
    let (status, v) = post(
        &s,
        &json!({"prompt": "a", "n": 2, "size": "32x24", "steps": 2}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_up() {
    let s = start(&[]);
    let (status, v) = post(&s, &json!({"prompt": "a", "size": "33x24"}));
    assert_eq!((status, error_param(&v)), (400, json!("size")));
    let (status, v) = post(&s, &json!({"prompt": "a", "size": "big"}));
    assert_eq!((status, error_param(&v)), (400, json!("size")));
    let (status, v) = post(&s, &json!({"prompt": "a", "steps": 0}));
    assert_eq!((status, error_param(&v)), (400, json!("steps")));
    let (status, v) = post(&s, &json!({"prompt": "a", "n": 11}));
    assert_eq!((status, error_param(&v)), (400, json!("n")));
    let (status, v) = post(&s, &json!({"prompt": "a", "n": 1_000_000_000_000i64}));
    assert_eq!((status, error_param(&v)), (400, json!("n")));
    // Past the device's memory, and past any side hoa takes.
    let (status, v) = post(&s, &json!({"prompt": "a", "size": "16384x16384"}));
    assert_eq!((status, error_param(&v)), (400, json!("size")));
    let (status, v) = post(&s, &json!({"prompt": "a", "size": "99999999999x8"}));
    assert_eq!((status, error_param(&v)), (400, json!("size")));
    let (status, v) = post(&s, &json!({"prompt": "a", "stpes": 2}));
    assert_eq!((status, error_param(&v)), (400, json!("stpes")));
    let (status, v) = post(&s, &json!({"prompt": "a", "response_format": "jpeg"}));
    assert_eq!((status, error_param(&v)), (400, json!("response_format")));
    let (status, v) = post(&s, &json!({"size": "32x24"}));
    assert_eq!((status, error_param(&v)), (400, json!("prompt")));
    let (status, v) = post(&s, &json!({"prompt": "a", "model": "dall-e-3"}));
    assert_eq!((status, error_param(&v)), (404, json!("model")));
    healthy(&s);

    let (status, _, body) = http(&s.addr, "POST", "/v1/images/generations", b"{\"prompt\": ");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, error_param(&v)), (400, Value::Null));
    let huge = vec![b' '; (1 << 20) + 1];
    let (status, _, _) = http(&s.addr, "POST", "/v1/images/generations", &huge);
    assert_eq!(status, 413);
    healthy(&s);

    let (status, _, body) = http(&s.addr, "GET", "/v1/models", b"");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "pipeline_tiny");
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let s = start(&["--queue", "1"]);
    let req = json!({"prompt": "a", "size": "32x24", "steps": 2}).to_string();
    let answers: Vec<(u16, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let (s, req) = (&s, &req);
                sc.spawn(move || {
                    let (status, head, _) =
                        http(&s.addr, "POST", "/v1/images/generations", req.as_bytes());
                    (status, head)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    let full = answers
        .iter()
        .find(|a| a.0 == 429)
        .expect("one request found the queue full");
    assert!(full.1.contains("\r\nretry-after: "), "{}", full.1);
    healthy(&s);
}

#[test]
fn sigterm_lets_the_request_in_flight_finish() {
    let mut s = start(&[]);
    let addr = s.addr.clone();
    let req = json!({"prompt": "a", "size": "32x24", "steps": 40}).to_string();
    let client =
        std::thread::spawn(move || http(&addr, "POST", "/v1/images/generations", req.as_bytes()).0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(client.join().unwrap(), 200);
    assert!(s.child.wait().unwrap().success());
}

/// A request that runs past `--timeout-s` gets a 504 `timeout` error, and its generation stops:
/// the next request is answered at once instead of queueing behind the 999 steps (about
/// 100 s on lavapipe), which would time it out too.
#[test]
fn past_the_time_limit_the_generation_stops_with_a_504() {
    let s = start(&["--timeout-s", "10"]);
    // The first run compiles the shaders, which may alone take seconds.
    let _ = post(&s, &json!({"prompt": "a", "size": "32x24", "steps": 1}));
    let t = std::time::Instant::now();
    let (status, v) = post(&s, &json!({"prompt": "a", "size": "32x24", "steps": 999}));
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["error"]["code"], "timeout", "{v}");
    assert_eq!(v["error"]["type"], "server_error", "{v}");
    assert!(t.elapsed().as_secs_f64() < 20.0, "{:?}", t.elapsed());
    let (status, v) = post(&s, &json!({"prompt": "a", "size": "32x24", "steps": 2}));
    assert_eq!(status, 200, "{v}");
    healthy(&s);
}

/// A client that hangs up stops its generation between steps: the next request does not wait
/// for the abandoned 999 steps.
#[test]
fn a_client_that_hangs_up_stops_its_generation() {
    let s = start(&[]);
    let _ = post(&s, &json!({"prompt": "a", "size": "32x24", "steps": 1}));
    let body = json!({"prompt": "a", "size": "32x24", "steps": 999}).to_string();
    let mut c = TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    drop(c);
    let t = std::time::Instant::now();
    let (status, v) = post(&s, &json!({"prompt": "a", "size": "32x24", "steps": 2}));
    assert_eq!(status, 200, "{v}");
    assert!(
        t.elapsed().as_secs_f64() < 30.0,
        "waited {:?} behind an abandoned generation",
        t.elapsed()
    );
}

/// A PNG of `w`x`h` RGB pixels.
fn rgb_png(w: usize, h: usize) -> Vec<u8> {
    let data = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    let img = hoa::image_io::RgbImage {
        width: w,
        height: h,
        data,
    };
    hoa::image_io::encode_png(&img, None).unwrap()
}

/// An OpenAI mask: transparent (alpha 0) on the left half, the area to edit.
fn alpha_mask(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(w, h, |x, _| {
        image::Rgba([0, 0, 0, if x < w / 2 { 0 } else { 255 }])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

/// A multipart/form-data body of text fields and files; returns (content type, body).
fn form(texts: &[(&str, &str)], files: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let b = "hoa-test-boundary-7d1f";
    let mut body = Vec::new();
    for (k, v) in texts {
        body.extend(
            format!("--{b}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n").bytes(),
        );
    }
    for (k, v) in files {
        body.extend(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{k}.png\"\r\n\
                 Content-Type: image/png\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(v);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{b}--\r\n").bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

fn post_form(
    s: &Server,
    path: &str,
    texts: &[(&str, &str)],
    files: &[(&str, &[u8])],
) -> (u16, Value) {
    let (kind, body) = form(texts, files);
    let (status, _, b) = request(&s.addr, "POST", path, &[("Content-Type", &kind)], &body);
    (
        status,
        serde_json::from_slice(&b)
            .unwrap_or_else(|_| panic!("{status}: {}", String::from_utf8_lossy(&b))),
    )
}

fn png_size(png: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(png).unwrap();
    (img.width(), img.height())
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .unwrap()
}

#[test]
fn a_stream_sends_partial_images_then_the_completed_image() {
    let s = start(&[]);
    let req = json!({"prompt": "a", "size": "32x24", "steps": 6, "seed": 3, "stream": true,
                     "partial_images": 2});
    let (status, head, body) = http(
        &s.addr,
        "POST",
        "/v1/images/generations",
        req.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let text = String::from_utf8(body).unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter(|e| e.contains("data:"))
        .map(|e| {
            let field = |k: &str| {
                e.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            (
                field("event:"),
                serde_json::from_str(&field("data:")).unwrap(),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed"
        ]
    );
    for (k, (name, v)) in events.iter().enumerate() {
        assert_eq!(v["type"], name.as_str());
        assert_eq!(png_size(&unb64(&v["b64_json"])), (32, 24));
        assert_eq!(v["size"], "32x24");
        assert_eq!(v["output_format"], "png");
        assert!(v["created_at"].as_u64().is_some(), "{v}");
        if k < 2 {
            assert_eq!(v["partial_image_index"], k);
        } else {
            assert!(v["usage"].is_object(), "{v}");
        }
    }
    // The completed image is the one the same request gives without streaming.
    let (status, v) = post(
        &s,
        &json!({"prompt": "a", "size": "32x24", "steps": 6, "seed": 3}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        unb64(&v["data"][0]["b64_json"]),
        unb64(&events[2].1["b64_json"])
    );
}

#[test]
fn url_images_are_served_for_their_time_and_no_other_path_is() {
    let dir = std::env::temp_dir().join(format!("hoa-serve-urls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = start(&["--url-ttl-s", "6", "--data-dir", dir.to_str().unwrap()]);
    let req = json!({"prompt": "a", "size": "32x24", "steps": 2, "seed": 5, "n": 2});
    let mut by_url = req.clone();
    by_url["response_format"] = json!("url");
    let (status, v) = post(&s, &by_url);
    assert_eq!(status, 200, "{v}");
    let (_, b64) = post(&s, &req);
    let prefix = format!("http://{}/v1/files/images/", s.addr);
    let mut names = Vec::new();
    for (k, d) in v["data"].as_array().unwrap().iter().enumerate() {
        let url = d["url"].as_str().unwrap();
        let name = url.strip_prefix(&prefix).unwrap_or_else(|| panic!("{url}"));
        let (status, head, png) = http(&s.addr, "GET", &format!("/v1/files/images/{name}"), b"");
        assert_eq!(status, 200);
        assert!(head.contains("content-type: image/png"), "{head}");
        assert_eq!(
            png,
            unb64(&b64["data"][k]["b64_json"]),
            "the url serves the same PNG"
        );
        names.push(name.to_string());
    }
    assert_ne!(names[0], names[1]);
    // output_format jpeg: a .jpg link served as image/jpeg; inline, the same JPEG.
    let mut jpeg = by_url.clone();
    jpeg["output_format"] = json!("jpeg");
    jpeg["output_compression"] = json!(90);
    jpeg["n"] = json!(1);
    let (status, v) = post(&s, &jpeg);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["output_format"], "jpeg");
    let url = v["data"][0]["url"].as_str().unwrap();
    assert!(url.ends_with(".jpg"), "{url}");
    let (status, head, jpg) = http(
        &s.addr,
        "GET",
        url.strip_prefix(&format!("http://{}", s.addr)).unwrap(),
        b"",
    );
    assert_eq!(status, 200);
    assert!(head.contains("content-type: image/jpeg"), "{head}");
    assert_eq!(&jpg[..3], b"\xff\xd8\xff");
    assert_eq!(png_size(&jpg), (32, 24));
    jpeg["response_format"] = json!("b64_json");
    let (_, v) = post(&s, &jpeg);
    assert_eq!(unb64(&v["data"][0]["b64_json"]), jpg);
    std::fs::write(dir.join("secret.txt"), b"not an image").unwrap();
    for path in [
        "/v1/files/images/secret.txt",
        "/v1/files/images/..%2fsecret.txt",
        "/v1/files/images/%2e%2e",
        "/v1/files/images/..",
        "/v1/files/images/../../etc/passwd",
        "/v1/files/images/%2Fetc%2Fpasswd",
        "/v1/files/images//etc/passwd",
        "/v1/files/images/0123456789abcdef0123456789abcdef.png",
    ] {
        let (status, _, body) = http(&s.addr, "GET", path, b"");
        assert_eq!(status, 404, "{path}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"]["message"].is_string(), "{path}: {v}");
    }
    // Past the time to live: not served, and swept from the folder.
    std::thread::sleep(std::time::Duration::from_millis(7500));
    let (status, _, _) = http(
        &s.addr,
        "GET",
        &format!("/v1/files/images/{}", names[0]),
        b"",
    );
    assert_eq!(status, 404);
    assert!(!dir.join(&names[0]).exists(), "expired images are deleted");
    assert!(
        dir.join("secret.txt").exists(),
        "only hoa's images are swept"
    );
    healthy(&s);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn edits_and_variations_take_a_multipart_image_and_an_alpha_mask() {
    let s = start(&[]);
    let image = rgb_png(32, 24);
    let mask = alpha_mask(32, 24);
    let texts = [("prompt", "a red circle"), ("steps", "2"), ("seed", "4")];
    let (status, img2img) = post_form(&s, "/v1/images/edits", &texts, &[("image", &image)]);
    assert_eq!(status, 200, "{img2img}");
    let plain = unb64(&img2img["data"][0]["b64_json"]);
    assert_eq!(png_size(&plain), (32, 24));
    let files: [(&str, &[u8]); 2] = [("image[]", &image), ("mask", &mask)];
    let (status, v) = post_form(&s, "/v1/images/edits", &texts, &files);
    assert_eq!(status, 200, "{v}");
    let inpainted = unb64(&v["data"][0]["b64_json"]);
    assert_eq!(png_size(&inpainted), (32, 24));
    assert_ne!(inpainted, plain, "the mask changes the result");
    let (status, v) = post_form(
        &s,
        "/v1/images/variations",
        &[("steps", "2"), ("n", "2")],
        &[("image", &image)],
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    let small_mask = alpha_mask(16, 16);
    let opaque = rgb_png(32, 24);
    for (path, texts, files, param) in [
        (
            "/v1/images/edits",
            &texts[..],
            vec![("mask", &mask[..])],
            "image",
        ),
        (
            "/v1/images/edits",
            &texts[..],
            vec![("image", &b"not a png"[..])],
            "image",
        ),
        (
            "/v1/images/edits",
            &texts[..],
            vec![("image", &image[..]), ("image", &image[..])],
            "image",
        ),
        (
            "/v1/images/edits",
            &texts[..],
            vec![("image", &image[..]), ("mask", &small_mask[..])],
            "mask",
        ),
        (
            "/v1/images/edits",
            &texts[..],
            vec![("image", &image[..]), ("mask", &opaque[..])],
            "mask",
        ),
        (
            "/v1/images/edits",
            &[("prompt", "a"), ("size", "64x64")][..],
            vec![("image", &image[..])],
            "size",
        ),
        (
            "/v1/images/edits",
            &[("prompt", "a"), ("n", "many")][..],
            vec![("image", &image[..])],
            "n",
        ),
        (
            "/v1/images/edits",
            &[("prompt", "a"), ("colour", "red")][..],
            vec![("image", &image[..])],
            "colour",
        ),
        (
            "/v1/images/variations",
            &[("prompt", "a")][..],
            vec![("image", &image[..])],
            "prompt",
        ),
    ] {
        let (status, v) = post_form(&s, path, texts, &files);
        assert_eq!(
            (status, error_param(&v)),
            (400, json!(param)),
            "{path} {texts:?}: {v}"
        );
    }
    // An edit streams as image_edit.* events.
    let stream = [
        ("prompt", "a"),
        ("steps", "4"),
        ("stream", "true"),
        ("partial_images", "1"),
    ];
    let (kind, body) = form(&stream, &[("image", &image)]);
    let (status, _, b) = request(
        &s.addr,
        "POST",
        "/v1/images/edits",
        &[("Content-Type", &kind)],
        &body,
    );
    let text = String::from_utf8_lossy(&b);
    assert_eq!(status, 200, "{text}");
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        names,
        ["image_edit.partial_image", "image_edit.completed"],
        "{text}"
    );
    // Not a form at all, and a form cut short.
    let (status, _, body) = http(&s.addr, "POST", "/v1/images/edits", b"{}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, error_param(&v)), (400, Value::Null));
    let (kind, body) = form(&texts, &[("image", &image)]);
    let cut = &body[..body.len() / 2];
    let (status, _, body) = request(
        &s.addr,
        "POST",
        "/v1/images/edits",
        &[("Content-Type", &kind)],
        cut,
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    healthy(&s);
}

#[test]
fn uploads_have_their_own_body_limit() {
    let s = start(&[]);
    // A 2 MB image part passes the 1 MiB JSON limit (it fails as an image, not as a body).
    let junk = vec![7u8; 2 << 20];
    let (status, v) = post_form(
        &s,
        "/v1/images/edits",
        &[("prompt", "a")],
        &[("image", &junk)],
    );
    assert_eq!((status, error_param(&v)), (400, json!("image")), "{v}");
    let huge = vec![7u8; 17 << 20];
    let (kind, body) = form(&[("prompt", "a")], &[("image", &huge)]);
    let (status, _, _) = request(
        &s.addr,
        "POST",
        "/v1/images/edits",
        &[("Content-Type", &kind)],
        &body,
    );
    assert_eq!(status, 413);
    healthy(&s);
}

#[test]
fn api_keys_cors_and_metrics() {
    let keys = std::env::temp_dir().join(format!("hoa-serve-keys-{}", std::process::id()));
    std::fs::write(&keys, "# keys\nsk-first\n\nsk-second\n").unwrap();
    let s = start(&[
        "--api-key-file",
        keys.to_str().unwrap(),
        "--cors-origin",
        "https://app.example",
    ]);
    let body = json!({"prompt": "a", "size": "32x24", "steps": 2}).to_string();
    let json_type = ("Content-Type", "application/json");
    for auth in [
        None,
        Some("Bearer sk-third"),
        Some("Bearer sk-firs"),
        Some("sk-first"),
    ] {
        let mut h = vec![json_type];
        h.extend(auth.map(|a| ("Authorization", a)));
        for (method, path) in [
            ("POST", "/v1/images/generations"),
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
        ] {
            let (status, _, b) = request(&s.addr, method, path, &h, body.as_bytes());
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(status, 401, "{auth:?} {path}");
            assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
        }
    }
    healthy(&s);
    let ok = [json_type, ("Authorization", "Bearer sk-second")];
    let (status, _, b) = request(
        &s.addr,
        "POST",
        "/v1/images/generations",
        &ok,
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let (status, _, _) = request(
        &s.addr,
        "POST",
        "/v1/images/generations",
        &ok,
        b"{\"size\": 1}",
    );
    assert_eq!(status, 400);

    // A browser's preflight from the allowed origin, and one from another.
    let pre = |origin: &str| {
        let h = [
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ];
        request(&s.addr, "OPTIONS", "/v1/images/generations", &h, b"").1
    };
    assert!(pre("https://app.example").contains("access-control-allow-origin: https://app.example"));
    assert!(!pre("https://evil.example").contains("access-control-allow-origin"));

    let (status, head, text) = request(&s.addr, "GET", "/metrics", &ok, b"");
    let text = String::from_utf8(text).unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let value = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("hoa_images_total "), 1.0);
    assert_eq!(value("hoa_step_seconds_count "), 2.0);
    assert!(value("hoa_step_seconds_sum ") > 0.0);
    assert_eq!(value("hoa_queue_depth "), 0.0);
    assert_eq!(value("hoa_requests_in_flight "), 0.0);
    assert_eq!(
        value("hoa_http_errors_total{type=\"invalid_request_error\",status=\"401\"} "),
        12.0
    );
    assert_eq!(
        value("hoa_http_errors_total{type=\"invalid_request_error\",status=\"400\"} "),
        1.0
    );
    let _ = std::fs::remove_file(&keys);
}

/// `quality` scales the model's default steps (low: half, hd: twice); `steps` wins over it.
#[test]
fn quality_sets_the_number_of_steps() {
    let s = start(&[]);
    let steps = |extra: Value| -> usize {
        let mut req = json!({"prompt": "a", "size": "32x24"});
        req.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, v) = post(&s, &req);
        assert_eq!(status, 200, "{v}");
        let params = read_png_parameters(&unb64(&v["data"][0]["b64_json"]))
            .unwrap()
            .unwrap();
        let at = params.find("Steps: ").unwrap() + 7;
        params[at..].split(',').next().unwrap().parse().unwrap()
    };
    let default = steps(json!({"quality": "auto"}));
    assert_eq!(
        steps(json!({"quality": "low"})),
        (default as f64 / 2.0).round() as usize
    );
    assert_eq!(steps(json!({"quality": "hd"})), default * 2);
    assert_eq!(steps(json!({"quality": "high", "steps": 3})), 3);
    let (status, v) = post(&s, &json!({"prompt": "a", "quality": "ultra"}));
    assert_eq!((status, error_param(&v)), (400, json!("quality")));
}

/// A streaming client that hangs up stops its generation too.
#[test]
fn a_stream_that_hangs_up_stops_its_generation() {
    let s = start(&[]);
    let _ = post(&s, &json!({"prompt": "a", "size": "32x24", "steps": 1}));
    let body = json!({"prompt": "a", "size": "32x24", "steps": 999, "stream": true,
                      "partial_images": 3})
    .to_string();
    let mut c = TcpStream::connect(&s.addr).unwrap();
    write!(
        c,
        "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The 200 and the stream's headers come at once.
    let mut first = [0u8; 12];
    c.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    drop(c);
    let t = std::time::Instant::now();
    let (status, v) = post(&s, &json!({"prompt": "a", "size": "32x24", "steps": 2}));
    assert_eq!(status, 200, "{v}");
    assert!(
        t.elapsed().as_secs_f64() < 30.0,
        "waited {:?} behind an abandoned stream",
        t.elapsed()
    );
}

/// Forms are read a bounded number at a time (--queue + 1): a client that stalls mid-upload
/// holds a slot, one more is a 429, and the slot comes back at the time limit (408).
#[test]
fn stalled_uploads_are_bounded() {
    let s = start(&["--queue", "1", "--timeout-s", "4"]);
    // The first run compiles the shaders, which alone may take the time limit.
    let _ = post(&s, &json!({"prompt": "a", "size": "32x24", "steps": 1}));
    let (kind, body) = form(
        &[("prompt", "a"), ("steps", "1")],
        &[("image", &rgb_png(32, 24))],
    );
    let stall = || {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        write!(
            c,
            "POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        c.write_all(&body[..40]).unwrap();
        c
    };
    let mut stalled = [stall(), stall()];
    std::thread::sleep(std::time::Duration::from_millis(500));
    let headers = [("Content-Type", kind.as_str())];
    let (status, head, _) = request(&s.addr, "POST", "/v1/images/edits", &headers, &body);
    assert_eq!(status, 429);
    assert!(head.contains("\r\nretry-after: "), "{head}");
    // Past --timeout-s a stalled upload is answered 408 and its slot freed.
    stalled[0]
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut answer = [0u8; 12];
    stalled[0].read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 408");
    drop(stalled);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, _, b) = request(&s.addr, "POST", "/v1/images/edits", &headers, &body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    healthy(&s);
}

#[test]
fn lazy_models_load_on_first_use_and_the_least_recently_used_is_dropped() {
    let default = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/default");
    let other = format!("default={}", default.display());
    let s = start(&["--model", &other, "--load", "lazy", "--max-loaded", "1"]);
    healthy(&s);
    let (_, _, models) = http(&s.addr, "GET", "/v1/models", b"");
    let models: Value = serde_json::from_slice(&models).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["pipeline_tiny", "default"],
        "all listed, none loaded yet"
    );
    let loads = |s: &Server| {
        let (_, _, m) = http(&s.addr, "GET", "/metrics", b"");
        let m = String::from_utf8(m).unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("hoa_model_loads_total "))
            .unwrap_or_else(|| panic!("no hoa_model_loads_total in {m}"))
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(loads(&s), 0, "lazy: nothing loaded before a request");
    let mut pngs = Vec::new();
    for (k, model) in ["pipeline_tiny", "default", "pipeline_tiny", "pipeline_tiny"]
        .iter()
        .enumerate()
    {
        let (status, v) = post(
            &s,
            &json!({"prompt": "a", "model": model, "size": "32x32", "steps": 1, "seed": 3}),
        );
        assert_eq!(status, 200, "request {k} ({model}): {v}");
        pngs.push(unb64(&v["data"][0]["b64_json"]));
    }
    // Loaded: tiny, default (tiny dropped), tiny again (default dropped), then tiny reused.
    assert_eq!(loads(&s), 3);
    assert!(
        pngs[0] == pngs[2] && pngs[2] == pngs[3],
        "a reloaded model gives the same PNG"
    );
    healthy(&s);

    // Eager with too small a bound, or lazy with a NATS front (which loads nothing): refused.
    let model = format!("tiny={}", dir("pipeline_tiny").display());
    for (flags, named) in [
        (&["--max-loaded", "1"][..], "--max-loaded 1"),
        (
            &["--load", "lazy", "--queue", "nats://127.0.0.1:9"][..],
            "--load lazy",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_hoa"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--model",
                &model,
                "--model",
                &other,
            ])
            .args(flags)
            .env("XDG_RUNTIME_DIR", xdg())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(named),
            "{flags:?}: {err}"
        );
    }
}

/// `/metrics`' `hoa_adapter_jobs_total` per `adapter` label.
fn adapter_jobs(s: &Server) -> std::collections::BTreeMap<String, u64> {
    let (_, _, m) = http(&s.addr, "GET", "/metrics", b"");
    String::from_utf8(m)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("hoa_adapter_jobs_total{adapter=\""))
        .map(|l| {
            let (label, n) = l.split_once("\"} ").unwrap();
            (label.to_string(), n.parse().unwrap())
        })
        .collect()
}

/// One process on two adapters (this machine's lavapipe through Vulkan, index 0, and Mesa's
/// llvmpipe through GL, index 1): concurrent requests spread over both, one job each at a time,
/// and every image is bit for bit the one a server on the adapter that made it gives for that
/// seed; SIGTERM ends both threads cleanly. The two backends differ by at most 1 in an 8-bit channel (GL has no subgroups, so its
/// reductions add in another order).
#[test]
fn two_adapters_share_one_queue_and_each_makes_its_own_image() {
    let both = ("HOA_BACKEND", "vulkan,gl");
    let mut multi = start_env(&["--adapters", "0,1"], &[both]);
    healthy(&multi);
    let seeds: Vec<u64> = (1..=6).collect();
    let req =
        |seed: u64| json!({"prompt": "a red circle", "size": "32x24", "steps": 2, "seed": seed});
    let got: Vec<Vec<u8>> = std::thread::scope(|sc| {
        let hs: Vec<_> = seeds
            .iter()
            .map(|&seed| {
                let (multi, req) = (&multi, &req);
                sc.spawn(move || {
                    let (status, v) = post(multi, &req(seed));
                    assert_eq!(status, 200, "seed {seed}: {v}");
                    unb64(&v["data"][0]["b64_json"])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let jobs = adapter_jobs(&multi);
    assert_eq!(jobs.keys().collect::<Vec<_>>(), ["0", "1"], "{jobs:?}");
    assert!(
        jobs.values().all(|&n| n >= 1),
        "both adapters took jobs: {jobs:?}"
    );
    assert_eq!(jobs.values().sum::<u64>(), 6, "each job ran once: {jobs:?}");
    healthy(&multi);
    // SIGTERM: both generation threads finish and drop their contexts; a clean exit.
    let pid = multi.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(multi.child.wait().unwrap().success());
    drop(multi);

    // The same seeds on each adapter alone (HOA_ADAPTER_INDEX picks it).
    let alone: Vec<Vec<Vec<u8>>> = ["0", "1"]
        .iter()
        .map(|i| {
            let s = start_env(&[], &[both, ("HOA_ADAPTER_INDEX", i)]);
            let pngs = seeds
                .iter()
                .map(|&seed| {
                    let (status, v) = post(&s, &req(seed));
                    assert_eq!(status, 200, "adapter {i}, seed {seed}: {v}");
                    unb64(&v["data"][0]["b64_json"])
                })
                .collect();
            assert_eq!(adapter_jobs(&s).keys().collect::<Vec<_>>(), ["default"]);
            pngs
        })
        .collect();
    for (k, seed) in seeds.iter().enumerate() {
        assert!(
            got[k] == alone[0][k] || got[k] == alone[1][k],
            "seed {seed}: the image of neither adapter alone"
        );
        let [a, b] =
            [&alone[0][k], &alone[1][k]].map(|p| image::load_from_memory(p).unwrap().to_rgb8());
        let most = a.iter().zip(b.iter()).map(|(x, y)| x.abs_diff(*y)).max();
        assert!(
            most <= Some(1),
            "seed {seed}: Vulkan and GL differ by {most:?}"
        );
    }
}

/// `--adapters` names indices `hoa info` lists, once each, and is for the single-process mode.
#[test]
fn bad_adapter_choices_are_clear_errors() {
    let model = format!("tiny={}", dir("pipeline_tiny").display());
    for (flags, env, want) in [
        (
            &["--adapters", "0,7"][..],
            None,
            "--adapters: there is no adapter 7; there are 2",
        ),
        (&["--adapters", "0,0"][..], None, "twice"),
        (&["--adapters", "2"][..], None, "only 1 of the 2 adapters"),
        (&["--adapters", "x"][..], None, "--adapters"),
        (&["--adapters", "0,1"][..], Some("1"), "HOA_ADAPTER_INDEX"),
        (&[][..], Some("9"), "adapter index 9"),
        (
            &["--adapters", "2", "--queue", "nats://127.0.0.1:9"][..],
            None,
            "--adapters is for",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoa"));
        cmd.args(["serve", "--bind", "127.0.0.1:0", "--model", &model])
            .args(flags)
            .env("XDG_RUNTIME_DIR", xdg())
            .env("HOA_BACKEND", "vulkan,gl");
        if let Some(i) = env {
            cmd.env("HOA_ADAPTER_INDEX", i);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{flags:?}: {err}"
        );
    }
}

/// A model that fails to load on the adapters' threads: the server exits with the error, after
/// joining every thread (GL's context must be dropped on its own thread), neither hanging nor
/// crashing.
#[test]
fn a_model_that_fails_to_load_ends_a_two_adapter_server_cleanly() {
    let m = std::env::temp_dir().join(format!("hoa-serve-broken-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&m);
    fixture::copy_dir(&dir("pipeline_tiny"), &m);
    let w = m.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--adapters",
            "0,1",
            "--model",
        ])
        .arg(format!("broken={}", m.display()))
        .env("XDG_RUNTIME_DIR", xdg())
        .env("HOA_BACKEND", "vulkan,gl")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "an error exit, not a signal: {:?}: {err}",
        out.status
    );
    assert!(err.contains("adapter") && err.contains("broken"), "{err}");
    let _ = std::fs::remove_dir_all(&m);
}

/// `hoa generate` with `args` into a temporary PNG; returns its bytes.
fn generate_png(args: &[&str]) -> Vec<u8> {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("hoa-serve-gen-{}-{n}.png", std::process::id()));
    let gen = Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args(["generate"])
        .args(args)
        .arg("--force")
        .arg("--out")
        .arg(&out)
        .env("XDG_RUNTIME_DIR", xdg())
        .output()
        .unwrap();
    assert!(gen.status.success(), "{gen:?}");
    let png = std::fs::read(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    png
}

#[test]
fn variations_of_a_stable_unclip_model_are_hoa_generate_variation_and_others_img2img() {
    let unclip = dir("unclip_tiny");
    let s = start(&["--model", &format!("unclip_tiny={}", unclip.display())]);
    let image_path = unclip.join("image.png");
    let image = std::fs::read(&image_path).unwrap();
    let texts = [
        ("model", "unclip_tiny"),
        ("size", "32x24"),
        ("steps", "2"),
        ("guidance", "3"),
        ("seed", "7"),
    ];
    let files: [(&str, &[u8]); 1] = [("image", &image)];
    let (status, v) = post_form(&s, "/v1/images/variations", &texts, &files);
    assert_eq!(status, 200, "{v}");
    let png = unb64(&v["data"][0]["b64_json"]);
    let want = generate_png(&[
        "--variation",
        image_path.to_str().unwrap(),
        "--model",
        unclip.to_str().unwrap(),
        "--width",
        "32",
        "--height",
        "24",
        "--steps",
        "2",
        "--guidance",
        "3",
        "--seed",
        "7",
    ]);
    let params = read_png_parameters(&png).unwrap().expect("parameters");
    assert_eq!(Some(params.clone()), read_png_parameters(&want).unwrap());
    assert!(params.contains("Variation noise level: 0"), "{params}");
    assert!(
        png == want,
        "same inputs, same PNG as hoa generate --variation"
    );
    // noise_level is read as a number from the form and reaches the pipeline.
    let noisy = [&texts[..], &[("noise_level", "900")]].concat();
    let (status, v) = post_form(&s, "/v1/images/variations", &noisy, &files);
    assert_eq!(status, 200, "{v}");
    let other = unb64(&v["data"][0]["b64_json"]);
    let params = read_png_parameters(&other).unwrap().expect("parameters");
    assert!(params.contains("Variation noise level: 900"), "{params}");

    // The default model has no image encoder: img2img of the image from the empty prompt.
    // (A 32x24 image: the fixture's 40x36 is no multiple of 8, a 400 naming the size.)
    let plain = [("model", "pipeline_tiny"), ("steps", "2"), ("seed", "7")];
    let small = rgb_png(32, 24);
    let (status, v) = post_form(
        &s,
        "/v1/images/variations",
        &plain,
        &[("image", &small[..])],
    );
    assert_eq!(status, 200, "{v}");
    let params = read_png_parameters(&unb64(&v["data"][0]["b64_json"]))
        .unwrap()
        .expect("parameters");
    assert!(
        params.contains("Denoising strength") && !params.contains("Variation"),
        "{params}"
    );
    // Errors name the field: noise_level without an image encoder, a prompt-only generation
    // or an edit on the unCLIP model (the model), a variation of a broken image.
    let noisy_plain = [&plain[..], &[("noise_level", "5")]].concat();
    let (status, v) = post_form(&s, "/v1/images/variations", &noisy_plain, &files);
    assert_eq!(
        (status, error_param(&v)),
        (400, json!("noise_level")),
        "{v}"
    );
    let (status, v) = post(
        &s,
        &json!({"prompt": "a", "model": "unclip_tiny", "size": "32x24", "steps": 2}),
    );
    assert_eq!((status, error_param(&v)), (400, json!("model")), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/images/variations"),
        "{v}"
    );
    let edit = [("model", "unclip_tiny"), ("prompt", "a"), ("steps", "2")];
    let (status, v) = post_form(&s, "/v1/images/edits", &edit, &files);
    assert_eq!((status, error_param(&v)), (400, json!("model")), "{v}");
    for model in ["unclip_tiny", "pipeline_tiny"] {
        let bad: [(&str, &[u8]); 1] = [("image", b"not a png")];
        let (status, v) = post_form(&s, "/v1/images/variations", &[("model", model)], &bad);
        assert_eq!((status, error_param(&v)), (400, json!("image")), "{v}");
    }
    healthy(&s);
}

/// A model whose hoa.json names a rewriter (the shipped T5 rewriter beside the tiny model):
/// `revised_prompt` is the rewriter's rewrite, run on the generation thread (also what the
/// PNG records), and `"upsample": false` leaves the prompt as typed.
#[test]
fn revised_prompt_is_the_rewriters_rewrite() {
    let m = std::env::temp_dir().join(format!("hoa-serve-rw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&m);
    fixture::copy_dir(&dir("pipeline_tiny"), &m);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    fixture::copy_dir(&root.join("weights/default/rewriter"), &m.join("rw"));
    std::fs::write(m.join("hoa.json"), r#"{"rewriter": "rw"}"#).unwrap();
    let s = start(&["--model", &format!("rw={}", m.display())]);
    let ask = |extra: Value| {
        let mut body = json!({"prompt": "two green circles", "model": "rw", "size": "32x24",
                              "steps": 1, "seed": 3});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, v) = post(&s, &body);
        assert_eq!(status, 200, "{v}");
        let d = &v["data"][0];
        let png = base64::engine::general_purpose::STANDARD
            .decode(d["b64_json"].as_str().unwrap())
            .unwrap();
        let params = read_png_parameters(&png).unwrap().unwrap();
        (d["revised_prompt"].as_str().unwrap().to_string(), params)
    };
    let rewrite = "a large solid green circle left of a large solid green circle";
    let (revised, params) = ask(json!({}));
    assert_eq!(revised, rewrite);
    assert!(
        params.contains(&format!("Upsampled prompt: {rewrite}")),
        "{params}"
    );
    let (revised, params) = ask(json!({"upsample": false}));
    assert_eq!(revised, "two green circles");
    assert!(!params.contains("Upsampled"), "{params}");
    drop(s);
    let _ = std::fs::remove_dir_all(&m);
}
