pub mod cluster;
pub mod embed;
pub mod migrate;
pub mod models;
pub mod signals;
pub mod trends;

use anyhow::Context;
use clap::Args;
use pulse_models::{DEFAULT_MODEL, Embedder};
use pulse_server::config::{EngineArgs, Secret};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Where a client command's server is, and the API key it sends.
#[derive(Args, Debug, Clone)]
pub struct ServerConnection {
    /// The server's gRPC address.
    #[arg(long, env = "PULSE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// API key for a server started with --api-key-file (prefer the
    /// environment variable).
    #[arg(long, env = "PULSE_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,
}

/// Adds `authorization: Bearer KEY` to every call when there is a key.
#[derive(Clone)]
pub struct KeyHeader(Option<MetadataValue<Ascii>>);

impl Interceptor for KeyHeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Connected = InterceptedService<Channel, KeyHeader>;

impl ServerConnection {
    pub async fn connect(&self) -> anyhow::Result<Connected> {
        let addr = &self.addr;
        let header = self
            .api_key
            .as_ref()
            .map(|key| format!("Bearer {}", key.expose()).parse())
            .transpose()
            .context("the API key is not a valid header value")?;
        let channel = Channel::from_shared(addr.clone())
            .with_context(|| format!("invalid address {addr}"))?
            .connect()
            .await
            .with_context(|| format!("cannot reach pulse at {addr}"))?;
        Ok(InterceptedService::new(channel, KeyHeader(header)))
    }
}

/// Which model to load and how to run it.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Local directory or Hugging Face id (`org/name[@revision]`).
    #[arg(long, env = "PULSE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<Embedder> {
        Ok(Embedder::load(
            &self.model,
            &self.engine.embedder_options(),
        )?)
    }
}
