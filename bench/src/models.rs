//! `pulse-bench models` (also `pulse bench`): models × devices × sequence
//! lengths × batch sizes — tokens/s, texts/s, per-batch latency
//! percentiles, peak memory and load time — and each model's quality on
//! labelled short texts: pulse's trend pipeline (the service's defaults) on
//! the embeddings against the labels (trends, coverage, V-measure, ARI) and
//! whether a text's nearest neighbours share its label (recall@10). Writes
//! JSON, markdown and charts; `--compare` prints the ratios between two
//! runs.

pub use crate::charts::ChartFormat;
use crate::charts::{self, LineChart, Series};
use crate::labelled::{self, LabelledText, Scores, SetSpec, scores};
use crate::memory::PeakMemory;
use crate::{cpu_name, workloads, write_report};
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use pulse_kernels::distance::{Rows, knn_on};
use pulse_models::{DEFAULT_MODEL, DTypeSpec, DeviceSpec, Embedder, EmbedderOptions, EncoderKind};
use pulse_trends::pipeline::{PipelineParams, find_trends};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Neighbours looked at for recall@10.
const RECALL_AT: usize = 10;
/// Fewest timed batches per case, so that percentiles mean something.
const MIN_BATCHES: usize = 3;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelsArgs {
    /// Models to compare: hub ids or local directories.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_MODEL)]
    pub models: Vec<String>,
    /// Devices: cpu, cuda:N (with `--features cuda`) or auto.
    #[arg(long, value_delimiter = ',', default_value = "cpu")]
    pub devices: Vec<DeviceSpec>,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch_sizes: Vec<usize>,
    /// Tokens per text, special tokens included.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
    pub seq_lens: Vec<usize>,
    /// auto: f32 on the CPU, f16 on a GPU.
    #[arg(long, default_value = "auto")]
    pub dtype: DTypeSpec,
    #[arg(long, default_value = "native")]
    pub encoder: EncoderKind,
    /// Threads for the CPU encoder (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tokens each case embeds (at least three batches).
    #[arg(long, default_value = "16384")]
    pub tokens_per_case: usize,
    /// Labelled sets for quality, each `NAME[:STRIDE]`: `fortunes`
    /// (Debian's fortunes), `wordnet` (WordNet glosses by lexicographer
    /// file), or a directory / JSON-lines file of `{"label", "text"}`;
    /// every STRIDE-th text is taken.
    #[arg(long, value_delimiter = ',', default_value = "fortunes:5,wordnet:30")]
    pub sets: Vec<String>,
    /// Skip the quality measurement.
    #[arg(long)]
    pub no_quality: bool,
    /// Chart formats to draw.
    #[arg(long, value_delimiter = ',', default_value = "png,svg")]
    pub charts: Vec<ChartFormat>,
    #[arg(long)]
    pub no_charts: bool,
    /// Where models.json, models.md and the charts are written.
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// Measure nothing; print the ratios of CANDIDATE to BASELINE (two
    /// models.json files).
    #[arg(long, num_args = 2, value_names = ["BASELINE", "CANDIDATE"])]
    pub compare: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub cpu: String,
    pub cores: usize,
    pub tokens_per_case: usize,
    pub runs: Vec<ModelRun>,
}

/// One model on one device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelRun {
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub encoder: String,
    pub threads: usize,
    pub dimension: usize,
    pub parameters: usize,
    pub max_seq_length: usize,
    /// Finding, reading and placing the weights.
    pub load_seconds: f64,
    pub load_peak_rss_bytes: Option<u64>,
    pub cases: Vec<Case>,
    /// One per labelled set (reports from before the trend pipeline held
    /// one HDBSCAN-only `quality` instead, which is not read).
    #[serde(default)]
    pub qualities: Vec<Quality>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Case {
    pub batch_size: usize,
    pub seq_len: usize,
    pub texts: usize,
    pub tokens: usize,
    /// Tokenizing, the forward pass and pooling of every batch.
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub texts_per_second: f64,
    /// Per-batch latency.
    pub latency_ms: Percentiles,
    pub peak_rss_bytes: Option<u64>,
    /// The card's memory in use (all processes), highest seen.
    pub peak_gpu_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Quality {
    pub set: String,
    pub texts: usize,
    pub labels: usize,
    pub embed_seconds: f64,
    /// pulse's trend pipeline with the service's defaults, on the vectors.
    pub trend_seconds: f64,
    /// The pipeline's trends against the set's labels.
    #[serde(flatten)]
    pub scores: Scores,
    /// Texts with at least one of their 10 nearest neighbours (cosine) in
    /// their own label.
    pub recall_at_10: f64,
    /// Mean share of a text's 10 nearest neighbours in its own label.
    pub precision_at_10: f64,
}

/// A labelled set, loaded once for every model.
struct LabelledSet {
    name: String,
    texts: Vec<LabelledText>,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    if let [baseline, candidate] = args.compare.as_slice() {
        let markdown = compare(&read_report(baseline)?, &read_report(candidate)?);
        print!("{markdown}");
        return Ok(());
    }
    let report = measure(&args)?;
    if !args.no_charts {
        write_charts(&report, &args.out_dir, &args.charts)?;
    }
    write_report(&args.out_dir, "models", &report, &markdown(&report))
}

fn read_report(path: &Path) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a models.json report", path.display()))
}

/// Runs every case of `args` and the quality measurement.
pub fn measure(args: &ModelsArgs) -> anyhow::Result<Report> {
    if args.models.is_empty() || args.devices.is_empty() {
        bail!("give at least one model and one device");
    }
    if args.batch_sizes.is_empty() || args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must be positive");
    }
    if args.seq_lens.is_empty() || args.tokens_per_case == 0 {
        bail!("--seq-lens and --tokens-per-case must be given");
    }
    let mut labelled = Vec::new();
    if !args.no_quality {
        for spec in args.sets.iter().filter(|s| !s.is_empty()) {
            let set = SetSpec::parse(spec)?;
            let texts = set.load().context("or pass --no-quality")?;
            labelled.push(LabelledSet {
                name: spec.clone(),
                texts,
            });
        }
    }
    let cases = args.seq_lens.len() * args.batch_sizes.len() + labelled.len();
    let progress = ProgressBar::new((args.models.len() * args.devices.len() * cases) as u64)
        .with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} cases, {elapsed} {wide_msg}")
                .context("progress template")?,
        );
    let mut runs = Vec::new();
    for model in &args.models {
        for &device in &args.devices {
            progress.set_message(format!("loading {model} on {device}"));
            let run = measure_model(args, model, device, &labelled, &progress)
                .with_context(|| format!("{model} on {device}"))?;
            runs.push(run);
        }
    }
    progress.finish_and_clear();
    Ok(Report {
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        tokens_per_case: args.tokens_per_case,
        runs,
    })
}

fn measure_model(
    args: &ModelsArgs,
    model: &str,
    device: DeviceSpec,
    labelled: &[LabelledSet],
    progress: &ProgressBar,
) -> anyhow::Result<ModelRun> {
    let options = EmbedderOptions {
        device,
        dtype: args.dtype,
        threads: args.threads,
        encoder: args.encoder,
        ..EmbedderOptions::default()
    };
    let watch = PeakMemory::start(&pulse_models::Device::Cpu);
    let started = Instant::now();
    let embedder = Embedder::load(model, &options)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let load_peak_rss_bytes = watch.finish().rss_bytes;
    let info = embedder.info().clone();
    let vocabulary = SingleTokenWords::of(&embedder)?;
    let mut cases = Vec::new();
    for &seq_len in &args.seq_lens {
        for &batch_size in &args.batch_sizes {
            progress.set_message(format!(
                "{model} on {}: {seq_len} tokens × batch {batch_size}",
                info.device
            ));
            cases.push(measure_case(
                &embedder,
                &vocabulary,
                batch_size,
                seq_len,
                args.tokens_per_case,
            )?);
            progress.inc(1);
        }
    }
    let mut qualities = Vec::new();
    for set in labelled {
        progress.set_message(format!(
            "{model} on {}: quality on {}",
            info.device, set.name
        ));
        let batch_size = args.batch_sizes.iter().copied().max().unwrap_or(32);
        qualities.push(measure_quality(&embedder, set, batch_size)?);
        progress.inc(1);
    }
    Ok(ModelRun {
        model: model.to_string(),
        device: info.device,
        dtype: info.dtype,
        encoder: info.encoder.to_string(),
        threads: info.threads,
        dimension: info.dimension,
        parameters: info.parameters,
        max_seq_length: info.max_seq_length,
        load_seconds,
        load_peak_rss_bytes,
        cases,
        qualities,
    })
}

/// Words the model's tokenizer keeps whole, so that a text of n of them is
/// exactly n tokens plus the special ones.
struct SingleTokenWords {
    words: Vec<&'static str>,
    special_tokens: usize,
}

impl SingleTokenWords {
    fn of(embedder: &Embedder) -> anyhow::Result<Self> {
        let lengths = embedder
            .tokenize(workloads::WORDS)
            .into_iter()
            .map(|t| t.map(|t| t.len()))
            .collect::<Result<Vec<usize>, _>>()?;
        let shortest = lengths.iter().copied().min().unwrap_or(0);
        let words: Vec<&'static str> = workloads::WORDS
            .iter()
            .zip(&lengths)
            .filter(|(_, len)| **len == shortest)
            .map(|(word, _)| *word)
            .collect();
        if shortest == 0 || words.len() < 8 {
            bail!(
                "the tokenizer splits too many plain English words to build texts of exact lengths"
            );
        }
        Ok(SingleTokenWords {
            words,
            special_tokens: shortest - 1,
        })
    }

    /// `count` distinct texts of exactly `tokens` tokens.
    fn texts(
        &self,
        embedder: &Embedder,
        count: usize,
        tokens: usize,
    ) -> anyhow::Result<Vec<String>> {
        let max = embedder.info().max_seq_length;
        if tokens <= self.special_tokens || tokens > max {
            bail!(
                "a sequence length of {tokens} is outside what the model takes ({}..={max})",
                self.special_tokens + 1
            );
        }
        let texts = workloads::texts_of(
            &self.words,
            count,
            tokens - self.special_tokens,
            tokens as u64 * 7919 + count as u64,
        );
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for (text, tokenized) in texts.iter().zip(embedder.tokenize(&refs)) {
            let got = tokenized?.len();
            if got != tokens {
                bail!("`{text}` came to {got} tokens, not {tokens}");
            }
        }
        Ok(texts)
    }
}

fn measure_case(
    embedder: &Embedder,
    vocabulary: &SingleTokenWords,
    batch_size: usize,
    seq_len: usize,
    tokens_per_case: usize,
) -> anyhow::Result<Case> {
    let batches = tokens_per_case
        .div_ceil(batch_size * seq_len)
        .max(MIN_BATCHES);
    let texts = vocabulary.texts(embedder, batches * batch_size, seq_len)?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    // Warm-up: page the weights in and grow the allocator's pools.
    embedder.embed(&texts[..batch_size])?;
    let watch = PeakMemory::start(embedder.device());
    let mut latencies = Vec::with_capacity(batches);
    for batch in texts.chunks(batch_size) {
        let started = Instant::now();
        embedder.embed(batch)?;
        latencies.push(started.elapsed().as_secs_f64());
    }
    let peaks = watch.finish();
    let seconds: f64 = latencies.iter().sum();
    let tokens = texts.len() * seq_len;
    Ok(Case {
        batch_size,
        seq_len,
        texts: texts.len(),
        tokens,
        seconds,
        tokens_per_second: tokens as f64 / seconds,
        texts_per_second: texts.len() as f64 / seconds,
        latency_ms: percentiles_ms(&mut latencies),
        peak_rss_bytes: peaks.rss_bytes,
        peak_gpu_bytes: peaks.gpu_bytes,
    })
}

/// Nearest-rank percentiles of durations in seconds, in milliseconds.
pub fn percentiles_ms(seconds: &mut [f64]) -> Percentiles {
    seconds.sort_by(f64::total_cmp);
    let at = |p: f64| {
        let rank = ((p / 100.0) * seconds.len() as f64).ceil() as usize;
        seconds
            .get(rank.clamp(1, seconds.len().max(1)) - 1)
            .map_or(0.0, |s| s * 1e3)
    };
    Percentiles {
        p50: at(50.0),
        p95: at(95.0),
        p99: at(99.0),
    }
}

fn measure_quality(
    embedder: &Embedder,
    labelled: &LabelledSet,
    batch_size: usize,
) -> anyhow::Result<Quality> {
    let set = &labelled.texts;
    if set.len() <= RECALL_AT {
        bail!("{} labelled texts are too few to judge quality", set.len());
    }
    let texts: Vec<&str> = set.iter().map(|t| t.text.as_str()).collect();
    let started = Instant::now();
    let mut embeddings = Vec::with_capacity(texts.len() * embedder.info().dimension);
    for batch in texts.chunks(batch_size) {
        embeddings.extend(embedder.embed(batch)?.into_iter().flatten());
    }
    let embed_seconds = started.elapsed().as_secs_f64();
    let dim = embedder.info().dimension;
    let truth = labelled::label_ids(set);
    let started = Instant::now();
    let trends = find_trends(
        &embeddings,
        dim,
        &texts,
        &PipelineParams::default(),
        embedder.device(),
    )?;
    let trend_seconds = started.elapsed().as_secs_f64();
    let neighbours = knn_on(Rows::new(&embeddings, dim)?, RECALL_AT, embedder.device())?;
    let (recall, precision) = neighbour_agreement(&truth, |i| neighbours.of(i).0);
    Ok(Quality {
        set: labelled.name.clone(),
        texts: set.len(),
        labels: truth.iter().max().map_or(0, |&m| m as usize + 1),
        embed_seconds,
        trend_seconds,
        scores: scores(&truth, &trends.labels),
        recall_at_10: recall,
        precision_at_10: precision,
    })
}

/// (share of points with a same-label neighbour, mean share of same-label
/// neighbours) over `truth`, given each point's neighbour indices.
fn neighbour_agreement<'a>(
    truth: &[i64],
    neighbours_of: impl Fn(usize) -> &'a [u32],
) -> (f64, f64) {
    let (mut hits, mut share) = (0usize, 0.0f64);
    for (i, label) in truth.iter().enumerate() {
        let neighbours = neighbours_of(i);
        let same = neighbours
            .iter()
            .filter(|&&j| truth[j as usize] == *label)
            .count();
        hits += usize::from(same > 0);
        share += same as f64 / neighbours.len().max(1) as f64;
    }
    let n = truth.len().max(1) as f64;
    (hits as f64 / n, share / n)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("–".into(), |b| {
        format!("{:.0}", b as f64 / (1024.0 * 1024.0))
    })
}

fn run_name(run: &ModelRun) -> String {
    let model = run.model.rsplit('/').next().unwrap_or(&run.model);
    format!("{model} {} {}", run.device, run.dtype)
}

/// `run_name` with what else may differ between two runs of one model.
fn run_label(run: &ModelRun) -> String {
    format!(
        "{}, {}, {} threads",
        run_name(run),
        run.encoder,
        run.threads
    )
}

pub fn markdown(report: &Report) -> String {
    let mut out = format!(
        "On {} ({} cores); each case embeds at least {} tokens, every batch timed \
         (tokenizing, forward pass, pooling).\n\n\
         | model | device | dtype | encoder | threads | parameters | load s | RSS after load MiB |\n\
         | --- | --- | --- | --- | ---: | ---: | ---: | ---: |\n",
        report.cpu, report.cores, report.tokens_per_case
    );
    for run in &report.runs {
        out += &format!(
            "| {} | {} | {} | {} | {} | {:.1} M | {:.2} | {} |\n",
            run.model,
            run.device,
            run.dtype,
            run.encoder,
            run.threads,
            run.parameters as f64 / 1e6,
            run.load_seconds,
            mib(run.load_peak_rss_bytes)
        );
    }
    out += "\n| model | seq len | batch | tokens/s | texts/s | p50 ms | p95 ms | p99 ms | peak RSS MiB | peak GPU MiB |\n\
            | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    for run in &report.runs {
        for case in &run.cases {
            out += &format!(
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
                run_name(run),
                case.seq_len,
                case.batch_size,
                case.tokens_per_second,
                case.texts_per_second,
                case.latency_ms.p50,
                case.latency_ms.p95,
                case.latency_ms.p99,
                mib(case.peak_rss_bytes),
                mib(case.peak_gpu_bytes)
            );
        }
    }
    let qualities: Vec<(&ModelRun, &Quality)> = report
        .runs
        .iter()
        .flat_map(|run| run.qualities.iter().map(move |q| (run, q)))
        .collect();
    if !qualities.is_empty() {
        out += "\nQuality: pulse's trend pipeline with the service's defaults on each model's \
                vectors, scored against the set's labels (V-measure and ARI over all texts \
                with noise as one class, and over the texts in a trend), and the texts' 10 \
                nearest neighbours by cosine.\n\n\
                | model | set | texts | labels | trends | in a trend | V-measure | V-measure, in a trend | ARI | recall@10 | precision@10 | embed s | trends s |\n\
                | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for (run, q) in qualities {
            out += &format!(
                "| {} | {} | {} | {} | {} | {:.0} % | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.1} | {:.2} |\n",
                run_name(run),
                q.set,
                q.texts,
                q.labels,
                q.scores.trends,
                q.scores.coverage * 100.0,
                q.scores.v_measure,
                q.scores.clustered_v_measure,
                q.scores.ari,
                q.recall_at_10,
                q.precision_at_10,
                q.embed_seconds,
                q.trend_seconds
            );
        }
    }
    out
}

fn write_charts(report: &Report, dir: &Path, formats: &[ChartFormat]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut throughput = Vec::new();
    let mut latency = Vec::new();
    for run in &report.runs {
        let mut batch_sizes: Vec<usize> = run.cases.iter().map(|c| c.batch_size).collect();
        let mut seq_lens: Vec<usize> = run.cases.iter().map(|c| c.seq_len).collect();
        for list in [&mut batch_sizes, &mut seq_lens] {
            list.sort_unstable();
            list.dedup();
        }
        for &batch in &batch_sizes {
            throughput.push(Series {
                name: format!("{}, batch {batch}", run_name(run)),
                points: points(
                    run,
                    |c| c.batch_size == batch,
                    |c| (c.seq_len, c.tokens_per_second),
                ),
                thin: false,
            });
        }
        for &seq_len in &seq_lens {
            for (quantile, thin) in [("p50", false), ("p99", true)] {
                latency.push(Series {
                    name: format!("{}, {seq_len} tokens, {quantile}", run_name(run)),
                    points: points(
                        run,
                        |c| c.seq_len == seq_len,
                        |c| {
                            let ms = if thin {
                                c.latency_ms.p99
                            } else {
                                c.latency_ms.p50
                            };
                            (c.batch_size, ms)
                        },
                    ),
                    thin,
                });
            }
        }
    }
    let charts = [
        (
            "models-throughput",
            LineChart {
                title: "Embedding throughput",
                x_label: "tokens per text",
                y_label: "tokens/s",
                series: throughput,
            },
        ),
        (
            "models-latency",
            LineChart {
                title: "Latency per batch (p50 thick, p99 thin)",
                x_label: "batch size",
                y_label: "ms",
                series: latency,
            },
        ),
    ];
    for (name, chart) in &charts {
        for path in charts::draw(chart, &dir.join(name), formats)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn points(
    run: &ModelRun,
    keep: impl Fn(&Case) -> bool,
    xy: impl Fn(&Case) -> (usize, f64),
) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = run
        .cases
        .iter()
        .filter(|c| keep(c))
        .map(|c| {
            let (x, y) = xy(c);
            (x as f64, y)
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// Ratios of `candidate` to `baseline`, run by run (paired by model and
/// device, or the two runs when each report has one) and case by case.
pub fn compare(baseline: &Report, candidate: &Report) -> String {
    let pairs: Vec<(&ModelRun, &ModelRun)> =
        if let ([base], [cand]) = (baseline.runs.as_slice(), candidate.runs.as_slice()) {
            vec![(base, cand)]
        } else {
            candidate
                .runs
                .iter()
                .filter_map(|cand| {
                    let base = baseline
                        .runs
                        .iter()
                        .find(|b| b.model == cand.model && b.device == cand.device)?;
                    Some((base, cand))
                })
                .collect()
        };
    let ratio = |cand: f64, base: f64| {
        if base > 0.0 {
            format!("{:.2}×", cand / base)
        } else {
            "–".to_string()
        }
    };
    let mut out = format!(
        "Candidate against baseline: {} of {} runs paired.\n\n",
        pairs.len(),
        candidate.runs.len()
    );
    for (base, cand) in &pairs {
        out += &format!(
            "- {} → {}: load time {:.2} s → {:.2} s ({})\n",
            run_label(base),
            run_label(cand),
            base.load_seconds,
            cand.load_seconds,
            ratio(cand.load_seconds, base.load_seconds)
        );
    }
    out += "\n| baseline → candidate | seq len | batch | tokens/s | × | p50 ms | × | p99 ms | × | peak RSS × |\n\
            | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
    let mut unmatched_cases = 0;
    for (base, cand) in &pairs {
        let names = format!("{} → {}", run_label(base), run_label(cand));
        for case in &cand.cases {
            let Some(before) = base
                .cases
                .iter()
                .find(|b| b.batch_size == case.batch_size && b.seq_len == case.seq_len)
            else {
                unmatched_cases += 1;
                continue;
            };
            let rss = match (case.peak_rss_bytes, before.peak_rss_bytes) {
                (Some(c), Some(b)) => ratio(c as f64, b as f64),
                _ => "–".to_string(),
            };
            out += &format!(
                "| {names} | {} | {} | {:.0} → {:.0} | {} | {:.1} → {:.1} | {} | {:.1} → {:.1} | {} | {rss} |\n",
                case.seq_len,
                case.batch_size,
                before.tokens_per_second,
                case.tokens_per_second,
                ratio(case.tokens_per_second, before.tokens_per_second),
                before.latency_ms.p50,
                case.latency_ms.p50,
                ratio(case.latency_ms.p50, before.latency_ms.p50),
                before.latency_ms.p99,
                case.latency_ms.p99,
                ratio(case.latency_ms.p99, before.latency_ms.p99),
            );
        }
    }
    if unmatched_cases > 0 {
        out += &format!(
            "\n{unmatched_cases} candidate cases have no baseline case of the same length and batch.\n"
        );
    }
    let qualities: Vec<_> = pairs
        .iter()
        .flat_map(|(base, cand)| {
            cand.qualities.iter().filter_map(move |c| {
                let b = base.qualities.iter().find(|b| b.set == c.set)?;
                Some((*base, *cand, b, c))
            })
        })
        .collect();
    if !qualities.is_empty() {
        out += "\n| baseline → candidate | set | V-measure | in a trend | ARI | recall@10 | precision@10 |\n\
                | --- | --- | ---: | ---: | ---: | ---: | ---: |\n";
        let delta = |c: f64, b: f64| format!("{b:.4} → {c:.4} ({:+.4})", c - b);
        for (base, cand, b, c) in qualities {
            out += &format!(
                "| {} → {} | {} | {} | {} | {} | {} | {} |\n",
                run_label(base),
                run_label(cand),
                c.set,
                delta(c.scores.v_measure, b.scores.v_measure),
                delta(c.scores.coverage, b.scores.coverage),
                delta(c.scores.ari, b.scores.ari),
                delta(c.recall_at_10, b.recall_at_10),
                delta(c.precision_at_10, b.precision_at_10)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut seconds: Vec<f64> = (1..=100).rev().map(|i| i as f64 / 1000.0).collect();
        let p = percentiles_ms(&mut seconds);
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        let p = percentiles_ms(&mut [0.002, 0.001, 0.003]);
        assert_eq!((p.p50, p.p95, p.p99), (2.0, 3.0, 3.0));
        assert_eq!(percentiles_ms(&mut []).p50, 0.0);
    }

    #[test]
    fn neighbour_agreement_counts_hits_and_shares() {
        let truth = [0, 0, 1, 1];
        let lists: [&[u32]; 4] = [&[1, 2], &[2, 3], &[0, 3], &[2, 0]];
        let (recall, precision) = neighbour_agreement(&truth, |i| lists[i]);
        assert_eq!(recall, 0.75);
        assert_eq!(precision, (0.5 + 0.0 + 0.5 + 0.5) / 4.0);
    }

    fn case(batch_size: usize, seq_len: usize, tokens_per_second: f64, p50: f64) -> Case {
        Case {
            batch_size,
            seq_len,
            texts: 10,
            tokens: 10 * seq_len,
            seconds: 1.0,
            tokens_per_second,
            texts_per_second: tokens_per_second / seq_len as f64,
            latency_ms: Percentiles {
                p50,
                p95: p50 * 2.0,
                p99: p50 * 3.0,
            },
            peak_rss_bytes: Some(100 << 20),
            peak_gpu_bytes: None,
        }
    }

    fn report(model: &str, cases: Vec<Case>, v_measure: f64) -> Report {
        Report {
            cpu: "test".into(),
            cores: 2,
            tokens_per_case: 100,
            runs: vec![ModelRun {
                model: model.into(),
                device: "cpu".into(),
                dtype: "f32".into(),
                encoder: "native".into(),
                threads: 2,
                dimension: 384,
                parameters: 22_000_000,
                max_seq_length: 256,
                load_seconds: 2.0,
                load_peak_rss_bytes: Some(200 << 20),
                cases,
                qualities: vec![Quality {
                    set: "set".into(),
                    texts: 100,
                    labels: 4,
                    embed_seconds: 1.0,
                    trend_seconds: 0.1,
                    scores: Scores {
                        trends: 3,
                        coverage: 0.5,
                        v_measure,
                        ari: 0.1,
                        clustered_v_measure: 0.8,
                        clustered_ari: 0.2,
                    },
                    recall_at_10: 0.9,
                    precision_at_10: 0.5,
                }],
            }],
        }
    }

    #[test]
    fn compare_gives_ratios_per_matching_case_and_quality_deltas() {
        let base = report(
            "a",
            vec![case(8, 64, 1000.0, 10.0), case(1, 16, 500.0, 2.0)],
            0.30,
        );
        let cand = report(
            "b",
            vec![case(8, 64, 1500.0, 5.0), case(32, 16, 9.0, 9.0)],
            0.35,
        );
        let out = compare(&base, &cand);
        assert!(out.contains("1 of 1 runs paired"), "{out}");
        assert_eq!(out.matches("load time").count(), 1, "{out}");
        assert!(out.contains("| 64 | 8 | 1000 → 1500 | 1.50× | 10.0 → 5.0 | 0.50× | 30.0 → 15.0 | 0.50× | 1.00× |"), "{out}");
        assert!(
            out.contains("1 candidate cases have no baseline case"),
            "{out}"
        );
        assert!(out.contains("0.3000 → 0.3500 (+0.0500)"), "{out}");
        let markdown = markdown(&cand);
        assert!(
            markdown.contains("| b cpu f32 | 64 | 8 | 1500 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| b cpu f32 | set | 100 | 4 | 3 | 50 % | 0.3500 | 0.8000 |"),
            "{markdown}"
        );
    }

    #[test]
    fn reports_round_trip_through_json() {
        let report = report("a", vec![case(8, 64, 1000.0, 10.0)], 0.3);
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }
}
