//! TLS and mutual TLS against the real server, over gRPC and HTTP: a client
//! that trusts the CA gets through; plain text, an expired server
//! certificate, a missing client certificate and a client certificate from
//! another CA do not.

mod common;

use common::start_unwaited;
use pulse_proto::v1 as pb;
use pulse_proto::v1::embedding_service_client::EmbeddingServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    date_time_ymd,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Authority {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn authority(name: &str) -> Authority {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Authority {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A certificate (PEM) and its key (PEM) signed by `ca`.
fn leaf(ca: &Authority, client: bool, expired: bool) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    if expired {
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn grpc(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

async fn embed(channel: Channel) -> Result<usize, tonic::Status> {
    let reply = EmbeddingServiceClient::new(channel)
        .embed(pb::EmbedRequest {
            inputs: vec![pb::EmbedInput {
                text: "over TLS".into(),
                id: String::new(),
            }],
            ..Default::default()
        })
        .await?;
    Ok(reply.into_inner().results.len())
}

fn https(ca: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(30));
    if let Some((cert, key)) = identity {
        client = client
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    client.build().unwrap()
}

/// `/ready` over HTTPS until the models have warmed up.
async fn until_ready(client: &reqwest::Client, addr: std::net::SocketAddr) {
    for _ in 0..600 {
        let url = format!("https://localhost:{}/ready", addr.port());
        if let Ok(reply) = client.get(url).send().await
            && reply.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never ready over HTTPS");
}

#[tokio::test]
async fn tls_lets_trusting_clients_in_and_keeps_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority("pulse test CA");
    let (cert, key) = leaf(&ca, false, false);
    let cert_file = write(dir.path(), "server.pem", &cert);
    let key_file = write(dir.path(), "server.key", &key);
    let server = start_unwaited(&[
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ])
    .await;
    let client = https(&ca.pem, None);
    until_ready(&client, server.http_addr).await;

    // gRPC and HTTP through TLS.
    let channel = grpc(server.grpc_addr, &ca.pem, None).await.unwrap();
    assert_eq!(embed(channel).await.unwrap(), 1);
    let reply = client
        .post(format!(
            "https://localhost:{}/v1/embeddings",
            server.http_addr.port()
        ))
        .json(&serde_json::json!({"input": ["over TLS"]}))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{}", reply.status());

    // Plain text is not spoken any more.
    let plain = Channel::from_shared(format!("http://{}", server.grpc_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await;
    match plain {
        Err(_) => {}
        Ok(channel) => assert!(embed(channel).await.is_err(), "plain gRPC got through"),
    }
    let plain_http = reqwest::Client::new()
        .get(format!("http://{}/health", server.http_addr))
        .send()
        .await;
    assert!(
        plain_http.is_err() || !plain_http.unwrap().status().is_success(),
        "plain HTTP got through"
    );

    // A client that does not trust the server's CA refuses it.
    let stranger = authority("another CA");
    assert!(grpc(server.grpc_addr, &stranger.pem, None).await.is_err());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_by_clients() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority("pulse test CA");
    let (cert, key) = leaf(&ca, false, true);
    let server = start_unwaited(&[
        "--tls-cert",
        write(dir.path(), "expired.pem", &cert).to_str().unwrap(),
        "--tls-key",
        write(dir.path(), "expired.key", &key).to_str().unwrap(),
    ])
    .await;
    let err = grpc(server.grpc_addr, &ca.pem, None)
        .await
        .expect_err("an expired certificate is refused");
    let chain = format!("{:?}", err);
    assert!(chain.to_lowercase().contains("expired"), "{chain}");
    let err = https(&ca.pem, None)
        .get(format!(
            "https://localhost:{}/health",
            server.http_addr.port()
        ))
        .send()
        .await
        .expect_err("an expired certificate is refused over HTTPS too");
    assert!(
        format!("{err:?}").to_lowercase().contains("expired"),
        "{err:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_wants_a_client_certificate_from_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority("pulse test CA");
    let clients = authority("pulse clients CA");
    let stranger = authority("another CA");
    let (cert, key) = leaf(&ca, false, false);
    let server = start_unwaited(&[
        "--tls-cert",
        write(dir.path(), "server.pem", &cert).to_str().unwrap(),
        "--tls-key",
        write(dir.path(), "server.key", &key).to_str().unwrap(),
        "--tls-client-ca",
        write(dir.path(), "clients.pem", &clients.pem)
            .to_str()
            .unwrap(),
    ])
    .await;
    let good = leaf(&clients, true, false);
    let foreign = leaf(&stranger, true, false);
    let expired = leaf(&clients, true, true);
    until_ready(&https(&ca.pem, Some(&good)), server.http_addr).await;

    let channel = grpc(server.grpc_addr, &ca.pem, Some(&good)).await.unwrap();
    assert_eq!(embed(channel).await.unwrap(), 1);

    // Without a certificate, with one from another CA or with an expired
    // one: the handshake fails (TLS 1.3 may report it on the first call).
    for (what, identity) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&foreign)),
        ("an expired certificate", Some(&expired)),
    ] {
        match grpc(server.grpc_addr, &ca.pem, identity).await {
            Err(_) => {}
            Ok(channel) => assert!(
                embed(channel).await.is_err(),
                "gRPC with {what} got through"
            ),
        }
        let reply = https(&ca.pem, identity)
            .get(format!(
                "https://localhost:{}/health",
                server.http_addr.port()
            ))
            .send()
            .await;
        assert!(reply.is_err(), "HTTPS with {what} got through");
    }
    let reply = https(&ca.pem, Some(&good))
        .get(format!(
            "https://localhost:{}/health",
            server.http_addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success());
    server.shutdown().await.unwrap();
}
