//! Helpers shared by the server's integration tests.
#![allow(dead_code)]

use clap::Parser;
use pulse_models::{DEFAULT_MODEL, DeviceSpec, Embedder, EmbedderOptions, ResolveOptions};
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
    wait_until_serving(&server).await;
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
