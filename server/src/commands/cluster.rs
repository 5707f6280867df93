//! `pulse cluster`: HDBSCAN over vectors in a file, offline, for ML engineers
//! and for checking the service's clustering against other tools.
//!
//! Input is raw little-endian f32 rows (`--dim` required) or JSON lines with
//! an `embedding` array (and optionally an `id`). Output is one JSON object:
//! `labels`, `probabilities`, `outlier_scores`, `n_clusters`, the parameters
//! and timings (and `ids` when the input had them).

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use pulse_trends::{Metric, Params, Selection, hdbscan};
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
    #[arg(long, default_value = "euclidean", value_parser = parse_metric)]
    metric: Metric,
    #[arg(long)]
    min_cluster_size: usize,
    #[command(flatten)]
    hdbscan: HdbscanFlags,
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

/// The HDBSCAN flags `pulse cluster` and `pulse recluster` share (each
/// has its own `--min-cluster-size`: required offline, 15 on the server).
#[derive(Args)]
pub struct HdbscanFlags {
    /// Neighbours that make a point core, not counting the point itself (the
    /// Python `hdbscan` package's convention). Defaults to min-cluster-size.
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
}

pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let input = read_input(&args.input, args.format, args.dim)?;
    let read_seconds = started.elapsed().as_secs_f64();
    let n = input.points.len() / input.dim;
    let params = Params {
        min_cluster_size: args.min_cluster_size,
        min_samples: args.hdbscan.min_samples,
        metric: args.metric,
        selection: args.hdbscan.selection,
        epsilon: args.hdbscan.epsilon,
        allow_single_cluster: args.hdbscan.allow_single_cluster,
        approximate: args.hdbscan.approximate,
    };
    let clustering = hdbscan(&input.points, input.dim, &params)?;
    let t = clustering.timings;
    let noise = clustering.labels.iter().filter(|l| **l < 0).count();
    let mut result = json!({
        "n_points": n,
        "dim": input.dim,
        "approximate": clustering.approximate,
        "params": {
            "metric": params.metric.to_string(),
            "min_cluster_size": params.min_cluster_size,
            "min_samples": params.min_samples.unwrap_or(params.min_cluster_size),
            "cluster_selection_method": params.selection.to_string(),
            "cluster_selection_epsilon": params.epsilon,
            "allow_single_cluster": params.allow_single_cluster,
        },
        "n_clusters": clustering.n_clusters,
        "labels": clustering.labels,
        "probabilities": clustering.probabilities,
        "outlier_scores": clustering.outlier_scores,
        "timings": {
            "read_seconds": read_seconds,
            "neighbours_seconds": t.neighbours.as_secs_f64(),
            "spanning_tree_seconds": t.spanning_tree.as_secs_f64(),
            "hierarchy_seconds": t.hierarchy.as_secs_f64(),
            "clustering_seconds": t.total().as_secs_f64(),
        },
    });
    if let Some(ids) = input.ids {
        result["ids"] = Value::Array(ids);
    }
    std::fs::write(&args.output, serde_json::to_vec(&result)?)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "{n} points × {}: {} clusters, {:.1} % noise, clustered in {:.2} s{}",
        input.dim,
        clustering.n_clusters,
        100.0 * noise as f64 / n.max(1) as f64,
        t.total().as_secs_f64(),
        if clustering.approximate {
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
    })
}

fn read_json_lines(bytes: &[u8], dim: Option<usize>) -> anyhow::Result<Input> {
    let mut points = Vec::new();
    let mut ids = Vec::new();
    let mut any_id = false;
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
    }
    let Some(dim) = width.filter(|d| *d > 0) else {
        bail!("the input holds no embeddings");
    };
    Ok(Input {
        points,
        dim,
        ids: any_id.then_some(ids),
    })
}
