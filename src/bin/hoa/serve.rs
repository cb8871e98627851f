//! `hoa serve`: OpenAI's Images API (`POST /v1/images/generations`, `GET /v1/models`) and
//! `/healthz`, `/readyz` over HTTP, single-process mode. A thin front end: the body becomes a
//! `hoa::request::Request`, `hoa::resolve` decides and checks everything (before the job is
//! queued), and one thread that owns the GPU runs the jobs one at a time (`serve/worker.rs`).

mod api;
mod worker;

use anyhow::{bail, Context as _, Result};
use api::{from_hoa, parse, to_request, ApiError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use clap::Args;
use hoa::model_files::open_model;
use hoa::model_info::ModelInfo;
use hoa::resolve::{resolve, DeviceLimits};
use hoa::{Context, DType};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest request body: a generation request is a few hundred bytes of JSON.
const BODY_LIMIT: usize = 1 << 20;
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
    /// Requests that may wait while one generates; past that, 429 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Store weights and activations in f16 (needs the adapter's shader-f16).
    #[arg(long)]
    pub f16: bool,
}

fn model_arg(s: &str) -> Result<(String, PathBuf), String> {
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
    jobs: mpsc::Sender<worker::Job>,
    created: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn run(ctx: Context, a: ServeArgs) -> Result<()> {
    if a.queue == 0 {
        bail!("--queue must be at least 1");
    }
    let mut models = Vec::new();
    for (name, dir) in &a.models {
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
    let dtype = if a.f16 { DType::F16 } else { DType::F32 };
    let limits = DeviceLimits {
        max_binding_bytes: ctx.max_binding_bytes(),
        dtype_size: dtype.size(),
    };
    // A taken port fails now, not after the slow load; connections wait until it is done.
    let listener =
        std::net::TcpListener::bind(a.bind).with_context(|| format!("--bind {}", a.bind))?;
    listener.set_nonblocking(true)?;
    eprintln!("adapter: {}", ctx.describe());
    let (jobs, thread) = worker::start(ctx, a.models.clone(), dtype, a.queue)?;
    let shared = Arc::new(Shared {
        models,
        limits,
        jobs,
        created: now(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()?;
    let served = rt.block_on(serve(listener, shared));
    // Every sender is gone with the runtime's tasks: the thread finishes and drops the GPU.
    drop(rt);
    if thread.join().is_err() {
        bail!("the generation thread panicked");
    }
    served
}

async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) -> Result<()> {
    let app = Router::new()
        .route("/v1/images/generations", post(generations))
        .route("/v1/models", get(list_models))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared);
    let listener = tokio::net::TcpListener::from_std(listener)?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

/// Ctrl-C or SIGTERM: stop accepting; the requests in flight still get their images.
async fn shutdown() {
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

/// Ready while the generation thread takes jobs (the models load before the server listens).
async fn ready(State(s): State<Arc<Shared>>) -> (axum::http::StatusCode, &'static str) {
    match s.jobs.is_closed() {
        false => (axum::http::StatusCode::OK, "ready"),
        true => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the generation thread stopped",
        ),
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
                status: axum::http::StatusCode::NOT_FOUND,
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

async fn generations(
    State(s): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        ..ApiError::bad(None, e.body_text())
    })?;
    let r = parse(&body)?;
    let model = pick_model(&s, r.model.as_deref())?;
    let req = to_request(&r)?;
    let resolved = resolve(&req, &s.models[model].info, s.limits).map_err(from_hoa)?;
    let revised = resolved
        .upsampled
        .clone()
        .unwrap_or_else(|| resolved.prompt.clone());
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = worker::Job {
        model,
        resolved,
        reply,
    };
    s.jobs.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError {
            status: axum::http::StatusCode::TOO_MANY_REQUESTS,
            code: Some("queue_full"),
            retry_after: Some(RETRY_AFTER_S),
            ..ApiError::bad(None, "the generation queue is full; retry later")
        },
        mpsc::error::TrySendError::Closed(_) => ApiError::internal("the generation thread stopped"),
    })?;
    let pngs = answer
        .await
        .map_err(|_| ApiError::internal("the generation thread stopped"))?
        .map_err(from_hoa)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: Vec<Value> = pngs
        .iter()
        .map(|png| json!({"b64_json": b64.encode(png), "revised_prompt": revised}))
        .collect();
    Ok(Json(json!({"created": now(), "data": data})))
}
