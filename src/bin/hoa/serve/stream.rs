//! `stream: true`: the job's events as Server-Sent Events (axum's `sse`), as OpenAI sends
//! them: `{kind}.partial_image` for each preview (up to `partial_images`), then one
//! `{kind}.completed` per image, or an `error` event. A client that hangs up drops the stream,
//! which drops the job's receiver: the generation stops after its current step.

use super::images::{b64, convert, Meta};
use super::metrics::InFlight;
use super::worker::JobEvent;
use super::{outcome, timed_out, Shared};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

pub fn respond(
    s: Arc<Shared>,
    events: mpsc::Receiver<JobEvent>,
    deadline: Instant,
    meta: Meta,
    partial_images: usize,
    in_flight: InFlight,
) -> Response {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        pump(&s, events, &tx, deadline, &meta, partial_images).await;
        drop(in_flight);
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn event(v: Value) -> Event {
    let name = v["type"].as_str().unwrap_or("error").to_string();
    Event::default().event(name).data(v.to_string())
}

/// One image event: `meta`'s fields, then `extra`.
fn image_event(meta: &Meta, what: &str, png: &[u8], extra: Value) -> Event {
    let mut v = meta.fields();
    if what != "completed" {
        v.as_object_mut().map(|o| o.remove("usage"));
    }
    v["type"] = json!(format!("{}.{what}", meta.kind.events()));
    v["b64_json"] = json!(b64(png));
    v["created_at"] = json!(super::now());
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    event(v)
}

async fn pump(
    s: &Shared,
    mut events: mpsc::Receiver<JobEvent>,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    deadline: Instant,
    meta: &Meta,
    partial_images: usize,
) {
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return,
            r = tokio::time::timeout_at(deadline.into(), events.recv()) => r,
        };
        let (out, last) = match next {
            Ok(Some(JobEvent::Progress { seconds, .. })) => {
                s.metrics.step_seconds.observe(seconds);
                continue;
            }
            Ok(Some(JobEvent::Partial { index, png })) if index < partial_images => {
                let extra = json!({"partial_image_index": index});
                match convert(vec![png], meta.output).await {
                    Ok(img) => (
                        vec![image_event(meta, "partial_image", &img[0], extra)],
                        false,
                    ),
                    Err(e) => (vec![error_event(s, Some(e))], true),
                }
            }
            Ok(Some(JobEvent::Partial { .. } | JobEvent::Revised(_))) => continue,
            Ok(Some(JobEvent::Done(pngs))) => {
                s.metrics.images.inc_by(pngs.len() as u64);
                match convert(pngs, meta.output).await {
                    Ok(images) => {
                        let done = images
                            .iter()
                            .map(|img| image_event(meta, "completed", img, json!({})))
                            .collect();
                        (done, true)
                    }
                    Err(e) => (vec![error_event(s, Some(e))], true),
                }
            }
            Ok(other) => (vec![error_event(s, outcome(other, s.timeout).err())], true),
            Err(_) => (vec![error_event(s, Some(timed_out(s.timeout)))], true),
        };
        for e in out {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// An error after the 200 went out: an `error` event with OpenAI's error object, which the
/// `openai` client raises as an APIError.
fn error_event(s: &Shared, e: Option<super::api::ApiError>) -> Event {
    let e = e.unwrap_or_else(|| super::api::ApiError::internal("the job ended without a result"));
    s.metrics
        .error(super::api::error_type(e.status), e.status.as_u16());
    event(json!({
        "type": "error",
        "error": {"message": e.message, "type": super::api::error_type(e.status),
                  "param": e.param, "code": e.code},
    }))
}
