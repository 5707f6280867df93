//! `pulse-bench storm`: a bounded flood of valid and invalid requests at high
//! concurrency against a `pulse serve` it starts on loopback. Every answer
//! must carry the status its request calls for, the server must still serve
//! afterwards, and its memory is sampled throughout. Exits non-zero on any
//! unexpected answer.

use crate::load::{start_server, stop_server};
use crate::{cpu_name, write_report};
use anyhow::{Context, bail};
use pulse_bench::memory::rss_mib;
use pulse_models::DEFAULT_MODEL;
use pulse_proto::v1 as pb;
use pulse_proto::v1::embedding_service_client::EmbeddingServiceClient;
use pulse_proto::v1::signal_service_client::SignalServiceClient;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::Request;
use tonic::transport::Channel;

/// The server's limits during the storm, small so that invalid requests are
/// cheap to make.
const MAX_INPUTS: usize = 16;
const MAX_MESSAGE_BYTES: usize = 65_536;
const KEY: &str = "sk-storm";

#[derive(clap::Args)]
pub struct StormArgs {
    #[arg(long, default_value = "10000")]
    requests: usize,
    #[arg(long, default_value = "256")]
    concurrency: usize,
    /// Stop sending after this long (the report says how many were sent).
    #[arg(long, default_value = "600")]
    timeout_seconds: u64,
    /// CPU threads for the server's forward pass [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// Where storm.json and storm.md are written.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
}

/// The kinds of request sent, in turn, and what each must get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Kind {
    Embed,
    Ingest,
    TooLongNotTruncated,
    NoInputs,
    TooManyInputs,
    UnknownModel,
    Oversized,
    NoKey,
    OtherBrand,
}

const KINDS: [Kind; 9] = [
    Kind::Embed,
    Kind::Ingest,
    Kind::TooLongNotTruncated,
    Kind::NoInputs,
    Kind::TooManyInputs,
    Kind::UnknownModel,
    Kind::Oversized,
    Kind::NoKey,
    Kind::OtherBrand,
];

impl Kind {
    /// The answer expected: a status code, or `Ok` (`item error` for a
    /// reply whose one item failed).
    fn expected(self) -> &'static [&'static str] {
        match self {
            // A full queue is back-pressure, not a failure.
            Kind::Embed | Kind::Ingest => &["Ok", "ResourceExhausted"],
            Kind::TooLongNotTruncated => &["item error"],
            Kind::NoInputs | Kind::TooManyInputs => &["InvalidArgument"],
            Kind::UnknownModel => &["NotFound"],
            Kind::Oversized => &["OutOfRange"],
            Kind::NoKey => &["Unauthenticated"],
            Kind::OtherBrand => &["PermissionDenied"],
        }
    }
}

#[derive(Serialize)]
struct Outcomes {
    kind: Kind,
    expected: Vec<&'static str>,
    answers: BTreeMap<String, usize>,
    unexpected: usize,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    cores: usize,
    requests_sent: usize,
    concurrency: usize,
    seconds: f64,
    requests_per_second: f64,
    outcomes: Vec<Outcomes>,
    unexpected: usize,
    rss_start_mib: f64,
    rss_peak_mib: f64,
    rss_end_mib: f64,
    serving_after: bool,
}

pub fn run(args: StormArgs) -> anyhow::Result<()> {
    if args.requests == 0 || args.concurrency == 0 {
        bail!("--requests and --concurrency must be at least 1");
    }
    let data = scratch_dir()?;
    let keys = data.join("keys");
    std::fs::write(&keys, format!("{KEY} storm\n"))?;
    let extra: Vec<String> = [
        "--api-key-file",
        keys.to_str().context("a UTF-8 temporary path")?,
        "--max-inputs",
        &MAX_INPUTS.to_string(),
        "--max-message-bytes",
        &MAX_MESSAGE_BYTES.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (child, address, data_dir) = start_server(&args.model, args.threads, &extra)?;
    let pid = child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(storm(&args, &address, pid));
    stop_server(child, &data_dir);
    let _ = std::fs::remove_dir_all(&data);
    let report = result?;
    let unexpected = report.unexpected;
    let serving = report.serving_after;
    write_report(&args.out_dir, "storm", &report, &markdown(&report))?;
    if unexpected > 0 || !serving {
        bail!("{unexpected} unexpected answers; serving afterwards: {serving}");
    }
    Ok(())
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pulse-bench-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn storm(args: &StormArgs, address: &str, pid: u32) -> anyhow::Result<Report> {
    // A few connections, each multiplexing many calls, as a pool of clients would.
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(Channel::from_shared(address.to_string())?.connect().await?);
    }
    wait_until_serving(&channels[0]).await?;
    let rss_start = rss_mib(pid).unwrap_or(0.0);
    let peak = Arc::new(AtomicU64::new(rss_start.to_bits()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(rss) = rss_mib(pid) {
                    peak.fetch_max(rss.to_bits(), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let channel = channels[worker % channels.len()].clone();
        let (next, total) = (next.clone(), args.requests);
        workers.push(tokio::spawn(async move {
            let mut answers: Vec<(Kind, String)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    break;
                }
                let kind = KINDS[i % KINDS.len()];
                answers.push((kind, send(&channel, kind, i).await));
            }
            answers
        }));
    }
    let mut by_kind: BTreeMap<Kind, BTreeMap<String, usize>> = BTreeMap::new();
    let mut sent = 0;
    for worker in workers {
        for (kind, answer) in worker.await? {
            *by_kind.entry(kind).or_default().entry(answer).or_default() += 1;
            sent += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let serving_after = matches!(
        send(&channels[0], Kind::Embed, usize::MAX).await.as_str(),
        "Ok"
    );
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let outcomes: Vec<Outcomes> = by_kind
        .into_iter()
        .map(|(kind, answers)| {
            let unexpected = answers
                .iter()
                .filter(|(answer, _)| !kind.expected().contains(&answer.as_str()))
                .map(|(_, n)| n)
                .sum();
            Outcomes {
                kind,
                expected: kind.expected().to_vec(),
                answers,
                unexpected,
            }
        })
        .collect();
    Ok(Report {
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        requests_sent: sent,
        concurrency: args.concurrency,
        seconds,
        requests_per_second: sent as f64 / seconds,
        unexpected: outcomes.iter().map(|o| o.unexpected).sum(),
        outcomes,
        rss_start_mib: rss_start,
        rss_peak_mib: f64::from_bits(peak.load(Ordering::Relaxed)),
        rss_end_mib: rss_mib(pid).unwrap_or(0.0),
        serving_after,
    })
}

async fn wait_until_serving(channel: &Channel) -> anyhow::Result<()> {
    for _ in 0..1200 {
        if send(channel, Kind::Embed, usize::MAX).await == "Ok" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server never answered an embedding")
}

fn keyed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {KEY}").parse().expect("ASCII"),
    );
    request
}

fn text(i: usize) -> String {
    format!("storm signal {i}: the delivery was late again and support never answered")
}

fn embed_request(texts: Vec<String>, model: &str, truncate: Option<bool>) -> pb::EmbedRequest {
    pb::EmbedRequest {
        inputs: texts
            .into_iter()
            .map(|text| pb::EmbedInput {
                text,
                id: String::new(),
            })
            .collect(),
        model: model.to_string(),
        truncate,
        ..Default::default()
    }
}

/// Sends request `i` of `kind`; the answer as `Ok`, `item error` or the
/// status code's name.
async fn send(channel: &Channel, kind: Kind, i: usize) -> String {
    let mut embed = EmbeddingServiceClient::new(channel.clone());
    let mut signals = SignalServiceClient::new(channel.clone());
    let ingest = |brand: &str| pb::IngestRequest {
        signals: vec![pb::Signal {
            id: format!("storm-{i}"),
            brand: brand.to_string(),
            source: "storm".into(),
            text: text(i),
            ..Default::default()
        }],
        model: String::new(),
    };
    match kind {
        Kind::Embed => match embed
            .embed(keyed(embed_request(vec![text(i)], "", None)))
            .await
        {
            Ok(_) => "Ok".into(),
            Err(status) => status_name(&status),
        },
        Kind::Ingest => match signals.ingest(keyed(ingest("storm"))).await {
            Ok(reply) if reply.get_ref().stored == 1 => "Ok".into(),
            Ok(_) => "rejected".into(),
            Err(status) => status_name(&status),
        },
        Kind::TooLongNotTruncated => {
            let long = "word ".repeat(600);
            match embed
                .embed(keyed(embed_request(vec![long], "", Some(false))))
                .await
            {
                Ok(reply) => match reply
                    .get_ref()
                    .results
                    .first()
                    .and_then(|r| r.outcome.as_ref())
                {
                    Some(pb::embed_result::Outcome::Error(_)) => "item error".into(),
                    _ => "Ok".into(),
                },
                Err(status) => status_name(&status),
            }
        }
        Kind::NoInputs => result(
            embed
                .embed(keyed(embed_request(Vec::new(), "", None)))
                .await,
        ),
        Kind::TooManyInputs => {
            let texts = (0..=MAX_INPUTS).map(|j| text(i * 100 + j)).collect();
            result(embed.embed(keyed(embed_request(texts, "", None))).await)
        }
        Kind::UnknownModel => result(
            embed
                .embed(keyed(embed_request(vec![text(i)], "no-such-model", None)))
                .await,
        ),
        Kind::Oversized => {
            let huge = "x".repeat(MAX_MESSAGE_BYTES * 2);
            result(
                embed
                    .embed(keyed(embed_request(vec![huge], "", None)))
                    .await,
            )
        }
        Kind::NoKey => result(
            embed
                .embed(Request::new(embed_request(vec![text(i)], "", None)))
                .await,
        ),
        Kind::OtherBrand => result(signals.ingest(keyed(ingest("not-storm"))).await),
    }
}

fn result<T>(reply: Result<T, tonic::Status>) -> String {
    match reply {
        Ok(_) => "Ok".into(),
        Err(status) => status_name(&status),
    }
}

fn status_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "{} requests, {} at a time, in {:.1} s ({:.0}/s) against `pulse serve` on {} ({} cores, \
         shared with the clients); server memory {:.0} MiB at the start, {:.0} MiB at the peak, \
         {:.0} MiB at the end; serving afterwards: {}.\n\n\
         | request | expected | answers | unexpected |\n| --- | --- | --- | ---: |\n",
        report.requests_sent,
        report.concurrency,
        report.seconds,
        report.requests_per_second,
        report.cpu,
        report.cores,
        report.rss_start_mib,
        report.rss_peak_mib,
        report.rss_end_mib,
        if report.serving_after { "yes" } else { "no" },
    );
    for o in &report.outcomes {
        let answers: Vec<String> = o
            .answers
            .iter()
            .map(|(a, n)| format!("{a} × {n}"))
            .collect();
        out.push_str(&format!(
            "| {:?} | {} | {} | {} |\n",
            o.kind,
            o.expected.join(" or "),
            answers.join(", "),
            o.unexpected
        ));
    }
    out
}
