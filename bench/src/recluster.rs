//! `pulse-bench recluster`: one re-cluster job over a large window, end to
//! end through `pulse serve`: a brand's signals (embedding-like vectors in
//! the model's dimension, texts drawn from each topic's own words) written
//! straight into the embedded store and optimised as a serving store would
//! be, then a `Recluster` request and `WatchJob` until the job ends. Reported
//! per run: the time of each stage as the server reports it, trends and
//! noise, and the server's resident memory before the job and at its peak.

use crate::load::{start_server_on, stop_server};
use crate::{cpu_name, workloads, write_report};
use anyhow::{Context, bail};
use pulse_models::DEFAULT_MODEL;
use pulse_proto::v1 as pb;
use pulse_proto::v1::trend_service_client::TrendServiceClient;
use pulse_store::{EmbeddedStore, PointRecord, VectorStore};
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct ReclusterArgs {
    /// Signals in the brand's window.
    #[arg(long, default_value = "100000")]
    signals: usize,
    /// The model the server serves; the window's vectors take its
    /// dimension (`--dimension`).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// The served model's dimension (all-MiniLM-L6-v2 makes 384).
    #[arg(long, default_value = "384")]
    dimension: usize,
    /// One job each: `approximate` (`ClusterParams.approximate`: the
    /// inverted file's neighbours) and `exact`; the rest of the request
    /// takes the service's defaults.
    #[arg(long, value_delimiter = ',', default_value = "approximate,exact")]
    modes: Vec<Mode>,
    /// CPU threads of the started server [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Approximate,
    Exact,
}

#[derive(Serialize)]
struct Run {
    mode: Mode,
    signals: u64,
    trends: u32,
    noise: u64,
    /// From the request to the job's end.
    seconds: f64,
    /// Loading, clustering, summarising and writing, as the job's stage
    /// changes were watched.
    stages: [f64; 4],
    rss_before_mb: f64,
    peak_rss_mb: f64,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    threads: Option<usize>,
    model: String,
    signals: usize,
    store_seconds: f64,
    runs: Vec<Run>,
}

const BRAND: &str = "acme";
const T0_MS: i64 = 1_760_000_000_000;

pub fn run(args: ReclusterArgs) -> anyhow::Result<()> {
    if args.signals < 2 || args.modes.is_empty() {
        bail!("give at least 2 --signals and one --modes");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let mut runs = Vec::new();
    let mut store_seconds = 0.0;
    for &mode in &args.modes {
        let data_dir =
            std::env::temp_dir().join(format!("pulse-bench-recluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let started = Instant::now();
        runtime.block_on(fill_store(&args, &data_dir))?;
        store_seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "recluster: {} signals stored and optimised in {store_seconds:.1} s",
            args.signals
        );
        let (child, address, data_dir) = start_server_on(&args.model, args.threads, &[], data_dir)?;
        let pid = child.id();
        let measured = runtime.block_on(one_job(&address, pid, mode, &args));
        stop_server(child, &data_dir);
        let run = measured?;
        eprintln!(
            "recluster {mode:?}: {} signals, {} trends, {} noise, {:.1} s (stages {:.1?}), peak RSS {:.0} MB",
            run.signals, run.trends, run.noise, run.seconds, run.stages, run.peak_rss_mb
        );
        runs.push(run);
    }
    let report = Report {
        cpu: cpu_name(),
        threads: args.threads,
        model: args.model.clone(),
        signals: args.signals,
        store_seconds,
        runs,
    };
    write_report(&args.out_dir, "recluster", &report, &markdown(&report))
}

/// The brand's window written straight into the embedded store under the
/// collection the server reads, then optimised.
async fn fill_store(args: &ReclusterArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let (vectors, topics) = workloads::embedding_like(args.signals, args.dimension, 0x7ec1_u64);
    let store = EmbeddedStore::open(dir)?;
    let collection = pulse_store::signal_collection(&args.model);
    store.ensure_collection(&collection, args.dimension).await?;
    let sources = ["x", "reddit", "news", "chatbot"];
    let rows: Vec<&[f32]> = vectors.chunks_exact(args.dimension).collect();
    for start in (0..args.signals).step_by(1000) {
        let points: Vec<PointRecord> = (start..(start + 1000).min(args.signals))
            .map(|i| {
                let signal_id = format!("signal-{i}");
                let Value::Object(payload) = json!({
                    "brand": BRAND,
                    "source": sources[i % sources.len()],
                    "ts": T0_MS + i as i64 * 10,
                    "signal_id": signal_id,
                    "text": text_of(i, topics[i]),
                }) else {
                    unreachable!("a JSON object literal")
                };
                PointRecord {
                    id: Uuid::new_v5(&Uuid::NAMESPACE_OID, signal_id.as_bytes()),
                    vector: Some(rows[i].to_vec()),
                    payload,
                }
            })
            .collect();
        store.upsert(&collection, points).await?;
    }
    store.maintain(Duration::ZERO).await?;
    Ok(())
}

/// Ten words: six from the topic's own vocabulary, four shared by all, so
/// the keywords' class-based TF-IDF has real work. Noise (topic −1) draws
/// from the shared words alone.
fn text_of(i: usize, topic: i32) -> String {
    const SHARED: [&str; 12] = [
        "price", "love", "service", "today", "new", "order", "store", "app", "help", "great",
        "time", "people",
    ];
    let mut state = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..10)
        .map(|w| {
            let pick = next();
            if topic >= 0 && w < 6 {
                format!("t{topic}w{}", pick % 20)
            } else {
                SHARED[(pick % SHARED.len() as u64) as usize].to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn one_job(address: &str, pid: u32, mode: Mode, args: &ReclusterArgs) -> anyhow::Result<Run> {
    let channel = tonic::transport::Channel::from_shared(address.to_string())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let mut client = TrendServiceClient::new(channel);
    let rss_before_mb = memory_mb(pid, "VmRSS:")?;
    let at = |ms: i64| {
        Some(prost_types::Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        })
    };
    let started = Instant::now();
    let job = client
        .recluster(pb::ReclusterRequest {
            brand: BRAND.into(),
            from: at(T0_MS),
            to: at(T0_MS + args.signals as i64 * 10 + 1000),
            params: Some(pb::ClusterParams {
                approximate: mode == Mode::Approximate,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .context("Recluster failed")?
        .into_inner();
    let mut updates = client
        .watch_job(pb::JobRequest {
            job_id: job.id.clone(),
        })
        .await
        .context("WatchJob failed")?
        .into_inner();
    // When each stage was first seen: loading, clustering, summarising,
    // writing, done.
    let mut seen = [None::<Duration>; 5];
    let mut last = job;
    while let Some(update) = updates.message().await? {
        let stage = update.stage;
        if (1..=5).contains(&stage) {
            let slot = &mut seen[stage as usize - 1];
            slot.get_or_insert_with(|| started.elapsed());
        }
        last = update;
        if last.state != pb::JobState::Queued as i32 && last.state != pb::JobState::Running as i32 {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if last.state != pb::JobState::Succeeded as i32 {
        bail!("the job ended {:?}: {}", last.state(), last.error);
    }
    let mut stages = [0.0; 4];
    let mut from = Duration::ZERO;
    for (k, stage) in stages.iter_mut().enumerate() {
        let to = seen[k + 1].or(seen[4]).unwrap_or(started.elapsed());
        let begun = seen[k].unwrap_or(from);
        *stage = to.saturating_sub(begun).as_secs_f64();
        from = to;
    }
    Ok(Run {
        mode,
        signals: last.signals,
        trends: last.trends,
        noise: last.noise,
        seconds,
        stages,
        rss_before_mb,
        peak_rss_mb: memory_mb(pid, "VmHWM:")?,
    })
}

/// A `/proc/<pid>/status` figure in MB.
fn memory_mb(pid: u32, key: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(kb / 1000.0)
}

fn markdown(r: &Report) -> String {
    let mut out = format!(
        "One re-cluster job over {} signals of one brand (model `{}`, service defaults), \
         `pulse serve` on {} ({} threads); the window written into the embedded store and \
         optimised beforehand ({:.1} s).\n\n\
         | mode | trends | noise | loading s | clustering s | summarising s | writing s | job s | server RSS before, MB | peak, MB |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        r.signals,
        r.model,
        r.cpu,
        r.threads
            .map_or_else(|| "all".to_string(), |t| t.to_string()),
        r.store_seconds
    );
    for run in &r.runs {
        out.push_str(&format!(
            "| {:?} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |\n",
            run.mode,
            run.trends,
            run.noise,
            run.stages[0],
            run.stages[1],
            run.stages[2],
            run.stages[3],
            run.seconds,
            run.rss_before_mb,
            run.peak_rss_mb
        ));
    }
    out
}
