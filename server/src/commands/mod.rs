pub mod embed;
pub mod models;

use clap::Args;
use pulse_models::{DEFAULT_MODEL, DTypeSpec, DeviceSpec, Embedder, EmbedderOptions, EncoderKind};
use std::num::NonZeroUsize;

/// How to find and run a model; shared by every command that loads one.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Local directory or Hugging Face id (`org/name[@revision]`).
    #[arg(long, env = "PULSE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// auto, cpu or cuda[:N].
    #[arg(long, env = "PULSE_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32 on CPU, f16 on CUDA), f32, f16 or bf16.
    #[arg(long, env = "PULSE_DTYPE", default_value = "auto")]
    pub dtype: DTypeSpec,
    /// Threads for the CPU forward pass [default: all cores].
    #[arg(long, env = "PULSE_THREADS")]
    pub threads: Option<NonZeroUsize>,
    /// native, or candle (candle-transformers' BertModel, the reference).
    #[arg(long, default_value = "native")]
    pub encoder: EncoderKind,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<Embedder> {
        let options = EmbedderOptions {
            device: self.device,
            dtype: self.dtype,
            threads: self.threads.map(NonZeroUsize::get),
            encoder: self.encoder,
            ..EmbedderOptions::default()
        };
        Ok(Embedder::load(&self.model, &options)?)
    }
}
