//! The generation threads, one per adapter: each owns its GPU context and loaded pipelines and
//! runs one job at a time, taken from one bounded queue, so the HTTP side never touches the GPU. A job reports
//! through a bounded channel of [`JobEvent`]s; dropping the receiver (the client went away) or
//! passing the job's deadline stops the run after the current denoising step.

use super::adapters::Gpu;
use hoa::image_io::encode_png;
use hoa::model_files::open_model;
use hoa::options::Cancel;
use hoa::pipeline::{Event, Pipeline};
use hoa::resolve::Resolved;
use hoa::{Context, DType};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::mpsc;

/// Room for a job's events: `Progress` and `Partial` are dropped rather than wait when it is
/// full, so the GPU never waits on a slow client; `Done` / `Failed` always arrive.
pub const EVENTS: usize = 8;

/// What a running job reports, in order: any number of `Progress` and `Partial`, then exactly
/// one `Done` or `Failed` (none when the receiver was dropped).
#[derive(Debug)]
pub enum JobEvent {
    /// Denoising step `step` (1-based) of `total` finished, taking `seconds`.
    Progress {
        // For progress reports (the NATS worker's acks); the HTTP side reads `seconds`.
        #[allow(dead_code)]
        step: usize,
        #[allow(dead_code)]
        total: usize,
        seconds: f64,
    },
    /// A preview of the first image (PNG, no parameters chunk); `index` counts previews from 0.
    Partial { index: usize, png: Vec<u8> },
    /// The model's rewriter rewrote the prompt to this (`revised_prompt`); sent before any
    /// `Progress` when the model's rewriter ran.
    Revised(String),
    /// One PNG per image, each with its `parameters` chunk.
    Done(Vec<Vec<u8>>),
    /// The run failed; [`hoa::Error::Cancelled`] when the deadline passed.
    Failed(hoa::Error),
}

/// One resolved request for model `model` (an index into the served models).
pub struct Job {
    pub model: usize,
    pub resolved: Resolved,
    pub events: mpsc::Sender<JobEvent>,
    /// Past this instant the run stops (between steps) with `Failed(Cancelled)`.
    pub deadline: Option<Instant>,
    /// Raised from outside (a NATS cancel), the run stops the same way.
    pub cancel: Cancel,
}

impl Job {
    /// A job and the receiving end of its events.
    pub fn new(
        model: usize,
        resolved: Resolved,
        deadline: Option<Instant>,
    ) -> (Job, mpsc::Receiver<JobEvent>) {
        let (events, rx) = mpsc::channel(EVENTS);
        let job = Job {
            model,
            resolved,
            events,
            deadline,
            cancel: Cancel::default(),
        };
        (job, rx)
    }

    /// Nobody waits for the result any more, or its time is up.
    fn abandoned(&self) -> bool {
        self.events.is_closed()
            || self.deadline.is_some_and(|d| Instant::now() >= d)
            || self.cancel.is_cancelled()
    }
}

/// When the generation thread loads its models (`--load`, `--max-loaded`).
#[derive(Clone, Debug)]
pub struct Loading {
    /// Load each model on its first job instead of before the server listens.
    pub lazy: bool,
    /// Most pipelines loaded at once; past it the least recently used one is dropped.
    pub max_loaded: usize,
    /// Counts pipeline loads (`hoa_model_loads_total`).
    pub loads: prometheus_client::metrics::counter::Counter,
}

impl Loading {
    /// Every model loaded before the first job, and kept.
    pub fn eager() -> Loading {
        Loading {
            lazy: false,
            max_loaded: usize::MAX,
            loads: Default::default(),
        }
    }
}

/// The served models' pipelines, each loaded or not, with when each was last used.
struct Pipes {
    models: Vec<(String, PathBuf)>,
    loaded: Vec<Option<Pipeline>>,
    used: Vec<u64>,
    clock: u64,
    dtype: DType,
    loading: Loading,
}

impl Pipes {
    fn new(models: Vec<(String, PathBuf)>, dtype: DType, loading: Loading) -> Pipes {
        let n = models.len();
        Pipes {
            models,
            loaded: (0..n).map(|_| None).collect(),
            used: vec![0; n],
            clock: 0,
            dtype,
            loading,
        }
    }

    /// Model `i`'s pipeline, loaded now if it is not, after dropping the least recently used
    /// ones that would exceed `max_loaded`.
    fn get(&mut self, ctx: &Context, i: usize) -> hoa::Result<(&str, &Pipeline)> {
        self.clock += 1;
        self.used[i] = self.clock;
        if self.loaded[i].is_none() {
            while self.loaded.iter().flatten().count() >= self.loading.max_loaded.max(1) {
                let lru = (0..self.loaded.len())
                    .filter(|&k| self.loaded[k].is_some())
                    .min_by_key(|&k| self.used[k]);
                let Some(k) = lru else { break };
                self.loaded[k] = None;
                eprintln!("unloaded {} (--max-loaded)", self.models[k].0);
            }
            let (name, dir) = &self.models[i];
            let t = Instant::now();
            let p =
                open_model(dir, None).and_then(|f| Pipeline::load(ctx, f.as_ref(), self.dtype))?;
            self.loading.loads.inc();
            eprintln!("loaded {name} in {:.1} s", t.elapsed().as_secs_f64());
            self.loaded[i] = Some(p);
        }
        match &self.loaded[i] {
            Some(p) => Ok((&self.models[i].0, p)),
            None => unreachable!("loaded just above"),
        }
    }
}

/// The generation threads, one per adapter; join them all before the process exits.
pub struct Threads(Vec<std::thread::JoinHandle<()>>);

impl Threads {
    /// Waits for every thread; an error when one panicked.
    pub fn join(self) -> anyhow::Result<()> {
        // Every thread is joined, even after one that panicked.
        let panicked = self
            .0
            .into_iter()
            .map(|t| t.join())
            .filter(Result::is_err)
            .count();
        if panicked > 0 {
            anyhow::bail!("{panicked} generation thread(s) panicked");
        }
        Ok(())
    }
}

/// Starts a generation thread per adapter, each keeping its context and its own pipelines
/// (loaded as `loading` says, per adapter) and taking jobs from one bounded queue, so each
/// adapter runs one job at a time. With eager loading it returns once every adapter has every
/// model (or one failed). Returns the queue's sending end and the threads, which end when every
/// sender is dropped. Join them before the process exits: a GPU context must be dropped by its
/// own thread (wgpu's GL backend corrupts the heap at exit otherwise).
pub fn start(
    gpus: Vec<Gpu>,
    models: Vec<(String, PathBuf)>,
    dtype: DType,
    queue: usize,
    loading: Loading,
) -> anyhow::Result<(mpsc::Sender<Job>, Threads)> {
    if !loading.lazy && loading.max_loaded < models.len() {
        anyhow::bail!(
            "--max-loaded {} is less than the {} models: with it, use --load lazy",
            loading.max_loaded,
            models.len()
        );
    }
    let (tx, rx) = mpsc::channel::<Job>(queue);
    // Idle threads take turns waiting on the queue: a job goes to whichever adapter is free.
    let rx = Arc::new(Mutex::new(rx));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    let n = gpus.len();
    for gpu in gpus {
        let (rx, ready_tx) = (rx.clone(), ready_tx.clone());
        let mut pipes = Pipes::new(models.clone(), dtype, loading.clone());
        let thread = std::thread::Builder::new()
            .name(format!("hoa-generate-{}", gpu.label))
            .spawn(move || {
                let eager = if pipes.loading.lazy {
                    0
                } else {
                    pipes.models.len()
                };
                for i in 0..eager {
                    if let Err(e) = pipes.get(&gpu.ctx, i) {
                        let name = &pipes.models[i].0;
                        let at = format!("adapter {}: {name}: {e}", gpu.label);
                        let _ = ready_tx.send(Err(anyhow::anyhow!(at)));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                // A thread that dies while loading must not leave start() waiting on this one.
                drop(ready_tx);
                run(&gpu, &mut pipes, &rx);
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut failed = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(_) => {
                failed.get_or_insert(anyhow::anyhow!("a generation thread died while loading"));
                break;
            }
        }
    }
    let threads = Threads(threads);
    if let Some(e) = failed {
        // The threads that loaded see the queue close and drop their contexts on their own
        // threads (GL's must) before the process exits with the error.
        drop(tx);
        let _ = threads.join();
        return Err(e);
    }
    Ok((tx, threads))
}

fn run(gpu: &Gpu, pipes: &mut Pipes, rx: &Mutex<mpsc::Receiver<Job>>) {
    let ctx = &gpu.ctx;
    loop {
        // The lock is held while waiting: one idle thread waits on the queue, the others on it.
        let job = rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .blocking_recv();
        let Some(mut job) = job else { break };
        if job.abandoned() {
            // The client went away (or gave up) while it waited: nothing to do. A receiver
            // still there learns why.
            let _ = job.events.try_send(JobEvent::Failed(hoa::Error::Cancelled));
            continue;
        }
        gpu.jobs.inc();
        gpu.running.inc();
        let event = match pipes
            .get(ctx, job.model)
            .and_then(|(name, pipe)| generate(gpu, name, pipe, &mut job))
        {
            Ok(pngs) => JobEvent::Done(pngs),
            Err(e) => JobEvent::Failed(e),
        };
        gpu.running.dec();
        let _ = job.events.blocking_send(event);
    }
}

fn generate(gpu: &Gpu, name: &str, pipe: &Pipeline, job: &mut Job) -> hoa::Result<Vec<Vec<u8>>> {
    let t = Instant::now();
    let ctx = &gpu.ctx;
    let cancel = job.cancel.clone();
    job.resolved.options.cancel = Some(cancel.clone());
    if job.resolved.pending_rewrite {
        let rw = pipe.rewriter.as_ref();
        let tok = Some(&pipe.tokenizer);
        pollster::block_on(hoa::rewriter::apply(&mut job.resolved, ctx, rw, tok))?;
        let r = &job.resolved;
        let text = r.upsampled.clone().unwrap_or_else(|| r.prompt.clone());
        let _ = job.events.try_send(JobEvent::Revised(text));
    }
    let r = &job.resolved;
    // OpenAI's response has no place for warnings: they go to the server's log.
    for w in &r.warnings {
        eprintln!("{name}: warning: {w}");
    }
    let (mut partials, mut last) = (0, Instant::now());
    let images = pollster::block_on(pipe.generate(ctx, &r.options, &mut |ev| match ev {
        Event::Warning(w) => eprintln!("{name}: warning: {w}"),
        Event::Step { step, total, .. } => {
            let seconds = last.elapsed().as_secs_f64();
            last = Instant::now();
            let _ = job.events.try_send(JobEvent::Progress {
                step,
                total,
                seconds,
            });
            if job.abandoned() {
                cancel.cancel();
            }
        }
        Event::Preview { image, .. } => {
            match encode_png(&image, None) {
                Ok(png) => {
                    let index = partials;
                    partials += 1;
                    let _ = job.events.try_send(JobEvent::Partial { index, png });
                }
                Err(e) => eprintln!("{name}: warning: a preview failed to encode: {e}"),
            }
            // The preview's decode took time too.
            last = Instant::now();
        }
        Event::Decoding => {}
    }));
    let images = match images {
        Err(hoa::Error::Cancelled) => {
            eprintln!(
                "{name}: stopped after {:.1} s ({})",
                t.elapsed().as_secs_f64(),
                match job.deadline.is_some_and(|d| Instant::now() >= d) {
                    true => "past the time limit",
                    false => "the client went away or it was cancelled",
                }
            );
            return Err(hoa::Error::Cancelled);
        }
        r => r?,
    };
    eprintln!(
        "{name}: {} image(s) {}x{}, {} steps in {:.1} s{}",
        images.len(),
        r.options.width,
        r.options.height,
        r.options.steps,
        t.elapsed().as_secs_f64(),
        match gpu.label.as_str() {
            "default" => String::new(),
            l => format!(" on adapter {l}"),
        }
    );
    images
        .iter()
        .enumerate()
        .map(|(k, img)| encode_png(img, Some(&r.parameters(name, k).to_text())))
        .collect()
}
