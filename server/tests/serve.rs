//! `pulse serve` as a process: addresses on standard output, a TOML file,
//! and SIGTERM with requests in flight. Needs the default model in the cache.

use pulse_proto::v1 as pb;
use pulse_proto::v1::embedding_service_client::EmbeddingServiceClient;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Running {
    child: Child,
    grpc: String,
    http: String,
    _data: tempfile::TempDir,
}

fn serve(extra: &[&str]) -> Running {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--device",
            "cpu",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("pulse serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut address = |prefix: &str| {
        let line = lines.next().expect("an address line").unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected line {line}"))
            .to_string()
    };
    let grpc = address("grpc listening on ");
    let http = address("http listening on ");
    Running {
        child,
        grpc,
        http,
        _data: data,
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_every_accepted_request_then_exits() {
    let mut server = serve(&["--max-batch-texts", "4"]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let long = "a long brand signal about shoes and coffee ".repeat(40);
    let mut calls = Vec::new();
    for i in 0..16 {
        let mut api = EmbeddingServiceClient::new(channel.clone());
        let text = format!("{i} {long}");
        calls.push(tokio::spawn(async move {
            api.embed(pb::EmbedRequest {
                inputs: vec![
                    pb::EmbedInput {
                        text,
                        id: i.to_string()
                    };
                    4
                ],
                ..Default::default()
            })
            .await
        }));
    }
    // Let the requests reach the server, then ask it to stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(&server.child);
    for call in calls {
        let response = call.await.unwrap().expect("accepted requests are answered");
        assert_eq!(response.into_inner().results.len(), 4);
    }
    let status = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn settings_come_from_a_toml_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pulse.toml");
    std::fs::write(
        &file,
        "max-inputs = 3\nmodel = [\"mini=sentence-transformers/all-MiniLM-L6-v2\"]\n",
    )
    .unwrap();
    let mut server = serve(&["--config", file.to_str().unwrap()]);
    let body = serde_json::json!({"input": ["a", "b", "c", "d"], "model": "mini"});
    let refused = match ureq::post(&format!("http://{}/v1/embeddings", server.http)).send_json(body)
    {
        Err(ureq::Error::Status(code, response)) => (code, response.into_string().unwrap()),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused.0, 400);
    assert!(refused.1.contains("the limit is 3"), "{}", refused.1);
    terminate(&server.child);
    assert!(server.child.wait().unwrap().success());
}
