//! Finds, loads and runs sentence-transformer models with Candle.
//!
//! ```no_run
//! use pulse_models::{Embedder, EmbedderOptions, DEFAULT_MODEL};
//! let embedder = Embedder::load(DEFAULT_MODEL, &EmbedderOptions::default())?;
//! let vectors = embedder.embed(&["a brand signal", "another one"])?;
//! assert_eq!(vectors[0].len(), embedder.info().dimension);
//! # Ok::<(), pulse_models::ModelError>(())
//! ```

mod config;
mod device;
mod embedder;
mod encoder;
mod error;
mod source;
mod tokenize;

pub use candle_core::Device;
pub use config::{Architecture, ModelConfig};
pub use device::{DTypeSpec, DeviceSpec, GpuMemory, Precision, device_name, gpu_memory};
pub use embedder::{Embedder, EmbedderOptions, ModelInfo};
pub use encoder::EncoderKind;
pub use error::{ModelError, PromptError, Result};
pub use pulse_kernels::Pooling;
pub use source::{
    DEFAULT_MODEL, HubId, ModelOrigin, ResolveOptions, ResolvedModel, resolve, resolve_with,
    user_cache_dir,
};
pub use tokenize::TokenizedText;
