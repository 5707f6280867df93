//! A loaded sentence-transformer: text in, one vector per text out.

use crate::config::{Architecture, ModelConfig};
use crate::device::{DTypeSpec, DeviceSpec, device_name};
use crate::encoder::{Encoder, EncoderKind, batch_input};
use crate::error::{ModelError, PromptError, Result};
use crate::source::{ModelOrigin, ResolveOptions, ResolvedModel, resolve_with};
use crate::tokenize::{TextTokenizer, TokenizedText, from_token_ids};
use candle_core::Device;
use pulse_kernels::Pooling;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    pub device: DeviceSpec,
    pub dtype: DTypeSpec,
    /// Threads for tokenizing and the CPU forward pass; `None` shares the
    /// process-wide rayon pool (all cores).
    pub threads: Option<usize>,
    pub encoder: EncoderKind,
    pub resolve: ResolveOptions,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            device: DeviceSpec::Auto,
            dtype: DTypeSpec::Auto,
            threads: None,
            encoder: EncoderKind::Native,
            resolve: ResolveOptions::from_env(),
        }
    }
}

/// What a loaded model is and where it came from.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub architecture: Architecture,
    pub model_type: String,
    pub dimension: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    /// Named prompts (`config_sentence_transformers.json`).
    pub prompts: BTreeMap<String, String>,
    /// The prompt put before texts when a request names none.
    pub default_prompt_name: Option<String>,
    pub parameters: usize,
    pub dir: PathBuf,
    pub origin: ModelOrigin,
    pub revision: Option<String>,
    pub device: String,
    pub dtype: String,
    pub encoder: EncoderKind,
    /// What the dense layers run on: `AMX`, `AVX-512`, `AVX-512 (gemm)`,
    /// `AVX2` or `portable` for the native encoder on the CPU (chosen at
    /// run time for this CPU and precision), `candle` for Candle's ops.
    pub kernels: &'static str,
    /// Threads the CPU work runs on.
    pub threads: usize,
    pub load_time: Duration,
}

pub struct Embedder {
    info: ModelInfo,
    config: ModelConfig,
    tokenizer: TextTokenizer,
    encoder: Encoder,
    device: Device,
    threads: Option<rayon::ThreadPool>,
}

impl Embedder {
    /// Finds `name` (local directory, Hugging Face cache, hub) and loads it.
    pub fn load(name: &str, options: &EmbedderOptions) -> Result<Self> {
        let resolved = resolve_with(name, &options.resolve)?;
        Self::from_resolved(resolved, options)
    }

    pub fn from_resolved(model: ResolvedModel, options: &EmbedderOptions) -> Result<Self> {
        let started = Instant::now();
        let device = options.device.select()?;
        let precision = options.dtype.select(&device)?;
        let config = ModelConfig::load(&model.dir)?;
        let tokenizer =
            TextTokenizer::load(&model.dir, config.max_seq_length, config.do_lower_case)?;
        let (encoder, parameters) =
            Encoder::load(&model.dir, &config, options.encoder, precision, &device)?;
        let threads = match options.threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(|i| format!("pulse-embed-{i}"))
                    .build()
                    .map_err(|e| ModelError::ThreadPool(e.to_string()))?,
            ),
            None => None,
        };
        let info = ModelInfo {
            revision: model.revision().map(str::to_string),
            name: model.name,
            architecture: config.architecture,
            model_type: config.model_type.clone(),
            dimension: config.hidden_size(),
            pooling: config.pooling,
            normalize: config.normalize,
            max_seq_length: config.max_seq_length,
            prompts: config.prompts.clone(),
            default_prompt_name: config.default_prompt_name.clone(),
            parameters,
            dir: model.dir,
            origin: model.origin,
            device: device_name(&device),
            dtype: precision.name().to_string(),
            encoder: options.encoder,
            kernels: encoder.kernels(),
            threads: threads
                .as_ref()
                .map_or_else(rayon::current_num_threads, |pool| {
                    pool.current_num_threads()
                }),
            load_time: started.elapsed(),
        };
        Ok(Embedder {
            info,
            config,
            tokenizer,
            encoder,
            device,
            threads,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The prompt text for a request: a literal `prompt` (empty: none), or
    /// the one called `name`, or the model's default (see
    /// [`ModelConfig::prompt`]).
    pub fn prompt(&self, name: Option<&str>, prompt: Option<&str>) -> Result<String, PromptError> {
        self.config.prompt(name, prompt).map(str::to_string)
    }

    /// Tokenizes each text with the model's default prompt (if it has one),
    /// cutting at the model's maximum length; one result per text so one bad
    /// text does not sink the others.
    pub fn tokenize(&self, texts: &[&str]) -> Vec<Result<TokenizedText>> {
        let default = self.config.prompt(None, None).unwrap_or_default();
        self.tokenize_with_prompt(texts, default)
    }

    /// As [`Embedder::tokenize`], with `prompt` put before every text
    /// (empty: none).
    pub fn tokenize_with_prompt(&self, texts: &[&str], prompt: &str) -> Vec<Result<TokenizedText>> {
        self.install(|| {
            texts
                .par_iter()
                .enumerate()
                .map(|(index, text)| self.tokenizer.tokenize(index, text, prompt))
                .collect()
        })
    }

    /// Token ids tokenized by the caller, as the model is to see them
    /// (special tokens included, no prompt added): checked against the
    /// vocabulary and cut at the model's maximum length. `index` names the
    /// input in errors.
    pub fn from_token_ids(&self, index: usize, ids: &[u32]) -> Result<TokenizedText> {
        let vocab = self.config.encoder.vocab_size;
        from_token_ids(index, ids, vocab, self.config.max_seq_length)
    }

    /// Embeds already tokenized texts as one padded batch. The result for a
    /// text does not depend on what else is in the batch.
    pub fn embed_tokenized(&self, batch: &[TokenizedText]) -> Result<Vec<Vec<f32>>> {
        self.embed_tokenized_with(batch, self.config.normalize)
    }

    /// As [`Embedder::embed_tokenized`], normalising or not whatever the
    /// model's own `Normalize` module says.
    pub fn embed_tokenized_with(
        &self,
        batch: &[TokenizedText],
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let sequences: Vec<(&[u32], &[u32])> = batch
            .iter()
            .map(|t| (t.ids.as_slice(), t.type_ids.as_slice()))
            .collect();
        self.install(|| {
            let input = batch_input(&sequences, &self.config, &self.device)?;
            let hidden = self.encoder.forward(&input)?;
            let pooled = pulse_kernels::pool(&hidden, &input.mask, self.config.pooling, normalize)?;
            Ok(pooled.to_vec2::<f32>()?)
        })
    }

    /// Tokenizes and embeds `texts` as one batch; the first text that cannot
    /// be embedded fails the call.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tokenized = self
            .tokenize(texts)
            .into_iter()
            .collect::<Result<Vec<_>>>()?;
        self.embed_tokenized(&tokenized)
    }

    fn install<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        match &self.threads {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_embedder_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::Embedder>();
    }
}
