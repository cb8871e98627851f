//! The generation thread: it owns the GPU context and the loaded pipelines and runs one job at
//! a time, taken from a bounded queue, so the HTTP side never touches the GPU.

use hoa::image_io::encode_png;
use hoa::model_files::open_model;
use hoa::pipeline::{Event, Pipeline};
use hoa::resolve::Resolved;
use hoa::{Context, DType};
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

/// One resolved request for model `model` (an index into the served models); the reply is one
/// PNG per image, each with its `parameters` chunk.
pub struct Job {
    pub model: usize,
    pub resolved: Resolved,
    pub reply: oneshot::Sender<hoa::Result<Vec<Vec<u8>>>>,
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
                let t = std::time::Instant::now();
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
    while let Some(job) = rx.blocking_recv() {
        // The client went away while it waited: nothing to do.
        if job.reply.is_closed() {
            continue;
        }
        let (name, pipe) = &pipes[job.model];
        let _ = job.reply.send(generate(ctx, name, pipe, &job.resolved));
    }
}

fn generate(ctx: &Context, name: &str, pipe: &Pipeline, r: &Resolved) -> hoa::Result<Vec<Vec<u8>>> {
    let t = std::time::Instant::now();
    // OpenAI's response has no place for warnings: they go to the server's log.
    for w in &r.warnings {
        eprintln!("{name}: warning: {w}");
    }
    let images = pollster::block_on(pipe.generate(ctx, &r.options, &mut |ev| {
        if let Event::Warning(w) = ev {
            eprintln!("{name}: warning: {w}");
        }
    }))?;
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
