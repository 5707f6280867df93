//! `pulse.v1.SignalService` against the real server and its embedded store.

mod common;

use common::{channel, start};
use pulse_proto::v1 as pb;
use pulse_proto::v1::signal_service_client::SignalServiceClient;
use tonic::Code;
use tonic::transport::Channel;

const BRANDS: [&str; 2] = ["nike", "starbucks"];
const SOURCES: [&str; 3] = ["x", "reddit", "news"];
const T0: i64 = 1_763_000_000;

fn signal(i: usize) -> pb::Signal {
    let brand = BRANDS[i % 2];
    pb::Signal {
        id: format!("sig-{i}"),
        brand: brand.into(),
        source: SOURCES[i % 3].into(),
        text: format!(
            "{brand} post number {i} about {}",
            ["shoes", "coffee", "prices", "service"][i % 4]
        ),
        ts: Some(prost_types::Timestamp {
            seconds: T0 + i as i64 * 60,
            nanos: 0,
        }),
        url: format!("https://example.com/{i}"),
        lang: "en".into(),
        attributes: [("campaign".to_string(), format!("c{}", i % 5))].into(),
    }
}

fn filter(brand: &str) -> Option<pb::SignalFilter> {
    Some(pb::SignalFilter {
        brand: brand.into(),
        ..Default::default()
    })
}

async fn count(api: &mut SignalServiceClient<Channel>, filter: Option<pb::SignalFilter>) -> u64 {
    api.count_signals(pb::CountSignalsRequest {
        filter,
        model: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_idempotent_and_searchable() {
    let server = start(&[]).await;
    let mut api = SignalServiceClient::new(channel(&server).await);
    let signals: Vec<pb::Signal> = (0..60).map(signal).collect();
    let response = api
        .ingest(pb::IngestRequest {
            signals: signals.clone(),
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.stored, response.rejected), (60, 0));
    let first_ids: Vec<String> = response
        .results
        .iter()
        .map(|r| r.point_id.clone())
        .collect();
    assert_eq!(count(&mut api, None).await, 60);

    // Sending the same signals again replaces them.
    let again = api
        .ingest(pb::IngestRequest {
            signals: signals[..20].to_vec(),
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.stored, 20);
    assert_eq!(again.results[0].point_id, first_ids[0]);
    assert_eq!(count(&mut api, None).await, 60);
    assert_eq!(count(&mut api, filter("nike")).await, 30);

    let hits = api
        .search(pb::SearchRequest {
            query: Some(pb::search_request::Query::Text(signals[7].text.clone())),
            filter: Some(pb::SignalFilter {
                brand: "starbucks".into(),
                sources: vec!["reddit".into(), "news".into()],
                ..Default::default()
            }),
            limit: 5,
            with_payload: true,
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 5);
    let best = hits[0].signal.as_ref().unwrap();
    assert_eq!(
        best.signal.as_ref().unwrap(),
        &signals[7],
        "the same text is its own nearest neighbour"
    );
    assert!(hits[0].score > 0.99);
    assert_eq!(best.model, "sentence-transformers/all-MiniLM-L6-v2");
    for hit in &hits {
        let s = hit.signal.as_ref().unwrap().signal.as_ref().unwrap();
        assert_eq!(s.brand, "starbucks");
        assert!(s.source == "reddit" || s.source == "news");
    }

    let window = api
        .count_signals(pb::CountSignalsRequest {
            filter: Some(pb::SignalFilter {
                ts_from: Some(prost_types::Timestamp {
                    seconds: T0 + 600,
                    nanos: 0,
                }),
                ts_to: Some(prost_types::Timestamp {
                    seconds: T0 + 1200,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(window, 11, "minutes 10 to 20, both ends included");

    let got = api
        .get_signals(pb::GetSignalsRequest {
            brand: "nike".into(),
            ids: vec!["sig-4".into(), "missing".into(), "sig-0".into()],
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .signals;
    let ids: Vec<&str> = got
        .iter()
        .map(|s| s.signal.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(ids, ["sig-4", "sig-0"]);

    let deleted = api
        .delete_signals(pb::DeleteSignalsRequest {
            brand: "nike".into(),
            ids: vec!["sig-0".into(), "sig-2".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 2);
    let deleted = api
        .delete_signals(pb::DeleteSignalsRequest {
            filter: filter("starbucks"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, 30);
    assert_eq!(count(&mut api, None).await, 28);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signals_are_rejected_one_by_one_and_nothing_partial_is_stored() {
    let server = start(&["--max-text-bytes", "200"]).await;
    let mut api = SignalServiceClient::new(channel(&server).await);
    let good = signal(1);
    let no_id = pb::Signal {
        id: String::new(),
        ..signal(2)
    };
    let empty = pb::Signal {
        text: "   ".into(),
        ..signal(3)
    };
    let long = pb::Signal {
        text: "word ".repeat(100),
        ..signal(4)
    };
    let bad_time = pb::Signal {
        ts: Some(prost_types::Timestamp {
            seconds: 1,
            nanos: -5,
        }),
        ..signal(5)
    };
    let response = api
        .ingest(pb::IngestRequest {
            signals: vec![good, no_id, empty, long, bad_time],
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((response.stored, response.rejected), (1, 4));
    let reasons: Vec<&str> = response
        .results
        .iter()
        .map(|r| r.rejection.as_str())
        .collect();
    assert_eq!(reasons[0], "");
    assert_eq!(reasons[1], "missing id");
    assert_eq!(reasons[2], "empty text");
    assert!(reasons[3].contains("the limit is 200"), "{}", reasons[3]);
    assert_eq!(reasons[4], "invalid timestamp");
    assert_eq!(count(&mut api, None).await, 1);

    let empty_request = api.ingest(pb::IngestRequest::default()).await.unwrap_err();
    assert_eq!(empty_request.code(), Code::InvalidArgument);

    let search =
        |query: pb::search_request::Query, filter: Option<pb::SignalFilter>| pb::SearchRequest {
            query: Some(query),
            filter,
            limit: 5,
            with_payload: false,
            model: String::new(),
        };
    let short = api
        .search(search(
            pb::search_request::Query::Vector(pb::QueryVector {
                values: vec![0.1; 5],
            }),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(short.message().contains("makes 384"), "{}", short.message());
    let mut nan = vec![0.1; 384];
    nan[3] = f32::NAN;
    let nan = api
        .search(search(
            pb::search_request::Query::Vector(pb::QueryVector { values: nan }),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(nan.code(), Code::InvalidArgument);
    let reversed = api
        .search(search(
            pb::search_request::Query::Text("shoes".into()),
            Some(pb::SignalFilter {
                ts_from: Some(prost_types::Timestamp {
                    seconds: 200,
                    nanos: 0,
                }),
                ts_to: Some(prost_types::Timestamp {
                    seconds: 100,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        ))
        .await
        .unwrap_err();
    assert_eq!(reversed.code(), Code::InvalidArgument);
    let unknown_brand = api
        .search(search(
            pb::search_request::Query::Text("shoes".into()),
            filter("nobody"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(unknown_brand.hits.is_empty());
    let everything = api
        .delete_signals(pb::DeleteSignalsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(everything.code(), Code::InvalidArgument);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_signals_is_summarised_and_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let server = start(&["--data-dir", &data_dir]).await;
    let mut api = SignalServiceClient::new(channel(&server).await);
    let mut signals: Vec<pb::Signal> = (0..600).map(signal).collect();
    signals[10].id.clear();
    let summary = api
        .ingest_stream(futures::stream::iter(signals))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.stored, summary.rejected), (599, 1));
    assert_eq!(summary.rejections[0].rejection, "missing id");
    server.shutdown().await.unwrap();

    let restarted = start(&["--data-dir", &data_dir]).await;
    let mut api = SignalServiceClient::new(channel(&restarted).await);
    assert_eq!(count(&mut api, None).await, 599);
    restarted.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_qdrant_server_is_unavailable_and_embedding_goes_on() {
    // Nothing listens on port 1 of loopback: every connection is refused.
    let server = start(&[
        "--qdrant-url",
        "http://127.0.0.1:1",
        "--qdrant-attempts",
        "2",
    ])
    .await;
    let channel = channel(&server).await;
    let mut api = SignalServiceClient::new(channel.clone());
    let refused = api
        .ingest(pb::IngestRequest {
            signals: vec![signal(1), signal(2)],
            model: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("qdrant"),
        "{}",
        refused.message()
    );
    let counted = api
        .count_signals(pb::CountSignalsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(counted.code(), Code::Unavailable);

    let mut embeddings =
        pulse_proto::v1::embedding_service_client::EmbeddingServiceClient::new(channel);
    let response = embeddings
        .embed(pb::EmbedRequest {
            inputs: vec![pb::EmbedInput {
                text: "still embedding".into(),
                id: String::new(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), 1);
    server.shutdown().await.unwrap();
}
