pub mod cluster;
pub mod embed;
pub mod models;
pub mod signals;
pub mod trends;

use clap::Args;
use pulse_models::{DEFAULT_MODEL, Embedder};
use pulse_server::config::EngineArgs;

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
