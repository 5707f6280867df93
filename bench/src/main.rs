//! `pulse-bench`: measures pulse and writes JSON and markdown.

mod cluster;
mod embed;
mod gpu;
mod ingest;
mod load;
mod storm;
mod workloads;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "pulse-bench", about = "Benchmarks for pulse")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embedding throughput on the CPU: short and 256-token texts.
    Embed(embed::EmbedArgs),
    /// Concurrent gRPC clients against `pulse serve`, beside the engine's
    /// offline batched throughput.
    Load(load::LoadArgs),
    /// Signals through `pulse serve` into its store, and the store alone at scale.
    Ingest(ingest::IngestArgs),
    /// Exact HDBSCAN on embedding-like vectors, beside the Python package.
    Cluster(cluster::ClusterArgs),
    /// The CUDA path: encoder tokens/s in f16/bf16 and the kNN kernel
    /// (needs `--features cuda` and a GPU).
    Gpu(gpu::GpuArgs),
    /// A bounded flood of valid and invalid requests at high concurrency:
    /// only the expected statuses, no crash, memory sampled.
    Storm(storm::StormArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Embed(args) => embed::run(args),
        Command::Load(args) => load::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Gpu(args) => gpu::run(args),
        Command::Storm(args) => storm::run(args),
    }
}

/// Writes `{name}.json` and `{name}.md` into `dir` and prints the markdown.
pub fn write_report(
    dir: &Path,
    name: &str,
    report: &impl Serialize,
    markdown: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let md_path = dir.join(format!("{name}.md"));
    std::fs::write(&md_path, markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    print!("{markdown}");
    Ok(())
}

pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Runs `work` `repeat` times; the run with the median wall time and that
/// time.
pub fn median_run<T, E>(
    repeat: usize,
    mut work: impl FnMut() -> Result<T, E>,
) -> Result<(T, f64), E> {
    let mut runs = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let started = Instant::now();
        let result = work()?;
        runs.push((result, started.elapsed().as_secs_f64()));
    }
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let middle = runs.len() / 2;
    Ok(runs.swap_remove(middle))
}
