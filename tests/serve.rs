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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn xdg() -> String {
    std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into())
}

/// Starts `hoa serve` on a free loopback port with `extra` flags; returns once it listens.
fn start(extra: &[&str]) -> Server {
    let model = format!("pipeline_tiny={}", dir("pipeline_tiny").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoa"))
        .args(["serve", "--model", &model, "--bind", "127.0.0.1:0"])
        .args(extra)
        .env("XDG_RUNTIME_DIR", xdg())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run hoa serve");
    let stdout = child.stdout.take().unwrap();
    let mut server = Server {
        child,
        addr: String::new(),
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
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        addr,
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
    let (status, v) = post(&s, &json!({"prompt": "a", "stpes": 2}));
    assert_eq!((status, error_param(&v)), (400, json!("stpes")));
    let (status, v) = post(&s, &json!({"prompt": "a", "response_format": "url"}));
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
