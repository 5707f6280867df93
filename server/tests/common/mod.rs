//! Helpers shared by the server's integration tests.
#![allow(dead_code)]

pub mod fake_llm;

use clap::Parser;
use pulse_models::{DEFAULT_MODEL, DeviceSpec, Embedder, EmbedderOptions, ResolveOptions};
use pulse_proto::v1 as pb;
use pulse_proto::v1::trend_service_client::TrendServiceClient;
use pulse_server::Server;
use pulse_server::config::ServeArgs;
use std::sync::OnceLock;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Parser)]
struct TestArgs {
    #[command(flatten)]
    serve: ServeArgs,
}

/// A server with its own data directory, removed when it is dropped.
pub struct Running {
    server: Server,
    _data: tempfile::TempDir,
}

impl std::ops::Deref for Running {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl Running {
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.server.shutdown().await
    }
}

/// Starts a server on free loopback ports; its data lives in a temporary
/// directory unless `extra` names one.
pub async fn start(extra: &[&str]) -> Running {
    let running = start_unwaited(extra).await;
    wait_until_serving(&running.server).await;
    running
}

/// As [`start`], without waiting for the models to warm up (which asks over
/// plain-text gRPC).
pub async fn start_unwaited(extra: &[&str]) -> Running {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let mut args = vec!["pulse"];
    if !extra.contains(&"--data-dir") {
        args.extend(["--data-dir", &data_dir]);
    }
    args.extend([
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--device",
        "cpu",
        "--threads",
        "2",
    ]);
    args.extend_from_slice(extra);
    let args = TestArgs::parse_from(args).serve;
    let server = Server::start(&args).await.expect("server starts");
    Running {
        server,
        _data: data,
    }
}

pub async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn wait_until_serving(server: &Server) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(server).await);
    for _ in 0..600 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "pulse.v1.EmbeddingService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server never became SERVING");
}

pub fn engine() -> &'static Embedder {
    static ENGINE: OnceLock<Embedder> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let options = EmbedderOptions {
            device: DeviceSpec::Cpu,
            resolve: ResolveOptions {
                offline: true,
                progress: false,
                ..ResolveOptions::from_env()
            },
            ..EmbedderOptions::default()
        };
        Embedder::load(DEFAULT_MODEL, &options).expect("run scripts/fetch-model first")
    })
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Watches a re-cluster job to its end and checks that it succeeded.
pub async fn succeeded(
    api: &mut TrendServiceClient<Channel>,
    job: &pulse_proto::v1::Job,
) -> pulse_proto::v1::Job {
    let mut updates = api
        .watch_job(pulse_proto::v1::JobRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(job) = updates.message().await.unwrap() {
        last = Some(job);
    }
    let last = last.expect("the watch sends at least the current state");
    assert_eq!(
        last.state,
        pulse_proto::v1::JobState::Succeeded as i32,
        "job failed: {}",
        last.error
    );
    last
}

/// Every member of a trend, read `page_size` at a time, and the trend.
pub async fn members(
    api: &mut TrendServiceClient<Channel>,
    brand: &str,
    trend_id: i64,
    page_size: u32,
) -> (Vec<pulse_proto::v1::Member>, pulse_proto::v1::Trend) {
    let mut members = Vec::new();
    let mut token = String::new();
    loop {
        let page = api
            .get_trend(pulse_proto::v1::GetTrendRequest {
                brand: brand.into(),
                trend_id,
                page_size,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.members.len() <= page_size as usize);
        members.extend(page.members);
        if page.next_page_token.is_empty() {
            return (members, page.trend.expect("a page names its trend"));
        }
        token = page.next_page_token;
    }
}

/// `PULSE_PYTHON` (else `python3`) when it can `import {modules}`; `None`,
/// after printing that the caller skips and how to get such a Python,
/// otherwise.
pub fn python_with(modules: &str) -> Option<String> {
    let python = std::env::var("PULSE_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output();
    if probe.is_ok_and(|o| o.status.success()) {
        Some(python)
    } else {
        eprintln!(
            "skipped: {python} cannot import {modules} (scripts/python-client-env makes such a Python; set PULSE_PYTHON)"
        );
        None
    }
}

/// Runs `python` with `args` off the async workers; asserts it succeeded
/// and returns its standard output as JSON.
pub async fn python_json(python: String, args: Vec<String>) -> serde_json::Value {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The brand `acme`'s latest run and its trends.
pub async fn latest(api: &mut TrendServiceClient<Channel>) -> pb::ListTrendsResponse {
    api.list_trends(pb::ListTrendsRequest {
        brand: "acme".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// A server whose summaries go to `fake` as `model`, with the API key in a
/// file, and retries short enough for a test; the key's directory lives as
/// long as the caller keeps it.
pub async fn start_with_llm(
    fake: &fake_llm::FakeLlm,
    model: &str,
    extra: &[&str],
) -> (Running, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("key");
    std::fs::write(&key_file, "sk-test-key\n").unwrap();
    let base = fake.base_url();
    let mut flags = vec![
        "--llm-base-url",
        &base,
        "--llm-model",
        model,
        "--llm-api-key-file",
        key_file.to_str().unwrap(),
        "--llm-retry-base-ms",
        "50",
        "--llm-retry-max-ms",
        "2000",
    ];
    flags.extend_from_slice(extra);
    (start(&flags).await, keys)
}

pub fn llm(trend: &pb::Trend) -> &pb::LlmSummary {
    trend
        .llm_summary
        .as_ref()
        .expect("every trend has an LLM summary record")
}

/// The latest run's trends once none of their summaries is pending.
pub async fn summaries_settled(api: &mut TrendServiceClient<Channel>) -> pb::ListTrendsResponse {
    for _ in 0..600 {
        let listed = latest(api).await;
        if listed
            .trends
            .iter()
            .all(|t| llm(t).status != pb::LlmSummaryStatus::Pending as i32)
        {
            return listed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("summaries still pending after 30 s");
}

/// A re-cluster of brand `acme`'s signals between two Unix times (seconds),
/// under an idempotency key, with the service's parameters.
pub fn recluster_window(from: i64, to: i64, key: &str) -> pb::ReclusterRequest {
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    pb::ReclusterRequest {
        brand: "acme".into(),
        from: at(from),
        to: at(to),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// `trend`'s summary, asserted written by the fake provider's good answer:
/// DONE, titled after the trend's first keyword, which the prompt carried.
pub fn summarised(trend: &pb::Trend) -> &pb::LlmSummary {
    let summary = llm(trend);
    assert_eq!(
        summary.status,
        pb::LlmSummaryStatus::Done as i32,
        "{summary:?}"
    );
    assert_eq!(summary.title, format!("About {}", trend.keywords[0].term));
    summary
}
