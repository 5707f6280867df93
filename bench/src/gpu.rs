//! `pulse-bench gpu`: the CUDA path where a GPU exists (`--features cuda`):
//! encoder tokens/s for the CPU benchmark's two workloads at several batch
//! sizes in f16 and bf16, and the k-nearest-neighbour kernel at scale.

use crate::{median_run, workloads, write_report};
use anyhow::{Context, bail};
use pulse_models::{
    DEFAULT_MODEL, DTypeSpec, DeviceSpec, Embedder, EmbedderOptions, TokenizedText,
};
use pulse_trends::{Params, hdbscan_on};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct GpuArgs {
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// CUDA device to measure.
    #[arg(long, default_value = "cuda:0")]
    device: DeviceSpec,
    #[arg(long, value_delimiter = ',', default_value = "f16,bf16")]
    dtypes: Vec<DTypeSpec>,
    #[arg(long, value_delimiter = ',', default_value = "32,128,512")]
    batch_sizes: Vec<usize>,
    /// Short texts in the first workload (the CPU benchmark uses 1,000).
    #[arg(long, default_value = "4096")]
    short_texts: usize,
    /// 256-token texts in the second workload (the CPU benchmark uses 200).
    #[arg(long, default_value = "1024")]
    long_texts: usize,
    /// Points for the nearest-neighbour kernel.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    knn_sizes: Vec<usize>,
    #[arg(long, default_value = "384")]
    dim: usize,
    #[arg(long, default_value = "32")]
    k: usize,
    /// Also cluster each kNN size with HDBSCAN (neighbours on the GPU, the
    /// rest on the CPU).
    #[arg(long)]
    hdbscan: bool,
    /// Timed passes per case; the median is reported.
    #[arg(long, default_value = "3")]
    repeats: usize,
    /// Where gpu.json and gpu.md are written.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(Serialize)]
struct EncoderRun {
    dtype: String,
    workload: &'static str,
    batch_size: usize,
    texts: usize,
    tokens: usize,
    /// Tokenizing and the forward pass, as `pulse embed` runs them.
    tokens_per_second: f64,
    texts_per_second: f64,
    /// The forward pass and pooling alone, on texts tokenized beforehand.
    model_tokens_per_second: f64,
}

#[derive(Serialize)]
struct KnnRun {
    points: usize,
    dim: usize,
    k: usize,
    seconds: f64,
    /// Distance work done, counting a subtraction and a multiply-add per
    /// dimension and pair.
    tflops: f64,
    hdbscan_seconds: Option<f64>,
    hdbscan_neighbours_seconds: Option<f64>,
    n_clusters: Option<usize>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    gpu: String,
    repeats: usize,
    encoder: Vec<EncoderRun>,
    knn: Vec<KnnRun>,
}

pub fn run(args: GpuArgs) -> anyhow::Result<()> {
    if args.repeats == 0 || args.batch_sizes.contains(&0) {
        bail!("--repeats and --batch-sizes must be positive");
    }
    let device = args.device.select()?;
    if device.is_cpu() {
        bail!("pulse-bench gpu measures a CUDA device; build with --features cuda");
    }
    let workloads = [
        ("short texts", workloads::short_texts(args.short_texts)),
        ("256-token texts", workloads::long_texts(args.long_texts)),
    ];
    let mut encoder = Vec::new();
    for &dtype in &args.dtypes {
        let options = EmbedderOptions {
            device: args.device,
            dtype,
            ..EmbedderOptions::default()
        };
        let embedder = Embedder::load(&args.model, &options)
            .with_context(|| format!("cannot load {}", args.model))?;
        for (name, texts) in &workloads {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let tokenized = embedder
                .tokenize(&texts)
                .into_iter()
                .collect::<Result<Vec<TokenizedText>, _>>()?;
            let tokens: usize = tokenized.iter().map(TokenizedText::len).sum();
            for &batch_size in &args.batch_sizes {
                embedder.embed(&texts[..batch_size.min(texts.len())])?;
                let (_, whole) = median_run(args.repeats, || {
                    texts
                        .chunks(batch_size)
                        .try_for_each(|batch| embedder.embed(batch).map(drop))
                })?;
                let (_, model) = median_run(args.repeats, || {
                    tokenized
                        .chunks(batch_size)
                        .try_for_each(|batch| embedder.embed_tokenized(batch).map(drop))
                })?;
                let run = EncoderRun {
                    dtype: embedder.info().dtype.clone(),
                    workload: name,
                    batch_size,
                    texts: texts.len(),
                    tokens,
                    tokens_per_second: tokens as f64 / whole,
                    texts_per_second: texts.len() as f64 / whole,
                    model_tokens_per_second: tokens as f64 / model,
                };
                eprintln!(
                    "{} {name} batch {batch_size}: {:.0} tokens/s ({:.0} model only)",
                    run.dtype, run.tokens_per_second, run.model_tokens_per_second
                );
                encoder.push(run);
            }
        }
    }

    let mut knn = Vec::new();
    for &n in &args.knn_sizes {
        let (points, _) = workloads::embedding_like(n, args.dim, 0x5eed_c105 + n as u64);
        let rows = pulse_kernels::distance::Rows::new(&points, args.dim)?;
        // Loads the module and warms the allocator.
        pulse_kernels::distance::knn_on(rows, args.k, &device)?;
        let (_, seconds) = median_run(args.repeats, || {
            pulse_kernels::distance::knn_on(rows, args.k, &device)
        })?;
        let tflops = 3.0 * (n as f64).powi(2) * args.dim as f64 / seconds / 1e12;
        eprintln!(
            "knn {n}×{} k={}: {seconds:.3} s, {tflops:.1} TFLOP/s",
            args.dim, args.k
        );
        let clustering = if args.hdbscan {
            let mut params = Params::new(15);
            params.min_samples = Some(5);
            let started = Instant::now();
            let clustering = hdbscan_on(&points, args.dim, &params, &device)?;
            Some((started.elapsed().as_secs_f64(), clustering))
        } else {
            None
        };
        knn.push(KnnRun {
            points: n,
            dim: args.dim,
            k: args.k,
            seconds,
            tflops,
            hdbscan_seconds: clustering.as_ref().map(|c| c.0),
            hdbscan_neighbours_seconds: clustering
                .as_ref()
                .map(|c| c.1.timings.neighbours.as_secs_f64()),
            n_clusters: clustering.as_ref().map(|c| c.1.n_clusters),
        });
    }

    let report = Report {
        model: args.model.clone(),
        gpu: gpu_name(),
        repeats: args.repeats,
        encoder,
        knn,
    };
    write_report(&args.out_dir, "gpu", &report, &markdown(&report))
}

/// The GPU's name as nvidia-smi gives it, where it can.
fn gpu_name() -> String {
    std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "a CUDA GPU".to_string())
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "Model `{}` on {}, median of {} passes.\n\n\
         | dtype | workload | batch | texts | tokens | tokens/s | texts/s | tokens/s, model only |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        report.model, report.gpu, report.repeats
    );
    for r in &report.encoder {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |\n",
            r.dtype,
            r.workload,
            r.batch_size,
            r.texts,
            r.tokens,
            r.tokens_per_second,
            r.texts_per_second,
            r.model_tokens_per_second
        ));
    }
    if !report.knn.is_empty() {
        out.push_str(
            "\n| kNN points | dim | k | seconds | TFLOP/s | HDBSCAN seconds (neighbours) | clusters |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for r in &report.knn {
            let hdbscan = match (r.hdbscan_seconds, r.hdbscan_neighbours_seconds) {
                (Some(total), Some(neighbours)) => format!("{total:.2} ({neighbours:.2})"),
                _ => "—".to_string(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.1} | {} | {} |\n",
                r.points,
                r.dim,
                r.k,
                r.seconds,
                r.tflops,
                hdbscan,
                r.n_clusters.map_or("—".to_string(), |c| c.to_string())
            ));
        }
    }
    out
}
