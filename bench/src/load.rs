//! `pulse-bench load`: N concurrent gRPC clients, each sending one text per
//! request for a fixed time, against the engine's offline batched
//! throughput measured in the same run on the same texts.

use crate::{cpu_name, workloads, write_report};
use anyhow::{Context, bail};
use pulse_models::{DEFAULT_MODEL, DeviceSpec, Embedder, EmbedderOptions};
use pulse_proto::v1 as pb;
use pulse_proto::v1::embedding_service_client::EmbeddingServiceClient;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(clap::Args)]
pub struct LoadArgs {
    /// gRPC address of a running server (`http://host:port`); without it,
    /// `pulse serve` is started from beside this binary, with no cache.
    #[arg(long)]
    server: Option<String>,
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Concurrent clients to measure, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per level (after one second of warm-up).
    #[arg(long, default_value = "10")]
    seconds: u64,
    /// Batch size of the offline reference.
    #[arg(long, default_value = "32")]
    offline_batch: usize,
    /// CPU threads for the offline engine and the started server [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

#[derive(Serialize)]
struct Level {
    clients: usize,
    requests: usize,
    failures: usize,
    texts_per_second: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    of_offline: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    cpu: String,
    cores: usize,
    seconds: u64,
    offline_texts_per_second: f64,
    offline_batch: usize,
    levels: Vec<Level>,
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.seconds == 0 || args.clients.contains(&0) {
        bail!("--seconds and every --clients level must be at least 1");
    }
    // Distinct texts, so that no request is answered by a cache or shares
    // work with another.
    let texts = Arc::new(workloads::short_texts(200_000));
    let offline = offline_throughput(
        &args.model,
        args.threads,
        &texts,
        args.offline_batch,
        args.seconds,
    )?;
    eprintln!(
        "offline: {offline:.1} texts/s (batch {})",
        args.offline_batch
    );

    let mut started = None;
    let address = match &args.server {
        Some(address) => address.clone(),
        None => {
            let (child, address, data_dir) = start_server(&args.model, args.threads, &[])?;
            started = Some((child, data_dir));
            address
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let channel = Channel::from_shared(address.clone())?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let next = Arc::new(AtomicUsize::new(args.offline_batch * 1000));
        let mut levels = Vec::new();
        for &clients in &args.clients {
            let level = measure_level(&channel, clients, args.seconds, &texts, &next, &args.model, offline).await;
            eprintln!(
                "{clients:>3} clients: {:.1} texts/s ({:.0}% of offline), p50 {:.1} ms, p99 {:.1} ms",
                level.texts_per_second,
                level.of_offline * 100.0,
                level.p50_ms,
                level.p99_ms
            );
            levels.push(level);
        }
        anyhow::Ok(levels)
    });
    if let Some((child, data_dir)) = started {
        stop_server(child, &data_dir);
    }
    let report = Report {
        model: args.model.clone(),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seconds: args.seconds,
        offline_texts_per_second: offline,
        offline_batch: args.offline_batch,
        levels: outcome?,
    };
    write_report(&args.out_dir, "load", &report, &markdown(&report))
}

/// Texts per second of the engine alone, embedding batches back to back.
pub fn offline_throughput(
    model: &str,
    threads: Option<usize>,
    texts: &[String],
    batch: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let options = EmbedderOptions {
        device: DeviceSpec::Cpu,
        threads,
        ..EmbedderOptions::default()
    };
    let embedder = Embedder::load(model, &options)?;
    let batches: Vec<Vec<&str>> = texts
        .chunks(batch.max(1))
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    embedder.embed(&batches[0])?;
    let started = Instant::now();
    let budget = Duration::from_secs(seconds);
    let mut done = 0;
    for batch in &batches[1..] {
        embedder.embed(batch)?;
        done += batch.len();
        if started.elapsed() >= budget {
            break;
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Starts `pulse serve` on free ports with a data directory of its own;
/// `extra` flags go after the defaults.
pub fn start_server(
    model: &str,
    threads: Option<usize>,
    extra: &[String],
) -> anyhow::Result<(Child, String, PathBuf)> {
    let data_dir = std::env::temp_dir().join(format!("pulse-bench-load-{}", std::process::id()));
    start_server_on(model, threads, extra, data_dir)
}

/// [`start_server`] on a data directory prepared beforehand.
pub fn start_server_on(
    model: &str,
    threads: Option<usize>,
    extra: &[String],
    data_dir: PathBuf,
) -> anyhow::Result<(Child, String, PathBuf)> {
    let pulse = std::env::current_exe()?
        .parent()
        .map(|dir| dir.join("pulse"))
        .filter(|p| p.is_file())
        .context("no `pulse` binary beside pulse-bench: build it (cargo build --release -p pulse-server) or pass --server")?;
    let mut command = Command::new(pulse);
    command.args([
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--device",
        "cpu",
        "--cache-capacity",
        "0",
        "--model",
        model,
    ]);
    command.arg("--data-dir").arg(&data_dir);
    if let Some(threads) = threads {
        command.args(["--threads", &threads.to_string()]);
    }
    command.args(extra);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .context("no standard output from pulse serve")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines
        .next()
        .context("pulse serve exited before listening")??;
    let address = line
        .strip_prefix("grpc listening on ")
        .with_context(|| format!("unexpected first line from pulse serve: {line}"))?
        .to_string();
    // Keep reading what the server prints, so it never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, format!("http://{address}"), data_dir))
}

async fn measure_level(
    channel: &Channel,
    clients: usize,
    seconds: u64,
    texts: &Arc<Vec<String>>,
    next: &Arc<AtomicUsize>,
    model: &str,
    offline: f64,
) -> Level {
    let warm_up = Duration::from_secs(1);
    let start = Instant::now();
    let measure_from = start + warm_up;
    let stop = measure_from + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut api = EmbeddingServiceClient::new(channel.clone());
        let (texts, next, model) = (texts.clone(), next.clone(), model.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            while Instant::now() < stop {
                let text = texts[next.fetch_add(1, Ordering::Relaxed) % texts.len()].clone();
                let sent = Instant::now();
                let request = pb::EmbedRequest {
                    inputs: vec![pb::EmbedInput {
                        text,
                        id: String::new(),
                    }],
                    model: model.clone(),
                    ..Default::default()
                };
                let ok = api.embed(request).await.is_ok();
                let done = Instant::now();
                if sent >= measure_from && done <= stop {
                    if ok {
                        latencies.push(done - sent);
                    } else {
                        failures += 1;
                    }
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        if let Ok((mut l, f)) = task.await {
            latencies.append(&mut l);
            failures += f;
        }
    }
    latencies.sort();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let texts_per_second = latencies.len() as f64 / seconds as f64;
    Level {
        clients,
        requests: latencies.len(),
        failures,
        texts_per_second,
        p50_ms: percentile(0.50),
        p95_ms: percentile(0.95),
        p99_ms: percentile(0.99),
        of_offline: texts_per_second / offline,
    }
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "Model `{}` on {} ({} cores), one short text per request, {} s per level; \
         offline reference: {:.1} texts/s in batches of {}.\n\n\
         | clients | texts/s | of offline | p50 ms | p95 ms | p99 ms | failures |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        report.model,
        report.cpu,
        report.cores,
        report.seconds,
        report.offline_texts_per_second,
        report.offline_batch
    );
    for l in &report.levels {
        out.push_str(&format!(
            "| {} | {:.1} | {:.0}% | {:.1} | {:.1} | {:.1} | {} |\n",
            l.clients,
            l.texts_per_second,
            l.of_offline * 100.0,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.failures
        ));
    }
    out
}

/// Stops a server started by [`start_server`] and removes its data.
pub fn stop_server(mut child: Child, data_dir: &std::path::Path) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(data_dir);
}
