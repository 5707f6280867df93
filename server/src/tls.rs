//! TLS for both listeners (`--tls-cert`, `--tls-key`) and mutual TLS
//! (`--tls-client-ca`): gRPC through tonic's rustls support, HTTP through
//! axum-server's, both with the ring provider. The files are read and checked
//! here, at start, so a bad certificate stops the server with a message
//! naming the file instead of failing every handshake later.

use crate::config::TlsArgs;
use anyhow::{Context, bail};
use axum_server::tls_rustls::RustlsConfig;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// The server's TLS settings, one for each listener.
#[derive(Clone)]
pub struct Tls {
    pub grpc: ServerTlsConfig,
    pub http: RustlsConfig,
    /// Whether clients must present a certificate.
    pub mutual: bool,
}

impl Tls {
    /// `None` when no certificate is configured.
    pub fn load(args: &TlsArgs) -> anyhow::Result<Option<Tls>> {
        let (cert_path, key_path) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (None, None) if args.tls_client_ca.is_none() => return Ok(None),
            _ => bail!("TLS needs both --tls-cert and --tls-key (--tls-client-ca needs them too)"),
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let chain = certificates(&cert_pem, cert_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .with_context(|| format!("{} holds no PEM private key", key_path.display()))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("the TLS provider offers no protocol version")?;
        let client_ca_pem = args.tls_client_ca.as_deref().map(read).transpose()?;
        let builder = match (&client_ca_pem, &args.tls_client_ca) {
            (Some(pem), Some(path)) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(pem, path)? {
                    roots.add(cert).with_context(|| {
                        format!("{}: not a usable CA certificate", path.display())
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .with_context(|| {
                            format!("{}: cannot verify clients with it", path.display())
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut http = builder.with_single_cert(chain, key).with_context(|| {
            format!(
                "{} and {} do not make a usable certificate and key",
                cert_path.display(),
                key_path.display()
            )
        })?;
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let mut grpc = ServerTlsConfig::new().identity(Identity::from_pem(&cert_pem, &key_pem));
        if let Some(pem) = &client_ca_pem {
            grpc = grpc.client_ca_root(Certificate::from_pem(pem));
        }
        Ok(Some(Tls {
            grpc,
            http: RustlsConfig::from_config(Arc::new(http)),
            mutual: client_ca_pem.is_some(),
        }))
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn certificates(pem: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: malformed PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn args(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>) -> TlsArgs {
        TlsArgs {
            tls_cert: cert.map(Path::to_path_buf),
            tls_key: key.map(Path::to_path_buf),
            tls_client_ca: ca.map(Path::to_path_buf),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn no_certificate_is_plain_text() {
        assert!(Tls::load(&TlsArgs::default()).unwrap().is_none());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = write(dir.path(), "cert.pem", &cert.pem());
        let key_file = write(dir.path(), "key.pem", &key.serialize_pem());
        let junk = write(dir.path(), "junk.pem", "not a certificate");
        let other_key = write(
            dir.path(),
            "other.pem",
            &rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );

        let ok = Tls::load(&args(Some(&cert_file), Some(&key_file), Some(&cert_file)))
            .unwrap()
            .unwrap();
        assert!(ok.mutual);
        for (args, needle) in [
            (
                args(Some(&junk), Some(&key_file), None),
                "junk.pem holds no PEM certificate",
            ),
            (
                args(Some(&cert_file), Some(&junk), None),
                "junk.pem holds no PEM private key",
            ),
            (
                args(Some(&cert_file), Some(&other_key), None),
                "do not make a usable",
            ),
            (
                args(Some(&cert_file), Some(&key_file), Some(&junk)),
                "junk.pem holds no PEM",
            ),
            (
                args(Some(&cert_file), None, None),
                "both --tls-cert and --tls-key",
            ),
            (
                args(None, None, Some(&cert_file)),
                "both --tls-cert and --tls-key",
            ),
            (
                args(Some(&dir.path().join("missing.pem")), Some(&key_file), None),
                "cannot read",
            ),
        ] {
            let err = format!("{:#}", Tls::load(&args).err().expect("an error"));
            assert!(err.contains(needle), "{err}");
        }
    }
}
