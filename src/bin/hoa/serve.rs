//! `hoa serve`: OpenAI's Images API (`POST /v1/images/generations`, `/edits`, `/variations`,
//! `GET /v1/models`, `url` images) plus `/healthz`, `/readyz` and `/metrics` over HTTP,
//! single-process mode. A thin front end: the body becomes a `hoa::request::Request`,
//! `hoa::resolve` decides and checks everything (before the job is queued), and a thread per
//! adapter (`--adapters`) takes the jobs from one bounded queue, one at a time each
//! (`serve/worker.rs`), or, with `--queue nats://...`,
//! `hoa worker`s on any number of machines do (`serve/nats.rs`).

pub mod adapters;
mod api;
mod auth;
mod files;
mod form;
mod images;
mod metrics;
pub mod nats;
mod queue;
mod stream;
pub mod worker;

use anyhow::{bail, Context as _, Result};
use api::{from_hoa, ApiError};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use hoa::model_files::open_model;
use hoa::model_info::ModelInfo;
use hoa::request::Request;
use hoa::resolve::DeviceLimits;
use hoa::ContextOptions;
use queue::{queue_arg, Jobs, QueueArg};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest request body: a generation request is a few hundred bytes of JSON.
const BODY_LIMIT: usize = 1 << 20;
/// Largest edits or variations form: an image and a mask of a few MB each.
const UPLOAD_LIMIT: usize = 16 << 20;
/// Most jobs that may wait (each holds its resolved request, init image included).
const MAX_QUEUE: usize = 4096;
/// What a client told "queue full" waits before it retries, in seconds.
const RETRY_AFTER_S: u32 = 2;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A model to serve as NAME=DIR (a diffusers folder); repeatable. NAME is the request's
    /// `model` and the PNG's `Model:`.
    #[arg(long = "model", value_parser = model_arg, required = true)]
    pub models: Vec<(String, PathBuf)>,
    /// Address to listen on (port 0: any free port; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,
    /// Requests that may wait while one generates; past that, 429 with Retry-After. Or
    /// `nats://HOST:PORT`: publish jobs to NATS JetStream for `hoa worker`s (scale-out).
    #[arg(long, value_parser = queue_arg, default_value = "8")]
    pub queue: QueueArg,
    #[command(flatten)]
    pub nats: nats::FrontArgs,
    /// The GPU adapters to generate on, one job on each at a time: `all`, the first N of
    /// those, or indices I,J,... of `hoa info`'s list. Default: the one adapter every command
    /// picks (--adapter, HOA_ADAPTER_INDEX).
    #[arg(long, value_parser = adapters::adapters_arg)]
    pub adapters: Option<adapters::AdaptersArg>,
    #[command(flatten)]
    pub dtype: crate::dtype::DTypeArgs,
    /// When models load: `eager` (all before the server listens) or `lazy` (each on its first
    /// request; /v1/models still lists them all).
    #[arg(long, value_enum, default_value = "eager")]
    pub load: LoadArg,
    /// Most models kept loaded at once (with --load lazy): loading another drops the least
    /// recently used one.
    #[arg(long = "max-loaded", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_loaded: Option<u64>,
    /// Seconds one request may take, waiting in the queue included; past it the generation
    /// stops after its current step and the client gets a 504 `timeout` error.
    #[arg(long = "timeout-s", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_s: u64,
    /// Folder for `response_format: "url"` images (default: a new private temp folder, removed
    /// at exit).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Seconds a `url` image is served before it is deleted.
    #[arg(long = "url-ttl-s", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
    pub url_ttl_s: u64,
    /// Base of the returned `url`s (e.g. https://images.example.com); default: http:// and the
    /// request's Host header.
    #[arg(long = "public-url")]
    pub public_url: Option<String>,
    /// Require `Authorization: Bearer KEY` with a KEY from this file (one per line) on every
    /// route but /healthz, /readyz and the url images.
    #[arg(long = "api-key-file")]
    pub api_key_file: Option<PathBuf>,
    /// Let web pages from ORIGIN call the API (CORS); repeatable; `*` for any.
    #[arg(long = "cors-origin")]
    pub cors_origins: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum LoadArg {
    Eager,
    Lazy,
}

pub(crate) fn model_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((n, d)) if !n.is_empty() && !d.is_empty() => Ok((n.to_string(), PathBuf::from(d))),
        _ => Err(format!("expected NAME=DIR, got {s:?}")),
    }
}

/// A served model as the HTTP side knows it: enough to resolve requests without the GPU.
struct Model {
    name: String,
    info: ModelInfo,
}

struct Shared {
    models: Vec<Model>,
    limits: DeviceLimits,
    jobs: Jobs,
    created: u64,
    timeout: std::time::Duration,
    files: Arc<files::Store>,
    public_url: Option<String>,
    /// The address the server listens on (links' last resort).
    addr: SocketAddr,
    metrics: metrics::Metrics,
    keys: Option<auth::Keys>,
    /// Forms being read and decoded at once (each up to UPLOAD_LIMIT): memory stays bounded.
    uploads: tokio::sync::Semaphore,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Each `--model`'s configs, read before the slow load so requests can be checked without it.
fn read_models(args: &[(String, PathBuf)]) -> Result<Vec<Model>> {
    let mut models = Vec::new();
    for (name, dir) in args {
        if models.iter().any(|m: &Model| &m.name == name) {
            bail!("--model {name}: given twice");
        }
        let files = open_model(dir, None).with_context(|| format!("--model {name}"))?;
        let info = ModelInfo::read(files.as_ref()).with_context(|| format!("--model {name}"))?;
        models.push(Model {
            name: name.clone(),
            info,
        });
    }
    Ok(models)
}

/// The local queue's length, once the flags that go together are checked.
fn check_flags(a: &ServeArgs) -> Result<usize> {
    // With NATS the stream bounds the jobs (--queue-max); forms are bounded as by default.
    let queue = match a.queue {
        QueueArg::Local(n) => n,
        QueueArg::Nats(_) => 8,
    };
    if !(1..=MAX_QUEUE).contains(&queue) {
        bail!("--queue must be from 1 to {MAX_QUEUE}, got {queue}");
    }
    if matches!(a.queue, QueueArg::Nats(_)) && (a.load == LoadArg::Lazy || a.max_loaded.is_some()) {
        bail!("--load lazy and --max-loaded are for the single-process mode: with --queue nats://... the front loads no models (each hoa worker loads its own)");
    }
    if matches!(a.queue, QueueArg::Nats(_)) && a.adapters.is_some() {
        bail!("--adapters is for the single-process mode: with --queue nats://... give it to each hoa worker");
    }
    Ok(queue)
}

pub fn run(opts: ContextOptions, a: ServeArgs) -> Result<()> {
    let queue = check_flags(&a)?;
    let models = read_models(&a.models)?;
    let mut gpus = adapters::open(opts, a.adapters.as_ref())?;
    let dtype = adapters::dtype(&gpus, &a.dtype, a.models.iter().map(|(_, d)| d.as_path()))?;
    let limits = adapters::limits(&gpus, dtype);
    // A taken port fails now, not after the slow load; connections wait until it is done.
    let listener =
        std::net::TcpListener::bind(a.bind).with_context(|| format!("--bind {}", a.bind))?;
    listener.set_nonblocking(true)?;
    let keys = a
        .api_key_file
        .as_deref()
        .map(auth::Keys::read)
        .transpose()?;
    let ttl = std::time::Duration::from_secs(a.url_ttl_s);
    let files = Arc::new(files::Store::open(a.data_dir.as_deref(), ttl)?);
    let public_url = a.public_url.as_deref().map(public_url).transpose()?;
    let cors = cors(&a.cors_origins)?;
    eprintln!(
        "url images: {} (kept {} s)",
        files.dir().display(),
        a.url_ttl_s
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let metrics = metrics::Metrics::new();
    for g in &mut gpus {
        (g.running, g.jobs) = metrics.adapter(&g.label);
    }
    let (jobs, threads) = match &a.queue {
        QueueArg::Local(n) => {
            let loading = worker::Loading {
                lazy: a.load == LoadArg::Lazy,
                max_loaded: a.max_loaded.map_or(usize::MAX, |m| m as usize),
                loads: metrics.model_loads.clone(),
            };
            let (tx, threads) = worker::start(gpus, a.models.clone(), dtype, *n, loading)?;
            (Jobs::Local(tx), Some(threads))
        }
        QueueArg::Nats(url) => {
            let names = models.iter().map(|m| m.name.clone()).collect();
            let front = rt.block_on(nats::Front::connect(url, names, &a.nats))?;
            (Jobs::Nats(Arc::new(front)), None)
        }
    };
    let shared = Arc::new(Shared {
        models,
        limits,
        jobs,
        created: now(),
        timeout: std::time::Duration::from_secs(a.timeout_s),
        files,
        public_url,
        addr: listener.local_addr()?,
        metrics,
        keys,
        uploads: tokio::sync::Semaphore::new(queue + 1),
    });
    let served = rt.block_on(serve(listener, shared, cors));
    // Every sender is gone with the runtime's tasks: the threads finish and drop the GPUs.
    drop(rt);
    if let Some(t) = threads {
        t.join()?;
    }
    served
}

/// `--public-url` without a trailing slash; it must be http(s).
fn public_url(u: &str) -> Result<String> {
    let u = u.trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(char::is_whitespace) {
        bail!("--public-url {u}: expected http://HOST[:PORT][/PATH] or https://...");
    }
    Ok(u.to_string())
}

/// The CORS layer for `--cors-origin` (none without it).
fn cors(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| o.parse().with_context(|| format!("--cors-origin {o}")))
            .collect::<Result<Vec<_>>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([header::RETRY_AFTER]),
    ))
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    cors: Option<tower_http::cors::CorsLayer>,
) -> Result<()> {
    let upload = || DefaultBodyLimit::max(UPLOAD_LIMIT);
    let app = Router::new()
        .route("/v1/images/generations", post(images::generations))
        .route("/v1/images/edits", post(images::edits).layer(upload()))
        .route(
            "/v1/images/variations",
            post(images::variations).layer(upload()),
        )
        .route("/v1/files/images/{name}", get(images::file))
        .route("/v1/models", get(list_models))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(|| async { ApiError::not_found(None, "no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared.clone());
    let app = match cors {
        Some(c) => app.layer(c),
        None => app,
    };
    let sweeper = tokio::spawn(shared.files.clone().sweeper());
    let listener = tokio::net::TcpListener::from_std(listener)?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    sweeper.abort();
    Ok(())
}

/// Every request: the API key (when keys are set), then the error count by type.
async fn guard(State(s): State<Arc<Shared>>, req: axum::extract::Request, next: Next) -> Response {
    let r = match &s.keys {
        Some(k) if !auth::open(req.uri().path()) => k.check(req.headers()),
        _ => Ok(()),
    };
    let r = match r {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    let status = r.status();
    if status.is_client_error() || status.is_server_error() {
        s.metrics.error(api::error_type(status), status.as_u16());
    }
    r
}

async fn render_metrics(State(s): State<Arc<Shared>>) -> Response {
    let depth = s.jobs.depth();
    let text = s.metrics.render(depth);
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, kind)], text).into_response()
}

/// Ctrl-C or SIGTERM: stop accepting; the requests in flight still get their images.
pub(crate) async fn shutdown() {
    let term = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    eprintln!("shutting down: finishing the requests in flight");
}

/// Ready while a generation thread takes jobs (with `--load eager` every adapter loads every
/// model before the server listens; lazily loaded ones load with their first job there; an
/// adapter whose thread stopped leaves the others to take the jobs).
/// With a NATS queue: while NATS is connected.
async fn ready(State(s): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    match (s.jobs.is_closed(), &s.jobs) {
        (false, _) => (StatusCode::OK, "ready"),
        (true, Jobs::Local(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the generation thread stopped",
        ),
        (true, Jobs::Nats(_)) => (StatusCode::SERVICE_UNAVAILABLE, "NATS is unreachable"),
    }
}

async fn list_models(State(s): State<Arc<Shared>>) -> Json<Value> {
    let data: Vec<Value> = s
        .models
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": s.created, "owned_by": "hoa"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// The served model a request names; with one model, `model` may be left out.
fn pick_model(s: &Shared, name: Option<&str>) -> Result<usize, ApiError> {
    match name {
        None if s.models.len() == 1 => Ok(0),
        None => Err(ApiError::bad(
            Some("model"),
            "model: is required (GET /v1/models lists them)",
        )),
        Some(n) => s
            .models
            .iter()
            .position(|m| m.name == n)
            .ok_or_else(|| ApiError {
                status: StatusCode::NOT_FOUND,
                code: Some("model_not_found"),
                ..ApiError::bad(
                    Some("model"),
                    format!(
                        "The model `{n}` does not exist (GET /v1/models lists the served ones)"
                    ),
                )
            }),
    }
}

/// Queues `job`, or answers 429 when the queue is full. With `--queue nats://...` it goes to
/// JetStream instead, as `req` (which a worker resolves again).
async fn enqueue(s: &Shared, job: worker::Job, req: &Request) -> Result<(), ApiError> {
    let jobs = match &s.jobs {
        Jobs::Local(tx) => tx,
        Jobs::Nats(front) => return front.submit(job, req).await,
    };
    jobs.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => busy("the generation queue is full; retry later"),
        mpsc::error::TrySendError::Closed(_) => ApiError::internal("the generation thread stopped"),
    })
}

/// 429 with `Retry-After` (the official client retries on it).
fn busy(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        code: Some("queue_full"),
        retry_after: Some(RETRY_AFTER_S),
        ..ApiError::bad(None, message)
    }
}

/// The request's time limit passed.
fn timed_out(limit: std::time::Duration) -> ApiError {
    ApiError {
        status: StatusCode::GATEWAY_TIMEOUT,
        code: Some("timeout"),
        ..ApiError::internal(format!(
            "the request took longer than the server's limit of {} s (--timeout-s); try fewer \
             steps, a smaller size or a smaller n",
            limit.as_secs()
        ))
    }
}

/// A job's outcome as an answer: its PNGs, or its error in OpenAI's shape.
fn outcome(
    event: Option<worker::JobEvent>,
    limit: std::time::Duration,
) -> Result<Vec<Vec<u8>>, ApiError> {
    match event {
        Some(worker::JobEvent::Done(pngs)) => Ok(pngs),
        // Nobody else cancels a job whose receiver is alive: its deadline passed.
        Some(worker::JobEvent::Failed(hoa::Error::Cancelled)) => Err(timed_out(limit)),
        Some(worker::JobEvent::Failed(e)) => Err(from_hoa(e)),
        _ => Err(ApiError::internal("the generation thread stopped")),
    }
}

/// Waits for the job's last event, timing its steps and skipping previews.
async fn finished(
    s: &Shared,
    events: &mut mpsc::Receiver<worker::JobEvent>,
    revised: &mut String,
) -> Option<worker::JobEvent> {
    loop {
        match events.recv().await {
            Some(worker::JobEvent::Progress { seconds, .. }) => {
                s.metrics.step_seconds.observe(seconds)
            }
            Some(worker::JobEvent::Partial { .. }) => {}
            Some(worker::JobEvent::Revised(r)) => *revised = r,
            last => return last,
        }
    }
}
