//! Starts the real server on loopback ports and talks to it with the
//! generated tonic client. Needs the default model in the cache
//! (`scripts/fetch-model`; the test scripts run it).

mod common;

use common::{channel, cosine, engine, start};
use futures::StreamExt;
use pulse_models::DEFAULT_MODEL;
use pulse_proto::v1 as pb;
use pulse_proto::v1::embedding_service_client::EmbeddingServiceClient;
use pulse_proto::v1::model_service_client::ModelServiceClient;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

fn request(texts: &[&str]) -> pb::EmbedRequest {
    pb::EmbedRequest {
        inputs: texts
            .iter()
            .enumerate()
            .map(|(i, t)| pb::EmbedInput {
                text: t.to_string(),
                id: format!("in-{i}"),
            })
            .collect(),
        ..Default::default()
    }
}

fn vector(result: &pb::EmbedResult) -> &pb::Embedding {
    match &result.outcome {
        Some(pb::embed_result::Outcome::Embedding(e)) => e,
        other => panic!("expected an embedding, got {other:?}"),
    }
}

/// The server still answers a plain request.
async fn assert_still_serving(api: &mut EmbeddingServiceClient<Channel>) {
    let fine = api
        .embed(request(&["still serving"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vector(&fine.results[0]).values.len(), 384);
}

const TEXTS: [&str; 8] = [
    "Nike's new running shoes feel amazing",
    "the coffee at this Starbucks was cold again",
    "Tesla service took three weeks to book an appointment and the car still rattles on the highway",
    "ok",
    "Delta lost my luggage",
    "IKEA meatballs",
    "Spotify raised its prices again and I am thinking about switching to another streaming service",
    "LEGO",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_get_the_engines_vectors() {
    let server = start(&[]).await;
    let channel = channel(&server).await;
    let mut tasks = Vec::new();
    for client in 0..64 {
        let mut api = EmbeddingServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            // Every client sends a different mix, so batches differ each run.
            let texts: Vec<&str> = (0..1 + client % 5)
                .map(|k| TEXTS[(client + k * 3) % TEXTS.len()])
                .collect();
            let response = api.embed(request(&texts)).await.unwrap().into_inner();
            (texts, response)
        }));
    }
    for task in tasks {
        let (texts, response) = task.await.unwrap();
        assert_eq!(response.model, DEFAULT_MODEL);
        assert_eq!(response.results.len(), texts.len());
        let direct = engine().embed(&texts).unwrap();
        for (i, (result, expected)) in response.results.iter().zip(&direct).enumerate() {
            assert_eq!(result.id, format!("in-{i}"));
            let c = cosine(&vector(result).values, expected);
            assert!(c >= 0.99999, "{}: cosine {c}", texts[i]);
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_texts_come_from_the_cache_and_options_apply() {
    let server = start(&[]).await;
    let mut api = EmbeddingServiceClient::new(channel(&server).await);
    let first = api
        .embed(request(&["cache me"]))
        .await
        .unwrap()
        .into_inner();
    assert!(!vector(&first.results[0]).cached);
    let mut again = request(&["cache me"]);
    again.normalize = Some(false);
    let second = api.embed(again).await.unwrap().into_inner();
    let hit = vector(&second.results[0]);
    assert!(hit.cached);
    assert_eq!(second.usage.unwrap().cache_hits, 1);
    let norm: f32 = hit.values.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 1e-3,
        "normalize=false gives the raw mean, norm {norm}"
    );
    assert!(cosine(&hit.values, &vector(&first.results[0]).values) > 0.99999);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_a_thousand_requests_answers_in_order() {
    let server = start(&[]).await;
    let mut api = EmbeddingServiceClient::new(channel(&server).await);
    let requests: Vec<pb::EmbedRequest> = (0..1000)
        .map(|i| pb::EmbedRequest {
            request_id: format!("r{i}"),
            ..request(&[TEXTS[i % TEXTS.len()], &format!("signal number {i}")])
        })
        .collect();
    let mut responses = api
        .embed_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seen = 0;
    while let Some(response) = responses.next().await {
        let response = response.unwrap();
        assert_eq!(response.request_id, format!("r{seen}"));
        assert_eq!(response.results.len(), 2);
        seen += 1;
    }
    assert_eq!(seen, 1000);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses() {
    let server = start(&["--max-inputs", "1000"]).await;
    let mut api = EmbeddingServiceClient::new(channel(&server).await);

    let empty = api.embed(pb::EmbedRequest::default()).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("no inputs"));

    let many: Vec<&str> = vec!["x"; 100_000];
    let huge = api.embed(request(&many)).await.unwrap_err();
    assert_eq!(huge.code(), Code::InvalidArgument);
    assert!(
        huge.message().contains("100000 inputs; the limit is 1000"),
        "{}",
        huge.message()
    );

    let unknown = api
        .embed(pb::EmbedRequest {
            model: "nobody/nothing".into(),
            ..request(&["x"])
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains(DEFAULT_MODEL));

    let long = "word ".repeat(400);
    let strict = api
        .embed(pb::EmbedRequest {
            truncate: Some(false),
            ..request(&["short one", &long])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vector(&strict.results[0]).values.len(), 384);
    match &strict.results[1].outcome {
        Some(pb::embed_result::Outcome::Error(e)) => {
            assert_eq!(e.reason, pb::item_error::Reason::TooLong as i32);
            assert!(e.message.contains("256 tokens"), "{}", e.message);
        }
        other => panic!("expected a per-item error, got {other:?}"),
    }

    let mut hurried = tonic::Request::new(request(&[&long, &long, &long, &long]));
    hurried.set_timeout(Duration::from_millis(1));
    let late = api.embed(hurried).await.unwrap_err();
    assert!(
        matches!(late.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{late:?}"
    );

    // Still serving after all of that.
    assert_still_serving(&mut api).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_keeps_serving() {
    // Room for one long request at a time; the batch waits a while for company.
    let server = start(&[
        "--max-queue-tokens",
        "600",
        "--max-wait-ms",
        "200",
        "--cache-capacity",
        "0",
    ])
    .await;
    let channel = channel(&server).await;
    let long = "brand ".repeat(300);
    let mut first = EmbeddingServiceClient::new(channel.clone());
    let mut second = EmbeddingServiceClient::new(channel.clone());
    let a = request(&[&long, &format!("{long} again")]);
    let b = request(&[&format!("{long} once more"), &format!("{long} and more")]);
    let (ra, rb) = tokio::join!(first.embed(a), second.embed(b));
    let statuses: Vec<Result<_, tonic::Status>> = vec![ra, rb];
    let refused: Vec<_> = statuses.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(
        refused.len(),
        1,
        "one of the two must be refused: {statuses:?}"
    );
    assert_eq!(refused[0].code(), Code::ResourceExhausted);
    assert!(refused[0].message().contains("queue is full"));
    assert_still_serving(&mut first).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_does_not_hurt_the_server() {
    let server = start(&[]).await;
    let channel = channel(&server).await;
    {
        let mut api = EmbeddingServiceClient::new(channel.clone());
        let long = "word ".repeat(300);
        let requests: Vec<pb::EmbedRequest> = (0..200)
            .map(|i| request(&[&format!("{i} {long}")]))
            .collect();
        let mut responses = api
            .embed_stream(futures::stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let _ = responses.next().await;
        // Dropping the response stream here cancels the call mid-way.
    }
    let mut api = EmbeddingServiceClient::new(channel);
    assert_still_serving(&mut api).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_reflection_describe_the_server() {
    let server = start(&[]).await;
    let channel = channel(&server).await;
    let mut models = ModelServiceClient::new(channel.clone());
    let listed = models
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.models.len(), 1);
    let info = &listed.models[0];
    assert_eq!(
        (info.name.as_str(), info.dimension, info.max_seq_length),
        (DEFAULT_MODEL, 384, 256)
    );
    assert!(info.is_default);
    assert_eq!(
        (
            info.device.as_str(),
            info.dtype.as_str(),
            info.pooling.as_str()
        ),
        ("cpu", "f32", "mean")
    );
    // The CPU kernels pulse chose for this CPU, never Candle's, in f32.
    assert!(
        ["AVX-512", "AVX-512 (gemm)", "AVX2", "portable"].contains(&info.kernels.as_str()),
        "{}",
        info.kernels
    );
    let default = models
        .get_model(pb::GetModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(&default, info);
    let missing = models
        .get_model(pb::GetModelRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Both reflection versions list the same services.
    macro_rules! listed_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            let mut reflection = ServerReflectionClient::new(channel.clone());
            let ask = tonic_reflection::pb::$version::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut answers = reflection
                .server_reflection_info(futures::stream::iter(vec![ask]))
                .await
                .unwrap()
                .into_inner();
            let answer = answers.next().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
                panic!("expected a service list");
            };
            list.service
                .into_iter()
                .map(|s| s.name)
                .collect::<std::collections::BTreeSet<String>>()
        }};
    }
    // Each version lists itself beside pulse's services.
    let mut names = listed_services!(v1);
    let mut alpha = listed_services!(v1alpha);
    assert!(
        names.remove("grpc.reflection.v1.ServerReflection"),
        "{names:?}"
    );
    assert!(
        alpha.remove("grpc.reflection.v1alpha.ServerReflection"),
        "{alpha:?}"
    );
    assert_eq!(alpha, names);
    for expected in [
        "pulse.v1.EmbeddingService",
        "pulse.v1.ModelService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_the_same_vectors_as_grpc() {
    let server = start(&[]).await;
    let mut api = EmbeddingServiceClient::new(channel(&server).await);
    let grpc = api.embed(request(&TEXTS[..3])).await.unwrap().into_inner();
    let base = format!("http://{}", server.http_addr);
    let texts: Vec<String> = TEXTS[..3].iter().map(|t| t.to_string()).collect();
    let (float, encoded, bad_dimensions, ready, metrics) = tokio::task::spawn_blocking(move || {
        let post = |body: serde_json::Value| match ureq::post(&format!("{base}/v1/embeddings"))
            .send_json(body)
        {
            Ok(response) => (
                response.status(),
                response.into_json::<serde_json::Value>().unwrap(),
            ),
            Err(ureq::Error::Status(code, response)) => {
                (code, response.into_json::<serde_json::Value>().unwrap())
            }
            Err(other) => panic!("{other}"),
        };
        let float = post(serde_json::json!({"input": texts, "model": DEFAULT_MODEL}));
        let encoded = post(serde_json::json!({"input": texts[0], "encoding_format": "base64"}));
        let bad = post(serde_json::json!({"input": "x", "dimensions": 128}));
        let ready = ureq::get(&format!("{base}/ready")).call().unwrap().status();
        let metrics = ureq::get(&format!("{base}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        (float, encoded, bad, ready, metrics)
    })
    .await
    .unwrap();

    assert_eq!(float.0, 200, "{}", float.1);
    assert_eq!(float.1["object"], "list");
    assert_eq!(float.1["model"], DEFAULT_MODEL);
    for (i, item) in float.1["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(item["index"], i);
        let values: Vec<f32> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert!(cosine(&values, &vector(&grpc.results[i]).values) >= 0.99999);
    }
    assert!(float.1["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.1["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert!(cosine(&decoded, &vector(&grpc.results[0]).values) >= 0.99999);

    assert_eq!(bad_dimensions.0, 400);
    assert_eq!(bad_dimensions.1["error"]["param"], "dimensions");
    assert_eq!(ready, 200);
    for name in [
        "pulse_requests_total",
        "pulse_batch_texts",
        "pulse_inference_seconds",
        "pulse_queue_tokens",
        "pulse_cache_misses_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_are_served_at_once() {
    let dir = engine().info().dir.display().to_string();
    let second = format!("local={dir}");
    let server = start(&[
        "--model",
        "mini=sentence-transformers/all-MiniLM-L6-v2",
        "--model",
        &second,
    ])
    .await;
    let channel = channel(&server).await;
    let mut models = ModelServiceClient::new(channel.clone());
    let listed = models
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<(&str, bool)> = listed
        .models
        .iter()
        .map(|m| (m.name.as_str(), m.is_default))
        .collect();
    assert_eq!(names, vec![("mini", true), ("local", false)]);
    let mut api = EmbeddingServiceClient::new(channel);
    for model in ["mini", "local", ""] {
        let response = api
            .embed(pb::EmbedRequest {
                model: model.into(),
                ..request(&["same text, two models"])
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.model,
            if model.is_empty() { "mini" } else { model }
        );
        let direct = engine().embed(&["same text, two models"]).unwrap();
        assert!(cosine(&vector(&response.results[0]).values, &direct[0]) >= 0.99999);
    }
    server.shutdown().await.unwrap();
}

/// The official `openai` package (models, float, base64 and token-id
/// embeddings, errors) and grpcio's v1alpha reflection client against the
/// real server (`server/tests/python/clients.py`), in the interpreter
/// `scripts/python-client-env` makes (`PULSE_PYTHON`); skipped, saying so,
/// where no interpreter has those packages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_grpcio_reflection_clients_work() {
    let Some(python) = common::python_with("openai, grpc_reflection") else {
        return;
    };
    let server = start(&[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/clients.py");
    let args = [
        script,
        &server.http_addr.to_string(),
        &server.grpc_addr.to_string(),
        DEFAULT_MODEL,
    ];
    let seen = common::python_json(python, args.map(str::to_string).to_vec()).await;
    eprintln!("{seen}");
    assert_eq!(seen["models"], serde_json::json!([DEFAULT_MODEL]));
    assert_eq!(seen["unknown_model"]["status"], 404);
    assert_eq!(seen["dimension"], 384);
    // [CLS] to [SEP], and the longer text's tokens.
    let text_tokens: usize = engine()
        .tokenize(&["a brand manager reads the trends of the week"])
        .into_iter()
        .map(|t| t.unwrap().len())
        .sum();
    assert_eq!(seen["usage_tokens"], 3 + text_tokens);
    assert!(seen["token_ids_vs_text"].as_f64().unwrap() > 0.99999);
    assert_eq!(seen["token_id_lists"], 2);
    assert_eq!(seen["token_ids_usage"], 3);
    assert_eq!(seen["bad_token"]["status"], 400);
    let message = seen["bad_token"]["message"].as_str().unwrap();
    assert!(
        message.contains("outside the model's vocabulary"),
        "{message}"
    );
    assert_eq!(seen["bad_input"]["param"], "input");
    let services = seen["reflection_v1alpha"].as_array().unwrap();
    for expected in ["pulse.v1.EmbeddingService", "pulse.v1.ModelService"] {
        assert!(services.iter().any(|s| s == expected), "{services:?}");
    }
    assert_eq!(
        seen["embed_methods"],
        serde_json::json!(["Embed", "EmbedStream"])
    );
    server.shutdown().await.unwrap();
}

/// A copy of the default model (files linked) whose
/// config_sentence_transformers.json names E5-style prompts.
fn model_with_prompts() -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&engine().info().dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "config_sentence_transformers.json" {
            std::os::unix::fs::symlink(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(
        copy.path().join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "passage"}"#,
    )
    .unwrap();
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_go_before_texts_and_count_as_tokens() {
    let dir = model_with_prompts();
    let model = format!("e5ish={}", dir.path().display());
    let server = start(&["--model", &model]).await;
    let channel = channel(&server).await;
    let info = ModelServiceClient::new(channel.clone())
        .get_model(pb::GetModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.default_prompt_name, "passage");
    assert_eq!(info.prompts["query"], "query: ");
    let mut api = EmbeddingServiceClient::new(channel);
    let text = "trends of the week";
    let embed = |prompt_name: Option<&str>, prompt: Option<&str>| pb::EmbedRequest {
        prompt_name: prompt_name.map(str::to_string),
        prompt: prompt.map(str::to_string),
        ..request(&[text])
    };
    let direct = |text: &str| {
        let vector = engine().embed(&[text]).unwrap().remove(0);
        let tokens = engine().tokenize(&[text]).remove(0).unwrap().len();
        (vector, tokens)
    };
    for (prompt_name, prompt, seen) in [
        (None, None, format!("passage: {text}")),
        (Some("query"), None, format!("query: {text}")),
        (
            None,
            Some("Represent this: "),
            format!("Represent this: {text}"),
        ),
        (None, Some(""), text.to_string()),
    ] {
        let response = api
            .embed(embed(prompt_name, prompt))
            .await
            .unwrap()
            .into_inner();
        let got = vector(&response.results[0]);
        let (expected, tokens) = direct(&seen);
        assert!(cosine(&got.values, &expected) >= 0.99999, "{seen}");
        assert_eq!(got.tokens as usize, tokens, "{seen}");
    }
    // The cache keeps prompted and plain texts apart.
    let again = api.embed(embed(None, Some(""))).await.unwrap().into_inner();
    assert!(vector(&again.results[0]).cached);
    let (plain, _) = direct(text);
    assert!(cosine(&vector(&again.results[0]).values, &plain) >= 0.99999);

    let unknown = api.embed(embed(Some("doc"), None)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(
        unknown.message().contains("passage, query"),
        "{}",
        unknown.message()
    );
    let both = api
        .embed(embed(Some("query"), Some("x")))
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);

    // HTTP takes the same names.
    let url = format!("http://{}/v1/embeddings", server.http_addr);
    let (named, unknown) = tokio::task::spawn_blocking(move || {
        let post = |body: serde_json::Value| match ureq::post(&url).send_json(body) {
            Ok(response) => (
                response.status(),
                response.into_json::<serde_json::Value>().unwrap(),
            ),
            Err(ureq::Error::Status(status, response)) => {
                (status, response.into_json::<serde_json::Value>().unwrap())
            }
            Err(e) => panic!("{e}"),
        };
        (
            post(serde_json::json!({"input": text, "prompt_name": "query"})),
            post(serde_json::json!({"input": text, "prompt_name": "doc"})),
        )
    })
    .await
    .unwrap();
    assert_eq!(named.0, 200);
    let values: Vec<f32> = named.1["data"][0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let (expected, tokens) = direct(&format!("query: {text}"));
    assert!(cosine(&values, &expected) >= 0.99999);
    assert_eq!(named.1["usage"]["prompt_tokens"], tokens);
    assert_eq!(unknown.0, 400);
    assert_eq!(unknown.1["error"]["param"], "prompt_name");
    server.shutdown().await.unwrap();
}
