//! `pulse-bench cluster`: HDBSCAN on embedding-like vectors at several sizes,
//! beside the Python `hdbscan` package on the same data when it is installed.

use crate::{cpu_name, median_run, workloads, write_report};
use anyhow::{Context, bail};
use pulse_models::DeviceSpec;
use pulse_trends::quality::adjusted_rand_index;
use pulse_trends::{Params, hdbscan, hdbscan_on};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Numbers of points to cluster.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    sizes: Vec<usize>,
    #[arg(long, default_value = "384")]
    dim: usize,
    #[arg(long, default_value = "15")]
    min_cluster_size: usize,
    #[arg(long, default_value = "5")]
    min_samples: usize,
    /// A Python interpreter with the `hdbscan` package; without it only
    /// pulse is measured.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Python runs longer than this are stopped and reported as such.
    #[arg(long, default_value = "600")]
    python_timeout_seconds: u64,
    /// Also run approximate mode (inverted-file neighbours) at every size.
    #[arg(long)]
    approximate: bool,
    /// Runs of pulse per size and mode; the run with the median time is
    /// reported (this machine's timings vary by a third from run to run).
    #[arg(long, default_value = "3")]
    repeat: usize,
    /// Where the exact mode's nearest-neighbour pass runs: cpu, or cuda[:N]
    /// with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Where cluster.json and cluster.md are written.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(Serialize)]
struct PythonRun {
    version: Option<String>,
    seconds: Option<f64>,
    cpu_seconds: Option<f64>,
    n_clusters: Option<usize>,
    ari_vs_pulse: Option<f64>,
    outcome: String,
}

#[derive(Serialize)]
struct Measurement {
    points: usize,
    dim: usize,
    seconds: f64,
    neighbours_seconds: f64,
    spanning_tree_seconds: f64,
    hierarchy_seconds: f64,
    n_clusters: usize,
    noise_fraction: f64,
    ari_vs_generator: f64,
    approximate: Option<ApproximateRun>,
    python: Option<PythonRun>,
}

#[derive(Serialize)]
struct ApproximateRun {
    seconds: f64,
    neighbours_seconds: f64,
    spanning_tree_seconds: f64,
    n_clusters: usize,
    ari_vs_exact: f64,
    ari_vs_generator: f64,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    device: String,
    cores: usize,
    min_cluster_size: usize,
    min_samples: usize,
    results: Vec<Measurement>,
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    if args.sizes.is_empty() || args.dim == 0 || args.repeat == 0 {
        bail!("--sizes, --dim and --repeat must be non-empty and positive");
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let device = args.device.select()?;
    let mut params = Params::new(args.min_cluster_size);
    params.min_samples = Some(args.min_samples);
    let mut results = Vec::new();
    for &n in &args.sizes {
        let (points, topics) = workloads::embedding_like(n, args.dim, 0x5eed_c105 + n as u64);
        let (clustering, seconds) = median_run(args.repeat, || {
            hdbscan_on(&points, args.dim, &params, &device)
        })?;
        let noise = clustering.labels.iter().filter(|l| **l < 0).count();
        eprintln!(
            "pulse {n}×{}: {seconds:.2} s, {} clusters",
            args.dim, clustering.n_clusters
        );
        let approximate = if args.approximate {
            let params = Params {
                approximate: true,
                ..params.clone()
            };
            let (run, seconds) = median_run(args.repeat, || hdbscan(&points, args.dim, &params))?;
            eprintln!(
                "pulse approximate {n}×{}: {seconds:.2} s, {} clusters",
                args.dim, run.n_clusters
            );
            Some(ApproximateRun {
                seconds,
                neighbours_seconds: run.timings.neighbours.as_secs_f64(),
                spanning_tree_seconds: run.timings.spanning_tree.as_secs_f64(),
                n_clusters: run.n_clusters,
                ari_vs_exact: adjusted_rand_index(&clustering.labels, &run.labels),
                ari_vs_generator: adjusted_rand_index(&topics, &run.labels),
            })
        } else {
            None
        };
        let python = match &args.python {
            Some(python) => Some(run_python(python, &args, n, &points, &clustering.labels)?),
            None => None,
        };
        results.push(Measurement {
            points: n,
            dim: args.dim,
            seconds,
            neighbours_seconds: clustering.timings.neighbours.as_secs_f64(),
            spanning_tree_seconds: clustering.timings.spanning_tree.as_secs_f64(),
            hierarchy_seconds: clustering.timings.hierarchy.as_secs_f64(),
            n_clusters: clustering.n_clusters,
            noise_fraction: noise as f64 / n as f64,
            ari_vs_generator: adjusted_rand_index(&topics, &clustering.labels),
            approximate,
            python,
        });
    }
    let report = Report {
        cpu: cpu_name(),
        device: pulse_models::device_name(&device),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        min_cluster_size: args.min_cluster_size,
        min_samples: args.min_samples,
        results,
    };
    write_report(&args.out_dir, "cluster", &report, &markdown(&report))
}

fn run_python(
    python: &Path,
    args: &ClusterArgs,
    n: usize,
    points: &[f32],
    pulse_labels: &[i32],
) -> anyhow::Result<PythonRun> {
    let input = args.out_dir.join(format!("cluster-{n}x{}.f32", args.dim));
    let output = args
        .out_dir
        .join(format!("cluster-{n}x{}.python.json", args.dim));
    let bytes: Vec<u8> = points.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input, bytes).with_context(|| format!("cannot write {}", input.display()))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/hdbscan_reference.py");
    let mut child = Command::new(python)
        .arg(&script)
        .args(["--input", &input.to_string_lossy()])
        .args(["--dim", &args.dim.to_string()])
        .args(["--min-cluster-size", &args.min_cluster_size.to_string()])
        .args(["--min-samples", &args.min_samples.to_string()])
        .args(["--output", &output.to_string_lossy()])
        .spawn()
        .with_context(|| format!("cannot start {}", python.display()))?;
    let deadline = Instant::now() + Duration::from_secs(args.python_timeout_seconds);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::fs::remove_file(&input).ok();
    let not_run = |outcome: String| PythonRun {
        version: None,
        seconds: None,
        cpu_seconds: None,
        n_clusters: None,
        ari_vs_pulse: None,
        outcome,
    };
    match status {
        None => {
            eprintln!(
                "python hdbscan {n}: stopped after {} s",
                args.python_timeout_seconds
            );
            Ok(not_run(format!(
                "did not finish in {} s",
                args.python_timeout_seconds
            )))
        }
        Some(status) if !status.success() => Ok(not_run(format!("failed: {status}"))),
        Some(_) => {
            let text = std::fs::read_to_string(&output)
                .with_context(|| format!("cannot read {}", output.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)?;
            let labels: Vec<i32> = value["labels"]
                .as_array()
                .context("python output has no labels")?
                .iter()
                .map(|v| v.as_i64().unwrap_or(-1) as i32)
                .collect();
            let seconds = value["seconds"].as_f64();
            eprintln!("python hdbscan {n}: {:.1} s", seconds.unwrap_or(f64::NAN));
            Ok(PythonRun {
                version: value["version"].as_str().map(str::to_string),
                seconds,
                cpu_seconds: value["cpu_seconds"].as_f64(),
                n_clusters: value["n_clusters"].as_u64().map(|v| v as usize),
                ari_vs_pulse: Some(adjusted_rand_index(&labels, pulse_labels)),
                outcome: "finished".to_string(),
            })
        }
    }
}

fn markdown(r: &Report) -> String {
    let mut md = format!(
        "### HDBSCAN, exact ({}, {} cores, neighbours on {}; min_cluster_size {}, min_samples {})\n\n\
         | points | pulse s (kNN / MST / tree) | clusters | noise | ARI vs generator | \
         approximate s (kNN / MST) | clusters | ARI vs exact | \
         Python `hdbscan` s | speed-up | ARI pulse vs Python |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        r.cpu, r.cores, r.device, r.min_cluster_size, r.min_samples
    );
    for m in &r.results {
        let (python_seconds, speedup, agreement) = match &m.python {
            Some(p) => match (p.seconds, p.ari_vs_pulse) {
                (Some(s), Some(a)) => (
                    format!("{s:.1} (CPU {:.1})", p.cpu_seconds.unwrap_or(f64::NAN)),
                    format!("{:.0}×", s / m.seconds),
                    format!("{a:.4}"),
                ),
                _ => (p.outcome.clone(), "—".into(), "—".into()),
            },
            None => ("not run".into(), "—".into(), "—".into()),
        };
        let (approximate_seconds, approximate_clusters, approximate_ari) = match &m.approximate {
            Some(a) => (
                format!(
                    "{:.2} ({:.2} / {:.2})",
                    a.seconds, a.neighbours_seconds, a.spanning_tree_seconds
                ),
                a.n_clusters.to_string(),
                format!("{:.4}", a.ari_vs_exact),
            ),
            None => ("not run".into(), "—".into(), "—".into()),
        };
        md.push_str(&format!(
            "| {}×{} | {:.2} ({:.2} / {:.2} / {:.2}) | {} | {:.1} % | {:.4} | {} | {} | {} | {} | {} | {} |\n",
            m.points,
            m.dim,
            m.seconds,
            m.neighbours_seconds,
            m.spanning_tree_seconds,
            m.hierarchy_seconds,
            m.n_clusters,
            100.0 * m.noise_fraction,
            m.ari_vs_generator,
            approximate_seconds,
            approximate_clusters,
            approximate_ari,
            python_seconds,
            speedup,
            agreement
        ));
    }
    md
}
