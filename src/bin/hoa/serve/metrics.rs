//! `GET /metrics` in Prometheus' text format (the `prometheus-client` crate): queue depth,
//! requests in flight, jobs per adapter, images made, seconds per denoising step, model loads, errors by OpenAI
//! type.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    queue_depth: Gauge,
    in_flight: Gauge,
    pub images: Counter,
    pub step_seconds: Histogram,
    /// Pipelines loaded (at start, or on first use with `--load lazy`).
    pub model_loads: Counter,
    errors: Family<Labels, Counter>,
    adapter_running: Family<Labels, Gauge>,
    adapter_jobs: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let queue_depth = Gauge::default();
        let in_flight = Gauge::default();
        let images = Counter::default();
        // 10 ms .. ~330 s: a step on a large GPU up to a large image on a software adapter.
        let step_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let errors = Family::<Labels, Counter>::default();
        let model_loads = Counter::default();
        registry.register(
            "hoa_model_loads",
            "Model pipelines loaded onto the adapter",
            model_loads.clone(),
        );
        registry.register(
            "hoa_queue_depth",
            "Jobs waiting for the generation thread",
            queue_depth.clone(),
        );
        registry.register(
            "hoa_requests_in_flight",
            "Image requests queued or generating, not yet answered",
            in_flight.clone(),
        );
        registry.register("hoa_images", "Images generated", images.clone());
        registry.register(
            "hoa_step_seconds",
            "Seconds per denoising step",
            step_seconds.clone(),
        );
        registry.register(
            "hoa_http_errors",
            "Error answers by OpenAI error type and HTTP status",
            errors.clone(),
        );
        let adapter_running = Family::<Labels, Gauge>::default();
        let adapter_jobs = Family::<Labels, Counter>::default();
        registry.register(
            "hoa_adapter_jobs_running",
            "Jobs generating on each adapter now (at most one)",
            adapter_running.clone(),
        );
        registry.register(
            "hoa_adapter_jobs",
            "Jobs each adapter took from the queue",
            adapter_jobs.clone(),
        );
        Metrics {
            registry,
            adapter_running,
            adapter_jobs,
            queue_depth,
            in_flight,
            images,
            step_seconds,
            model_loads,
            errors,
        }
    }

    /// Counts one error answer.
    pub fn error(&self, kind: &str, status: u16) {
        self.errors
            .get_or_create(&vec![
                ("type".to_string(), kind.to_string()),
                ("status".to_string(), status.to_string()),
            ])
            .inc();
    }

    /// Adapter `label`'s running-jobs gauge and jobs counter.
    pub fn adapter(&self, label: &str) -> (Gauge, Counter) {
        let l = vec![("adapter".to_string(), label.to_string())];
        (
            self.adapter_running.get_or_create(&l).clone(),
            self.adapter_jobs.get_or_create(&l).clone(),
        )
    }

    /// One more request in flight until the guard is dropped (answered or abandoned).
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// The text exposition, with the queue depth as of now.
    pub fn render(&self, queue_depth: usize) -> String {
        self.queue_depth.set(queue_depth as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
