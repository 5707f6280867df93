//! `pulse cluster`: the trend pipeline (reduction, HDBSCAN, assignment,
//! merging; the same one re-cluster jobs run) over vectors in a file,
//! offline, for ML engineers and for checking the service's clustering
//! against other tools.
//!
//! Input is raw little-endian f32 rows (`--dim` required) or JSON lines with
//! an `embedding` array (and optionally an `id`, and a `text` that merging
//! compares keywords of). Output is one JSON object: `labels`,
//! `probabilities`, `outlier_scores`, `assigned` (the assignment's score of
//! each signal HDBSCAN called noise and the assignment placed, else null),
//! `n_clusters`, the parameters and timings (and `ids` when the input had
//! them).

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use pulse_proto::v1 as pb;
use pulse_server::trends::params_of;
use pulse_trends::pipeline::find_trends;
use pulse_trends::{Metric, Selection};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct ClusterArgs {
    /// Raw little-endian f32 rows, or JSON lines with an `embedding` field.
    #[arg(long, short)]
    input: PathBuf,
    /// How to read the input; `auto` takes JSON lines when the file starts
    /// with `{`, raw f32 otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    format: InputFormat,
    /// Values per row: required for raw f32, checked for JSON lines.
    #[arg(long)]
    dim: Option<usize>,
    #[arg(long, default_value = "cosine", value_parser = parse_metric)]
    metric: Metric,
    #[command(flatten)]
    cluster: ClusterFlags,
    /// Where the result is written.
    #[arg(long, short)]
    output: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InputFormat {
    Auto,
    F32,
    Jsonl,
}

/// The trend pipeline's flags `pulse cluster` and `pulse recluster`
/// share. Unset, each takes the pipeline's default (docs/api.md), the best
/// measured on short texts.
#[derive(Args)]
pub struct ClusterFlags {
    /// Default 5.
    #[arg(long)]
    pub min_cluster_size: Option<u32>,
    #[command(flatten)]
    pub hdbscan: HdbscanFlags,
    /// HDBSCAN alone: no reduction, no assignment, no merging (the labels
    /// of the pipeline before it had those steps).
    #[arg(long, conflicts_with_all = ["no_reduce", "assign", "merge_threshold", "max_trends"])]
    pub hdbscan_only: bool,
    /// Cluster the vectors themselves instead of their UMAP-style reduction.
    #[arg(long)]
    pub no_reduce: bool,
    /// Dimensions of the reduction (default 5, at most 16).
    #[arg(long)]
    pub reduce_dimensions: Option<u32>,
    /// Neighbourhood of the reduction, counting the point itself (default 15).
    #[arg(long)]
    pub reduce_neighbours: Option<u32>,
    /// Seed of the reduction's layout (default 42): the same input, seed and
    /// thread count give the same labels.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where noise may join a trend: neighbours (default), centroid or off.
    #[arg(long)]
    pub assign: Option<String>,
    /// The score noise needs to join a trend, 0–1: the neighbours'
    /// cosine-weighted share (default 0.5) or the centroid's cosine
    /// (default 0.6).
    #[arg(long)]
    pub assign_threshold: Option<f32>,
    /// Trends whose centroids have at least this cosine, and share a leading
    /// keyword, merge (default: none merge).
    #[arg(long)]
    pub merge_threshold: Option<f32>,
    /// At most this many trends: the most similar merge until it holds.
    #[arg(long)]
    pub max_trends: Option<u32>,
}

impl ClusterFlags {
    /// The flags as the service's `ClusterParams`, unset ones left for its
    /// defaults.
    pub fn message(&self) -> anyhow::Result<pb::ClusterParams> {
        let off = self.hdbscan_only;
        Ok(pb::ClusterParams {
            min_cluster_size: self.min_cluster_size.unwrap_or(0),
            min_samples: u32::try_from(self.hdbscan.min_samples.unwrap_or(0))
                .context("`--min-samples` is too large")?,
            selection: self.hdbscan.selection.to_string(),
            epsilon: self.hdbscan.epsilon,
            allow_single_cluster: self.hdbscan.allow_single_cluster,
            approximate: self.hdbscan.approximate,
            reduce: (off || self.no_reduce).then_some(false),
            reduce_dimensions: self.reduce_dimensions.unwrap_or(0),
            reduce_neighbours: self.reduce_neighbours.unwrap_or(0),
            seed: self.seed,
            assign: if off {
                "off".into()
            } else {
                self.assign.clone().unwrap_or_default()
            },
            assign_threshold: self.assign_threshold,
            merge_threshold: self.merge_threshold,
            max_trends: self.max_trends.unwrap_or(0),
        })
    }
}

/// The HDBSCAN flags within [`ClusterFlags`].
#[derive(Args)]
pub struct HdbscanFlags {
    /// Neighbours that make a point core, not counting the point itself (the
    /// Python `hdbscan` package's convention). Default 3.
    #[arg(long)]
    pub min_samples: Option<usize>,
    #[arg(long, default_value = "eom", value_parser = parse_selection)]
    pub selection: Selection,
    /// cluster_selection_epsilon: clusters born below this distance merge.
    #[arg(long, default_value = "0")]
    pub epsilon: f64,
    #[arg(long)]
    pub allow_single_cluster: bool,
    /// Neighbours from an inverted file instead of all pairs: much faster on
    /// large inputs, close to but not always equal to the exact result; the
    /// result says it is approximate.
    #[arg(long)]
    pub approximate: bool,
}

fn parse_metric(s: &str) -> Result<Metric, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_selection(s: &str) -> Result<Selection, String> {
    s.parse().map_err(|e| format!("{e}"))
}

struct Input {
    points: Vec<f32>,
    dim: usize,
    ids: Option<Vec<Value>>,
    /// One per point when every JSON line had a `text`, else none.
    texts: Vec<String>,
}

pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let (mut params, requested) = params_of(Some(args.cluster.message()?))
        .map_err(|status| anyhow!("{}", status.message()))?;
    let started = Instant::now();
    let input = read_input(&args.input, args.format, args.dim)?;
    let read_seconds = started.elapsed().as_secs_f64();
    let n = input.points.len() / input.dim;
    params.hdbscan.metric = args.metric;
    let texts: Vec<&str> = input.texts.iter().map(String::as_str).collect();
    let trends = find_trends(
        &input.points,
        input.dim,
        &texts,
        &params,
        &pulse_models::Device::Cpu,
    )?;
    let t = trends.timings;
    let noise = trends.labels.iter().filter(|l| **l < 0).count();
    let assigned = trends.assigned.iter().filter(|a| a.is_some()).count();
    let mut result = json!({
        "n_points": n,
        "dim": input.dim,
        "approximate": trends.approximate,
        "params": {
            "metric": params.hdbscan.metric.to_string(),
            "min_cluster_size": params.hdbscan.min_cluster_size,
            "min_samples": params.hdbscan.min_samples.unwrap_or(params.hdbscan.min_cluster_size),
            "cluster_selection_method": params.hdbscan.selection.to_string(),
            "cluster_selection_epsilon": params.hdbscan.epsilon,
            "allow_single_cluster": params.hdbscan.allow_single_cluster,
            "reduce": requested.reduce,
            "reduce_dimensions": requested.reduce_dimensions,
            "reduce_neighbours": requested.reduce_neighbours,
            "seed": requested.seed,
            "assign": requested.assign,
            "assign_threshold": requested.assign_threshold,
            "merge_threshold": requested.merge_threshold,
            "max_trends": requested.max_trends,
        },
        "n_clusters": trends.n_trends,
        "merged": trends.merged,
        "labels": trends.labels,
        "probabilities": trends.probabilities,
        "outlier_scores": trends.outlier_scores,
        "assigned": trends.assigned,
        "timings": {
            "read_seconds": read_seconds,
            "reduction_seconds": t.reduction().as_secs_f64(),
            "reduction_neighbours_seconds": t.neighbours.as_secs_f64(),
            "layout_seconds": t.layout.as_secs_f64(),
            "neighbours_seconds": t.clustering.neighbours.as_secs_f64(),
            "spanning_tree_seconds": t.clustering.spanning_tree.as_secs_f64(),
            "hierarchy_seconds": t.clustering.hierarchy.as_secs_f64(),
            "assignment_seconds": t.assignment.as_secs_f64(),
            "merging_seconds": t.merging.as_secs_f64(),
            "clustering_seconds": t.total().as_secs_f64(),
        },
    });
    if let Some(ids) = input.ids {
        result["ids"] = Value::Array(ids);
    }
    std::fs::write(&args.output, serde_json::to_vec(&result)?)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "{n} points × {}: {} clusters, {:.1} % noise ({assigned} assigned, {} merged), clustered in {:.2} s{}",
        input.dim,
        trends.n_trends,
        100.0 * noise as f64 / n.max(1) as f64,
        trends.merged,
        t.total().as_secs_f64(),
        if trends.approximate {
            " (approximate)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn read_input(path: &Path, format: InputFormat, dim: Option<usize>) -> anyhow::Result<Input> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let looks_like_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    match format {
        InputFormat::Jsonl => read_json_lines(&bytes, dim),
        InputFormat::Auto if looks_like_json => read_json_lines(&bytes, dim),
        InputFormat::F32 | InputFormat::Auto => read_f32(&bytes, dim),
    }
}

fn read_f32(bytes: &[u8], dim: Option<usize>) -> anyhow::Result<Input> {
    let Some(dim) = dim.filter(|d| *d > 0) else {
        bail!("raw f32 input needs --dim (a positive number of values per row)");
    };
    let row_bytes = 4 * dim;
    if !bytes.len().is_multiple_of(row_bytes) {
        bail!(
            "the input has {} bytes, not a whole number of rows of {dim} f32 values ({row_bytes} bytes)",
            bytes.len()
        );
    }
    let points = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Input {
        points,
        dim,
        ids: None,
        texts: Vec::new(),
    })
}

fn read_json_lines(bytes: &[u8], dim: Option<usize>) -> anyhow::Result<Input> {
    let mut points = Vec::new();
    let mut ids = Vec::new();
    let mut any_id = false;
    let mut texts = Vec::new();
    let mut width = dim;
    for (index, line) in BufReader::new(bytes).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("line {number} is not UTF-8"))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(&line)
            .with_context(|| format!("line {number} is not valid JSON"))?;
        let Some(embedding) = record.get("embedding").and_then(Value::as_array) else {
            bail!("line {number} has no `embedding` array");
        };
        let row: Vec<f32> = embedding
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect::<Option<_>>()
            .with_context(|| format!("line {number}: `embedding` holds a non-number"))?;
        match width {
            None => width = Some(row.len()),
            Some(w) if w != row.len() => {
                bail!(
                    "line {number}: embedding has {} values, expected {w}",
                    row.len()
                )
            }
            Some(_) => {}
        }
        points.extend(row);
        let id = record.get("id").cloned().unwrap_or(Value::Null);
        any_id |= !id.is_null();
        ids.push(id);
        if let Some(text) = record.get("text").and_then(Value::as_str) {
            texts.push(text.to_string());
        }
    }
    let Some(dim) = width.filter(|d| *d > 0) else {
        bail!("the input holds no embeddings");
    };
    if texts.len() != ids.len() {
        texts.clear();
    }
    Ok(Input {
        points,
        dim,
        ids: any_id.then_some(ids),
        texts,
    })
}
