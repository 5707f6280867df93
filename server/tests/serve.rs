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
    /// Holds the data directory and the server's standard error.
    data: tempfile::TempDir,
}

impl Running {
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.data.path().join("stderr.log")).unwrap_or_default()
    }

    /// Waits for the exit and asserts it was clean, showing the logs if not.
    fn assert_clean_exit(&mut self) {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}\n{}", self.stderr());
    }
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
        .args(if extra.contains(&"--data-dir") {
            vec![]
        } else {
            vec!["--data-dir".to_string(), data.path().display().to_string()]
        })
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.path().join("stderr.log")).unwrap())
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
        data,
    }
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
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
    tokio::task::spawn_blocking(move || server.assert_clean_exit())
        .await
        .unwrap();
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
    server.assert_clean_exit();
}

fn signal(i: usize) -> pb::Signal {
    pb::Signal {
        id: format!("s{i}"),
        brand: if i.is_multiple_of(2) {
            "nike"
        } else {
            "adidas"
        }
        .into(),
        source: "x".into(),
        text: format!("signal {i}: running shoes, sizes and prices"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_signals_survive_sigkill() {
    use pulse_proto::v1::signal_service_client::SignalServiceClient;
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let mut server = serve(&["--data-dir", &data_dir]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let acked = acked.clone();
        let mut api = SignalServiceClient::new(channel);
        tokio::spawn(async move {
            for batch in 0.. {
                let signals: Vec<pb::Signal> = (batch * 20..batch * 20 + 20).map(signal).collect();
                match api
                    .ingest(pb::IngestRequest {
                        signals: signals.clone(),
                        model: String::new(),
                    })
                    .await
                {
                    Ok(response) => {
                        let mut acked = acked.lock().unwrap();
                        for (s, r) in signals.iter().zip(response.into_inner().results) {
                            if r.stored {
                                acked.push((s.brand.clone(), s.id.clone()));
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
        })
    };
    // Kill it once some batches are acknowledged and more are on the way.
    while acked.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(&server.child, "-KILL");
    server.child.wait().unwrap();
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();

    let restarted = serve(&["--data-dir", &data_dir]);
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", restarted.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut api = SignalServiceClient::new(channel);
    for brand in ["nike", "adidas"] {
        let ids: Vec<String> = acked
            .iter()
            .filter(|(b, _)| b == brand)
            .map(|(_, id)| id.clone())
            .collect();
        let found = api
            .get_signals(pb::GetSignalsRequest {
                brand: brand.into(),
                ids: ids.clone(),
                model: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .signals;
        assert_eq!(
            found.len(),
            ids.len(),
            "every acknowledged {brand} signal is there after SIGKILL"
        );
    }
    let mut restarted = restarted;
    terminate(&restarted.child);
    restarted.assert_clean_exit();
}

#[test]
fn ingest_and_search_from_the_command_line() {
    let mut server = serve(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signals.jsonl");
    let mut lines: Vec<String> = (0..40)
        .map(|i| {
            serde_json::json!({"id": format!("c{i}"), "brand": if i % 2 == 0 { "nike" } else { "puma" },
                "source": "reddit", "text": format!("post {i} about trainers"), "ts": "2026-01-02T03:04:05Z"})
            .to_string()
        })
        .collect();
    lines.push("{not json".into());
    lines.push(r#"{"id": "blank", "brand": "nike", "text": " "}"#.into());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let addr = format!("http://{}", server.grpc);
    let output = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args(["ingest", file.to_str().unwrap(), "--addr", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("stored 40 signals, rejected 1, unreadable 1"),
        "{stderr}"
    );
    assert!(stderr.contains("rejected blank: empty text"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_pulse"))
        .args([
            "search", "trainers", "--brand", "nike", "--limit", "5", "--addr", &addr,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let hits: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 5);
    for hit in hits {
        assert_eq!(hit["brand"], "nike");
        assert_eq!(hit["ts"], "2026-01-02T03:04:05Z");
    }
    terminate(&server.child);
    server.assert_clean_exit();
}
