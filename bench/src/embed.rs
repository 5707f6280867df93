//! `pulse-bench embed`: CPU embedding throughput of the engine alone.

use crate::{cpu_name, workloads, write_report};
use anyhow::bail;
use pulse_models::{DEFAULT_MODEL, DeviceSpec, Embedder, EmbedderOptions, EncoderKind};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct EmbedArgs {
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Encoders to measure; `candle` is candle-transformers' BertModel.
    #[arg(long, value_delimiter = ',', default_value = "candle,native")]
    encoders: Vec<EncoderKind>,
    /// Timed passes per case; the median is reported.
    #[arg(long, default_value = "3")]
    repeats: usize,
    /// Where embed.json and embed.md are written.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

struct Workload {
    name: &'static str,
    texts: Vec<String>,
    batch_size: usize,
}

#[derive(Serialize)]
struct Measurement {
    encoder: String,
    threads: usize,
    workload: &'static str,
    texts: usize,
    batch_size: usize,
    tokens: usize,
    seconds_median: f64,
    seconds_all: Vec<f64>,
    tokens_per_second: f64,
    texts_per_second: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    cpu: String,
    cores: usize,
    repeats: usize,
    results: Vec<Measurement>,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let workloads = [
        Workload {
            name: "1000 short texts, batch 32",
            texts: workloads::short_texts(1000),
            batch_size: 32,
        },
        Workload {
            name: "200 texts of 256 tokens, batch 16",
            texts: workloads::long_texts(200),
            batch_size: 16,
        },
    ];
    let mut results = Vec::new();
    for &encoder in &args.encoders {
        for &threads in &args.threads {
            let options = EmbedderOptions {
                device: DeviceSpec::Cpu,
                threads: Some(threads),
                encoder,
                ..EmbedderOptions::default()
            };
            let embedder = Embedder::load(&args.model, &options)?;
            for workload in &workloads {
                let measurement = measure(&embedder, workload, args.repeats)?;
                eprintln!(
                    "{encoder:>6} {threads} thread(s) {:<36} {:>8.0} tokens/s",
                    workload.name, measurement.tokens_per_second
                );
                results.push(measurement);
            }
        }
    }
    let report = Report {
        model: args.model.clone(),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        repeats: args.repeats,
        results,
    };
    write_report(&args.out_dir, "embed", &report, &markdown(&report))
}

/// Times whole passes over the workload: tokenizing and the forward pass,
/// one batch after another, as `pulse embed` runs them.
fn measure(
    embedder: &Embedder,
    workload: &Workload,
    repeats: usize,
) -> anyhow::Result<Measurement> {
    let texts: Vec<&str> = workload.texts.iter().map(String::as_str).collect();
    let tokens: usize = embedder
        .tokenize(&texts)
        .into_iter()
        .map(|t| t.map(|t| t.len()))
        .sum::<Result<usize, _>>()?;
    // Warm-up: page in the weights and grow the allocator's pools.
    embedder.embed(&texts[..workload.batch_size.min(texts.len())])?;
    let mut seconds = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        for batch in texts.chunks(workload.batch_size) {
            embedder.embed(batch)?;
        }
        seconds.push(started.elapsed().as_secs_f64());
    }
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    Ok(Measurement {
        encoder: embedder.info().encoder.to_string(),
        threads: embedder.info().threads,
        workload: workload.name,
        texts: texts.len(),
        batch_size: workload.batch_size,
        tokens,
        seconds_median: median,
        seconds_all: seconds,
        tokens_per_second: tokens as f64 / median,
        texts_per_second: texts.len() as f64 / median,
    })
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "Model `{}` on {} ({} cores), CPU, f32, median of {} passes.\n\n\
         | encoder | threads | workload | tokens | seconds | tokens/s | texts/s |\n\
         | --- | ---: | --- | ---: | ---: | ---: | ---: |\n",
        report.model, report.cpu, report.cores, report.repeats
    );
    for m in &report.results {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.1} |\n",
            m.encoder,
            m.threads,
            m.workload,
            m.tokens,
            m.seconds_median,
            m.tokens_per_second,
            m.texts_per_second
        ));
    }
    out
}
