//! `pulse-bench`: measures pulse and writes JSON and markdown.

mod cluster;
mod embed;
mod gpu;
mod ingest;
mod load;
mod matmul;
mod recluster;
mod storm;
mod trends;

use clap::{Parser, Subcommand};
// The modules reach these as `crate::…`.
use pulse_bench::{cpu_name, median_run, workloads, write_report};

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
    /// The dense layers' matrix multiplies alone: pulse's f32 tile, bf16
    /// (where the CPU has AVX-512 BF16) and int8 beside the gemm crate,
    /// GFLOP/s.
    Matmul(matmul::MatmulArgs),
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
    /// Models × batch sizes × sequence lengths × devices: speed, latency,
    /// memory, load time and quality on labelled texts; charts; `--compare`.
    Models(pulse_bench::models::ModelsArgs),
    /// Trend quality on labelled real texts (the fortunes, WordNet
    /// glosses): pulse's trend pipeline beside BERTopic on the same vectors.
    Trends(trends::TrendsArgs),
    /// One re-cluster job over a large window through `pulse serve`: time
    /// per stage and the server's memory.
    Recluster(recluster::ReclusterArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Embed(args) => embed::run(args),
        Command::Matmul(args) => matmul::run(args),
        Command::Load(args) => load::run(args),
        Command::Ingest(args) => ingest::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Gpu(args) => gpu::run(args),
        Command::Storm(args) => storm::run(args),
        Command::Models(args) => pulse_bench::models::run(args),
        Command::Trends(args) => trends::run(args),
        Command::Recluster(args) => recluster::run(args),
    }
}
