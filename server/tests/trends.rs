//! `pulse.v1.TrendService` against the real server, model and embedded
//! store: re-cluster jobs, trends, stable ids, and the scheduler's CLI.

mod common;

use common::{channel, members, start, succeeded};
use pulse_proto::v1 as pb;
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
        brand: "acme".into(),
        from: Some(prost_types::Timestamp {
            seconds: T0 - 3600,
            nanos: 0,
        }),
        to: Some(prost_types::Timestamp {
            seconds: T0 + 86_400,
            nanos: 0,
        }),
        // Leaves: a topic (16 signals) cannot split into two clusters of
        // 10, so each topic is one leaf, while excess of mass may (and with
        // two close topics did) keep two topics as one trend.
        params: Some(pb::ClusterParams {
            min_cluster_size: 10,
            min_samples: 4,
            selection: "leaf".into(),
            ..Default::default()
        }),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// Starts a re-cluster of the test window under an idempotency key.
async fn submit(api: &mut TrendServiceClient<Channel>, key: &str) -> pb::Job {
    api.recluster(recluster(key)).await.unwrap().into_inner()
}

async fn latest(api: &mut TrendServiceClient<Channel>) -> pb::ListTrendsResponse {
    api.list_trends(pb::ListTrendsRequest {
        brand: "acme".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
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

    // A window with no signals is a job that succeeds with no trends.
    let job = submit(&mut api, "").await;
    let done = succeeded(&mut api, &job).await;
    assert_eq!((done.signals, done.trends), (0, 0));
    assert!(latest(&mut api).await.trends.is_empty());
    server.shutdown().await.unwrap();
}
