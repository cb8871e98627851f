//! `hoa serve --queue nats://...` with two `hoa worker`s on the shipped model, everything on
//! loopback against a `nats-server -js`: a bounded load test (200 requests from 16 clients)
//! answers every request with an image or a 429 and loses none, and a worker killed mid-job
//! (SIGKILL) leaves its job to the other one, which completes it; a streamed request gets the
//! worker's previews as partial images; a job three workers died on is answered with an error.
//!
//! The server is `HOA_NATS_URL` when set (`.ci/run` starts one), else a `nats-server` this test
//! starts itself; with neither the test fails when `HOA_REQUIRE_NATS=1` (CI) and skips
//! otherwise.

use base64::Engine as _;
use hoa::model_files::DirFiles;
use hoa::model_info::ModelInfo;
use hoa::request::Request;
use hoa::resolve::{resolve, DeviceLimits};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const REQUESTS: usize = 200;
const CLIENTS: usize = 16;
/// Requests before the load test, so that it measures warm workers.
const WARM_UP: usize = 4;
/// Jobs the stream may hold (waiting or running) before the front answers 429.
const QUEUE_MAX: &str = "6";
/// Short, so a killed worker's job moves on quickly (progress acks go every second).
const ACK_WAIT: &str = "3";
/// No phase may take longer than this; a test that hangs is a failure.
const DEADLINE: Duration = Duration::from_secs(420);

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/default")
}

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test's hold on a NATS server: the one it started, or the shared one (`HOA_NATS_URL`, as
/// .ci/run starts it) taken by one test at a time, because every front sets the one stream's
/// length (`--queue-max`) and the load test needs its own to fill.
enum Held {
    Own(#[allow(dead_code)] Proc),
    Shared(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>),
}

static SHARED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The NATS server's URL, and the hold on it for the test's duration.
fn nats() -> Option<(String, Held)> {
    if let Ok(url) = std::env::var("HOA_NATS_URL") {
        let guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        return Some((url, Held::Shared(guard)));
    }
    let required = std::env::var("HOA_REQUIRE_NATS").is_ok_and(|v| v == "1");
    if Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !required,
            "HOA_REQUIRE_NATS=1 but neither HOA_NATS_URL is set nor nats-server installed \
             (apt-get install nats-server)"
        );
        eprintln!("skipped: no nats-server (apt-get install nats-server) and no HOA_NATS_URL");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // One store per server: tests run at once, each with its own.
    let dir = std::env::temp_dir().join(format!("hoa-nats-{}-{port}", std::process::id()));
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let server = Proc(child);
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((format!("nats://127.0.0.1:{port}"), Held::Own(server)))
}

fn hoa(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hoa"));
    c.args(args).env(
        "XDG_RUNTIME_DIR",
        std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
    );
    c
}

/// Spawns `c` and waits for its first stdout line; returns it with the process.
fn spawn_ready(mut c: Command) -> (Proc, String) {
    let mut child = c.stdout(Stdio::piped()).spawn().expect("run hoa");
    let stdout = child.stdout.take().unwrap();
    let p = Proc(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "hoa exited before it was ready");
    (p, line.trim().to_string())
}

/// `hoa serve` with `args`, ready: the process and the address it listens on.
fn serve_ready(args: &[&str]) -> (Proc, String) {
    let (p, line) = spawn_ready(hoa(args));
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (p, addr)
}

/// A front on `url` serving the tiny model under a name of its own (`{prefix}-{pid}`, so the
/// jobs of another run on the same server never mix in): the name, the process, its address.
fn front(url: &str, prefix: &str) -> (String, Proc, String) {
    let model = format!("{prefix}-{}", std::process::id());
    let m = format!("{model}={}", model_dir().display());
    let args = [
        "serve",
        "--model",
        &m,
        "--bind",
        "127.0.0.1:0",
        "--queue",
        url,
    ];
    let (p, addr) = serve_ready(&args);
    (model, p, addr)
}

/// A worker whose stderr lines arrive on `log` tagged with `tag`.
fn worker(url: &str, model: &str, tag: usize, log: &mpsc::Sender<(usize, String)>) -> Proc {
    worker_with(url, model, tag, log, &[], &[])
}

/// [`worker`] with `extra` flags and `envs` set.
fn worker_with(
    url: &str,
    model: &str,
    tag: usize,
    log: &mpsc::Sender<(usize, String)>,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Proc {
    let m = format!("{model}={}", model_dir().display());
    let mut c = hoa(&[
        "worker",
        "--queue",
        url,
        "--model",
        &m,
        "--ack-wait",
        ACK_WAIT,
    ]);
    c.args(extra).envs(envs.iter().copied());
    c.stderr(Stdio::piped());
    let mut child = c.stdout(Stdio::piped()).spawn().expect("run hoa worker");
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("worker {tag}: {line}");
            let _ = log.send((tag, line));
        }
    });
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.starts_with("worker ready"), "worker {tag}: {line:?}");
    Proc(child)
}

/// One request; returns (status, headers lowercased, body).
fn http(addr: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        c,
        "POST /v1/images/generations HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, raw[end + 4..].to_vec())
}

/// The one PNG of a 200 answer.
fn png_of(body: &[u8]) -> Vec<u8> {
    let v: Value = serde_json::from_slice(body).expect("a JSON body");
    let data = v["data"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(data.len(), 1, "{v}");
    base64::engine::general_purpose::STANDARD
        .decode(data[0]["b64_json"].as_str().unwrap())
        .unwrap()
}

fn png_size(png: &[u8]) -> (u32, u32) {
    let r = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    (r.info().width, r.info().height)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn a_request_reaches_a_worker_as_the_same_resolved_job() {
    let info = ModelInfo::read(&DirFiles::open(model_dir()).unwrap()).unwrap();
    let limits = DeviceLimits {
        max_binding_bytes: 1 << 27,
        dtype_size: 4,
        host_memory: false,
    };
    let req = Request::from_json(
        r#"{"prompt": "a red circle", "negative_prompt": "blue", "steps": 3, "seed": 9,
            "width": 64, "height": 48, "guidance": 3.5, "scheduler": "euler_a"}"#,
    )
    .unwrap();
    let wire = serde_json::to_string(&req).unwrap();
    let back = Request::from_json(&wire).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), wire);
    let (a, b) = (
        resolve(&req, &info, limits).unwrap(),
        resolve(&back, &info, limits).unwrap(),
    );
    assert_eq!(format!("{:?}", a.options), format!("{:?}", b.options));
    assert_eq!(a.upsampled, b.upsampled);
}

#[test]
fn scale_out_answers_every_request_and_survives_a_killed_worker() {
    let Some((url, _server)) = nats() else {
        return;
    };
    let started = Instant::now();
    // A model name of its own: the jobs of another run on the same server never mix in.
    let model = format!("load-{}", std::process::id());
    let m = format!("{model}={}", model_dir().display());
    let (_front, addr) = serve_ready(&[
        "serve",
        "--model",
        &m,
        "--bind",
        "127.0.0.1:0",
        "--queue",
        &url,
        "--queue-max",
        QUEUE_MAX,
        "--timeout-s",
        "300",
    ]);
    // A bad request is answered by the front at once, before any worker exists.
    let bad = json!({"prompt": "a red circle", "model": model, "size": "65x64"}).to_string();
    let (status, _, b) = http(&addr, bad.as_bytes());
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!((status, &v["error"]["param"]), (400, &json!("size")), "{v}");
    let (log_tx, log) = mpsc::channel();
    let mut workers = [
        Some(worker(&url, &model, 0, &log_tx)),
        Some(worker(&url, &model, 1, &log_tx)),
    ];
    let body = json!({"prompt": "a red circle", "model": model, "size": "64x64", "steps": 2,
                      "seed": 5})
    .to_string();
    // Warm-up (a first run compiles the pipelines): a few at once, so both workers get some.
    let warm: Vec<_> = (0..WARM_UP)
        .map(|_| {
            let (a, b) = (addr.clone(), body.clone());
            std::thread::spawn(move || http(&a, b.as_bytes()))
        })
        .collect();
    for w in warm {
        let (status, _, b) = w.join().unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    }
    done_lines(&log, WARM_UP);
    let setup = started.elapsed().as_secs_f64();

    let (ok, full, wall, lat) = load(&addr, &body);
    assert!(!ok.is_empty(), "no request got an image");
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let summary = format!(
        "serve_nats load: {REQUESTS} requests from {CLIENTS} clients, 1 front + 2 workers, \
         64x64 2 steps, --queue-max {QUEUE_MAX}: {} images, {} answered 429, 0 lost in \
         {wall:.1} s; {:.2} images/s, {:.1} requests/s; latency of the images p50 {:.2} s, \
         p95 {:.2} s (setup and {WARM_UP} warm-up requests {setup:.1} s)",
        ok.len(),
        full,
        ok.len() as f64 / wall,
        REQUESTS as f64 / wall,
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.95),
    );
    eprintln!("{summary}");
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve_nats_load.txt"),
        format!("{summary}\n"),
    );
    assert_eq!(ok.len() + full, REQUESTS);
    assert!(
        full > 0,
        "{CLIENTS} clients never filled a queue of {QUEUE_MAX}"
    );
    // Same request, same seed: every worker resolved it to the same image.
    assert!(ok.iter().all(|p| p == &ok[0]), "the workers' images differ");
    assert_eq!(png_size(&ok[0]), (64, 64));
    let done = done_lines(&log, ok.len());
    assert!(
        done.contains(&0) && done.contains(&1),
        "both workers worked"
    );

    // A worker killed mid-job: the other gets the job once the ack wait runs out.
    let killed_body = json!({"prompt": "a blue square", "model": model, "size": "64x64",
                             "steps": 25, "seed": 6})
    .to_string();
    let a = addr.clone();
    let client = std::thread::spawn(move || http(&a, killed_body.as_bytes()));
    let t = Instant::now();
    let (victim, id) = loop {
        let (w, l) = log.recv_timeout(DEADLINE).expect("a worker took the job");
        if let Some(rest) = l.strip_prefix("job ") {
            if l.contains(": started") {
                break (w, rest.split(':').next().unwrap().to_string());
            }
        }
    };
    // SIGKILL: no goodbye, no ack.
    workers[victim].take();
    eprintln!("killed worker {victim} on job {id}");
    let (status, _, body) = client.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(png_size(&png_of(&body)), (64, 64));
    // The survivor took the job again and finished it (its `done` line may trail the answer).
    let survivor = 1 - victim;
    let mut lines = Vec::new();
    for what in ["started (delivery 2)", "done in"] {
        let want = format!("job {id}: {what}");
        loop {
            let (w, l) = log
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("worker {survivor} never logged `{want}`: {lines:?}"));
            if w == survivor && l.starts_with(&want) {
                break;
            }
            lines.push((w, l));
        }
    }
    eprintln!(
        "serve_nats kill: job {id} completed on worker {survivor} {:.1} s after worker {victim} \
         took it and was killed",
        t.elapsed().as_secs_f64()
    );

    // Streaming: the worker's previews come back over NATS as partial images, then the image.
    let req = json!({"prompt": "a red circle", "model": model, "size": "64x64", "steps": 6,
                     "seed": 3, "stream": true, "partial_images": 2});
    let (status, head, body) = http(&addr, req.to_string().as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let text = String::from_utf8(body).unwrap();
    let names: Vec<&str> = (text.lines())
        .filter_map(|l| l.strip_prefix("event:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        names,
        [
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed"
        ],
        "{text}"
    );

    // A job every worker dies on (the survivor stopped first): after MAX_DELIVER - 1 = 3
    // deaths the next worker answers it with an error instead of running it again.
    drop(workers);
    let req = json!({"prompt": "a red star", "model": model, "size": "64x64", "steps": 25,
                     "seed": 8})
    .to_string();
    let a = addr.clone();
    let client = std::thread::spawn(move || http(&a, req.as_bytes()));
    for delivery in 1..=3 {
        let w = worker(&url, &model, 10 + delivery, &log_tx);
        let want = format!("started (delivery {delivery})");
        loop {
            let (t, l) = log.recv_timeout(DEADLINE).expect("a worker took the job");
            if t == 10 + delivery && l.contains(&want) {
                break;
            }
        }
        drop(w); // SIGKILL
    }
    let last = worker(&url, &model, 14, &log_tx);
    let (status, _, body) = client.join().unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 500, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("3 workers and none finished it"), "{v}");
    drop(last);
    assert!(started.elapsed() < DEADLINE * 2);
}

/// Which worker logged each of the next `n` finished jobs. A worker logs `done` after it
/// acks, which may be just after its answer went out.
fn done_lines(log: &mpsc::Receiver<(usize, String)>, n: usize) -> Vec<usize> {
    let mut done = Vec::new();
    while done.len() < n {
        let (w, l) = log
            .recv_timeout(Duration::from_secs(30))
            .expect("a `done` line per image");
        if l.contains(": done in") {
            done.push(w);
        }
    }
    done
}

/// `REQUESTS` requests from `CLIENTS` threads; a client told 429 waits `Retry-After` seconds
/// before its next request, as OpenAI's client does (but a 429 is an answer: nothing is
/// retried). Returns the PNGs, the 429 count, the
/// wall time and each image's latency.
fn load(addr: &str, body: &str) -> (Vec<Vec<u8>>, usize, f64, Vec<f64>) {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, body, next) = (addr.to_string(), body.to_string(), next.clone());
            std::thread::spawn(move || {
                let (mut ok, mut full, mut lat) = (Vec::new(), 0, Vec::new());
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < REQUESTS {
                    assert!(
                        t.elapsed() < DEADLINE,
                        "the load test ran past its deadline"
                    );
                    let r = Instant::now();
                    let (status, head, b) = http(&addr, body.as_bytes());
                    match status {
                        200 => {
                            ok.push(png_of(&b));
                            lat.push(r.elapsed().as_secs_f64());
                        }
                        429 => {
                            let wait: u64 = (head.lines())
                                .find_map(|l| l.strip_prefix("retry-after: "))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or_else(|| panic!("429 without Retry-After: {head}"));
                            full += 1;
                            std::thread::sleep(Duration::from_secs(wait.min(5)));
                        }
                        s => panic!("status {s}: {}", String::from_utf8_lossy(&b)),
                    }
                }
                (ok, full, lat)
            })
        })
        .collect();
    let (mut ok, mut full, mut lat) = (Vec::new(), 0, Vec::new());
    for c in clients {
        let (o, f, l) = c.join().unwrap();
        ok.extend(o);
        full += f;
        lat.extend(l);
    }
    (ok, full, t.elapsed().as_secs_f64(), lat)
}

/// A POST of `body` as `kind` to `path`; returns (status, body).
fn post_to(addr: &str, path: &str, kind: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {kind}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        raw[end + 4..].to_vec(),
    )
}

/// A multipart/form-data body of text fields and PNG files; returns (content type, body).
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

fn png_of_image(img: image::DynamicImage) -> Vec<u8> {
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

#[test]
fn edits_and_variations_over_nats_give_the_single_process_pngs() {
    let Some((url, _server)) = nats() else {
        return;
    };
    let model = format!("edit-{}", std::process::id());
    let m = format!("{model}={}", model_dir().display());
    let addr = |line: String| {
        line.strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string()
    };
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--model", &m, "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (p, line) = spawn_ready(hoa(&args));
        (p, addr(line))
    };
    let (_front, nats_addr) = serve(&["--queue", &url]);
    let (_local, local_addr) = serve(&[]);
    let (log, _) = mpsc::channel();
    let _worker = worker(&url, &model, 0, &log);

    let (w, h) = (64u32, 48u32);
    let image = png_of_image(image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(
        w,
        h,
        |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 251) as u8]),
    )));
    // Transparent on the left (repaint), a soft edge of partial alpha in the middle.
    let mask = png_of_image(image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
        w,
        h,
        |x, _| image::Rgba([0, 0, 0, (x.saturating_sub(24) * 16).min(255) as u8]),
    )));
    let texts = [("prompt", "a red circle"), ("steps", "3"), ("seed", "11")];
    type Files<'a> = Vec<(&'a str, &'a [u8])>;
    let calls: [(&str, Files); 3] = [
        ("/v1/images/edits", vec![("image", &image), ("mask", &mask)]),
        ("/v1/images/edits", vec![("image[]", &image)]),
        ("/v1/images/variations", vec![("image", &image)]),
    ];
    for (path, files) in calls {
        let texts = if path.ends_with("variations") {
            &texts[1..]
        } else {
            &texts[..]
        };
        let (kind, body) = form(texts, &files);
        let answers = [&nats_addr, &local_addr].map(|a| {
            let (status, b) = post_to(a, path, &kind, &body);
            assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&b));
            png_of(&b)
        });
        assert_eq!(png_size(&answers[0]), (w, h));
        assert!(
            answers[0] == answers[1],
            "{path} with {:?}: NATS and one process differ",
            files.iter().map(|f| f.0).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_client_that_hangs_up_cancels_its_job_on_the_worker() {
    let Some((url, _server)) = nats() else {
        return;
    };
    let (model, _front, addr) = front(&url, "cancel");
    let (log_tx, log) = mpsc::channel();
    let _worker = worker(&url, &model, 0, &log_tx);
    // Far more steps than the test waits for: only a cancel ends it in time.
    let body = json!({"prompt": "a red circle", "model": model, "size": "64x64", "steps": 1000,
                      "seed": 1})
    .to_string();
    let next = |what: &str| loop {
        let (_, l) = log
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the worker never logged `{what}`"));
        if l.contains(what) {
            return (Instant::now(), l);
        }
    };
    let mut ids = Vec::new();
    // At once (the cancel may come before the worker listens for it), then mid-run.
    for wait in [0, 2] {
        // (A kept-alive connection: hyper watches it for the hang-up.)
        let mut c = TcpStream::connect(&addr).unwrap();
        write!(
            c,
            "POST /v1/images/generations HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let (_, started) = next(": started (delivery 1)");
        let id = started.strip_prefix("job ").unwrap().split(':').next();
        let id = id.unwrap().to_string();
        std::thread::sleep(Duration::from_secs(wait));
        let _ = c.shutdown(std::net::Shutdown::Both); // the client hangs up
        drop(c);
        let hung_up = Instant::now();
        let (at, _) = next(&format!("job {id}: cancelled by its front"));
        eprintln!(
            "serve_nats cancel: the worker dropped job {id} {:.2} s after its client hung up \
             ({wait} s into the run)",
            (at - hung_up).as_secs_f64()
        );
        ids.push(id);
    }
    // Acked: not delivered again after the ack wait, and the worker takes the next job.
    let small = json!({"prompt": "a", "model": model, "size": "64x64", "steps": 2}).to_string();
    let (status, _, b) = http(&addr, small.as_bytes());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    std::thread::sleep(Duration::from_secs(ACK_WAIT.parse::<u64>().unwrap() + 2));
    let again: Vec<String> = log
        .try_iter()
        .map(|(_, l)| l)
        .filter(|l| ids.iter().any(|id| l.starts_with(&format!("job {id}:"))))
        .collect();
    assert!(again.is_empty(), "a cancelled job came back: {again:?}");
}

/// One `hoa worker --adapters 0,1` (lavapipe through Vulkan and llvmpipe through GL) takes a job
/// per adapter at once: concurrent requests are all answered and both adapters ran some.
#[test]
fn one_worker_drives_two_adapters() {
    let Some((url, _server)) = nats() else {
        return;
    };
    let (model, _front, addr) = front(&url, "adapters");
    let (log_tx, log) = mpsc::channel();
    let both = [("HOA_BACKEND", "vulkan,gl")];
    let _w = worker_with(&url, &model, 0, &log_tx, &["--adapters", "0,1"], &both);
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (1..=4)
            .map(|seed| {
                let (addr, model) = (&addr, &model);
                sc.spawn(move || {
                    let body = json!({"prompt": "a red circle", "model": model, "size": "32x32",
                                      "steps": 2, "seed": seed});
                    http(addr, body.to_string().as_bytes()).0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200; 4]);
    let mut on = [0; 2];
    while on.iter().sum::<usize>() < 4 {
        let (_, l) = log
            .recv_timeout(Duration::from_secs(30))
            .expect("a generation line per job");
        for (a, n) in on.iter_mut().enumerate() {
            *n += l.ends_with(&format!(" on adapter {a}")) as usize;
        }
    }
    assert!(on.iter().all(|&n| n >= 1), "jobs per adapter: {on:?}");
}

#[test]
fn unclip_variations_over_nats_carry_their_image_to_the_worker() {
    let Some((url, _server)) = nats() else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unclip_tiny");
    let model = format!("unclip-{}", std::process::id());
    let m = format!("{model}={}", dir.display());
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--model", &m, "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        serve_ready(&args)
    };
    let (_front, nats_addr) = serve(&["--queue", &url]);
    let (_local, local_addr) = serve(&[]);
    let (_worker, ready) = spawn_ready(hoa(&["worker", "--queue", &url, "--model", &m]));
    assert!(ready.starts_with("worker ready"), "{ready:?}");
    // With transparency: the worker must read the image the front decoded (onto white).
    let image = png_of_image(image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(
        32,
        24,
        |x, y| image::Rgba([(x * 8) as u8, (y * 10) as u8, 90, (x * 8).min(255) as u8]),
    )));
    let texts = [
        ("size", "32x24"),
        ("steps", "2"),
        ("seed", "5"),
        ("noise_level", "100"),
    ];
    let (kind, body) = form(&texts, &[("image", &image)]);
    let answers = [&nats_addr, &local_addr].map(|a| {
        let (status, b) = post_to(a, "/v1/images/variations", &kind, &body);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        png_of(&b)
    });
    assert_eq!(png_size(&answers[0]), (32, 24));
    assert!(
        answers[0] == answers[1],
        "an unCLIP variation: NATS and one process differ"
    );
}
