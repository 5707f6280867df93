//! `pulse.v1.TrendService` against the real server, model and embedded
//! store: re-cluster jobs, trends, stable ids, and the scheduler's CLI.

mod common;

use common::fake_llm::{Answer, FakeLlm};
use common::{
    channel, latest, llm, members, start, start_with_llm, succeeded, summaries_settled, summarised,
};
use pulse_proto::v1 as pb;
use pulse_proto::v1::embedding_service_client::EmbeddingServiceClient;
use pulse_proto::v1::signal_service_client::SignalServiceClient;
use pulse_proto::v1::trend_service_client::TrendServiceClient;
use std::collections::{HashMap, HashSet};
use std::process::Command;
use tonic::Code;
use tonic::transport::Channel;

const T0: i64 = 1_763_000_000;
/// Topic word (expected among the keywords), four ways to say it and four
/// qualifiers: 16 signals per topic.
type Topic = (&'static str, [&'static str; 4], [&'static str; 4]);
const TOPICS: [Topic; 4] = [
    (
        "battery",
        [
            "The battery dies before lunch",
            "My battery drains overnight",
            "The battery barely lasts half a day",
            "Battery life is terrible",
        ],
        [
            "on my new phone",
            "since the last update",
            "even in airplane mode",
            "after a full charge",
        ],
    ),
    (
        "coffee",
        [
            "The coffee tastes burnt",
            "My coffee was bitter and cold",
            "The coffee tasted watery",
            "The coffee beans taste stale",
        ],
        [
            "at the downtown cafe",
            "this morning",
            "from the new roastery",
            "in my usual order",
        ],
    ),
    (
        "delivery",
        [
            "The delivery arrived two weeks late",
            "My delivery got lost",
            "The courier never made the delivery",
            "Delivery took forever",
        ],
        [
            "with the parcel damaged",
            "and tracking showed nothing",
            "for my online order",
            "despite paying for express shipping",
        ],
    ),
    (
        "store",
        [
            "The new store opened downtown",
            "They opened a flagship store in the mall",
            "The grand opening of the store was packed",
            "The new store has a beautiful layout",
        ],
        [
            "this weekend",
            "with free samples for everyone",
            "and the queue went around the block",
            "right next to the train station",
        ],
    ),
];

fn topic_signals(topic: usize) -> Vec<pb::Signal> {
    let (_, phrasings, qualifiers) = TOPICS[topic];
    let mut signals = Vec::new();
    for (p, phrasing) in phrasings.iter().enumerate() {
        for (q, qualifier) in qualifiers.iter().enumerate() {
            let i = topic * 16 + p * 4 + q;
            signals.push(pb::Signal {
                id: format!("t{topic}-{p}-{q}"),
                brand: "acme".into(),
                source: ["x", "reddit"][i % 2].into(),
                text: format!("{phrasing} {qualifier}"),
                ts: Some(prost_types::Timestamp {
                    seconds: T0 + i as i64 * 60,
                    nanos: 0,
                }),
                ..Default::default()
            });
        }
    }
    signals
}

fn recluster(key: &str) -> pb::ReclusterRequest {
    pb::ReclusterRequest {
        // Leaves: a topic (16 signals) cannot split into two clusters of
        // 10, so each topic is one leaf, while excess of mass may (and with
        // two close topics did) keep two topics as one trend.
        params: Some(pb::ClusterParams {
            min_cluster_size: 10,
            min_samples: 4,
            selection: "leaf".into(),
            ..Default::default()
        }),
        ..common::recluster_window(T0 - 3600, T0 + 86_400, key)
    }
}

/// Starts a re-cluster of the test window under an idempotency key.
async fn submit(api: &mut TrendServiceClient<Channel>, key: &str) -> pb::Job {
    api.recluster(recluster(key)).await.unwrap().into_inner()
}

/// Trend id by the topic its keywords name.
fn by_topic(listed: &pb::ListTrendsResponse) -> HashMap<&'static str, i64> {
    let mut topics = HashMap::new();
    for trend in &listed.trends {
        let terms: Vec<&str> = trend.keywords.iter().map(|k| k.term.as_str()).collect();
        let topic = TOPICS
            .iter()
            .map(|(word, _, _)| *word)
            .find(|word| terms.contains(word))
            .unwrap_or_else(|| panic!("trend {} has no topic word among {terms:?}", trend.id));
        assert!(
            topics.insert(topic, trend.id).is_none(),
            "two trends about {topic}"
        );
    }
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclustering_finds_the_topics_and_keeps_their_ids() {
    let server = start(&[]).await;
    let mut signals = SignalServiceClient::new(channel(&server).await);
    let mut api = TrendServiceClient::new(channel(&server).await);
    let first_three: Vec<pb::Signal> = (0..3).flat_map(topic_signals).collect();
    let ingested = signals
        .ingest(pb::IngestRequest {
            signals: first_three.clone(),
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ingested.stored, 48);

    let job = submit(&mut api, "nightly-1").await;
    let same = submit(&mut api, "nightly-1").await;
    assert_eq!(same.id, job.id, "one idempotency key, one job");
    let done = succeeded(&mut api, &job).await;
    assert_eq!((done.signals, done.written, done.trends), (48, 48, 3));
    assert_eq!(done.run_id, job.id);

    let listed = latest(&mut api).await;
    assert_eq!(listed.run.as_ref().unwrap().id, job.id);
    let first_ids = by_topic(&listed);
    assert_eq!(first_ids.len(), 3);
    let clustered: u64 = listed.trends.iter().map(|t| t.size).sum();
    assert_eq!(clustered + listed.run.as_ref().unwrap().noise, 48);
    for trend in &listed.trends {
        assert_eq!(trend.origin, pb::TrendOrigin::New as i32);
        // No provider: the extractive summary stands alone.
        let llm = trend.llm_summary.as_ref().unwrap();
        assert_eq!(llm.status, pb::LlmSummaryStatus::NotConfigured as i32);
        assert_eq!(llm.reason, "no LLM provider is configured");
        assert_eq!(trend.centroid.len(), 384);
        assert!(!trend.representatives.is_empty());
        assert_eq!(
            trend.sources.iter().map(|s| s.count).sum::<u64>(),
            trend.size
        );
        assert_eq!(trend.buckets.iter().sum::<u64>(), trend.size);
    }

    // Members come page by page, and each is about the trend's topic.
    let battery = first_ids["battery"];
    let (battery_members, trend) = members(&mut api, "acme", battery, 5).await;
    let mut seen = HashSet::new();
    for member in battery_members {
        let text = member.signal.unwrap().signal.unwrap().text;
        assert!(text.to_lowercase().contains("battery"), "{text}");
        assert!(member.probability > 0.0);
        assert!(seen.insert(member.point_id));
    }
    assert_eq!(seen.len() as u64, trend.size);

    // The same data again keeps every id.
    let job = submit(&mut api, "nightly-2").await;
    succeeded(&mut api, &job).await;
    let listed = latest(&mut api).await;
    assert_eq!(by_topic(&listed), first_ids);
    assert!(
        listed
            .trends
            .iter()
            .all(|t| t.origin == pb::TrendOrigin::Continued as i32)
    );

    // A new topic adds exactly one trend and keeps the others.
    signals
        .ingest(pb::IngestRequest {
            signals: topic_signals(3),
            model: String::new(),
        })
        .await
        .unwrap();
    let job = submit(&mut api, "nightly-3").await;
    assert_eq!(succeeded(&mut api, &job).await.trends, 4);
    let listed = latest(&mut api).await;
    let ids = by_topic(&listed);
    for (topic, id) in &first_ids {
        assert_eq!(ids[topic], *id, "{topic} kept its id");
    }
    let store = ids["store"];
    assert!(!first_ids.values().any(|&id| id == store));
    let new = listed.trends.iter().find(|t| t.id == store).unwrap();
    assert_eq!(new.origin, pb::TrendOrigin::New as i32);

    // The scheduler's and the person's CLI against the same server.
    let pulse = env!("CARGO_BIN_EXE_pulse");
    let addr = format!("http://{}", server.grpc_addr);
    let output = Command::new(pulse)
        .args([
            "recluster",
            "--brand",
            "acme",
            "--last",
            "3650d",
            "--addr",
            &addr,
        ])
        .args([
            "--min-cluster-size",
            "10",
            "--min-samples",
            "4",
            "--selection",
            "leaf",
            "--wait",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["trends"], 4);
    let output = Command::new(pulse)
        .args(["trends", "--brand", "acme", "--addr", &addr])
        .output()
        .unwrap();
    assert!(output.status.success());
    let table = String::from_utf8_lossy(&output.stdout);
    for (topic, _, _) in TOPICS {
        assert!(table.contains(topic), "{table}");
    }
    let output = Command::new(pulse)
        .args([
            "recluster",
            "--brand",
            "acme",
            "--last",
            "1h",
            "--addr",
            &addr,
        ])
        .args(["--min-cluster-size", "1", "--wait"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("min_cluster_size"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trend_requests_get_precise_statuses() {
    let server = start(&[]).await;
    let mut api = TrendServiceClient::new(channel(&server).await);
    let mut no_brand = recluster("");
    no_brand.brand.clear();
    let mut no_window = recluster("");
    no_window.from = None;
    no_window.to = None;
    let mut backwards = recluster("");
    std::mem::swap(&mut backwards.from, &mut backwards.to);
    let mut tiny = recluster("");
    tiny.params = Some(pb::ClusterParams {
        min_cluster_size: 1,
        ..Default::default()
    });
    let mut selection = recluster("");
    selection.params = Some(pb::ClusterParams {
        selection: "kmeans".into(),
        ..Default::default()
    });
    for (request, expected) in [
        (no_brand, "`brand` is required"),
        (no_window, "give a window"),
        (backwards, "`from` is after `to`"),
        (tiny, "min_cluster_size"),
        (selection, "kmeans"),
    ] {
        let status = api.recluster(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
    }
    let mut unknown_model = recluster("");
    unknown_model.model = "no-such-model".into();
    assert_eq!(
        api.recluster(unknown_model).await.unwrap_err().code(),
        Code::NotFound
    );
    let status = api
        .get_job(pb::JobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = api
        .list_trends(pb::ListTrendsRequest {
            brand: "never-clustered".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = api
        .get_trend(pb::GetTrendRequest {
            brand: "acme".into(),
            trend_id: 1,
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = api
        .regenerate_summary(pb::RegenerateSummaryRequest {
            brand: "acme".into(),
            trend_id: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("--llm-base-url"),
        "{}",
        status.message()
    );

    // A window with no signals is a job that succeeds with no trends.
    let job = submit(&mut api, "").await;
    let done = succeeded(&mut api, &job).await;
    assert_eq!((done.signals, done.trends), (0, 0));
    assert!(latest(&mut api).await.trends.is_empty());
    server.shutdown().await.unwrap();
}

async fn ingest_topics(server: &common::Running, topics: std::ops::Range<usize>) {
    let mut signals = SignalServiceClient::new(channel(server).await);
    signals
        .ingest(pb::IngestRequest {
            signals: topics.flat_map(topic_signals).collect(),
            model: String::new(),
        })
        .await
        .unwrap();
}

async fn metrics_text(server: &common::Running) -> String {
    let url = format!("http://{}/metrics", server.http_addr);
    tokio::task::spawn_blocking(move || ureq::get(&url).call().unwrap().into_string().unwrap())
        .await
        .unwrap()
}

/// The breaker gauge of the summariser that talks to `model`.
async fn breaker_state(server: &common::Running, model: &str) -> Option<f64> {
    let label = format!("model=\"{model}\"");
    metrics_text(server)
        .await
        .lines()
        .find(|l| l.starts_with("pulse_llm_breaker_state{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_summaries_are_retried_stored_and_not_asked_twice() {
    let fake = FakeLlm::start(Answer::Good).await;
    // One of each transient trouble first: 429 (wait 1 s), 500, and one
    // malformed answer (retried once).
    fake.script(&[
        Answer::RateLimited {
            retry_after_secs: 1,
        },
        Answer::ServerError,
        Answer::Malformed,
    ]);
    let (server, _keys) = start_with_llm(
        &fake,
        "fake-model",
        &["--llm-concurrency", "1", "--llm-timeout-secs", "5"],
    )
    .await;
    ingest_topics(&server, 0..3).await;
    let mut api = TrendServiceClient::new(channel(&server).await);

    let job = submit(&mut api, "llm-1").await;
    let done = succeeded(&mut api, &job).await;
    assert_eq!(done.trends, 3);
    let listed = summaries_settled(&mut api).await;
    let topics = by_topic(&listed);
    for trend in &listed.trends {
        let summary = summarised(trend);
        assert_eq!(summary.sentiment, "negative");
        assert_eq!(
            (summary.provider.as_str(), summary.model.as_str()),
            ("openai", "fake-model")
        );
        assert_eq!(summary.prompt_version, "trend-summary/1");
        assert_eq!(summary.tokens_in % 120, 0);
        assert!(summary.tokens_in >= 120 && summary.tokens_out >= 30);
        assert!(summary.reused_from_run.is_empty());
    }
    let calls = fake.calls();
    // 3 good answers, 1 rate limited, 1 server error, 1 malformed.
    assert_eq!(calls.len(), 6);
    assert_eq!(
        listed.trends.iter().map(|t| llm(t).attempts).sum::<u32>(),
        6,
        "every call is counted against its trend"
    );
    // Retry-After (1 s) was honoured, not the 50 ms back-off.
    assert!(calls[1].at - calls[0].at >= std::time::Duration::from_millis(950));
    for call in &calls {
        assert_eq!(call.authorization.as_deref(), Some("Bearer sk-test-key"));
        assert_eq!(call.body["model"], "fake-model");
    }

    // The same data again: every trend keeps its summary, no new calls.
    let job = submit(&mut api, "llm-2").await;
    succeeded(&mut api, &job).await;
    let again = latest(&mut api).await;
    assert_eq!(by_topic(&again), topics);
    for trend in &again.trends {
        let summary = llm(trend);
        assert_eq!(summary.status, pb::LlmSummaryStatus::Done as i32);
        assert_eq!(summary.reused_from_run, done.run_id);
    }
    assert_eq!(fake.calls().len(), 6, "unchanged trends cost no calls");

    // Forced: one more call, and a malformed answer twice is a failure
    // that keeps the raw text.
    let battery = topics["battery"];
    fake.script(&[Answer::Malformed, Answer::Malformed]);
    let pending = api
        .regenerate_summary(pb::RegenerateSummaryRequest {
            brand: "acme".into(),
            trend_id: battery,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(llm(&pending).status, pb::LlmSummaryStatus::Pending as i32);
    let settled = summaries_settled(&mut api).await;
    let failed = settled.trends.iter().find(|t| t.id == battery).unwrap();
    let summary = llm(failed);
    assert_eq!(summary.status, pb::LlmSummaryStatus::Failed as i32);
    assert!(
        summary.reason.contains("malformed answer"),
        "{}",
        summary.reason
    );
    assert!(summary.raw_response.contains("Here is a summary"));
    assert_eq!(summary.attempts, 2);
    assert_eq!(fake.calls().len(), 8);
    let (_, trend) = members(&mut api, "acme", battery, 100).await;
    assert_eq!(llm(&trend).status, pb::LlmSummaryStatus::Failed as i32);

    // New data: a trend that is new or changed is asked about again, one
    // that did not change keeps its summary (the failed one is retried).
    let calls_before = fake.calls().len();
    ingest_topics(&server, 3..4).await;
    let job = submit(&mut api, "llm-3").await;
    succeeded(&mut api, &job).await;
    let grown = summaries_settled(&mut api).await;
    assert_eq!(grown.trends.len(), 4);
    assert!(
        grown
            .trends
            .iter()
            .all(|t| llm(t).status == pb::LlmSummaryStatus::Done as i32)
    );
    let fresh = grown
        .trends
        .iter()
        .filter(|t| llm(t).reused_from_run.is_empty())
        .count();
    assert!(
        fresh >= 2,
        "the new trend and the failed one need summaries"
    );
    assert_eq!(fake.calls().len() - calls_before, fresh);

    let metrics = metrics_text(&server).await;
    for line in [
        "pulse_llm_requests_total{outcome=\"ok\"}",
        "pulse_llm_requests_total{outcome=\"rate_limited\"}",
        "pulse_llm_requests_total{outcome=\"server_error\"}",
        "pulse_llm_requests_total{outcome=\"malformed\"}",
        "pulse_llm_tokens_total{direction=\"in\"}",
        "pulse_llm_request_seconds",
        "pulse_llm_queue_length",
        "pulse_llm_breaker_state",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_opens_the_breaker_until_it_recovers() {
    let fake = FakeLlm::start(Answer::ServerError).await;
    let (server, _keys) = start_with_llm(
        &fake,
        "failing-model",
        &[
            "--llm-concurrency",
            "1",
            "--llm-max-attempts",
            "2",
            "--llm-breaker-failures",
            "2",
            "--llm-breaker-cool-down-ms",
            "1500",
            "--llm-timeout-secs",
            "5",
        ],
    )
    .await;
    ingest_topics(&server, 0..2).await;
    let mut api = TrendServiceClient::new(channel(&server).await);
    let job = submit(&mut api, "failing").await;
    succeeded(&mut api, &job).await;
    let listed = summaries_settled(&mut api).await;
    for trend in &listed.trends {
        let summary = llm(trend);
        assert_eq!(summary.status, pb::LlmSummaryStatus::Failed as i32);
        assert!(
            summary.reason.contains("HTTP 500") && summary.reason.contains("after 2 attempts"),
            "{}",
            summary.reason
        );
    }
    // Two trends, two attempts each; after the first two failures the
    // breaker held the queue for its cool-down before the trial call.
    let calls = fake.calls();
    assert_eq!(calls.len(), 4);
    assert!(calls[2].at - calls[1].at >= std::time::Duration::from_millis(1400));
    assert_eq!(breaker_state(&server, "failing-model").await, Some(1.0));

    // The provider recovers: the trial call closes the breaker.
    fake.otherwise(Answer::Good);
    let trend_id = listed.trends[0].id;
    api.regenerate_summary(pb::RegenerateSummaryRequest {
        brand: "acme".into(),
        trend_id,
        ..Default::default()
    })
    .await
    .unwrap();
    let settled = summaries_settled(&mut api).await;
    let recovered = settled.trends.iter().find(|t| t.id == trend_id).unwrap();
    assert_eq!(llm(recovered).status, pb::LlmSummaryStatus::Done as i32);
    assert_eq!(breaker_state(&server, "failing-model").await, Some(0.0));
    server.shutdown().await.unwrap();
}

/// Embed round-trip times of `n` short requests, sorted; `tag` keeps the
/// texts of one call apart from another's (the cache would answer repeats).
async fn embed_latencies(
    server: &common::Running,
    n: usize,
    tag: &str,
) -> Vec<std::time::Duration> {
    let mut embed = EmbeddingServiceClient::new(channel(server).await);
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = std::time::Instant::now();
        embed
            .embed(pb::EmbedRequest {
                inputs: vec![pb::EmbedInput {
                    text: format!("is the battery any good, {tag} take {i}"),
                    id: String::new(),
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_provider_slows_neither_embedding_nor_jobs() {
    let fake = FakeLlm::start(Answer::Hang).await;
    // Long timeouts: the calls hang for the whole test.
    let (server, _keys) = start_with_llm(
        &fake,
        "hanging-model",
        &["--llm-timeout-secs", "600", "--llm-concurrency", "2"],
    )
    .await;
    ingest_topics(&server, 0..3).await;
    let before = embed_latencies(&server, 60, "before").await;

    let mut api = TrendServiceClient::new(channel(&server).await);
    let job = submit(&mut api, "hanging").await;
    let done = succeeded(&mut api, &job).await;
    assert_eq!(done.trends, 3, "the job ends when its trends are stored");
    for _ in 0..100 {
        if fake.calls().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(fake.calls().len(), 2, "both workers are stuck in a call");
    let during = embed_latencies(&server, 60, "during").await;
    let listed = latest(&mut api).await;
    assert!(
        listed
            .trends
            .iter()
            .all(|t| llm(t).status == pb::LlmSummaryStatus::Pending as i32)
    );
    // A second job is not held up by the stuck summaries either.
    let job = submit(&mut api, "hanging-2").await;
    succeeded(&mut api, &job).await;

    let p99 = |times: &[std::time::Duration]| times[times.len() * 99 / 100];
    let (quiet, busy) = (p99(&before), p99(&during));
    eprintln!("Embed p99: {quiet:?} without a provider call in flight, {busy:?} with two hanging");
    // Generous (a 2-core machine shares its cores with the test itself);
    // a blocked path would take the whole 600 s timeout.
    assert!(
        busy <= quiet * 3 + std::time::Duration::from_millis(100),
        "Embed p99 {busy:?} with the provider hanging, {quiet:?} without"
    );
    server.shutdown().await.unwrap();
}

/// The Python client example (`examples/python/pulse_client.py`) against
/// the real server, when an interpreter with grpcio and grpcio-tools is
/// around (`PULSE_PYTHON`, default `python3`); skipped, saying so, otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_ingests_and_reclusters() {
    let Some(python) = common::python_with("grpc, grpc_tools") else {
        return;
    };
    let server = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signals.jsonl");
    let lines: Vec<String> = (0..3)
        .flat_map(topic_signals)
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "brand": s.brand,
                "source": s.source,
                "text": s.text,
                "ts": s.ts.unwrap().to_string(),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/python/pulse_client.py"
    );
    let addr = server.grpc_addr.to_string();
    let file = file.to_str().unwrap();
    let args = [
        script,
        file,
        "--brand",
        "acme",
        "--addr",
        &addr,
        "--last-hours",
        "100000",
        "--min-cluster-size",
        "10",
        "--idempotency-key",
        "from-python",
        "--wait",
    ];
    let result = common::python_json(python, args.map(str::to_string).to_vec()).await;
    assert_eq!(result["stored"], 48);
    assert_eq!(result["job"]["state"], "JOB_STATE_SUCCEEDED");
    assert_eq!(result["job"]["signals"], 48);
    let trends = result["trends"].as_array().unwrap();
    assert!(!trends.is_empty());
    assert_eq!(
        trends.len() as u64,
        result["job"]["trends"].as_u64().unwrap()
    );
    let mut api = TrendServiceClient::new(channel(&server).await);
    let listed = latest(&mut api).await;
    assert_eq!(listed.trends.len(), trends.len());
    server.shutdown().await.unwrap();
}

/// all-MiniLM-L6-v2 and all-mpnet-base-v2 served by one server: each
/// model's signals land in its own collection and are searched and
/// re-clustered apart. Needs MPNet in the cache (`scripts/fetch-model
/// all-mpnet-base-v2`; the test scripts run it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_real_models_keep_their_own_signals_and_trends() {
    let server = start(&[
        "--model",
        "mini=sentence-transformers/all-MiniLM-L6-v2",
        "--model",
        "mpnet=sentence-transformers/all-mpnet-base-v2",
    ])
    .await;
    let mut signals = SignalServiceClient::new(channel(&server).await);
    let mut api = TrendServiceClient::new(channel(&server).await);
    // Battery and coffee to MiniLM, delivery and the store to MPNet.
    for (model, topics) in [("mini", 0..2), ("mpnet", 2..4)] {
        let stored = signals
            .ingest(pb::IngestRequest {
                signals: topics.flat_map(topic_signals).collect(),
                model: model.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .stored;
        assert_eq!(stored, 32, "{model}");
    }
    for (model, own_topics, dimension) in [
        ("mini", ["t0-", "t1-"], 384),
        ("mpnet", ["t2-", "t3-"], 768),
    ] {
        let hits = signals
            .search(pb::SearchRequest {
                query: Some(pb::search_request::Query::Text(
                    "my parcel came late and my phone battery is dead".into(),
                )),
                limit: 50,
                with_payload: true,
                model: model.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(
            hits.len(),
            32,
            "{model}: every signal of its collection, no other"
        );
        for hit in &hits {
            let stored = hit.signal.as_ref().unwrap();
            let id = &stored.signal.as_ref().unwrap().id;
            assert!(
                own_topics.iter().any(|t| id.starts_with(t)),
                "{model}: {id}"
            );
            assert_eq!(stored.model, model);
        }

        let job = api
            .recluster(pb::ReclusterRequest {
                model: model.into(),
                ..recluster(&format!("two-models-{model}"))
            })
            .await
            .unwrap()
            .into_inner();
        let done = succeeded(&mut api, &job).await;
        assert_eq!(done.signals, 32, "{model}");
        let listed = api
            .list_trends(pb::ListTrendsRequest {
                brand: "acme".into(),
                model: model.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let topics = by_topic(&listed);
        let expected: HashSet<&str> = match model {
            "mini" => ["battery", "coffee"].into(),
            _ => ["delivery", "store"].into(),
        };
        assert_eq!(
            topics.keys().copied().collect::<HashSet<_>>(),
            expected,
            "{model}"
        );
        for trend in &listed.trends {
            assert_eq!(trend.centroid.len(), dimension, "{model}");
        }
    }
    server.shutdown().await.unwrap();
}
