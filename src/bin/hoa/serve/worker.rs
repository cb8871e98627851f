//! The generation thread: it owns the GPU context and the loaded pipelines and runs one job at
//! a time, taken from a bounded queue, so the HTTP side never touches the GPU. A job reports
//! through a bounded channel of [`JobEvent`]s; dropping the receiver (the client went away) or
//! passing the job's deadline stops the run after the current denoising step.

use hoa::image_io::encode_png;
use hoa::model_files::open_model;
use hoa::options::Cancel;
use hoa::pipeline::{Event, Pipeline};
use hoa::resolve::Resolved;
use hoa::{Context, DType};
use std::path::PathBuf;
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
        };
        (job, rx)
    }

    /// Nobody waits for the result any more, or its time is up.
    fn abandoned(&self) -> bool {
        self.events.is_closed() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Loads every model on a new thread that keeps `ctx`; returns once they are loaded (or one
/// failed), with the queue's sending end and the thread, which ends when every sender is
/// dropped. Join it before the process exits: the GPU context must be dropped by its own
/// thread (wgpu's GL backend corrupts the heap at exit otherwise).
pub fn start(
    ctx: Context,
    models: Vec<(String, PathBuf)>,
    dtype: DType,
    queue: usize,
) -> anyhow::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<Job>(queue);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("hoa-generate".into())
        .spawn(move || {
            let mut pipes = Vec::new();
            for (name, dir) in &models {
                let t = Instant::now();
                let loaded =
                    open_model(dir, None).and_then(|f| Pipeline::load(&ctx, f.as_ref(), dtype));
                match loaded {
                    Ok(p) => pipes.push((name.clone(), p)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{name}: {e}")));
                        return;
                    }
                }
                eprintln!("loaded {name} in {:.1} s", t.elapsed().as_secs_f64());
            }
            let _ = ready_tx.send(Ok(()));
            run(&ctx, &pipes, rx);
        })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the generation thread died while loading"))??;
    Ok((tx, thread))
}

fn run(ctx: &Context, pipes: &[(String, Pipeline)], mut rx: mpsc::Receiver<Job>) {
    while let Some(mut job) = rx.blocking_recv() {
        if job.abandoned() {
            // The client went away (or gave up) while it waited: nothing to do. A receiver
            // still there learns why.
            let _ = job.events.try_send(JobEvent::Failed(hoa::Error::Cancelled));
            continue;
        }
        let (name, pipe) = &pipes[job.model];
        let event = match generate(ctx, name, pipe, &mut job) {
            Ok(pngs) => JobEvent::Done(pngs),
            Err(e) => JobEvent::Failed(e),
        };
        let _ = job.events.blocking_send(event);
    }
}

fn generate(
    ctx: &Context,
    name: &str,
    pipe: &Pipeline,
    job: &mut Job,
) -> hoa::Result<Vec<Vec<u8>>> {
    let t = Instant::now();
    let cancel = Cancel::default();
    job.resolved.options.cancel = Some(cancel.clone());
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
                    false => "the client went away",
                }
            );
            return Err(hoa::Error::Cancelled);
        }
        r => r?,
    };
    eprintln!(
        "{name}: {} image(s) {}x{}, {} steps in {:.1} s",
        images.len(),
        r.options.width,
        r.options.height,
        r.options.steps,
        t.elapsed().as_secs_f64()
    );
    images
        .iter()
        .enumerate()
        .map(|(k, img)| encode_png(img, Some(&r.parameters(name, k).to_text())))
        .collect()
}
