//! API keys against the real server: no key, a wrong key, a key limited to
//! other brands, over gRPC and HTTP; probes stay open.

mod common;

use common::{channel, start};
use pulse_proto::v1 as pb;
use pulse_proto::v1::embedding_service_client::EmbeddingServiceClient;
use pulse_proto::v1::signal_service_client::SignalServiceClient;
use pulse_proto::v1::trend_service_client::TrendServiceClient;
use tonic::{Code, Request};

fn with_key<T>(message: T, key: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    request
}

fn embed() -> pb::EmbedRequest {
    pb::EmbedRequest {
        inputs: vec![pb::EmbedInput {
            text: "keys please".into(),
            id: String::new(),
        }],
        ..Default::default()
    }
}

fn ingest(brand: &str) -> pb::IngestRequest {
    pb::IngestRequest {
        signals: vec![pb::Signal {
            id: "1".into(),
            brand: brand.into(),
            text: "The battery dies before lunch".into(),
            ..Default::default()
        }],
        model: String::new(),
    }
}

fn search(brand: &str) -> pb::SearchRequest {
    pb::SearchRequest {
        query: Some(pb::search_request::Query::Text("battery".into())),
        filter: Some(pb::SignalFilter {
            brand: brand.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn recluster(brand: &str) -> pb::ReclusterRequest {
    pb::ReclusterRequest {
        brand: brand.into(),
        last: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_and_brands_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# test keys\nsk-admin\nsk-acme acme\n").unwrap();
    let server = start(&["--api-key-file", keys.to_str().unwrap()]).await;
    let mut embedding = EmbeddingServiceClient::new(channel(&server).await);
    let mut signals = SignalServiceClient::new(channel(&server).await);
    let mut trends = TrendServiceClient::new(channel(&server).await);

    for (key, message) in [
        (None, "an API key is required"),
        (Some("sk-wrong"), "unknown API key"),
    ] {
        let status = embedding.embed(with_key(embed(), key)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.message().contains(message), "{}", status.message());
        let status = signals
            .ingest(with_key(ingest("acme"), key))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    assert!(
        embedding
            .embed(with_key(embed(), Some("sk-acme")))
            .await
            .is_ok()
    );

    // A key limited to acme: acme yes, anything else (or no brand) no.
    let acme = Some("sk-acme");
    let stored = signals
        .ingest(with_key(ingest("acme"), acme))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.stored, 1);
    for status in [
        signals
            .ingest(with_key(ingest("globex"), acme))
            .await
            .unwrap_err(),
        signals
            .search(with_key(search("globex"), acme))
            .await
            .unwrap_err(),
        signals
            .search(with_key(search(""), acme))
            .await
            .unwrap_err(),
        signals
            .count_signals(with_key(pb::CountSignalsRequest::default(), acme))
            .await
            .unwrap_err(),
        signals
            .get_signals(with_key(
                pb::GetSignalsRequest {
                    brand: "globex".into(),
                    ids: vec!["1".into()],
                    ..Default::default()
                },
                acme,
            ))
            .await
            .unwrap_err(),
        trends
            .recluster(with_key(recluster("globex"), acme))
            .await
            .unwrap_err(),
        trends
            .list_trends(with_key(
                pb::ListTrendsRequest {
                    brand: "globex".into(),
                    ..Default::default()
                },
                acme,
            ))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{}",
            status.message()
        );
    }
    let hits = signals
        .search(with_key(search("acme"), acme))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hits.hits.len(), 1);
    assert!(
        trends
            .recluster(with_key(recluster("acme"), acme))
            .await
            .is_ok()
    );
    // An unrestricted key reaches every brand.
    let admin = Some("sk-admin");
    assert_eq!(
        signals
            .ingest(with_key(ingest("globex"), admin))
            .await
            .unwrap()
            .into_inner()
            .stored,
        1
    );

    // Health for probes needs no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&server).await);
    assert!(
        health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
    );

    // HTTP: the API wants a key, the probes and metrics do not.
    let base = format!("http://{}", server.http_addr);
    let statuses = tokio::task::spawn_blocking(move || {
        let post = |key: Option<&str>| {
            let mut request = ureq::post(&format!("{base}/v1/embeddings"));
            if let Some(key) = key {
                request = request.set("authorization", &format!("Bearer {key}"));
            }
            match request.send_json(serde_json::json!({"input": "hello"})) {
                Ok(response) => response.status(),
                Err(ureq::Error::Status(code, _)) => code,
                Err(err) => panic!("{err}"),
            }
        };
        let get = |path: &str| ureq::get(&format!("{base}{path}")).call().unwrap().status();
        (
            post(None),
            post(Some("sk-wrong")),
            post(Some("sk-admin")),
            get("/health"),
            get("/metrics"),
        )
    })
    .await
    .unwrap();
    assert_eq!(statuses, (401, 401, 200, 200, 200));

    // The CLI clients send --api-key (or PULSE_API_KEY).
    let addr = format!("http://{}", server.grpc_addr);
    let outputs = tokio::task::spawn_blocking(move || {
        let recluster = |key: Option<&str>| {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pulse"));
            command
                .args(["recluster", "--brand", "acme", "--last", "1h", "--wait"])
                .args(["--addr", &addr])
                .env_remove("PULSE_API_KEY");
            if let Some(key) = key {
                command.env("PULSE_API_KEY", key);
            }
            command.output().unwrap()
        };
        (recluster(None), recluster(Some("sk-acme")))
    })
    .await
    .unwrap();
    let (without, with) = outputs;
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("API key"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    server.shutdown().await.unwrap();
}

/// A key's requests and tokens per second: over the limit a call gets
/// `RESOURCE_EXHAUSTED` with retry info (gRPC) or 429 with `Retry-After`
/// (HTTP), and after that wait it is served again. An oversized message is
/// refused with its own status, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_refuse_with_retry_info_and_recover() {
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        "sk-slow requests_per_second=1\nsk-tokens tokens_per_second=12\nsk-free requests_per_second=0\n",
    )
    .unwrap();
    let server = start(&[
        "--api-key-file",
        keys.to_str().unwrap(),
        "--key-requests-per-second",
        "50",
        "--max-message-bytes",
        "4096",
    ])
    .await;
    let mut embedding = EmbeddingServiceClient::new(channel(&server).await);

    // One request a second: the second call at once is refused...
    embedding
        .embed(with_key(embed(), Some("sk-slow")))
        .await
        .unwrap();
    let status = embedding
        .embed(with_key(embed(), Some("sk-slow")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("1 requests per second"),
        "{}",
        status.message()
    );
    let wait = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("retry info");
    assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(1));
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    // ...and served once the wait has passed.
    tokio::time::sleep(wait).await;
    embedding
        .embed(with_key(embed(), Some("sk-slow")))
        .await
        .unwrap();

    // Twelve tokens a second: "count these tokens" is 5 with the special
    // tokens (a text new to the cache: hits cost nothing), and a text of 20
    // words needs more than what is left after it.
    let mut short = embed();
    short.inputs[0].text = "count these tokens".into();
    embedding
        .embed(with_key(short, Some("sk-tokens")))
        .await
        .unwrap();
    let mut long = embed();
    long.inputs[0].text = "word ".repeat(20);
    let status = embedding
        .embed(with_key(long.clone(), Some("sk-tokens")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("tokens per second"),
        "{}",
        status.message()
    );
    let wait = status
        .get_details_retry_info()
        .and_then(|i| i.retry_delay)
        .unwrap();
    tokio::time::sleep(wait).await;
    embedding
        .embed(with_key(long, Some("sk-tokens")))
        .await
        .unwrap();

    // Over HTTP: 429 with Retry-After, for the slow key.
    let base = format!("http://{}", server.http_addr);
    let (first, second) = tokio::task::spawn_blocking(move || {
        wait_for_the_bucket_to_refill();
        let post = || match ureq::post(&format!("{base}/v1/embeddings"))
            .set("authorization", "Bearer sk-slow")
            .send_json(serde_json::json!({"input": "hello"}))
        {
            Ok(response) => (response.status(), None),
            Err(ureq::Error::Status(code, response)) => {
                (code, response.header("retry-after").map(str::to_string))
            }
            Err(err) => panic!("{err}"),
        };
        (post(), post())
    })
    .await
    .unwrap();
    assert_eq!(first.0, 200);
    assert_eq!(second, (429, Some("1".to_string())));

    // The default (50 a second) does not get in the way; 0 lifts it.
    for _ in 0..3 {
        embedding
            .embed(with_key(embed(), Some("sk-free")))
            .await
            .unwrap();
    }

    // A message over --max-message-bytes is refused as such, and the server
    // keeps serving.
    let mut huge = embed();
    huge.inputs[0].text = "x".repeat(10_000);
    let status = embedding
        .embed(with_key(huge, Some("sk-free")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("message length too large"),
        "{}",
        status.message()
    );
    embedding
        .embed(with_key(embed(), Some("sk-free")))
        .await
        .unwrap();
    let base = format!("http://{}", server.http_addr);
    let too_large = tokio::task::spawn_blocking(move || {
        match ureq::post(&format!("{base}/v1/embeddings"))
            .set("authorization", "Bearer sk-free")
            .send_json(serde_json::json!({"input": "x".repeat(10_000)}))
        {
            Ok(response) => response.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(err) => panic!("{err}"),
        }
    })
    .await
    .unwrap();
    assert_eq!(too_large, 413);
    server.shutdown().await.unwrap();
}

/// The slow key's bucket was emptied by the gRPC calls above; a second's
/// wait refills it before the HTTP pair.
fn wait_for_the_bucket_to_refill() {
    std::thread::sleep(std::time::Duration::from_millis(1100));
}
