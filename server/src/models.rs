//! The models a server runs, and the one embedding path both APIs share:
//! cache lookup, tokenizing, per-item validation, queueing, normalising.

use crate::auth::{Quota, RateLimited};
use crate::batcher::{Batcher, BatcherConfig, JobError, Priority, SubmitError};
use lru::LruCache;
use pulse_models::{Embedder, EmbedderOptions, ModelError, ModelInfo, PromptError, TokenizedText};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// A model as the server runs it.
pub struct ServedModel {
    pub name: String,
    pub source: String,
    pub is_default: bool,
    embedder: Arc<Embedder>,
    batcher: Batcher,
    cache: Option<Mutex<LruCache<u64, CachedVector>>>,
    /// When the model finished loading (OpenAI's `created`).
    pub loaded_at: SystemTime,
}

/// One input of a request.
#[derive(Debug, Hash)]
pub enum Input {
    /// A text, tokenized by the server with the request's prompt before it.
    Text(String),
    /// Token ids the caller made with the model's tokenizer, special tokens
    /// included; used as they are.
    TokenIds(Vec<u32>),
}

#[derive(Clone)]
struct CachedVector {
    raw: Arc<[f32]>,
    tokens: usize,
    truncated: bool,
}

/// What a request asks beyond its texts.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// `None`: what the model's configuration says.
    pub normalize: Option<bool>,
    /// Cut long texts (true) or refuse them per item (false).
    pub truncate: bool,
    pub priority: Priority,
    pub deadline: Option<Instant>,
    /// The caller's API-key quota, charged the tokens to compute.
    pub quota: Option<Arc<Quota>>,
    /// Put before every text (empty: none); `None`: the model's default
    /// prompt, if it has one (see [`ServedModel::prompt`]).
    pub prompt: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemFailure {
    TooLong,
    InvalidText,
}

#[derive(Debug, Clone)]
pub struct ItemError {
    pub reason: ItemFailure,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Embedded {
    pub vector: Vec<f32>,
    pub tokens: usize,
    pub truncated: bool,
    pub cached: bool,
}

#[derive(Debug, Default)]
pub struct EmbedOutcome {
    pub items: Vec<Result<Embedded, ItemError>>,
    pub tokens: usize,
    pub computed_tokens: usize,
    pub cache_hits: usize,
    pub queue_time: Duration,
    pub inference_time: Duration,
}

/// Why a whole request failed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Queue(#[from] SubmitError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("the deadline passed")]
    DeadlineExceeded,
    #[error("the model worker stopped before answering")]
    WorkerGone,
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
}

impl ServedModel {
    pub fn load(
        name: &str,
        source: &str,
        is_default: bool,
        options: &EmbedderOptions,
        batching: BatcherConfig,
        cache_capacity: usize,
    ) -> anyhow::Result<(Arc<ServedModel>, std::thread::JoinHandle<()>)> {
        let embedder = Arc::new(Embedder::load(source, options)?);
        let (batcher, worker) = Batcher::start(name, embedder.clone(), batching)?;
        let model = ServedModel {
            name: name.to_string(),
            source: source.to_string(),
            is_default,
            embedder,
            batcher,
            cache: NonZeroUsize::new(cache_capacity).map(|n| Mutex::new(LruCache::new(n))),
            loaded_at: SystemTime::now(),
        };
        Ok((Arc::new(model), worker))
    }

    pub fn info(&self) -> &ModelInfo {
        self.embedder.info()
    }

    pub fn device(&self) -> &pulse_models::Device {
        self.embedder.device()
    }

    pub fn queued_tokens(&self) -> usize {
        self.batcher.queued_tokens()
    }

    /// The prompt for a request naming `name` or giving `prompt` (see
    /// [`pulse_models::ModelConfig::prompt`]).
    pub fn prompt(&self, name: Option<&str>, prompt: Option<&str>) -> Result<String, PromptError> {
        self.embedder.prompt(name, prompt)
    }

    fn cache_key(&self, input: &Input, prompt: &str, truncate: bool) -> u64 {
        let mut hasher = DefaultHasher::new();
        self.name.hash(&mut hasher);
        input.hash(&mut hasher);
        if let Input::Text(_) = input {
            prompt.hash(&mut hasher);
        }
        truncate.hash(&mut hasher);
        hasher.finish()
    }

    fn cached(&self, key: u64) -> Option<CachedVector> {
        let cache = self.cache.as_ref()?;
        let mut cache = cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(&key).cloned()
    }

    fn remember(&self, key: u64, value: CachedVector) {
        if let Some(cache) = &self.cache {
            let mut cache = cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            cache.put(key, value);
        }
    }

    /// Embeds `texts`: one result per text, in order.
    pub async fn embed(
        &self,
        texts: Vec<String>,
        options: &EmbedOptions,
    ) -> Result<EmbedOutcome, EmbedError> {
        let inputs: Vec<Input> = texts.into_iter().map(Input::Text).collect();
        self.embed_inputs(inputs, options).await
    }

    /// Embeds `inputs`: one result per input, in order.
    pub async fn embed_inputs(
        &self,
        inputs: Vec<Input>,
        options: &EmbedOptions,
    ) -> Result<EmbedOutcome, EmbedError> {
        let normalize = options.normalize.unwrap_or(self.info().normalize);
        let prompt = match &options.prompt {
            Some(prompt) => prompt.clone(),
            None => self.prompt(None, None).unwrap_or_default(),
        };
        let keys: Vec<u64> = inputs
            .iter()
            .map(|input| self.cache_key(input, &prompt, options.truncate))
            .collect();
        let mut slots: Vec<Option<Result<Embedded, ItemError>>> = vec![None; inputs.len()];
        let mut outcome = EmbedOutcome::default();
        let mut misses = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            match self.cached(*key) {
                Some(hit) => {
                    outcome.cache_hits += 1;
                    outcome.tokens += hit.tokens;
                    slots[index] = Some(Ok(finish_vector(&hit, normalize, true)));
                }
                None => misses.push(index),
            }
        }
        metrics::counter!("pulse_cache_hits_total", "model" => self.name.clone())
            .increment(outcome.cache_hits as u64);
        metrics::counter!("pulse_cache_misses_total", "model" => self.name.clone())
            .increment(misses.len() as u64);

        if !misses.is_empty() {
            let embedder = self.embedder.clone();
            // The inputs the cache did not answer move to the tokenizer.
            let missed: Vec<(usize, Input)> = inputs
                .into_iter()
                .enumerate()
                .filter(|(index, _)| slots[*index].is_none())
                .collect();
            let tokenized =
                tokio::task::spawn_blocking(move || tokenize(&embedder, &missed, &prompt))
                    .await
                    .map_err(|_| EmbedError::WorkerGone)?;

            let mut queued: Vec<(usize, TokenizedText)> = Vec::new();
            for (&index, result) in misses.iter().zip(tokenized) {
                match result {
                    Err(err) => {
                        slots[index] = Some(Err(ItemError {
                            reason: ItemFailure::InvalidText,
                            message: err.to_string(),
                        }));
                    }
                    Ok(tokens) if tokens.truncated && !options.truncate => {
                        slots[index] = Some(Err(ItemError {
                            reason: ItemFailure::TooLong,
                            message: format!(
                                "input {index} is longer than the model's maximum of {} tokens and truncate is false",
                                self.info().max_seq_length
                            ),
                        }));
                    }
                    Ok(tokens) => queued.push((index, tokens)),
                }
            }
            if !queued.is_empty() {
                if let Some(quota) = &options.quota {
                    quota.take_tokens(queued.iter().map(|(_, t)| t.len()).sum())?;
                }
                let job_texts: Vec<TokenizedText> = queued.iter().map(|(_, t)| t.clone()).collect();
                let reply = self
                    .batcher
                    .submit(job_texts, options.priority, options.deadline)?;
                let output = match options.deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline.into(), reply)
                        .await
                        .map_err(|_| EmbedError::DeadlineExceeded)?,
                    None => reply.await,
                }
                .map_err(|_| EmbedError::WorkerGone)??;
                outcome.queue_time = output.queue_time;
                outcome.inference_time = output.inference_time;
                outcome.computed_tokens = output.computed_tokens;
                for ((index, tokens), raw) in queued.into_iter().zip(output.vectors) {
                    let entry = CachedVector {
                        raw,
                        tokens: tokens.len(),
                        truncated: tokens.truncated,
                    };
                    outcome.tokens += entry.tokens;
                    slots[index] = Some(Ok(finish_vector(&entry, normalize, false)));
                    self.remember(keys[index], entry);
                }
            }
        }
        outcome.items = slots
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| {
                    Err(ItemError {
                        reason: ItemFailure::InvalidText,
                        message: "no result was produced for this input".into(),
                    })
                })
            })
            .collect();
        Ok(outcome)
    }
}

/// The texts of `inputs` tokenized together with `prompt` before each, the
/// token ids checked; one result per input, in order. Each input is named by
/// its index in the request.
fn tokenize(
    embedder: &Embedder,
    inputs: &[(usize, Input)],
    prompt: &str,
) -> Vec<pulse_models::Result<TokenizedText>> {
    let texts: Vec<&str> = inputs
        .iter()
        .filter_map(|(_, input)| match input {
            Input::Text(text) => Some(text.as_str()),
            Input::TokenIds(_) => None,
        })
        .collect();
    let mut texts = embedder.tokenize_with_prompt(&texts, prompt).into_iter();
    inputs
        .iter()
        .map(|(index, input)| match input {
            Input::Text(_) => texts.next().unwrap_or_else(|| {
                Err(ModelError::Tokenize {
                    index: *index,
                    message: "the tokenizer returned too few results".into(),
                })
            }),
            Input::TokenIds(ids) => embedder.from_token_ids(*index, ids),
        })
        .collect()
}

fn finish_vector(entry: &CachedVector, normalize: bool, cached: bool) -> Embedded {
    let mut vector = entry.raw.to_vec();
    if normalize {
        let dimension = vector.len();
        pulse_kernels::l2_normalize_cpu(&mut vector, dimension);
    }
    Embedded {
        vector,
        tokens: entry.tokens,
        truncated: entry.truncated,
        cached,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("model `{name}` is not served; served models: {}", served.join(", "))]
pub struct UnknownModel {
    pub name: String,
    pub served: Vec<String>,
}

/// The models one server runs; the first is the default.
pub struct Registry {
    models: Vec<Arc<ServedModel>>,
}

impl Registry {
    pub fn new(models: Vec<Arc<ServedModel>>) -> Self {
        Registry { models }
    }

    pub fn all(&self) -> &[Arc<ServedModel>] {
        &self.models
    }

    /// The model called `name`; an empty name is the default model.
    pub fn find(&self, name: &str) -> Result<Arc<ServedModel>, UnknownModel> {
        let found = if name.is_empty() {
            self.models.iter().find(|m| m.is_default)
        } else {
            self.models.iter().find(|m| m.name == name)
        };
        found.cloned().ok_or_else(|| UnknownModel {
            name: name.to_string(),
            served: self.models.iter().map(|m| m.name.clone()).collect(),
        })
    }
}
