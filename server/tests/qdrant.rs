//! The whole service on a real Qdrant (`shared/tools/qdrant`, started by
//! pulse-testkit): one node end to end, and a three-node cluster through a
//! node's crash and a full stop, counting every signal pulse acknowledged.

mod common;

use common::fake_llm::{Answer, FakeLlm};
use common::{
    channel, latest, recluster_window, start, start_with_llm, succeeded, summaries_settled,
    summarised,
};
use pulse_proto::v1 as pb;
use pulse_proto::v1::signal_service_client::SignalServiceClient;
use pulse_proto::v1::trend_service_client::TrendServiceClient;
use pulse_testkit::qdrant::{QdrantCluster, QdrantNode};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tonic::Code;

const T0: i64 = 1_763_000_000;
const TOPICS: [&str; 3] = [
    "the battery of my phone dies before lunch",
    "the coffee at the downtown cafe tastes burnt",
    "my parcel delivery arrived two weeks late",
];

fn signal(client: usize, i: usize) -> pb::Signal {
    pb::Signal {
        id: format!("c{client}-{i}"),
        brand: "acme".into(),
        source: ["x", "reddit"][i % 2].into(),
        text: format!("{} (report {client}-{i})", TOPICS[i % TOPICS.len()]),
        ts: Some(prost_types::Timestamp {
            seconds: T0 + i as i64,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The ids of `ids` the server returns.
async fn readable(
    api: &mut SignalServiceClient<tonic::transport::Channel>,
    ids: &[String],
) -> HashSet<String> {
    let mut found = HashSet::new();
    for chunk in ids.chunks(500) {
        let got = api
            .get_signals(pb::GetSignalsRequest {
                brand: "acme".into(),
                ids: chunk.to_vec(),
                model: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        found.extend(got.signals.into_iter().map(|s| s.signal.unwrap().id));
    }
    found
}

/// A search about coffee finds five signals, all about coffee.
async fn assert_finds_coffee(api: &mut SignalServiceClient<tonic::transport::Channel>) {
    let hits = api
        .search(search("coffee tasted bad"))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 5);
    for hit in &hits {
        let text = &hit.signal.as_ref().unwrap().signal.as_ref().unwrap().text;
        assert!(text.contains("coffee"), "{text}");
    }
}

/// The collections a node holds, asked over its REST API (blocking).
fn collection_names(rest: &str) -> Vec<String> {
    let listed: serde_json::Value = ureq::get(&format!("{rest}/collections"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    listed["result"]["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// One Qdrant node, started off the async workers.
async fn qdrant_node() -> QdrantNode {
    tokio::task::spawn_blocking(QdrantNode::start)
        .await
        .unwrap()
        .unwrap()
}

fn search(text: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        query: Some(pb::search_request::Query::Text(text.into())),
        filter: Some(pb::SignalFilter {
            brand: "acme".into(),
            ..Default::default()
        }),
        limit: 5,
        with_payload: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_end_to_end_on_a_qdrant_node() {
    let node = qdrant_node().await;
    let url = node.grpc_url();
    let fake = FakeLlm::start(Answer::Good).await;
    let (server, _keys) = start_with_llm(&fake, "summariser", &["--qdrant-url", &url]).await;
    let mut signals = SignalServiceClient::new(channel(&server).await);
    let batch: Vec<pb::Signal> = (0..48).map(|i| signal(0, i)).collect();
    let stored = signals
        .ingest(pb::IngestRequest {
            signals: batch,
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.stored, 48);
    assert_finds_coffee(&mut signals).await;
    let count = signals
        .count_signals(pb::CountSignalsRequest {
            filter: Some(pb::SignalFilter {
                brand: "acme".into(),
                sources: vec!["x".into()],
                ..Default::default()
            }),
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(count, 24);

    // Re-clustering reads the window from the server and keeps its runs there.
    let mut trends = TrendServiceClient::new(channel(&server).await);
    let job = trends
        .recluster(recluster_window(T0 - 60, T0 + 3600, "remote-1"))
        .await
        .unwrap()
        .into_inner();
    let done = succeeded(&mut trends, &job).await;
    assert_eq!(done.signals, 48);
    // Each new trend's LLM summary is asked for, stored on the server as a
    // record of its own, and read back with the trend.
    let listed = summaries_settled(&mut trends).await;
    assert_eq!(listed.run.unwrap().id, job.id);
    assert_eq!(listed.trends.len(), 3, "one trend per topic");
    for trend in &listed.trends {
        summarised(trend);
    }
    assert_eq!(fake.calls().len(), 3);
    server.shutdown().await.unwrap();
    drop(node);
}

/// Ingests from `clients` concurrent clients until `stop`, each request a
/// batch of `batch` signals; returns the ids of every signal pulse
/// acknowledged and how many requests failed.
async fn ingest_until(
    server: &common::Running,
    clients: usize,
    batch: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, usize)> {
    let mut workers = Vec::new();
    for client in 0..clients {
        let mut api = SignalServiceClient::new(channel(server).await);
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let (mut acknowledged, mut failed) = (Vec::new(), 0);
            let mut next = 0;
            while !stop.load(Ordering::Acquire) {
                let signals: Vec<pb::Signal> =
                    (next..next + batch).map(|i| signal(client, i)).collect();
                next += batch;
                match api
                    .ingest(pb::IngestRequest {
                        signals: signals.clone(),
                        model: String::new(),
                    })
                    .await
                {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        assert_eq!(reply.rejected, 0);
                        acknowledged.extend(signals.into_iter().map(|s| s.id));
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            (acknowledged, failed)
        }));
    }
    tokio::spawn(async move {
        let (mut acknowledged, mut failed) = (Vec::new(), 0);
        for worker in workers {
            let (ids, failures) = worker.await.unwrap();
            acknowledged.extend(ids);
            failed += failures;
        }
        (acknowledged, failed)
    })
}

/// Searches until `stop`: every answer either holds only the brand's
/// signals or is UNAVAILABLE. Returns (answered, unavailable).
fn search_until(
    mut api: SignalServiceClient<tonic::transport::Channel>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let (mut answered, mut unavailable) = (0, 0);
        while !stop.load(Ordering::Acquire) {
            match api.search(search("my phone battery")).await {
                Ok(reply) => {
                    for hit in reply.into_inner().hits {
                        let signal = hit.signal.unwrap().signal.unwrap();
                        assert_eq!(signal.brand, "acme");
                        assert!(signal.id.starts_with('c'), "{}", signal.id);
                    }
                    answered += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    unavailable += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (answered, unavailable)
    })
}

/// A line in the test's output even when the harness captures it (it
/// captures the print macros only): the fault tests' counts belong in CI's
/// log.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keeps_every_acknowledged_signal_through_crashes_and_restarts() {
    let cluster = tokio::task::spawn_blocking(|| QdrantCluster::start(3))
        .await
        .unwrap()
        .unwrap();
    let cluster = Arc::new(Mutex::new(cluster));
    let url = cluster.lock().await.grpc_url();
    let server = start(&[
        "--qdrant-url",
        &url,
        "--qdrant-shards",
        "2",
        "--qdrant-replication",
        "2",
        "--qdrant-write-consistency",
        "2",
    ])
    .await;

    // A node other than the one pulse talks to is killed mid-ingest, and
    // started again while the clients go on.
    let stop = Arc::new(AtomicBool::new(false));
    let ingest = ingest_until(&server, 3, 16, stop.clone()).await;
    let searches = search_until(
        SignalServiceClient::new(channel(&server).await),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = cluster.clone();
    tokio::task::spawn_blocking(move || killed.blocking_lock().node(1).kill())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let mut cluster = restarted.blocking_lock();
        cluster.node(1).restart()?;
        cluster.wait_formed()
    })
    .await
    .unwrap()
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Release);
    let (acknowledged, failed) = ingest.await.unwrap();
    let (answered, unavailable) = searches.await.unwrap();

    let mut api = SignalServiceClient::new(channel(&server).await);
    let found = readable(&mut api, &acknowledged).await;
    let lost = acknowledged
        .iter()
        .filter(|id| !found.contains(*id))
        .count();
    let metrics = ureq_metrics(&server).await;
    report(&format!(
        "node crash: {} signals acknowledged, {lost} lost, {failed} ingest requests failed (UNAVAILABLE); \
         {answered} searches answered, {unavailable} UNAVAILABLE; store retries {}",
        acknowledged.len(),
        metric(&metrics, "pulse_store_retries_total"),
    ));
    assert!(
        acknowledged.len() >= 48,
        "too little was ingested to mean anything"
    );
    assert_eq!(lost, 0);
    assert!(answered > 0);

    // The whole cluster stopped and started again.
    let restarted = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let mut cluster = restarted.blocking_lock();
        cluster.stop_all();
        cluster.start_all()
    })
    .await
    .unwrap()
    .unwrap();
    let mut found = HashSet::new();
    // The client reconnects on its own; the first calls may still fail.
    for _ in 0..50 {
        match api.count_signals(pb::CountSignalsRequest::default()).await {
            Ok(_) => {
                found = readable(&mut api, &acknowledged).await;
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let lost = acknowledged
        .iter()
        .filter(|id| !found.contains(*id))
        .count();
    report(&format!(
        "full restart: {} signals acknowledged, {lost} lost",
        acknowledged.len()
    ));
    assert_eq!(lost, 0);
    server.shutdown().await.unwrap();
}

async fn ureq_metrics(server: &common::Running) -> String {
    let url = format!("http://{}/metrics", server.http_addr);
    tokio::task::spawn_blocking(move || ureq::get(&url).call().unwrap().into_string().unwrap())
        .await
        .unwrap()
}

/// `pulse migrate` on a data directory the service wrote: run, run again,
/// run from the start; then the service on the Qdrant node finds the same
/// signals and trends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_moves_an_embedded_store_into_qdrant() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let before = filled_and_stopped(&["--data-dir", &data_dir]).await;

    let node = qdrant_node().await;
    let url = node.grpc_url();
    let migrate = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"))
            .args([
                "migrate",
                "--data-dir",
                &data_dir,
                "--qdrant-url",
                &url,
                "--page-size",
                "10",
            ])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let first = migrate(&[]);
    assert!(
        first.contains("signals__sentence-transformers-all-minilm-l6-v2: 48 points here, 48 on"),
        "{first}"
    );
    // Done already: nothing copied, the same counts; from the start: the
    // same points overwritten.
    assert_eq!(migrate(&[]), first);
    assert_eq!(migrate(&["--restart"]), first);

    let server = start(&["--qdrant-url", &url]).await;
    let mut signals = SignalServiceClient::new(channel(&server).await);
    assert_finds_coffee(&mut signals).await;
    assert_eq!(service_state(&server).await, before);
    server.shutdown().await.unwrap();
    drop(node);
}

/// What the service holds after [`ingest_and_recluster`]: which of its 48
/// signals are readable, and the latest run's trends (id, size).
async fn service_state(server: &common::Running) -> (HashSet<String>, Vec<(i64, u64)>) {
    let mut signals = SignalServiceClient::new(channel(server).await);
    let ids: Vec<String> = (0..48).map(|i| format!("c0-{i}")).collect();
    let found = readable(&mut signals, &ids).await;
    let mut trends = TrendServiceClient::new(channel(server).await);
    let listed = latest(&mut trends).await;
    let trend_ids = listed.trends.iter().map(|t| (t.id, t.size)).collect();
    (found, trend_ids)
}

/// Starts a server with `flags`, gives it 48 signals and one re-cluster
/// run, stops it, and returns what it held.
async fn filled_and_stopped(flags: &[&str]) -> (HashSet<String>, Vec<(i64, u64)>) {
    let server = start(flags).await;
    ingest_and_recluster(&server, "fill").await;
    let state = service_state(&server).await;
    server.shutdown().await.unwrap();
    assert_eq!(state.0.len(), 48);
    state
}

/// 48 signals and one re-cluster run through `server`.
async fn ingest_and_recluster(server: &common::Running, key: &str) {
    let mut signals = SignalServiceClient::new(channel(server).await);
    signals
        .ingest(pb::IngestRequest {
            signals: (0..48).map(|i| signal(0, i)).collect(),
            model: String::new(),
        })
        .await
        .unwrap();
    let mut trends = TrendServiceClient::new(channel(server).await);
    let job = trends
        .recluster(recluster_window(T0 - 60, T0 + 3600, key))
        .await
        .unwrap()
        .into_inner();
    succeeded(&mut trends, &job).await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The embedded store's snapshot is its data directory copied after a clean
/// shutdown (docs/operations.md, "Backups"): a server started on the copy
/// holds every signal and the same trends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_restores_from_a_copy_of_its_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let before = filled_and_stopped(&["--data-dir", &data_dir]).await;

    let backup = tempfile::tempdir().unwrap();
    copy_dir(data.path(), backup.path());
    drop(data);
    let restored = start(&["--data-dir", backup.path().to_str().unwrap()]).await;
    assert_eq!(service_state(&restored).await, before);
    restored.shutdown().await.unwrap();
}

/// Qdrant's own snapshots of every collection pulse made, taken, the
/// collections dropped, and recovered from the snapshot files: the service
/// finds every signal and the same trends again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_collections_restore_from_their_snapshots() {
    let node = qdrant_node().await;
    let url = node.grpc_url();
    let before = filled_and_stopped(&["--qdrant-url", &url]).await;

    let rest = format!("http://127.0.0.1:{}", node.http_port());
    let snapshots = node.snapshots_dir();
    tokio::task::spawn_blocking(move || {
        let names = collection_names(&rest);
        assert!(
            names.iter().any(|n| n.starts_with("signals__")),
            "{names:?}"
        );
        for name in &names {
            let taken: serde_json::Value =
                ureq::post(&format!("{rest}/collections/{name}/snapshots?wait=true"))
                    .call()
                    .unwrap()
                    .into_json()
                    .unwrap();
            let file = taken["result"]["name"].as_str().unwrap().to_string();
            ureq::delete(&format!("{rest}/collections/{name}"))
                .call()
                .unwrap();
            let location = format!("file://{}/{name}/{file}", snapshots.display());
            ureq::put(&format!(
                "{rest}/collections/{name}/snapshots/recover?wait=true"
            ))
            .send_json(serde_json::json!({ "location": location }))
            .unwrap();
        }
    })
    .await
    .unwrap();

    let restored = start(&["--qdrant-url", &url]).await;
    assert_eq!(service_state(&restored).await, before);
    restored.shutdown().await.unwrap();
    drop(node);
}

/// A node refusing writes (Qdrant's strict mode with a write rate limit of
/// one a minute, as an operator's quota or a guard against a filling disk
/// would): every ingest request is either acknowledged and stored, or fails
/// with UNAVAILABLE naming Qdrant's reason; nothing unstored is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refusing_writes_gets_clear_errors_and_no_false_acknowledgements() {
    let node = qdrant_node().await;
    let url = node.grpc_url();
    // One try: Qdrant asks to retry after 30 s, which pulse would honour.
    let server = start(&["--qdrant-url", &url, "--qdrant-attempts", "1"]).await;
    let mut api = SignalServiceClient::new(channel(&server).await);
    let batch = |from: usize| pb::IngestRequest {
        signals: (from..from + 8).map(|i| signal(0, i)).collect(),
        model: String::new(),
    };
    api.ingest(batch(0)).await.unwrap();

    let rest = format!("http://127.0.0.1:{}", node.http_port());
    tokio::task::spawn_blocking(move || {
        for name in collection_names(&rest) {
            ureq::patch(&format!("{rest}/collections/{name}"))
                .send_json(serde_json::json!({
                    "strict_mode_config": {"enabled": true, "write_rate_limit": 1}
                }))
                .unwrap();
        }
    })
    .await
    .unwrap();

    let (mut acknowledged, mut refused) =
        ((0..8).map(|i| format!("c0-{i}")).collect::<Vec<_>>(), 0);
    for from in (8..64).step_by(8) {
        match api.ingest(batch(from)).await {
            Ok(_) => acknowledged.extend((from..from + 8).map(|i| format!("c0-{i}"))),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.message().contains("Rate limiting exceeded"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
        }
    }
    assert!(refused >= 6, "the node refused {refused} of 7 requests");
    let found = readable(&mut api, &acknowledged).await;
    assert_eq!(
        found.len(),
        acknowledged.len(),
        "an acknowledged signal is missing"
    );
    let stored = api
        .count_signals(pb::CountSignalsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(
        stored as usize,
        acknowledged.len(),
        "a refused signal was stored"
    );
    report(&format!(
        "refusing node: {} signals acknowledged and stored, {refused} requests refused",
        acknowledged.len()
    ));
    server.shutdown().await.unwrap();
    drop(node);
}
