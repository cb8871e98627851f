//! Scale-out on NATS JetStream (`hoa serve --queue nats://...` with `hoa worker`s): what the
//! front and the workers agree on, and the front's half. A job is the user's `Request` as JSON
//! with the model's name and a job id, published to the work-queue stream `HOA_JOBS` on
//! `hoa.jobs.<model>`; a worker resolves it again (the same policy, so the same options), puts
//! the PNGs in the object store `hoa_images` as `<id>.<k>` and then the outcome in the
//! key-value bucket `hoa_results` under `<id>`, which the front watches. Both stores expire
//! entries after `RESULT_TTL`, so they stay bounded when a front is gone. While it works, the
//! worker sends the job's progress and previews on the core subject `hoa.progress.<id>`.
//! An edit's or variation's images (too large for a message) go to the object store before the
//! job, as `<id>.init.png` (an img2img start, lossless), `<id>.variation.png` (the image a
//! stable unCLIP model varies) and `<id>.mask.f32` (the mask's values, exact), and the worker
//! puts them back into the `Request`, in the same fields, before it resolves it.

use super::api::ApiError;
use super::worker::{Job, JobEvent};
use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, kv, object_store, stream};
use base64::Engine as _;
use clap::Args;
use futures_util::StreamExt;
use hoa::request::Request;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;

pub const STREAM: &str = "HOA_JOBS";
pub const RESULTS: &str = "hoa_results";
pub const IMAGES: &str = "hoa_images";
/// How long a result waits for its front before it expires.
pub const RESULT_TTL: Duration = Duration::from_secs(15 * 60);
/// Deliveries of one job: after `MAX_DELIVER - 1` workers died on it, the next one answers
/// with an error instead of trying again.
pub const MAX_DELIVER: i64 = 4;
/// The stream's length when a worker makes it before any front (a front sets its own).
pub const DEFAULT_QUEUE_MAX: i64 = 64;

/// The core subject of job `id`'s progress and previews.
pub fn progress_subject(id: &str) -> String {
    format!("hoa.progress.{id}")
}

/// The core subject on which a front tells the worker to stop job `id` (its client went away or
/// its time is up).
pub fn cancel_subject(id: &str) -> String {
    format!("hoa.cancel.{id}")
}

/// The subject of model `name`'s jobs.
pub fn subject(model: &str) -> String {
    format!("hoa.jobs.{model}")
}

/// A model name is a subject token and a consumer name: letters, digits, `-` and `_`.
pub fn check_model_name(name: &str) -> Result<()> {
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("--model {name}: with a NATS queue a model name may only hold letters, digits, `-` and `_`");
    }
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct FrontArgs {
    /// With `--queue nats://...`: jobs the JetStream stream holds (waiting or running on any
    /// worker) before new ones get 429.
    #[arg(long, default_value_t = DEFAULT_QUEUE_MAX)]
    pub queue_max: i64,
}

/// One job on the wire.
#[derive(Serialize, Deserialize, Debug)]
pub struct JobMsg {
    pub id: String,
    pub model: String,
    pub request: Request,
    /// When the front stops waiting (`--timeout-s`), in milliseconds since the Unix epoch: a
    /// worker stops the run then.
    pub deadline_ms: Option<u64>,
    /// The request's images, in the object store (absent: none).
    #[serde(default)]
    pub inputs: Inputs,
}

/// Which of the request's images the object store holds for the job, with their sizes.
#[derive(Serialize, Deserialize, Debug, Default, Clone, Copy)]
pub struct Inputs {
    pub init_image: Option<[usize; 2]>,
    pub mask: Option<[usize; 2]>,
    /// Absent in the jobs of a front from before variations were sent.
    #[serde(default)]
    pub variation: Option<[usize; 2]>,
}

impl Inputs {
    /// Every input, for deleting whichever were put.
    const ALL: Inputs = Inputs {
        init_image: Some([0; 2]),
        mask: Some([0; 2]),
        variation: Some([0; 2]),
    };
}

fn init_name(id: &str) -> String {
    format!("{id}.init.png")
}

fn mask_name(id: &str) -> String {
    format!("{id}.mask.f32")
}

fn variation_name(id: &str) -> String {
    format!("{id}.variation.png")
}

/// Puts `req`'s init image and mask into the object store for job `id`.
async fn put_inputs(stores: &Stores, id: &str, req: &Request) -> Result<Inputs> {
    let mut inputs = Inputs {
        init_image: put_image(stores, &init_name(id), req.init_image.as_ref()).await?,
        variation: put_image(stores, &variation_name(id), req.variation.as_ref()).await?,
        ..Inputs::default()
    };
    if let Some(m) = &req.mask {
        let raw: Vec<u8> = m.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        stores
            .images
            .put(mask_name(id).as_str(), &mut raw.as_slice())
            .await?;
        inputs.mask = Some([m.width, m.height]);
    }
    Ok(inputs)
}

/// Puts `img` (if any) as a PNG under `name`; returns its size.
async fn put_image(
    stores: &Stores,
    name: &str,
    img: Option<&hoa::image_io::RgbImage>,
) -> Result<Option<[usize; 2]>> {
    let Some(img) = img else { return Ok(None) };
    let png = encode_rgb_png(img)?;
    stores.images.put(name, &mut png.as_slice()).await?;
    Ok(Some([img.width, img.height]))
}

fn encode_rgb_png(img: &hoa::image_io::RgbImage) -> Result<Vec<u8>> {
    let (w, h) = (u32::try_from(img.width)?, u32::try_from(img.height)?);
    let buf = image::RgbImage::from_raw(w, h, img.data.clone())
        .context("the image's size does not match its pixels")?;
    let mut png = std::io::Cursor::new(Vec::new());
    buf.write_to(&mut png, image::ImageFormat::Png)?;
    Ok(png.into_inner())
}

async fn get_object(stores: &Stores, name: &str) -> Result<Vec<u8>> {
    let mut obj = stores.images.get(name).await?;
    let mut bytes = Vec::new();
    obj.read_to_end(&mut bytes).await?;
    Ok(bytes)
}

/// The worker's side: puts job `id`'s images from the object store back into `req`.
pub async fn get_inputs(
    stores: &Stores,
    id: &str,
    inputs: Inputs,
    req: &mut Request,
) -> Result<()> {
    if let Some(size) = inputs.init_image {
        let img = get_image(stores, &init_name(id), size).await;
        req.init_image = Some(img.context("the init image")?);
    }
    if let Some(size) = inputs.variation {
        let img = get_image(stores, &variation_name(id), size).await;
        req.variation = Some(img.context("the variation image")?);
    }
    if let Some([w, h]) = inputs.mask {
        let raw = get_object(stores, &mask_name(id))
            .await
            .context("the mask")?;
        if Some(raw.len()) != w.checked_mul(h).and_then(|n| n.checked_mul(4)) {
            bail!("the mask holds {} bytes, not {w}x{h} f32 values", raw.len());
        }
        let values = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        req.mask = Some(hoa::request::Mask {
            width: w,
            height: h,
            values,
        });
    }
    Ok(())
}

/// The PNG under `name`, which the job says is `w`x`h`.
async fn get_image(
    stores: &Stores,
    name: &str,
    [w, h]: [usize; 2],
) -> Result<hoa::image_io::RgbImage> {
    let png = get_object(stores, name).await?;
    let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png)?.to_rgb8();
    if (img.width() as usize, img.height() as usize) != (w, h) {
        bail!(
            "it is {}x{}, the job says {w}x{h}",
            img.width(),
            img.height()
        );
    }
    Ok(hoa::image_io::RgbImage {
        width: w,
        height: h,
        data: img.into_raw(),
    })
}

/// Deletes job `id`'s images (they would expire anyway).
async fn delete_inputs(stores: &Stores, id: &str, inputs: Inputs) {
    if inputs.init_image.is_some() {
        let _ = stores.images.delete(init_name(id)).await;
    }
    if inputs.mask.is_some() {
        let _ = stores.images.delete(mask_name(id)).await;
    }
    if inputs.variation.is_some() {
        let _ = stores.images.delete(variation_name(id)).await;
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// `deadline_ms` as an instant of this machine's clock.
pub fn deadline_instant(ms: u64) -> Instant {
    let left = ms.saturating_sub(unix_ms(SystemTime::now()));
    Instant::now() + Duration::from_millis(left)
}

/// What a worker reports on `progress_subject` while it works.
#[derive(Serialize, Deserialize, Debug)]
pub enum ProgressMsg {
    Step {
        step: usize,
        total: usize,
        seconds: f64,
    },
    /// A preview PNG, base64.
    Partial { index: usize, png: String },
    /// The model's rewriter rewrote the prompt to this (`revised_prompt`).
    Revised { prompt: String },
}

impl ProgressMsg {
    pub fn from_event(e: &JobEvent) -> Option<ProgressMsg> {
        let b64 = base64::engine::general_purpose::STANDARD;
        match e {
            JobEvent::Progress {
                step,
                total,
                seconds,
            } => Some(ProgressMsg::Step {
                step: *step,
                total: *total,
                seconds: *seconds,
            }),
            JobEvent::Partial { index, png } => Some(ProgressMsg::Partial {
                index: *index,
                png: b64.encode(png),
            }),
            JobEvent::Revised(prompt) => Some(ProgressMsg::Revised {
                prompt: prompt.clone(),
            }),
            _ => None,
        }
    }

    fn into_event(self) -> Option<JobEvent> {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self {
            ProgressMsg::Step {
                step,
                total,
                seconds,
            } => Some(JobEvent::Progress {
                step,
                total,
                seconds,
            }),
            ProgressMsg::Partial { index, png } => Some(JobEvent::Partial {
                index,
                png: b64.decode(png).ok()?,
            }),
            ProgressMsg::Revised { prompt } => Some(JobEvent::Revised(prompt)),
        }
    }
}

/// A `hoa::Error` across the wire, keeping what the front needs to name the field.
#[derive(Serialize, Deserialize, Debug)]
pub enum WireError {
    Invalid {
        what: String,
        why: String,
    },
    Config {
        file: String,
        field: String,
        why: String,
    },
    /// The run stopped at its deadline.
    Cancelled,
    Other(String),
}

impl From<&hoa::Error> for WireError {
    fn from(e: &hoa::Error) -> Self {
        match e {
            hoa::Error::InvalidOption { what, why } => WireError::Invalid {
                what: what.clone(),
                why: why.clone(),
            },
            hoa::Error::Config { file, field, why } => WireError::Config {
                file: file.clone(),
                field: field.clone(),
                why: why.clone(),
            },
            hoa::Error::Cancelled => WireError::Cancelled,
            e => WireError::Other(e.to_string()),
        }
    }
}

impl From<WireError> for hoa::Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Invalid { what, why } => hoa::Error::invalid(what, why),
            WireError::Config { file, field, why } => hoa::Error::config(file, field, why),
            WireError::Cancelled => hoa::Error::Cancelled,
            // Rendered as it is, and answered as a server error.
            WireError::Other(m) => hoa::Error::Checkpoint(m),
        }
    }
}

/// What a worker stores under the job's id once it is done.
#[derive(Serialize, Deserialize, Debug)]
pub enum Outcome {
    /// The PNGs are in the object store as `<id>.0` .. `<id>.<count - 1>`.
    Images {
        count: usize,
    },
    Failed(WireError),
}

pub fn image_name(id: &str, k: usize) -> String {
    format!("{id}.{k}")
}

/// The stream, the bucket and the object store, each created by whoever comes first.
pub struct Stores {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: stream::Stream,
    pub results: kv::Store,
    pub images: object_store::ObjectStore,
}

pub async fn connect(url: &str, queue_max: i64) -> Result<Stores> {
    let client = async_nats::ConnectOptions::new()
        .name("hoa")
        .connect(url)
        .await
        .with_context(|| format!("--queue {url}: cannot connect to NATS"))?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["hoa.jobs.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            discard: stream::DiscardPolicy::New,
            max_messages: queue_max,
            max_age: RESULT_TTL,
            ..Default::default()
        })
        .await
        .with_context(|| {
            format!("--queue {url}: the JetStream stream {STREAM} (is nats-server run with -js?)")
        })?;
    // async-nats' create_key_value reads the account info in a shape Debian's nats-server 2.9
    // does not send (no `reserved_memory`), so the bucket's stream is made here as the KV
    // convention has it (what create_key_value would make), then opened as a bucket.
    let kv_stream = stream::Config {
        name: format!("KV_{RESULTS}"),
        subjects: vec![format!("$KV.{RESULTS}.>")],
        max_messages_per_subject: 1,
        max_age: RESULT_TTL,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    };
    let bucket = async {
        js.get_or_create_stream(kv_stream).await?;
        anyhow::Ok(js.get_key_value(RESULTS).await?)
    };
    let results =
        (bucket.await).with_context(|| format!("--queue {url}: the key-value bucket {RESULTS}"))?;
    let images = match js.get_object_store(IMAGES).await {
        Ok(o) => o,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: IMAGES.into(),
                max_age: RESULT_TTL,
                ..Default::default()
            })
            .await
            .with_context(|| format!("--queue {url}: the object store {IMAGES}"))?,
    };
    Ok(Stores {
        client,
        js,
        stream,
        results,
        images,
    })
}

/// The HTTP front's side: publishes jobs and hands each outcome to its request.
pub struct Front {
    stores: Stores,
    /// Served model names, by index (`Job::model`).
    models: Vec<String>,
    /// This front's unique prefix for job ids, then a counter.
    prefix: String,
    next: AtomicU64,
    /// Jobs published and not yet answered.
    pending: Arc<AtomicUsize>,
}

impl Front {
    pub async fn connect(url: &str, models: Vec<String>, a: &FrontArgs) -> Result<Front> {
        if a.queue_max < 1 {
            bail!("--queue-max must be at least 1");
        }
        for m in &models {
            check_model_name(m)?;
        }
        let mut stores = connect(url, a.queue_max).await?;
        // The front owns the queue's length: the stream may have been made by a worker.
        let mut config = stores.stream.info().await?.config.clone();
        if config.max_messages != a.queue_max {
            config.max_messages = a.queue_max;
            stores
                .js
                .update_stream(&config)
                .await
                .context("--queue-max")?;
            stores.stream = stores.js.get_stream(STREAM).await?;
        }
        // A unique id for this front (the NUID of a fresh inbox name): its jobs' ids start so.
        let inbox = stores.client.new_inbox();
        let prefix = inbox.rsplit('.').next().unwrap_or(&inbox).to_string();
        eprintln!(
            "queue: NATS JetStream at {url}, stream {STREAM}, at most {} jobs",
            a.queue_max
        );
        Ok(Front {
            stores,
            models,
            prefix,
            next: AtomicU64::new(0),
            pending: Arc::default(),
        })
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn connected(&self) -> bool {
        self.stores.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Publishes `req` as `job` (429 when the stream is full); a task then forwards the
    /// worker's progress and outcome to `job.events`, until the job's deadline.
    pub async fn submit(self: &Arc<Self>, job: Job, req: &Request) -> Result<(), ApiError> {
        if req.latents.is_some() {
            return Err(ApiError::bad(
                Some("latents"),
                "latents: not available with a NATS queue (hoa serve --queue nats://...)",
            ));
        }
        let id = format!(
            "{}.{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let model = self.models[job.model].clone();
        let deadline_ms = job
            .deadline
            .map(|d| unix_ms(SystemTime::now() + d.saturating_duration_since(Instant::now())));
        let msg = JobMsg {
            id,
            model,
            request: req.clone(),
            deadline_ms,
            inputs: Inputs::default(),
        };
        // A task of its own from here: a client that hangs up while the job is being published
        // (a worker may already run it) drops only `told`, and the task still cancels the job.
        let (told, published) = tokio::sync::oneshot::channel();
        tokio::spawn(self.clone().run(msg, job, told));
        published
            .await
            .unwrap_or_else(|_| Err(ApiError::internal("the job queue's task stopped")))
    }

    /// Puts the job's images, publishes it, says how that went on `told`, then forwards the
    /// worker's progress and outcome to `job.events` until the job's deadline.
    async fn run(
        self: Arc<Self>,
        mut msg: JobMsg,
        job: Job,
        told: tokio::sync::oneshot::Sender<Result<(), ApiError>>,
    ) {
        let failed = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!("the job queue (NATS JetStream) failed: {e}"))
        };
        let id = msg.id.clone();
        // The images first: a worker may take the job as soon as it is published.
        let inputs = match put_inputs(&self.stores, &id, &msg.request).await {
            Ok(i) => i,
            Err(e) => {
                // Whichever was put.
                delete_inputs(&self.stores, &id, Inputs::ALL).await;
                let _ = told.send(Err(failed(&format!("{e:#}"))));
                return;
            }
        };
        msg.inputs = inputs;
        let (watch, progress) = match self.publish(&id, &msg.model, &msg).await {
            Ok(p) => p,
            Err(e) => {
                delete_inputs(&self.stores, &id, inputs).await;
                let _ = told.send(Err(e));
                return;
            }
        };
        let _ = told.send(Ok(()));
        self.pending.fetch_add(1, Ordering::Relaxed);
        let wait = self.wait(&id, watch, progress, &job.events);
        let result = match job.deadline {
            Some(d) => (tokio::time::timeout_at(d.into(), wait).await)
                .unwrap_or(Err(hoa::Error::Cancelled)),
            None => wait.await,
        };
        let cancelled = matches!(result, Err(hoa::Error::Cancelled));
        if cancelled {
            self.cancel(&id).await;
        }
        let last = match result {
            Ok(pngs) => JobEvent::Done(pngs),
            Err(e) => JobEvent::Failed(e),
        };
        let _ = job.events.send(last).await;
        self.pending.fetch_sub(1, Ordering::Relaxed);
        delete_inputs(&self.stores, &id, inputs).await;
        if !cancelled {
            self.forget(&id).await;
        }
    }

    /// Watches job `id`'s outcome and progress, then publishes it (429 when the stream is
    /// full).
    async fn publish(
        &self,
        id: &str,
        model: &str,
        msg: &JobMsg,
    ) -> Result<(kv::Watch, async_nats::Subscriber), ApiError> {
        let failed = |e: &dyn std::fmt::Display| {
            ApiError::internal(format!("the job queue (NATS JetStream) failed: {e}"))
        };
        let body = serde_json::to_vec(msg).map_err(|e| failed(&e))?;
        // Listening before publishing: nothing the worker says can come first.
        let watch = self
            .stores
            .results
            .watch(id)
            .await
            .map_err(|e| failed(&e))?;
        let progress = (self.stores.client)
            .subscribe(progress_subject(id))
            .await
            .map_err(|e| failed(&e))?;
        let ack = (self.stores.js)
            .publish(subject(model), body.into())
            .await
            .map_err(|e| failed(&e))?;
        if let Err(e) = ack.await {
            return Err(match is_full(&e) {
                true => super::busy("the generation queue is full; retry later"),
                false => failed(&e),
            });
        }
        Ok((watch, progress))
    }

    /// Forwards progress until the outcome arrives (or the client goes away), then reads the
    /// PNGs.
    async fn wait(
        &self,
        id: &str,
        mut watch: kv::Watch,
        mut progress: async_nats::Subscriber,
        events: &tokio::sync::mpsc::Sender<JobEvent>,
    ) -> hoa::Result<Vec<Vec<u8>>> {
        let lost = |e: &dyn std::fmt::Display| {
            hoa::Error::Checkpoint(format!("the job queue (NATS JetStream) failed: {e}"))
        };
        let entry = loop {
            tokio::select! {
                // Progress first: what the worker sent before its outcome is passed on before it.
                biased;
                Some(m) = progress.next() => {
                    let ev = serde_json::from_slice::<ProgressMsg>(&m.payload).ok();
                    // As on one machine: progress never waits for a slow client.
                    if let Some(ev) = ev.and_then(ProgressMsg::into_event) {
                        let _ = events.try_send(ev);
                    }
                }
                e = watch.next() => match e {
                    Some(Ok(e)) if e.operation == kv::Operation::Put => break e,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(lost(&e)),
                    None => return Err(lost(&"the result watch ended")),
                },
                _ = events.closed() => return Err(hoa::Error::Cancelled),
            }
        };
        let count = match serde_json::from_slice::<Outcome>(&entry.value) {
            Ok(Outcome::Images { count }) => count,
            Ok(Outcome::Failed(e)) => return Err(e.into()),
            Err(e) => return Err(lost(&e)),
        };
        let mut pngs = Vec::with_capacity(count);
        for k in 0..count {
            let mut obj = (self.stores.images)
                .get(image_name(id, k))
                .await
                .map_err(|e| lost(&e))?;
            let mut png = Vec::new();
            obj.read_to_end(&mut png).await.map_err(|e| lost(&e))?;
            pngs.push(png);
        }
        Ok(pngs)
    }

    /// Tells the workers to drop job `id` (its client went away or its time is up): first an
    /// outcome under its id, which a worker that takes the job later finds (kept until it
    /// expires), then a message on `cancel_subject` for the worker running it, which stops
    /// after its current step. A worker subscribes before it looks for the outcome, so it
    /// misses neither.
    async fn cancel(&self, id: &str) {
        eprintln!("job {id}: cancelled (the client went away or its time is up)");
        let gone = Outcome::Failed(WireError::Cancelled);
        if let Ok(v) = serde_json::to_vec(&gone) {
            let _ = self.stores.results.put(id, v.into()).await;
        }
        let _ = (self.stores.client)
            .publish(cancel_subject(id), "".into())
            .await;
    }

    /// Drops a job's outcome and images once answered (they would expire anyway).
    async fn forget(&self, id: &str) {
        if let Ok(Some(v)) = self.stores.results.get(id).await {
            if let Ok(Outcome::Images { count }) = serde_json::from_slice(&v) {
                for k in 0..count {
                    let _ = self.stores.images.delete(image_name(id, k)).await;
                }
            }
        }
        let _ = self.stores.results.purge(id).await;
    }
}

/// Whether a publish failed because the stream holds `max_messages` (discard policy New).
fn is_full(e: &jetstream::context::PublishError) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| j.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED)
}
