//! `pulse-bench embed`: CPU embedding throughput and batch-1 latency of
//! pulse's encoders, and, with `--python`, of ONNX Runtime and PyTorch
//! (sentence-transformers) on the same texts through
//! `bench/python/cpu_reference.py`, with pulse's speed as a multiple of
//! each reference engine's. With `--rounds`, pulse and the reference
//! engines take turns, so that a shared machine's load, which drifts over
//! the minutes between one engine and the next, weighs on both sides.

use crate::{cpu_name, median_run, workloads, write_report};
use anyhow::{Context, bail};
use pulse_bench::charts::{self, ChartFormat, LineChart, Series};
use pulse_bench::models::percentiles_ms;
use pulse_models::{
    DEFAULT_MODEL, DTypeSpec, DeviceSpec, Embedder, EmbedderOptions, EncoderKind, ModelInfo,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    /// Precisions to measure: f32, and bf16 and int8 (the dense layers in
    /// that precision, native encoder only; bf16 where the CPU has AVX-512
    /// BF16), whose embeddings are compared with f32's.
    #[arg(long, value_delimiter = ',', default_value = "f32,bf16,int8")]
    dtypes: Vec<DTypeSpec>,
    /// Timed passes per case; the median is reported.
    #[arg(long, default_value = "3")]
    repeats: usize,
    /// Rounds of the whole comparison: pulse's encoders, then the
    /// reference engines (`--python`), the order swapped in every other
    /// round. Each case reports its median round, and each round's pulse ÷
    /// reference ratios are listed.
    #[arg(long, default_value = "1")]
    rounds: usize,
    /// A Python with onnxruntime (and optionally torch and
    /// sentence-transformers) installed: runs bench/python/cpu_reference.py
    /// on the same texts and adds its engines to the table.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Chart formats to draw.
    #[arg(long, value_delimiter = ',', default_value = "png,svg")]
    charts: Vec<ChartFormat>,
    #[arg(long)]
    no_charts: bool,
    /// Where embed.json, embed.md and the charts are written.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(Serialize)]
struct Workload {
    name: &'static str,
    batch_size: usize,
    texts: Vec<String>,
}

const SHORT: &str = "1000 short texts, batch 32";
const LONG: &str = "200 texts of 256 tokens, batch 16";
const SINGLE: &str = "200 short texts, batch 1";

#[derive(Serialize, Deserialize)]
struct Measurement {
    #[serde(alias = "engine")]
    encoder: String,
    threads: usize,
    workload: String,
    texts: usize,
    batch_size: usize,
    tokens: usize,
    seconds_median: f64,
    seconds_all: Vec<f64>,
    tokens_per_second: f64,
    texts_per_second: f64,
    /// Nearest-rank median of every batch's latency, all passes together.
    batch_p50_ms: f64,
}

/// What cpu_reference.py writes.
#[derive(Serialize, Deserialize)]
struct ReferenceRun {
    engines: BTreeMap<String, ReferenceEngine>,
    skipped: BTreeMap<String, String>,
    results: Vec<Measurement>,
}

#[derive(Serialize, Deserialize)]
struct ReferenceEngine {
    version: String,
    parity: Parity,
}

#[derive(Serialize, Deserialize)]
struct Parity {
    min_cosine: f64,
    mean_cosine: f64,
    cases: usize,
}

/// What the script reads.
#[derive(Serialize)]
struct ReferenceInput<'a> {
    model_dir: &'a Path,
    max_seq_length: usize,
    repeats: usize,
    threads: &'a [usize],
    workloads: &'a [Workload],
}

/// How close a reduced precision's embeddings come to f32's on the
/// workloads' texts.
#[derive(Serialize)]
struct PrecisionParity {
    encoder: String,
    min_cosine: f64,
    mean_cosine: f64,
    texts: usize,
}

/// One of pulse's encoders' tokens/s as a multiple of a reference
/// engine's on the same workload and threads, each round's and their
/// median.
#[derive(Serialize)]
struct Ratio {
    encoder: String,
    reference: String,
    threads: usize,
    workload: String,
    per_round: Vec<f64>,
    median: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    cpu: String,
    cores: usize,
    repeats: usize,
    rounds: usize,
    /// What each of pulse's encoders ran its dense layers on (AMX,
    /// AVX-512, AVX2, portable, candle).
    kernels: BTreeMap<String, &'static str>,
    results: Vec<Measurement>,
    precision_parity: Vec<PrecisionParity>,
    reference: Option<ReferenceRun>,
    ratios: Vec<Ratio>,
}

/// One round of pulse's encoders.
struct PulseRun {
    results: Vec<Measurement>,
    kernels: BTreeMap<String, &'static str>,
    precision_parity: Vec<PrecisionParity>,
    model: Option<ModelInfo>,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    if args.repeats == 0 || args.rounds == 0 {
        bail!("--repeats and --rounds must be at least 1");
    }
    let workloads = [
        Workload {
            name: SHORT,
            texts: workloads::short_texts(1000),
            batch_size: 32,
        },
        Workload {
            name: LONG,
            texts: workloads::long_texts(200),
            batch_size: 16,
        },
        Workload {
            name: SINGLE,
            texts: workloads::short_texts(200),
            batch_size: 1,
        },
    ];
    let mut pulse_rounds: Vec<PulseRun> = Vec::new();
    let mut reference_rounds: Vec<ReferenceRun> = Vec::new();
    for round in 0..args.rounds {
        if args.rounds > 1 {
            eprintln!("round {} of {}", round + 1, args.rounds);
        }
        // The first round runs pulse first: the reference engines need the
        // model's directory, which pulse resolves.
        let reference_first = round % 2 == 1;
        let model = |runs: &[PulseRun]| runs.first().and_then(|run| run.model.clone());
        if reference_first {
            reference_rounds.extend(reference_round(&args, model(&pulse_rounds), &workloads)?);
        }
        pulse_rounds.push(pulse_round(&args, &workloads, round == 0)?);
        if !reference_first {
            reference_rounds.extend(reference_round(&args, model(&pulse_rounds), &workloads)?);
        }
    }
    let ratios = ratios(&pulse_rounds, &reference_rounds);
    let pulse_results: Vec<Vec<Measurement>> = pulse_rounds
        .iter_mut()
        .map(|run| std::mem::take(&mut run.results))
        .collect();
    let first = pulse_rounds.swap_remove(0);
    let reference = if reference_rounds.is_empty() {
        None
    } else {
        let results: Vec<Vec<Measurement>> = reference_rounds
            .iter_mut()
            .map(|run| std::mem::take(&mut run.results))
            .collect();
        let mut run = reference_rounds.swap_remove(0);
        run.results = median_rounds(results);
        Some(run)
    };
    let report = Report {
        model: args.model.clone(),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        repeats: args.repeats,
        rounds: args.rounds,
        kernels: first.kernels,
        results: median_rounds(pulse_results),
        precision_parity: first.precision_parity,
        reference,
        ratios,
    };
    if !args.no_charts {
        write_charts(&report, &args.out_dir, &args.charts)?;
    }
    write_report(&args.out_dir, "embed", &report, &markdown(&report))
}

/// Measures every encoder, precision and thread count on `workloads`;
/// `with_parity` also compares each reduced precision's embeddings with
/// f32's (once is enough: they do not change between rounds).
fn pulse_round(
    args: &EmbedArgs,
    workloads: &[Workload],
    with_parity: bool,
) -> anyhow::Result<PulseRun> {
    let mut results = Vec::new();
    let mut precision_parity = Vec::new();
    let mut kernels = BTreeMap::new();
    let mut model = None;
    for &encoder in &args.encoders {
        for &dtype in &args.dtypes {
            if encoder == EncoderKind::CandleReference && dtype != DTypeSpec::F32 {
                eprintln!("{encoder} runs in f32 only: {dtype:?} skipped");
                continue;
            }
            if dtype == DTypeSpec::BF16 && !pulse_kernels::matmul::bf16_runs_fast() {
                eprintln!("this CPU has no AVX-512 BF16: {encoder} bf16 skipped");
                continue;
            }
            for &threads in &args.threads {
                let options = EmbedderOptions {
                    device: DeviceSpec::Cpu,
                    dtype,
                    threads: Some(threads),
                    encoder,
                    ..EmbedderOptions::default()
                };
                let embedder = Embedder::load(&args.model, &options)?;
                let label = engine_label(&embedder);
                kernels.insert(label.clone(), embedder.info().kernels);
                for workload in workloads {
                    let measurement = measure(&embedder, workload, args.repeats)?;
                    eprintln!(
                        "{label:>11} {threads} thread(s) {:<36} {:>8.0} tokens/s, batch p50 {:.1} ms",
                        workload.name, measurement.tokens_per_second, measurement.batch_p50_ms
                    );
                    results.push(measurement);
                }
                if with_parity
                    && embedder.info().dtype != "f32"
                    && !precision_parity
                        .iter()
                        .any(|p: &PrecisionParity| p.encoder == label)
                {
                    // The two batch workloads: every text once.
                    let parity = parity_with_f32(&args.model, &embedder, &workloads[..2])?;
                    eprintln!(
                        "{label}: cosine to f32 min {:.6}, mean {:.6} ({} texts)",
                        parity.min_cosine, parity.mean_cosine, parity.texts
                    );
                    precision_parity.push(parity);
                }
                model = Some(embedder.info().clone());
            }
        }
    }
    Ok(PulseRun {
        results,
        kernels,
        precision_parity,
        model,
    })
}

/// Runs the reference engines once on `model` (as pulse loaded it), where
/// `--python` asks for them.
fn reference_round(
    args: &EmbedArgs,
    model: Option<ModelInfo>,
    workloads: &[Workload],
) -> anyhow::Result<Option<ReferenceRun>> {
    let Some(python) = &args.python else {
        return Ok(None);
    };
    let Some(model) = model else {
        bail!("--python needs at least one encoder and thread count");
    };
    let input = ReferenceInput {
        model_dir: &model.dir,
        max_seq_length: model.max_seq_length,
        repeats: args.repeats,
        threads: &args.threads,
        workloads,
    };
    run_reference(python, &input, &args.out_dir).map(Some)
}

/// Each case (engine, threads, workload, in the first round's order) as
/// measured in its median round by tokens/s, with every round's passes in
/// `seconds_all`.
fn median_rounds(rounds: Vec<Vec<Measurement>>) -> Vec<Measurement> {
    group_in_order(rounds.into_iter().flatten(), key_of)
        .into_iter()
        .map(|case| {
            let passes: Vec<f64> = case.iter().flat_map(|m| m.seconds_all.clone()).collect();
            let mut median = nearest_rank_median(case, |m| m.tokens_per_second);
            median.seconds_all = passes;
            median
        })
        .collect()
}

/// Every pulse case's tokens/s over each reference engine's on the same
/// threads and workload, round by round.
fn ratios(pulse_rounds: &[PulseRun], reference_rounds: &[ReferenceRun]) -> Vec<Ratio> {
    let pairs = pulse_rounds
        .iter()
        .zip(reference_rounds)
        .flat_map(|(ours, theirs)| {
            ours.results.iter().flat_map(|pulse| {
                theirs
                    .results
                    .iter()
                    .filter(|r| r.threads == pulse.threads && r.workload == pulse.workload)
                    .map(move |reference| (pulse, reference))
            })
        });
    let key = |(pulse, reference): &(&Measurement, &Measurement)| {
        (key_of(pulse), reference.encoder.clone())
    };
    group_in_order(pairs, key)
        .into_iter()
        .map(|rounds| {
            let (pulse, reference) = rounds[0];
            let per_round: Vec<f64> = rounds
                .iter()
                .map(|(p, r)| p.tokens_per_second / r.tokens_per_second)
                .collect();
            Ratio {
                encoder: pulse.encoder.clone(),
                reference: reference.encoder.clone(),
                threads: pulse.threads,
                workload: pulse.workload.clone(),
                median: nearest_rank_median(per_round.clone(), |r| *r),
                per_round,
            }
        })
        .collect()
}

/// What names a case: engine, threads, workload.
fn key_of(m: &Measurement) -> (String, usize, String) {
    (m.encoder.clone(), m.threads, m.workload.clone())
}

/// `items` grouped by `key`, the groups in the order their first item came.
fn group_in_order<T, K: PartialEq>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<Vec<T>> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match groups.iter_mut().find(|(group, _)| *group == k) {
            Some((_, group)) => group.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// The nearest-rank median of a non-empty `items` by `value` (the lower
/// middle one of an even count), as `percentiles_ms` ranks its p50.
fn nearest_rank_median<T>(mut items: Vec<T>, value: impl Fn(&T) -> f64) -> T {
    items.sort_by(|a, b| value(a).total_cmp(&value(b)));
    items.swap_remove((items.len() - 1) / 2)
}

/// The encoder's name, with its precision where that is not f32.
fn engine_label(embedder: &Embedder) -> String {
    let info = embedder.info();
    match info.dtype.as_str() {
        "f32" => info.encoder.to_string(),
        dtype => format!("{} {dtype}", info.encoder),
    }
}

/// Embeds every text of `workloads` with `embedder` and with the same encoder
/// in f32, and compares them.
fn parity_with_f32(
    model: &str,
    embedder: &Embedder,
    workloads: &[Workload],
) -> anyhow::Result<PrecisionParity> {
    let f32_options = EmbedderOptions {
        device: DeviceSpec::Cpu,
        encoder: embedder.info().encoder,
        ..EmbedderOptions::default()
    };
    let reference = Embedder::load(model, &f32_options)?;
    let mut cosines = Vec::new();
    for workload in workloads {
        for batch in workload.texts.chunks(workload.batch_size) {
            let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
            let (ours, theirs) = (embedder.embed(&batch)?, reference.embed(&batch)?);
            cosines.extend(ours.iter().zip(&theirs).map(|(a, b)| cosine(a, b)));
        }
    }
    Ok(PrecisionParity {
        encoder: engine_label(embedder),
        min_cosine: cosines.iter().copied().fold(f64::INFINITY, f64::min),
        mean_cosine: cosines.iter().sum::<f64>() / cosines.len().max(1) as f64,
        texts: cosines.len(),
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| f64::from(p * q)).sum::<f64>();
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt()
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
    let mut batch_seconds = Vec::new();
    let ((), median) = median_run(repeats, || {
        let started = Instant::now();
        for batch in texts.chunks(workload.batch_size) {
            let batch_started = Instant::now();
            embedder.embed(batch)?;
            batch_seconds.push(batch_started.elapsed().as_secs_f64());
        }
        seconds.push(started.elapsed().as_secs_f64());
        anyhow::Ok(())
    })?;
    Ok(Measurement {
        encoder: engine_label(embedder),
        threads: embedder.info().threads,
        workload: workload.name.to_string(),
        texts: texts.len(),
        batch_size: workload.batch_size,
        tokens,
        seconds_median: median,
        seconds_all: seconds,
        tokens_per_second: tokens as f64 / median,
        texts_per_second: texts.len() as f64 / median,
        batch_p50_ms: percentiles_ms(&mut batch_seconds).p50,
    })
}

/// Runs cpu_reference.py on the workloads; its engines' measurements.
fn run_reference(
    python: &Path,
    input: &ReferenceInput,
    out_dir: &Path,
) -> anyhow::Result<ReferenceRun> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/cpu_reference.py");
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let workloads_path = out_dir.join("embed-workloads.json");
    std::fs::write(&workloads_path, serde_json::to_string(input)?)
        .with_context(|| format!("cannot write {}", workloads_path.display()))?;
    let out_path = out_dir.join("embed-reference.json");
    eprintln!("running {} with {}", script.display(), python.display());
    let status = Command::new(python)
        .arg(&script)
        .arg("--workloads")
        .arg(&workloads_path)
        .arg("--out")
        .arg(&out_path)
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let text = std::fs::read_to_string(&out_path)
        .with_context(|| format!("cannot read {}", out_path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("unexpected {}", out_path.display()))
}

fn measurements(report: &Report) -> impl Iterator<Item = &Measurement> {
    report
        .results
        .iter()
        .chain(report.reference.iter().flat_map(|r| &r.results))
}

fn write_charts(report: &Report, dir: &Path, formats: &[ChartFormat]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut engines: Vec<&str> = Vec::new();
    for m in measurements(report) {
        if !engines.contains(&m.encoder.as_str()) {
            engines.push(&m.encoder);
        }
    }
    let mut series = Vec::new();
    for engine in engines {
        for (workload, label, thin) in [
            (SHORT, "short, batch 32", false),
            (LONG, "256 tokens, batch 16", true),
        ] {
            let points: Vec<(f64, f64)> = measurements(report)
                .filter(|m| m.encoder == engine && m.workload == workload)
                .map(|m| (m.threads as f64, m.tokens_per_second))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    name: format!("{engine}, {label}"),
                    points,
                    thin,
                });
            }
        }
    }
    let chart = LineChart {
        title: "CPU embedding throughput (short thick, 256 tokens thin)",
        x_label: "threads",
        y_label: "tokens/s",
        series,
    };
    for path in charts::draw(&chart, &dir.join("embed-throughput"), formats)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn markdown(report: &Report) -> String {
    let kernels: Vec<String> = report
        .kernels
        .iter()
        .map(|(encoder, kernels)| format!("{encoder} on {kernels}"))
        .collect();
    let rounds = match (report.rounds, &report.reference) {
        (1, _) => String::new(),
        (rounds, None) => format!(", the median of {rounds} rounds"),
        (rounds, Some(_)) => format!(
            ", the median of {rounds} rounds (pulse and the reference engines taking turns, \
             the reference first in every other round)"
        ),
    };
    let mut out = format!(
        "Model `{}` on {} ({} cores), CPU, f32 unless named, median of {} passes{rounds}; \
         dense layers: {}.\n\n\
         | encoder | threads | workload | tokens | seconds | tokens/s | texts/s | batch p50 ms |\n\
         | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
        report.model,
        report.cpu,
        report.cores,
        report.repeats,
        kernels.join(", ")
    );
    for m in measurements(report) {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} |\n",
            m.encoder,
            m.threads,
            m.workload,
            m.tokens,
            m.seconds_median,
            m.tokens_per_second,
            m.texts_per_second,
            m.batch_p50_ms
        ));
    }
    if !report.precision_parity.is_empty() {
        out.push('\n');
    }
    for parity in &report.precision_parity {
        out.push_str(&format!(
            "- {}: cosine to the same encoder in f32 min {:.6}, mean {:.6} ({} texts)\n",
            parity.encoder, parity.min_cosine, parity.mean_cosine, parity.texts
        ));
    }
    if let Some(reference) = &report.reference {
        out.push('\n');
        for (engine, run) in &reference.engines {
            out.push_str(&format!(
                "- {engine} {}: cosine to the sentence-transformers fixtures min {:.6}, mean {:.6} ({} texts)\n",
                run.version, run.parity.min_cosine, run.parity.mean_cosine, run.parity.cases
            ));
        }
        for (engine, reason) in &reference.skipped {
            out.push_str(&format!("- {engine} skipped: {reason}\n"));
        }
    }
    if !report.ratios.is_empty() {
        out.push_str(
            "\npulse's tokens/s as a multiple of each reference engine's, in the same round:\n\n\
             | encoder | ÷ engine | threads | workload | each round | median |\n\
             | --- | --- | ---: | --- | --- | ---: |\n",
        );
        for ratio in &report.ratios {
            let rounds: Vec<String> = ratio.per_round.iter().map(|r| format!("{r:.2}")).collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.2}× |\n",
                ratio.encoder,
                ratio.reference,
                ratio.threads,
                ratio.workload,
                rounds.join(", "),
                ratio.median
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output as bench/python/cpu_reference.py writes it.
    const REFERENCE: &str = r#"{
      "engines": {"onnxruntime": {"version": "1.32.0",
                                  "parity": {"min_cosine": 0.99999, "mean_cosine": 1.0, "cases": 142}}},
      "skipped": {"pytorch": "torch not importable: No module named 'torch'"},
      "results": [{"engine": "onnxruntime", "threads": 1, "workload": "200 short texts, batch 1",
                   "texts": 200, "batch_size": 1, "tokens": 4000, "seconds_all": [2.0, 2.5, 2.2],
                   "seconds_median": 2.2, "tokens_per_second": 1818.2, "texts_per_second": 90.9,
                   "batch_p50_ms": 10.5}]
    }"#;

    #[test]
    fn reference_engines_join_the_table() {
        let reference: ReferenceRun = serde_json::from_str(REFERENCE).unwrap();
        let report = Report {
            model: "m".into(),
            cpu: "cpu".into(),
            cores: 2,
            repeats: 3,
            rounds: 1,
            kernels: BTreeMap::from([("native int8".to_string(), "AMX")]),
            results: Vec::new(),
            precision_parity: vec![PrecisionParity {
                encoder: "native int8".into(),
                min_cosine: 0.9991,
                mean_cosine: 0.9998,
                texts: 1200,
            }],
            reference: Some(reference),
            ratios: Vec::new(),
        };
        let table = markdown(&report);
        assert!(
            table.contains("dense layers: native int8 on AMX."),
            "{table}"
        );
        assert!(
            table.contains(
                "| onnxruntime | 1 | 200 short texts, batch 1 | 4000 | 2.20 | 1818 | 90.9 | 10.5 |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "onnxruntime 1.32.0: cosine to the sentence-transformers fixtures min 0.999990"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "- native int8: cosine to the same encoder in f32 min 0.999100, mean 0.999800 (1200 texts)"
            ),
            "{table}"
        );
        assert!(
            table.contains("pytorch skipped: torch not importable"),
            "{table}"
        );
    }

    fn measurement(encoder: &str, workload: &str, tokens_per_second: f64) -> Measurement {
        Measurement {
            encoder: encoder.into(),
            threads: 2,
            workload: workload.into(),
            texts: 10,
            batch_size: 1,
            tokens: 100,
            seconds_median: 100.0 / tokens_per_second,
            seconds_all: vec![100.0 / tokens_per_second],
            tokens_per_second,
            texts_per_second: 10.0 / (100.0 / tokens_per_second),
            batch_p50_ms: 1.0,
        }
    }

    fn pulse_run(results: Vec<Measurement>) -> PulseRun {
        PulseRun {
            results,
            kernels: BTreeMap::new(),
            precision_parity: Vec::new(),
            model: None,
        }
    }

    fn reference_run(results: Vec<Measurement>) -> ReferenceRun {
        ReferenceRun {
            engines: BTreeMap::new(),
            skipped: BTreeMap::new(),
            results,
        }
    }

    #[test]
    fn each_case_reports_its_median_round_with_every_pass() {
        let rounds = vec![
            vec![
                measurement("native", SHORT, 300.0),
                measurement("native", LONG, 50.0),
            ],
            vec![
                measurement("native", SHORT, 100.0),
                measurement("native", LONG, 70.0),
            ],
            vec![
                measurement("native", SHORT, 200.0),
                measurement("native", LONG, 60.0),
            ],
        ];
        let cases = median_rounds(rounds);
        assert_eq!(cases.len(), 2);
        assert_eq!(
            (cases[0].workload.as_str(), cases[0].tokens_per_second),
            (SHORT, 200.0)
        );
        assert_eq!(
            (cases[1].workload.as_str(), cases[1].tokens_per_second),
            (LONG, 60.0)
        );
        assert_eq!(cases[0].seconds_all.len(), 3);
        // An even count reports the lower middle round.
        let two = median_rounds(vec![
            vec![measurement("native", SHORT, 300.0)],
            vec![measurement("native", SHORT, 100.0)],
        ]);
        assert_eq!(two[0].tokens_per_second, 100.0);
    }

    #[test]
    fn ratios_pair_engines_round_by_round() {
        let pulse = vec![
            pulse_run(vec![measurement("native", SHORT, 300.0)]),
            pulse_run(vec![measurement("native", SHORT, 200.0)]),
            pulse_run(vec![measurement("native", SHORT, 240.0)]),
        ];
        let reference = vec![
            reference_run(vec![
                measurement("pytorch", SHORT, 100.0),
                measurement("pytorch", LONG, 10.0),
            ]),
            reference_run(vec![measurement("pytorch", SHORT, 200.0)]),
            reference_run(vec![measurement("pytorch", SHORT, 120.0)]),
        ];
        let ratios = ratios(&pulse, &reference);
        assert_eq!(
            ratios.len(),
            1,
            "only the same workload and threads pair up"
        );
        assert_eq!(ratios[0].per_round, vec![3.0, 1.0, 2.0]);
        assert_eq!(ratios[0].median, 2.0);
        let report = Report {
            model: "m".into(),
            cpu: "cpu".into(),
            cores: 2,
            repeats: 3,
            rounds: 3,
            kernels: BTreeMap::new(),
            results: Vec::new(),
            precision_parity: Vec::new(),
            reference: None,
            ratios,
        };
        let table = markdown(&report);
        assert!(table.contains("the median of 3 rounds"), "{table}");
        assert!(
            table.contains(
                "| native | pytorch | 2 | 1000 short texts, batch 32 | 3.00, 1.00, 2.00 | 2.00× |"
            ),
            "{table}"
        );
    }
}
