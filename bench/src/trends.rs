//! `pulse-bench trends`: trend quality on labelled real texts. Each set is
//! embedded once with the model; pulse's trend pipeline runs on the vectors
//! (its defaults, HDBSCAN alone as before the pipeline, and `--sweep`'s
//! grid), and BERTopic's default path on the same vectors where a Python
//! with `bertopic` is given. Reported per run: trends, coverage (signals in
//! a trend), V-measure and ARI over all signals (noise one class) and over
//! the clustered ones, and time.

use crate::{cpu_name, median_run, workloads, write_report};
use anyhow::{Context, bail};
use pulse_bench::charts::{self, ChartFormat, LineChart, Series};
use pulse_bench::labelled::{self, LabelledText, Scores, SetSpec, scores};
use pulse_models::{DEFAULT_MODEL, Device, Embedder, EmbedderOptions};
use pulse_trends::pipeline::{AssignBy, AssignmentParams, PipelineParams, find_trends};
use pulse_trends::{Params, Selection};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct TrendsArgs {
    /// Labelled sets, each `NAME[:STRIDE]`: `fortunes` (Debian's
    /// fortunes), `wordnet` (WordNet glosses by lexicographer file), or a
    /// directory / JSON-lines file of `{"label", "text"}`; every STRIDE-th
    /// text is taken.
    #[arg(long, value_delimiter = ',', default_value = "fortunes:5,wordnet:30")]
    sets: Vec<String>,
    /// Also synthetic sets of these sizes: embedding-like unit vectors in
    /// the model's dimension, a topic every 250 points and 15 % noise (as
    /// `pulse-bench cluster` makes them), the topics as labels; for scale.
    #[arg(long, value_delimiter = ',')]
    synthetic: Vec<usize>,
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Also run a grid of pipeline settings (HDBSCAN's sizes and selection
    /// on the layout, without assignment; each assignment method at several
    /// thresholds on the defaults): how the defaults were chosen.
    #[arg(long)]
    sweep: bool,
    /// Layout epochs of every pulse setting that reduces (default: the
    /// pipeline's).
    #[arg(long)]
    epochs: Option<usize>,
    /// Every pulse setting with approximate neighbours (the inverted file)
    /// in place of exact ones: how large windows run.
    #[arg(long)]
    approximate: bool,
    /// Only the pipeline's defaults (and BERTopic, where given): for runs at
    /// scale.
    #[arg(long)]
    defaults_only: bool,
    /// A Python with `bertopic` (`scripts/reference-env`): BERTopic's
    /// default path runs on the same vectors.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Runs of each pulse setting; the median time is reported.
    #[arg(long, default_value = "3")]
    repeat: usize,
    /// Threads for embedding and clustering (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Where trends.json, trends.md and the chart are written; embeddings
    /// are kept under it (`embeddings/`) so that a second run skips them.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(Serialize)]
struct Run {
    engine: String,
    setting: String,
    seconds: f64,
    /// pulse's steps: the reduction's neighbour lists, its layout, HDBSCAN,
    /// assignment and merging.
    steps: Option<[f64; 5]>,
    #[serde(flatten)]
    scores: Scores,
}

#[derive(Serialize)]
struct SetReport {
    set: String,
    texts: usize,
    labels: usize,
    embed_seconds: Option<f64>,
    runs: Vec<Run>,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    threads: usize,
    model: String,
    sets: Vec<SetReport>,
}

struct Setting {
    name: String,
    params: PipelineParams,
}

/// The pipeline's defaults, HDBSCAN alone as `pulse cluster` ran it before
/// the pipeline, and, with `--sweep`, a grid around the defaults.
fn settings(sweep: bool) -> Vec<Setting> {
    let defaults = PipelineParams::default();
    let mut out = vec![
        Setting {
            name: "pipeline defaults".into(),
            params: defaults.clone(),
        },
        Setting {
            name: "HDBSCAN alone (before)".into(),
            params: PipelineParams::hdbscan_only(defaults.hdbscan.clone()),
        },
        Setting {
            name: "defaults without assignment".into(),
            params: PipelineParams {
                assignment: None,
                ..defaults.clone()
            },
        },
    ];
    if !sweep {
        return out;
    }
    for mcs in [5, 7, 10, 15] {
        for min_samples in [3, 5] {
            for selection in [Selection::ExcessOfMass, Selection::Leaf] {
                out.push(Setting {
                    name: format!(
                        "reduced, mcs {mcs}, ms {min_samples}, {selection}, no assignment"
                    ),
                    params: PipelineParams {
                        hdbscan: Params {
                            min_cluster_size: mcs,
                            min_samples: Some(min_samples),
                            selection,
                            ..defaults.hdbscan.clone()
                        },
                        assignment: None,
                        ..defaults.clone()
                    },
                });
            }
        }
    }
    let thresholds: [(AssignBy, &[f32]); 2] = [
        (AssignBy::Centroid, &[0.2, 0.5, 0.55, 0.6, 0.65]),
        (AssignBy::Neighbours, &[0.2, 0.35, 0.5, 0.65]),
    ];
    for (by, levels) in thresholds {
        for &threshold in levels {
            out.push(Setting {
                name: format!("defaults, {by} ≥ {threshold}"),
                params: PipelineParams {
                    assignment: Some(AssignmentParams { by, threshold }),
                    ..defaults.clone()
                },
            });
        }
    }
    out
}

pub fn run(args: TrendsArgs) -> anyhow::Result<()> {
    if (args.sets.iter().all(String::is_empty) && args.synthetic.is_empty()) || args.repeat == 0 {
        bail!("give --sets or --synthetic, and a positive --repeat");
    }
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("cannot size the thread pool")?;
    }
    let embedder = Embedder::load(
        &args.model,
        &EmbedderOptions {
            threads: args.threads,
            ..EmbedderOptions::default()
        },
    )?;
    let dim = embedder.info().dimension;
    let mut sets = Vec::new();
    for spec in args.sets.iter().filter(|s| !s.is_empty()) {
        let set = SetSpec::parse(spec)?;
        let texts = set.load()?;
        let (name, stride) = (set.name.as_str(), set.stride);
        let (vectors, embed_seconds) = embeddings(&embedder, &texts, &args, name, stride)?;
        sets.push(measure_set(
            &args,
            spec,
            &texts,
            &vectors,
            dim,
            embedder.device(),
            embed_seconds,
        )?);
    }
    for &n in &args.synthetic {
        let (vectors, topics) = workloads::embedding_like(n, dim, 0x5eed_7e4d + n as u64);
        let texts: Vec<LabelledText> = topics
            .iter()
            .enumerate()
            .map(|(i, topic)| LabelledText {
                label: topic.to_string(),
                text: format!("signal {i}"),
            })
            .collect();
        let name = format!("synthetic {n}");
        sets.push(measure_set(
            &args,
            &name,
            &texts,
            &vectors,
            dim,
            embedder.device(),
            None,
        )?);
    }
    let report = Report {
        cpu: cpu_name(),
        threads: rayon::current_num_threads(),
        model: args.model.clone(),
        sets,
    };
    write_report(&args.out_dir, "trends", &report, &markdown(&report))?;
    chart(&report, &args.out_dir)?;
    Ok(())
}

/// The set's vectors, from the cache under `out_dir` when it holds them.
fn embeddings(
    embedder: &Embedder,
    texts: &[LabelledText],
    args: &TrendsArgs,
    name: &str,
    stride: usize,
) -> anyhow::Result<(Vec<f32>, Option<f64>)> {
    let dim = embedder.info().dimension;
    let safe = |s: &str| s.replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    let cache = args.out_dir.join("embeddings").join(format!(
        "{}-{stride}-{}-{}.f32",
        safe(name),
        safe(&args.model),
        texts.len()
    ));
    if let Ok(bytes) = std::fs::read(&cache)
        && bytes.len() == texts.len() * dim * 4
    {
        let vectors = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        return Ok((vectors, None));
    }
    let started = std::time::Instant::now();
    let strings: Vec<&str> = texts.iter().map(|t| t.text.as_str()).collect();
    let mut vectors = Vec::with_capacity(texts.len() * dim);
    for batch in strings.chunks(64) {
        vectors.extend(embedder.embed(batch)?.into_iter().flatten());
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("{name}: embedded {} texts in {seconds:.1} s", texts.len());
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes: Vec<u8> = vectors.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&cache, bytes).with_context(|| format!("cannot write {}", cache.display()))?;
    Ok((vectors, Some(seconds)))
}

fn measure_set(
    args: &TrendsArgs,
    name: &str,
    texts: &[LabelledText],
    vectors: &[f32],
    dim: usize,
    device: &Device,
    embed_seconds: Option<f64>,
) -> anyhow::Result<SetReport> {
    let truth = labelled::label_ids(texts);
    let strings: Vec<&str> = texts.iter().map(|t| t.text.as_str()).collect();
    let mut runs = Vec::new();
    let mut chosen = settings(args.sweep);
    if args.defaults_only {
        chosen.truncate(1);
    }
    for mut setting in chosen {
        if let Some(reduction) = &mut setting.params.reduction {
            reduction.epochs = args.epochs.or(reduction.epochs);
        }
        if args.approximate {
            setting.params.hdbscan.approximate = true;
            setting.name.push_str(", approximate");
        }
        let (trends, seconds) = median_run(args.repeat, || {
            find_trends(vectors, dim, &strings, &setting.params, device)
        })?;
        let run = Run {
            engine: "pulse".into(),
            setting: setting.name,
            seconds,
            steps: Some([
                trends.timings.neighbours.as_secs_f64(),
                trends.timings.layout.as_secs_f64(),
                trends.timings.clustering.total().as_secs_f64(),
                trends.timings.assignment.as_secs_f64(),
                trends.timings.merging.as_secs_f64(),
            ]),
            scores: scores(&truth, &trends.labels),
        };
        progress(name, &run);
        runs.push(run);
    }
    if let Some(python) = &args.python {
        for warm in [false, true] {
            let run = bertopic(python, texts, vectors, dim, &truth, warm)?;
            progress(name, &run);
            runs.push(run);
        }
    }
    Ok(SetReport {
        set: name.to_string(),
        texts: texts.len(),
        labels: truth.iter().max().map_or(0, |&m| m as usize + 1),
        embed_seconds,
        runs,
    })
}

fn progress(set: &str, run: &Run) {
    let s = &run.scores;
    eprintln!(
        "{set}: {} {}: {} trends, {:.1} % covered, V {:.3}, ARI {:.3}, clustered V {:.3}, {:.2} s{}",
        run.engine,
        run.setting,
        s.trends,
        100.0 * s.coverage,
        s.v_measure,
        s.ari,
        s.clustered_v_measure,
        run.seconds,
        run.steps
            .map(|steps| format!(" (steps {steps:.2?})"))
            .unwrap_or_default()
    );
}

/// BERTopic's `fit_transform` with its defaults on the same vectors
/// (bench/python/trends_reference.py): the first fit in a fresh process,
/// as a job or script pays it (numba compiles UMAP then), or, `warm`, a
/// second fit in the same process.
fn bertopic(
    python: &Path,
    texts: &[LabelledText],
    vectors: &[f32],
    dim: usize,
    truth: &[i64],
    warm: bool,
) -> anyhow::Result<Run> {
    let input = tempfile_path("pulse-trends-input", "jsonl");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&input)
            .with_context(|| format!("cannot write {}", input.display()))?,
    );
    for (text, vector) in texts.iter().zip(vectors.chunks_exact(dim)) {
        serde_json::to_writer(
            &mut file,
            &serde_json::json!({"text": text.text, "embedding": vector}),
        )?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    drop(file);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/trends_reference.py");
    let output = Command::new(python)
        .arg(&script)
        .arg("--input")
        .arg(&input)
        .args(warm.then_some("--warmup"))
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let _ = std::fs::remove_file(&input);
    if !output.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)
        .context("the BERTopic script's output is not JSON")?;
    let labels: Vec<i32> = result["labels"]
        .as_array()
        .context("no `labels` in the BERTopic script's output")?
        .iter()
        .map(|l| l.as_i64().unwrap_or(-1) as i32)
        .collect();
    if labels.len() != truth.len() {
        bail!(
            "BERTopic labelled {} texts of {}",
            labels.len(),
            truth.len()
        );
    }
    Ok(Run {
        engine: "BERTopic".into(),
        setting: format!(
            "defaults (bertopic {}), {}",
            result["version"].as_str().unwrap_or("?"),
            if warm {
                "second fit in the process"
            } else {
                "first fit in a process"
            }
        ),
        seconds: result["seconds"].as_f64().unwrap_or(f64::NAN),
        steps: None,
        scores: scores(truth, &labels),
    })
}

fn tempfile_path(stem: &str, extension: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{stem}-{}.{extension}", std::process::id()))
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "Trend quality, {} on {} ({} threads).\n\n",
        report.model, report.cpu, report.threads
    );
    for set in &report.sets {
        out.push_str(&format!(
            "\n**{}**: {} texts, {} labels.\n\n| engine | setting | trends | signals in a trend | V-measure | ARI | V-measure, clustered | ARI, clustered | time |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
            set.set, set.texts, set.labels
        ));
        for run in &set.runs {
            let s = &run.scores;
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} % | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} s |\n",
                run.engine,
                run.setting,
                s.trends,
                100.0 * s.coverage,
                s.v_measure,
                s.ari,
                s.clustered_v_measure,
                s.clustered_ari,
                run.seconds
            ));
        }
    }
    out
}

/// V-measure over all signals against time, one point per set and engine
/// (the pipeline's defaults and BERTopic's).
fn chart(report: &Report, dir: &Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for set in &report.sets {
        for run in set
            .runs
            .iter()
            .filter(|r| r.engine == "BERTopic" || r.setting == "pipeline defaults")
        {
            series.push(Series {
                name: format!("{}: {} {}", set.set, run.engine, run.setting),
                points: vec![(run.seconds, run.scores.v_measure)],
                thin: false,
            });
        }
    }
    charts::draw(
        &LineChart {
            title: "Trend quality against time",
            x_label: "seconds (log)",
            y_label: "V-measure, all signals (log)",
            series,
        },
        &dir.join("trends"),
        &[ChartFormat::Png, ChartFormat::Svg],
    )?;
    Ok(())
}
