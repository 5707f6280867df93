//! `pulse-bench ingest`: signals through `pulse serve` into each store of
//! `--stores` (the embedded one, a real Qdrant node, a real three-node
//! Qdrant cluster, the last two started by pulse-testkit) against pure
//! embedding throughput on the same texts, and the embedded store alone at
//! scale: upsert throughput and filtered-search latency, before and after
//! optimisation.

use crate::load::{offline_throughput, start_server, stop_server};
use crate::{cpu_name, workloads, write_report};
use anyhow::{Context, bail};
use pulse_models::DEFAULT_MODEL;
use pulse_proto::v1 as pb;
use pulse_proto::v1::signal_service_client::SignalServiceClient;
use pulse_store::{EmbeddedStore, PointRecord, SignalFilter, VectorStore};
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct IngestArgs {
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Signals sent through the server.
    #[arg(long, default_value = "3000")]
    signals: usize,
    /// Where the server stores them: `embedded`, `node` (one Qdrant server)
    /// and `cluster` (three Qdrant nodes, collections of 2 shards × 2
    /// replicas, write consistency 2), each a run of its own.
    #[arg(long, value_delimiter = ',', default_value = "embedded,node,cluster")]
    stores: Vec<StoreKind>,
    /// Points written straight into the store.
    #[arg(long, default_value = "100000")]
    store_points: usize,
    /// Their dimension (all-MiniLM-L6-v2 makes 384).
    #[arg(long, default_value = "384")]
    dimension: usize,
    /// Filtered searches timed per phase.
    #[arg(long, default_value = "200")]
    searches: usize,
    /// CPU threads for the engine and the started server [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Embedded,
    Node,
    Cluster,
}

/// The Qdrant a run's server is pointed at, kept alive until the run ends.
#[derive(Default)]
struct RunningQdrant {
    _node: Option<pulse_testkit::qdrant::QdrantNode>,
    _cluster: Option<pulse_testkit::qdrant::QdrantCluster>,
}

impl StoreKind {
    /// The Qdrant to start (none for the embedded store) and the flags that
    /// point `pulse serve` at it.
    fn start(self) -> anyhow::Result<(RunningQdrant, Vec<String>)> {
        use pulse_testkit::qdrant::{QdrantCluster, QdrantNode};
        Ok(match self {
            StoreKind::Embedded => (RunningQdrant::default(), Vec::new()),
            StoreKind::Node => {
                let node = QdrantNode::start()?;
                let flags = vec!["--qdrant-url".into(), node.grpc_url()];
                (
                    RunningQdrant {
                        _node: Some(node),
                        ..RunningQdrant::default()
                    },
                    flags,
                )
            }
            StoreKind::Cluster => {
                let cluster = QdrantCluster::start(3)?;
                let mut flags = vec!["--qdrant-url".into(), cluster.grpc_url()];
                for flag in [
                    "--qdrant-shards",
                    "--qdrant-replication",
                    "--qdrant-write-consistency",
                ] {
                    flags.extend([flag.to_string(), "2".to_string()]);
                }
                (
                    RunningQdrant {
                        _cluster: Some(cluster),
                        ..RunningQdrant::default()
                    },
                    flags,
                )
            }
        })
    }
}

#[derive(Serialize)]
struct IngestRun {
    store: StoreKind,
    signals_per_second: f64,
}

#[derive(Serialize)]
struct Latency {
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    cpu: String,
    cores: usize,
    signals: usize,
    offline_texts_per_second: f64,
    ingest: Vec<IngestRun>,
    store_points: usize,
    dimension: usize,
    upsert_points_per_second: f64,
    upsert_batch_500: Latency,
    search_before_optimize: Latency,
    optimize_seconds: f64,
    search_after_optimize: Latency,
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    let at = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Latency {
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
    }
}

pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    if args.signals == 0 || args.store_points == 0 || args.searches == 0 {
        bail!("--signals, --store-points and --searches must be at least 1");
    }
    let texts = workloads::short_texts(args.signals);
    let offline = offline_throughput(&args.model, args.threads, &texts, 32, 10)?;
    eprintln!("offline embedding: {offline:.1} texts/s");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut ingest = Vec::new();
    for &store in &args.stores {
        let (qdrant, flags) = store.start()?;
        let (child, address, data_dir) = start_server(&args.model, args.threads, &flags)?;
        let rate = runtime.block_on(ingest_through_server(&address, &texts));
        stop_server(child, &data_dir);
        drop(qdrant);
        let rate = rate?;
        eprintln!("end to end into {store:?}: {rate:.1} signals/s");
        ingest.push(IngestRun {
            store,
            signals_per_second: rate,
        });
    }

    let store_dir = std::env::temp_dir().join(format!("pulse-bench-store-{}", std::process::id()));
    let measured = runtime.block_on(measure_store(&args, &store_dir));
    let _ = std::fs::remove_dir_all(&store_dir);
    let (upsert_rate, upsert_batch, before, optimize_seconds, after) = measured?;

    let report = Report {
        model: args.model.clone(),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        signals: args.signals,
        offline_texts_per_second: offline,
        ingest,
        store_points: args.store_points,
        dimension: args.dimension,
        upsert_points_per_second: upsert_rate,
        upsert_batch_500: upsert_batch,
        search_before_optimize: before,
        optimize_seconds,
        search_after_optimize: after,
    };
    write_report(&args.out_dir, "ingest", &report, &markdown(&report))
}

/// Streams every text as a signal and waits for the server's summary, which
/// comes after the store confirmed every write.
async fn ingest_through_server(address: &str, texts: &[String]) -> anyhow::Result<f64> {
    let channel = tonic::transport::Channel::from_shared(address.to_string())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let mut client = SignalServiceClient::new(channel);
    let signals: Vec<pb::Signal> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| pb::Signal {
            id: format!("bench-{i}"),
            brand: ["acme", "globex", "initech"][i % 3].into(),
            source: "x".into(),
            text: text.clone(),
            ..Default::default()
        })
        .collect();
    let started = Instant::now();
    let summary = client
        .ingest_stream(futures_stream(signals))
        .await
        .context("ingest stream failed")?
        .into_inner();
    if summary.rejected > 0 {
        bail!("the server rejected {} benchmark signals", summary.rejected);
    }
    Ok(summary.stored as f64 / started.elapsed().as_secs_f64())
}

fn futures_stream(signals: Vec<pb::Signal>) -> impl tokio_stream::Stream<Item = pb::Signal> {
    tokio_stream::iter(signals)
}

type StoreFigures = (f64, Latency, Latency, f64, Latency);

async fn measure_store(args: &IngestArgs, dir: &std::path::Path) -> anyhow::Result<StoreFigures> {
    let store = EmbeddedStore::open(dir)?;
    let collection = "bench";
    store.ensure_collection(collection, args.dimension).await?;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 2_000_001) as f32 / 1_000_000.0 - 1.0
    };
    let brands = [
        "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell",
    ];
    let sources = ["x", "reddit", "news", "chatbot"];
    let t0 = 1_760_000_000_000i64;
    let mut batch_times = Vec::new();
    let started = Instant::now();
    for start in (0..args.store_points).step_by(500) {
        let points: Vec<PointRecord> = (start..(start + 500).min(args.store_points))
            .map(|i| {
                let Value::Object(payload) = json!({
                    "brand": brands[i % brands.len()],
                    "source": sources[(i / 7) % sources.len()],
                    "ts": t0 + i as i64 * 1000,
                }) else {
                    unreachable!("a JSON object literal")
                };
                PointRecord {
                    id: Uuid::new_v5(&Uuid::NAMESPACE_OID, &(i as u64).to_le_bytes()),
                    vector: Some((0..args.dimension).map(|_| random()).collect()),
                    payload,
                }
            })
            .collect();
        let batch_started = Instant::now();
        store.upsert(collection, points).await?;
        batch_times.push(batch_started.elapsed());
    }
    let upsert_rate = args.store_points as f64 / started.elapsed().as_secs_f64();
    eprintln!("store upsert: {upsert_rate:.0} points/s");

    let filter = |k: usize| SignalFilter {
        brand: Some(brands[k % brands.len()].to_string()),
        sources: vec![sources[k % sources.len()].to_string()],
        ts_from: Some(t0),
        ts_to: Some(t0 + (args.store_points as i64) * 700),
        fields: Vec::new(),
    };
    let mut search = async |store: &EmbeddedStore| -> anyhow::Result<Latency> {
        let mut times = Vec::new();
        for k in 0..args.searches {
            let query: Vec<f32> = (0..args.dimension).map(|_| random()).collect();
            let begun = Instant::now();
            store
                .search(collection, query, &filter(k), 10, true)
                .await?;
            times.push(begun.elapsed());
        }
        Ok(latency(times))
    };
    let before = search(&store).await?;
    let optimize_started = Instant::now();
    store.maintain(Duration::ZERO).await?;
    let optimize_seconds = optimize_started.elapsed().as_secs_f64();
    let after = search(&store).await?;
    Ok((
        upsert_rate,
        latency(batch_times),
        before,
        optimize_seconds,
        after,
    ))
}

fn markdown(r: &Report) -> String {
    let ingest: String = r
        .ingest
        .iter()
        .map(|run| {
            format!(
                "| end to end: {} signals streamed to `pulse serve`, stored in {} and acknowledged | {:.1} signals/s ({:.0}% of offline) |\n",
                r.signals,
                match run.store {
                    StoreKind::Embedded => "its embedded store",
                    StoreKind::Node => "one Qdrant node",
                    StoreKind::Cluster => "a 3-node Qdrant cluster (2 shards × 2 replicas)",
                },
                run.signals_per_second,
                run.signals_per_second / r.offline_texts_per_second * 100.0
            )
        })
        .collect();
    format!(
        "Model `{}` on {} ({} cores).\n\n\
         | measure | figure |\n| --- | ---: |\n\
         | offline embedding, batches of 32 | {:.1} texts/s |\n\
         {ingest}\
         | store: upsert of {} points of {} dimensions, batches of 500 | {:.0} points/s (batch p50 {:.1} ms, p95 {:.1} ms) |\n\
         | store: filtered search (brand + source + time), top 10, before optimising | p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms |\n\
         | store: optimising | {:.1} s |\n\
         | store: the same searches after optimising | p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms |\n",
        r.model,
        r.cpu,
        r.cores,
        r.offline_texts_per_second,
        r.store_points,
        r.dimension,
        r.upsert_points_per_second,
        r.upsert_batch_500.p50_ms,
        r.upsert_batch_500.p95_ms,
        r.search_before_optimize.p50_ms,
        r.search_before_optimize.p95_ms,
        r.search_before_optimize.p99_ms,
        r.optimize_seconds,
        r.search_after_optimize.p50_ms,
        r.search_after_optimize.p95_ms,
        r.search_after_optimize.p99_ms,
    )
}
