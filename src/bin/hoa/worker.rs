//! `hoa worker`: the GPU half of `hoa serve --queue nats://...`. It pulls jobs of its models
//! from the JetStream work queue, one at a time for each of its adapters (`--adapters`), resolves each again through
//! `hoa::resolve`, runs it on `serve/worker.rs`'s generation thread while telling JetStream it
//! is still working (`+WPI` progress acks), stores the result (`serve/nats.rs`) and only then
//! acks. A worker that dies leaves its job unacked: JetStream delivers it again after
//! `--ack-wait` to another worker.

use crate::serve::adapters;
use crate::serve::model_arg;
use crate::serve::nats::{
    self, image_name, JobMsg, Outcome, ProgressMsg, Stores, WireError, MAX_DELIVER,
};
use crate::serve::worker::{self, Job, JobEvent};
use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer};
use async_nats::jetstream::{AckKind, Message};
use clap::Args;
use futures_util::StreamExt;
use hoa::model_files::open_model;
use hoa::model_info::ModelInfo;
use hoa::resolve::{resolve, DeviceLimits};
use hoa::ContextOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::MissedTickBehavior;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The NATS server, nats://HOST:PORT (the one `hoa serve --queue` publishes to).
    #[arg(long)]
    pub queue: String,
    /// A model to work for as NAME=DIR; repeatable. NAME is the one the fronts serve.
    #[arg(long = "model", value_parser = model_arg, required = true)]
    pub models: Vec<(String, PathBuf)>,
    /// Seconds without an ack after which JetStream gives a job to another worker (progress
    /// acks go every third of it). Set when the consumer is first made.
    #[arg(long, default_value_t = 30)]
    pub ack_wait: u64,
    /// The GPU adapters to work on, one job on each at a time: `all`, the first N of those, or
    /// indices I,J,... of `hoa info`'s list. Default: the one adapter every command picks.
    #[arg(long, value_parser = crate::serve::adapters::adapters_arg)]
    pub adapters: Option<crate::serve::adapters::AdaptersArg>,
    #[command(flatten)]
    pub dtype: crate::dtype::DTypeArgs,
}

/// What every model's loop shares.
struct Shared {
    stores: Stores,
    infos: Vec<(String, ModelInfo)>,
    limits: DeviceLimits,
    gpu_jobs: mpsc::Sender<Job>,
    /// One job in flight per adapter, whichever model it is for.
    gpu: Arc<Semaphore>,
    adapters: u32,
    ack_every: Duration,
    stop: AtomicBool,
}

pub fn run(opts: ContextOptions, a: WorkerArgs) -> Result<()> {
    if a.ack_wait < 3 {
        bail!("--ack-wait must be at least 3 seconds");
    }
    let mut infos = Vec::new();
    for (name, dir) in &a.models {
        nats::check_model_name(name)?;
        if infos.iter().any(|(n, _)| n == name) {
            bail!("--model {name}: given twice");
        }
        let files = open_model(dir, None).with_context(|| format!("--model {name}"))?;
        let info = ModelInfo::read(files.as_ref()).with_context(|| format!("--model {name}"))?;
        infos.push((name.clone(), info));
    }
    let gpus = adapters::open(opts, a.adapters.as_ref())?;
    let dtype = adapters::dtype(&gpus, &a.dtype, a.models.iter().map(|(_, d)| d.as_path()))?;
    let limits = adapters::limits(&gpus, dtype);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // NATS first: an unreachable server fails before the slow load.
    let stores = rt.block_on(nats::connect(&a.queue, nats::DEFAULT_QUEUE_MAX))?;
    let n = gpus.len();
    let (gpu_jobs, threads) =
        worker::start(gpus, a.models.clone(), dtype, n, worker::Loading::eager())?;
    let shared = Arc::new(Shared {
        stores,
        infos,
        limits,
        gpu_jobs,
        gpu: Arc::new(Semaphore::new(n)),
        adapters: n as u32,
        ack_every: Duration::from_secs(a.ack_wait / 3),
        stop: AtomicBool::new(false),
    });
    let worked = rt.block_on(work(shared, Duration::from_secs(a.ack_wait)));
    // The last sender goes with `shared`: the threads finish and drop the GPUs.
    drop(rt);
    threads.join()?;
    worked
}

async fn work(shared: Arc<Shared>, ack_wait: Duration) -> Result<()> {
    let mut loops = Vec::new();
    for (name, _) in &shared.infos {
        let consumer: Consumer<pull::Config> = shared
            .stores
            .stream
            .get_or_create_consumer(
                &format!("hoa-worker-{name}"),
                pull::Config {
                    durable_name: Some(format!("hoa-worker-{name}")),
                    filter_subject: nats::subject(name),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait,
                    max_deliver: MAX_DELIVER,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("the JetStream consumer for model {name}"))?;
        loops.push(tokio::spawn(pull_loop(shared.clone(), consumer)));
    }
    let names: Vec<&str> = shared.infos.iter().map(|(n, _)| n.as_str()).collect();
    println!("worker ready: {}", names.join(", "));
    let s = shared.clone();
    tokio::spawn(async move {
        crate::serve::shutdown().await;
        s.stop.store(true, Ordering::SeqCst);
    });
    for l in loops {
        l.await??;
    }
    // The jobs in flight finish (and are acked) before the worker exits.
    let _all = shared.gpu.acquire_many(shared.adapters).await?;
    Ok(())
}

/// Takes a free adapter, then at most one job of this model, which runs on its own task
/// holding the adapter while the loop waits for the next free one; until told to stop.
async fn pull_loop(shared: Arc<Shared>, consumer: Consumer<pull::Config>) -> Result<()> {
    while !shared.stop.load(Ordering::SeqCst) {
        let gpu = shared.gpu.clone().acquire_owned().await?;
        // Told to stop while waiting for the adapter: take no new job.
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let fetched = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await;
        let mut batch = match fetched {
            Ok(b) => b,
            Err(e) => {
                eprintln!("worker: fetching a job failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // At most one message (max_messages(1)).
        loop {
            match batch.next().await {
                Some(Ok(msg)) => {
                    let s = shared.clone();
                    tokio::spawn(async move {
                        handle(&s, msg).await;
                        drop(gpu);
                    });
                    break;
                }
                Some(Err(e)) => eprintln!("worker: receiving a job failed: {e}"),
                None => break,
            }
        }
    }
    Ok(())
}

async fn handle(shared: &Shared, msg: Message) {
    let delivered = msg.info().map_or(1, |i| i.delivered);
    let job: JobMsg = match serde_json::from_slice(&msg.payload) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("worker: dropping a malformed job: {e}");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    eprintln!("job {}: started (delivery {delivered})", job.id);
    let t = std::time::Instant::now();
    let mut cancelled = false;
    let outcome = if delivered >= MAX_DELIVER {
        Err(hoa::Error::Checkpoint(format!(
            "the job was given to {} workers and none finished it (each stopped or died)",
            delivered - 1
        )))
    } else {
        generate(shared, &msg, &job, &mut cancelled).await
    };
    if cancelled {
        // Nobody waits for it (or it was answered before): no result to store, and acked so it
        // is not delivered again.
        let _ = msg.double_ack().await;
        eprintln!(
            "job {}: cancelled by its front (or answered already), acked after {:.2} s",
            job.id,
            t.elapsed().as_secs_f64()
        );
        return;
    }
    match store(&shared.stores, &job.id, outcome).await {
        // Acked only once stored: a worker that dies before this leaves the job to another.
        Ok(ok) => {
            let _ = msg.double_ack().await;
            eprintln!(
                "job {}: {} in {:.2} s",
                job.id,
                if ok { "done" } else { "failed" },
                t.elapsed().as_secs_f64()
            );
        }
        Err(e) => eprintln!("job {}: storing the result failed: {e:#}", job.id),
    }
}

/// Resolves the job again and runs it, acking progress (each step, and every third of the ack
/// wait during a slow one) and passing steps and previews on to the front; a message on the
/// job's cancel subject stops the run after its current step and sets `cancelled`.
async fn generate(
    shared: &Shared,
    msg: &Message,
    job: &JobMsg,
    cancelled: &mut bool,
) -> hoa::Result<Vec<Vec<u8>>> {
    let Some(model) = shared.infos.iter().position(|(n, _)| *n == job.model) else {
        return Err(hoa::Error::invalid(
            "model",
            format!("this worker does not serve `{}`", job.model),
        ));
    };
    // Subscribed before anything else: a cancel sent while the job runs is never missed, and
    // one sent before (an outcome already under its id) is seen just below.
    let lost = |e: &dyn std::fmt::Display| hoa::Error::Checkpoint(format!("NATS: {e}"));
    let mut cancels = (shared.stores.client)
        .subscribe(nats::cancel_subject(&job.id))
        .await
        .map_err(|e| lost(&e))?;
    if let Ok(Some(_)) = shared.stores.results.get(&job.id).await {
        *cancelled = true;
        return Err(hoa::Error::Cancelled);
    }
    let mut request = job.request.clone();
    nats::get_inputs(&shared.stores, &job.id, job.inputs, &mut request)
        .await
        .map_err(|e| hoa::Error::Checkpoint(format!("reading the job's images: {e:#}")))?;
    let resolved = resolve(&request, &shared.infos[model].1, shared.limits)?;
    let deadline = job.deadline_ms.map(nats::deadline_instant);
    let (gpu_job, mut events) = Job::new(model, resolved, deadline);
    let cancel = gpu_job.cancel.clone();
    let stopped = || hoa::Error::Checkpoint("the generation thread stopped".into());
    if shared.gpu_jobs.send(gpu_job).await.is_err() {
        return Err(stopped());
    }
    let progress = nats::progress_subject(&job.id);
    let mut tick = tokio::time::interval(shared.ack_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            Some(_) = cancels.next(), if !*cancelled => {
                cancel.cancel();
                *cancelled = true;
                continue;
            }
            _ = tick.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
                continue;
            }
        };
        match event {
            Some(JobEvent::Done(pngs)) => return Ok(pngs),
            Some(JobEvent::Failed(e)) => return Err(e),
            Some(e) => {
                let _ = msg.ack_with(AckKind::Progress).await;
                if let Some(p) = ProgressMsg::from_event(&e) {
                    if let Ok(body) = serde_json::to_vec(&p) {
                        let _ = shared
                            .stores
                            .client
                            .publish(progress.clone(), body.into())
                            .await;
                    }
                }
            }
            None => return Err(stopped()),
        }
    }
}

/// Puts the PNGs, then the outcome the front watches for; true when it was images.
async fn store(stores: &Stores, id: &str, outcome: hoa::Result<Vec<Vec<u8>>>) -> Result<bool> {
    let value = match outcome {
        Ok(pngs) => {
            for (k, png) in pngs.iter().enumerate() {
                stores
                    .images
                    .put(image_name(id, k).as_str(), &mut png.as_slice())
                    .await
                    .context("the object store")?;
            }
            Outcome::Images { count: pngs.len() }
        }
        Err(e) => Outcome::Failed(WireError::from(&e)),
    };
    let ok = matches!(value, Outcome::Images { .. });
    stores
        .results
        .put(id, serde_json::to_vec(&value)?.into())
        .await
        .context("the key-value bucket")?;
    Ok(ok)
}
