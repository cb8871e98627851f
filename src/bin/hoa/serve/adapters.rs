//! `--adapters all|N|I,J,...` for `hoa serve` and `hoa worker`: which GPU adapters one process
//! drives, a [`Context`] each, with the dtype and request limits that hold on all of them.

use anyhow::{bail, Context as _, Result};
use hoa::gpu::{describe_adapter, left_out_of_all, list_adapters};
use hoa::resolve::DeviceLimits;
use hoa::{Context, ContextOptions, DType};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::path::Path;

/// The adapters `--adapters` names.
#[derive(Clone, Debug, PartialEq)]
pub enum AdaptersArg {
    /// Every adapter `hoa info` marks as taken by `all` (distinct chips, hardware first).
    All,
    /// The first N of those.
    First(usize),
    /// These indices of `hoa info`'s list.
    List(Vec<usize>),
}

pub fn adapters_arg(s: &str) -> Result<AdaptersArg, String> {
    let bad = || format!("expected all, a count N, or indices I,J,... from `hoa info`; got {s:?}");
    if s == "all" {
        return Ok(AdaptersArg::All);
    }
    if !s.contains(',') {
        return match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(AdaptersArg::First(n)),
            _ => Err(bad()),
        };
    }
    let list = s
        .split(',')
        .map(|i| i.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<Vec<_>, _>>()?;
    for (k, i) in list.iter().enumerate() {
        if list[..k].contains(i) {
            return Err(format!("adapter {i} is named twice in {s:?}"));
        }
    }
    Ok(AdaptersArg::List(list))
}

/// One adapter a generation thread drives.
pub struct Gpu {
    pub ctx: Context,
    /// Its index in `hoa info`'s list, or "default" (wgpu's pick, without `--adapters`).
    pub label: String,
    /// Jobs running on it now (0 or 1) and jobs it ran (`/metrics`, label `adapter`).
    pub running: Gauge,
    pub jobs: Counter,
}

impl Gpu {
    fn new(ctx: Context, label: String) -> Gpu {
        Gpu {
            ctx,
            label,
            running: Gauge::default(),
            jobs: Counter::default(),
        }
    }
}

/// The adapters' indices in `hoa info`'s list, checked against it.
fn indices(opts: &ContextOptions, arg: &AdaptersArg) -> Result<Vec<usize>> {
    let list = pollster::block_on(list_adapters(opts));
    let all: Vec<usize> = (0..list.len())
        .filter(|&i| left_out_of_all(&list, i).is_none())
        .collect();
    let n = list.len();
    let picked = match arg {
        AdaptersArg::All => all,
        AdaptersArg::First(k) if *k <= all.len() => all[..*k].to_vec(),
        AdaptersArg::First(k) => bail!(
            "--adapters {k}: only {} of the {n} adapters count for `all` (`hoa info` lists them; \
             name others by index, e.g. --adapters 0,1)",
            all.len()
        ),
        AdaptersArg::List(l) => {
            if let Some(i) = l.iter().find(|&&i| i >= n) {
                bail!(
                    "--adapters: there is no adapter {i}; there {} {n}, numbered from 0 (`hoa \
                     info` lists them)",
                    if n == 1 { "is" } else { "are" }
                );
            }
            l.clone()
        }
    };
    if picked.is_empty() {
        bail!("--adapters: no adapter found (`hoa info` lists them)");
    }
    Ok(picked)
}

/// The contexts for `--adapters` (one made as every other command makes it without the flag).
pub fn open(opts: ContextOptions, arg: Option<&AdaptersArg>) -> Result<Vec<Gpu>> {
    let Some(arg) = arg else {
        let ctx = Context::new_blocking(opts)?;
        eprintln!("adapter: {}", ctx.describe());
        return Ok(vec![Gpu::new(ctx, "default".into())]);
    };
    if opts.adapter_index.is_some() {
        bail!("--adapters and HOA_ADAPTER_INDEX both pick adapters: give one of them");
    }
    let mut gpus = Vec::new();
    for i in indices(&opts, arg)? {
        let o = ContextOptions {
            adapter_index: Some(i),
            ..opts.clone()
        };
        let ctx = Context::new_blocking(o).with_context(|| format!("--adapters: adapter {i}"))?;
        eprintln!("adapter {i}: {}", describe_adapter(&ctx.info));
        gpus.push(Gpu::new(ctx, i.to_string()));
    }
    Ok(gpus)
}

/// One dtype for every adapter, so that a seed gives the same image whichever runs it: f16
/// only where all of them compute in it.
pub fn dtype<'a>(
    gpus: &[Gpu],
    args: &crate::dtype::DTypeArgs,
    paths: impl IntoIterator<Item = &'a Path>,
) -> Result<DType> {
    let weakest = gpus.iter().find(|g| !g.ctx.has_f16()).unwrap_or(&gpus[0]);
    args.pick(&weakest.ctx, paths)
        .with_context(|| format!("adapter {}", weakest.label))
}

/// What a request may ask for: what the smallest adapter allows.
pub fn limits(gpus: &[Gpu], dtype: DType) -> DeviceLimits {
    DeviceLimits {
        max_binding_bytes: gpus
            .iter()
            .map(|g| g.ctx.max_binding_bytes())
            .min()
            .unwrap_or(0),
        dtype_size: dtype.size(),
        host_memory: gpus.iter().any(|g| g.ctx.host_memory()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_takes_all_a_count_or_indices() {
        assert_eq!(adapters_arg("all"), Ok(AdaptersArg::All));
        assert_eq!(adapters_arg("2"), Ok(AdaptersArg::First(2)));
        assert_eq!(adapters_arg("1,0"), Ok(AdaptersArg::List(vec![1, 0])));
        assert!(adapters_arg("1,").is_err());
        assert!(adapters_arg("0").is_err());
        assert!(adapters_arg("0,0").unwrap_err().contains("twice"));
        assert!(adapters_arg("-1,2").is_err());
    }
}
