//! `pulse serve` configuration: flags, `PULSE_*` environment variables and
//! an optional TOML file, in that order of precedence.

use crate::summaries::SummaryConfig;
use crate::summaries::provider::{Anthropic, Endpoint, OpenAiCompatible, Provider};
use anyhow::{Context, bail};
use clap::{Args, Parser};
use pulse_models::{DEFAULT_MODEL, DTypeSpec, DeviceSpec, EmbedderOptions, EncoderKind};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the flags, `-` or `_`).
    #[arg(long, env = "PULSE_CONFIG")]
    pub config: Option<PathBuf>,
    /// A model to serve, `NAME=SOURCE` or `SOURCE` (repeatable; the first is
    /// the default). SOURCE is a local directory or a Hugging Face id.
    #[arg(long = "model", env = "PULSE_MODEL", value_delimiter = ',', default_value = DEFAULT_MODEL)]
    pub models: Vec<String>,
    /// Address of the gRPC server.
    #[arg(long, env = "PULSE_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP server (OpenAI-compatible embeddings, health, metrics).
    #[arg(long, env = "PULSE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Padded tokens one forward pass may hold.
    #[arg(long, env = "PULSE_MAX_BATCH_TOKENS", default_value = "16384")]
    pub max_batch_tokens: NonZeroUsize,
    /// Texts one forward pass may hold.
    #[arg(long, env = "PULSE_MAX_BATCH_TEXTS", default_value = "64")]
    pub max_batch_texts: NonZeroUsize,
    /// How long a short queue waits for company, in milliseconds.
    #[arg(long, env = "PULSE_MAX_WAIT_MS", default_value = "5")]
    pub max_wait_ms: u64,
    /// Tokens that may wait per model; beyond it requests get RESOURCE_EXHAUSTED.
    #[arg(long, env = "PULSE_MAX_QUEUE_TOKENS", default_value = "1048576")]
    pub max_queue_tokens: NonZeroUsize,
    /// Inputs one request may carry.
    #[arg(long, env = "PULSE_MAX_INPUTS", default_value = "2048")]
    pub max_inputs: NonZeroUsize,
    /// Requests with at most this many inputs are interactive (served first).
    #[arg(long, env = "PULSE_INTERACTIVE_INPUTS", default_value = "8")]
    pub interactive_inputs: usize,
    /// Requests a stream may have in flight before it stops reading.
    #[arg(long, env = "PULSE_STREAM_WINDOW", default_value = "2048")]
    pub stream_window: NonZeroUsize,
    /// Largest gRPC or HTTP message, in bytes.
    #[arg(long, env = "PULSE_MAX_MESSAGE_BYTES", default_value = "67108864")]
    pub max_message_bytes: NonZeroUsize,
    /// Where the embedded store keeps its collections.
    #[arg(long, env = "PULSE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub qdrant: QdrantArgs,
    /// Seconds a collection of the embedded store must go unwritten before
    /// it is optimised (indexes built) in the background; 0 turns that off.
    #[arg(long, env = "PULSE_OPTIMIZE_IDLE_SECS", default_value = "10")]
    pub optimize_idle_secs: u64,
    /// Largest signal text, in bytes.
    #[arg(long, env = "PULSE_MAX_TEXT_BYTES", default_value = "1048576")]
    pub max_text_bytes: NonZeroUsize,
    /// Re-clustering jobs that may run at once (each uses every core);
    /// jobs of one brand and model always run one at a time.
    #[arg(long, env = "PULSE_CLUSTER_JOBS", default_value = "1")]
    pub cluster_jobs: NonZeroUsize,
    /// Embeddings kept in each model's content-hash cache (0: no cache).
    #[arg(long, env = "PULSE_CACHE_CAPACITY", default_value = "65536")]
    pub cache_capacity: usize,
    /// Log format: text or json.
    #[arg(long, env = "PULSE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// API keys, one a line, each optionally followed by the brands it is
    /// limited to (`KEY brand1,brand2`); without it no key is asked for.
    #[arg(long, env = "PULSE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Requests per second each API key may make, unless its line in the
    /// key file says otherwise (`requests_per_second=N`); 0: no limit.
    #[arg(long, env = "PULSE_KEY_REQUESTS_PER_SECOND", default_value = "0")]
    pub key_requests_per_second: f64,
    /// Tokens per second each API key may have embedded, unless its line
    /// says otherwise (`tokens_per_second=N`); 0: no limit.
    #[arg(long, env = "PULSE_KEY_TOKENS_PER_SECOND", default_value = "0")]
    pub key_tokens_per_second: f64,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// A Qdrant server or cluster, and how pulse lays out and calls it.
#[derive(Args, Debug, Clone)]
pub struct QdrantArgs {
    /// A Qdrant server or cluster (`http://host:6334`, gRPC) to store
    /// signals in instead of the embedded store.
    #[arg(long, env = "PULSE_QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// API key for the Qdrant server (prefer the environment variable).
    #[arg(long, env = "PULSE_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<Secret>,
    /// Shards of collections pulse creates on the Qdrant server.
    #[arg(long, env = "PULSE_QDRANT_SHARDS", default_value = "1")]
    pub qdrant_shards: u32,
    /// Replication factor of collections pulse creates on the Qdrant server.
    #[arg(long, env = "PULSE_QDRANT_REPLICATION", default_value = "1")]
    pub qdrant_replication: u32,
    /// Replicas that must confirm a write on the Qdrant server.
    #[arg(long, env = "PULSE_QDRANT_WRITE_CONSISTENCY", default_value = "1")]
    pub qdrant_write_consistency: u32,
    /// Tries per Qdrant call before a transient failure is reported.
    #[arg(long, env = "PULSE_QDRANT_ATTEMPTS", default_value = "4")]
    pub qdrant_attempts: u32,
}

impl QdrantArgs {
    /// How to reach and lay out the server; `None` without `--qdrant-url`.
    pub fn remote_options(&self) -> Option<pulse_store::RemoteOptions> {
        Some(pulse_store::RemoteOptions {
            url: self.qdrant_url.clone()?,
            api_key: self
                .qdrant_api_key
                .as_ref()
                .map(|key| key.expose().to_string()),
            shard_number: self.qdrant_shards,
            replication_factor: self.qdrant_replication,
            write_consistency_factor: self.qdrant_write_consistency,
            attempts: self.qdrant_attempts,
            timeout: Duration::from_secs(10),
        })
    }
}

/// TLS on both listeners, gRPC and HTTP; without `--tls-cert` both are
/// plain text.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain the server presents (leaf first); needs --tls-key.
    #[arg(long, env = "PULSE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "PULSE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must then present a certificate one of
    /// them signed (mutual TLS).
    #[arg(long, env = "PULSE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// The LLM summary path. Without `--llm-base-url` there is no provider and
/// trends carry only their extractive summary.
#[derive(Args, Debug, Clone)]
pub struct LlmArgs {
    /// Base URL of the provider's API, up to its version segment
    /// (e.g. `https://host/v1`).
    #[arg(long, env = "PULSE_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// openai (chat completions, also what most gateways and local servers
    /// speak) or anthropic (messages).
    #[arg(long, env = "PULSE_LLM_PROVIDER", default_value = "openai")]
    pub llm_provider: LlmProviderKind,
    /// The model the provider should use.
    #[arg(long, env = "PULSE_LLM_MODEL")]
    pub llm_model: Option<String>,
    /// API key (prefer this environment variable or --llm-api-key-file;
    /// never logged).
    #[arg(long, env = "PULSE_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<Secret>,
    /// File whose first line is the API key.
    #[arg(long, env = "PULSE_LLM_API_KEY_FILE")]
    pub llm_api_key_file: Option<PathBuf>,
    /// Prompt template (TOML: version, system, user) replacing the shipped one.
    #[arg(long, env = "PULSE_LLM_PROMPT_FILE")]
    pub llm_prompt_file: Option<PathBuf>,
    /// Provider calls in flight at once.
    #[arg(long, env = "PULSE_LLM_CONCURRENCY", default_value = "2")]
    pub llm_concurrency: NonZeroUsize,
    /// Trends that may wait for a summary; beyond it a summary fails as "queue full".
    #[arg(long, env = "PULSE_LLM_QUEUE_CAPACITY", default_value = "1024")]
    pub llm_queue_capacity: NonZeroUsize,
    /// Seconds one call may take before it counts as failed.
    #[arg(long, env = "PULSE_LLM_TIMEOUT_SECS", default_value = "60")]
    pub llm_timeout_secs: NonZeroU64,
    /// Calls per summary when the provider fails transiently (429, 5xx,
    /// network, timeout).
    #[arg(long, env = "PULSE_LLM_MAX_ATTEMPTS", default_value = "4")]
    pub llm_max_attempts: NonZeroU32,
    /// First back-off between attempts in milliseconds; doubles each time,
    /// with jitter, up to --llm-retry-max-ms (a longer Retry-After wins).
    #[arg(long, env = "PULSE_LLM_RETRY_BASE_MS", default_value = "500")]
    pub llm_retry_base_ms: u64,
    #[arg(long, env = "PULSE_LLM_RETRY_MAX_MS", default_value = "60000")]
    pub llm_retry_max_ms: u64,
    /// Longest answer, in tokens.
    #[arg(long, env = "PULSE_LLM_MAX_TOKENS", default_value = "400")]
    pub llm_max_tokens: NonZeroU32,
    /// Requests per minute (0: no limit).
    #[arg(long, env = "PULSE_LLM_REQUESTS_PER_MINUTE", default_value = "60")]
    pub llm_requests_per_minute: u32,
    /// Tokens (prompt and answer) per minute (0: no limit).
    #[arg(long, env = "PULSE_LLM_TOKENS_PER_MINUTE", default_value = "100000")]
    pub llm_tokens_per_minute: u32,
    /// Consecutive failed calls that pause the queue.
    #[arg(long, env = "PULSE_LLM_BREAKER_FAILURES", default_value = "5")]
    pub llm_breaker_failures: NonZeroU32,
    /// Milliseconds the queue stays paused before one trial call.
    #[arg(long, env = "PULSE_LLM_BREAKER_COOL_DOWN_MS", default_value = "30000")]
    pub llm_breaker_cool_down_ms: u64,
    /// A trend that kept its id keeps its summary while at least this share
    /// of its members (Jaccard) stays the same...
    #[arg(long, env = "PULSE_LLM_MEMBER_OVERLAP", default_value = "0.8")]
    pub llm_member_overlap: f64,
    /// ...and at least this share of its keywords.
    #[arg(long, env = "PULSE_LLM_KEYWORD_OVERLAP", default_value = "0.6")]
    pub llm_keyword_overlap: f64,
}

/// A value that must not reach a log line: `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LlmProviderKind {
    Openai,
    Anthropic,
}

impl LlmArgs {
    /// The API key from the flag, the environment or the file.
    pub fn api_key(&self) -> anyhow::Result<Option<String>> {
        if let Some(Secret(key)) = &self.llm_api_key {
            return Ok(Some(key.trim().to_string()));
        }
        let Some(path) = &self.llm_api_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API key file {}", path.display()))?;
        let key = text.lines().next().unwrap_or_default().trim();
        if key.is_empty() {
            bail!("the API key file {} is empty", path.display());
        }
        Ok(Some(key.to_string()))
    }

    pub fn summary_config(&self) -> anyhow::Result<SummaryConfig> {
        for (name, share) in [
            ("--llm-member-overlap", self.llm_member_overlap),
            ("--llm-keyword-overlap", self.llm_keyword_overlap),
        ] {
            if !(0.0..=1.0).contains(&share) {
                bail!("{name} must be between 0 and 1, not {share}");
            }
        }
        Ok(SummaryConfig {
            concurrency: self.llm_concurrency.get(),
            queue_capacity: self.llm_queue_capacity.get(),
            max_attempts: self.llm_max_attempts.get(),
            retry_base: Duration::from_millis(self.llm_retry_base_ms),
            retry_max: Duration::from_millis(self.llm_retry_max_ms.max(self.llm_retry_base_ms)),
            max_tokens: self.llm_max_tokens.get(),
            requests_per_minute: self.llm_requests_per_minute,
            tokens_per_minute: self.llm_tokens_per_minute,
            breaker_failures: self.llm_breaker_failures.get(),
            breaker_cool_down: Duration::from_millis(self.llm_breaker_cool_down_ms),
            member_overlap: self.llm_member_overlap,
            keyword_overlap: self.llm_keyword_overlap,
        })
    }

    /// The configured provider, or `None` without `--llm-base-url`.
    pub fn provider(&self) -> anyhow::Result<Option<Arc<dyn Provider>>> {
        let Some(base_url) = &self.llm_base_url else {
            return Ok(None);
        };
        let Some(model) = &self.llm_model else {
            bail!("--llm-base-url needs --llm-model");
        };
        let endpoint = Endpoint {
            base_url: base_url.clone(),
            model: model.clone(),
            api_key: self.api_key()?,
            timeout: Duration::from_secs(self.llm_timeout_secs.get()),
        };
        let provider: Arc<dyn Provider> = match self.llm_provider {
            LlmProviderKind::Openai => Arc::new(OpenAiCompatible::new(endpoint)?),
            LlmProviderKind::Anthropic => Arc::new(Anthropic::new(endpoint)?),
        };
        Ok(Some(provider))
    }
}

/// How to run models; shared by every command that loads one.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// auto, cpu or cuda[:N].
    #[arg(long, env = "PULSE_DEVICE", default_value = "auto")]
    pub device: DeviceSpec,
    /// auto (f32 on CPU, f16 on CUDA), f32, f16, bf16, or int8. On the CPU,
    /// bf16 and int8 hold the dense layers' weights in that precision (bf16
    /// needs AVX-512 BF16; int8 runs on any CPU, not on CUDA; both run on
    /// AMX tiles where the CPU has them).
    #[arg(long, env = "PULSE_DTYPE", default_value = "auto")]
    pub dtype: DTypeSpec,
    /// Threads for each model's CPU forward pass [default: all cores].
    #[arg(long, env = "PULSE_THREADS")]
    pub threads: Option<NonZeroUsize>,
    /// native, or candle (candle-transformers' BertModel, the reference).
    #[arg(long, env = "PULSE_ENCODER", default_value = "native")]
    pub encoder: EncoderKind,
}

impl EngineArgs {
    pub fn embedder_options(&self) -> EmbedderOptions {
        EmbedderOptions {
            device: self.device,
            dtype: self.dtype,
            threads: self.threads.map(NonZeroUsize::get),
            encoder: self.encoder,
            ..EmbedderOptions::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A model to serve: the name requests use and where to load it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub source: String,
}

impl ServeArgs {
    /// The per-key limits of keys whose line names none.
    pub fn key_limits(&self) -> anyhow::Result<crate::auth::KeyLimits> {
        let rate = |value: f64, flag: &str| -> anyhow::Result<Option<f64>> {
            if !(value.is_finite() && value >= 0.0) {
                bail!("--{flag} must be a number ≥ 0 (0: no limit), not {value}");
            }
            Ok((value > 0.0).then_some(value))
        };
        Ok(crate::auth::KeyLimits {
            requests_per_second: rate(self.key_requests_per_second, "key-requests-per-second")?,
            tokens_per_second: rate(self.key_tokens_per_second, "key-tokens-per-second")?,
        })
    }

    pub fn model_specs(&self) -> anyhow::Result<Vec<ModelSpec>> {
        let mut specs: Vec<ModelSpec> = Vec::new();
        for entry in &self.models {
            let (name, source) = match entry.split_once('=') {
                Some((name, source)) => (name.trim(), source.trim()),
                None => (entry.trim(), entry.trim()),
            };
            if name.is_empty() || source.is_empty() {
                bail!("invalid --model `{entry}`: expected NAME=SOURCE or SOURCE");
            }
            if specs.iter().any(|s| s.name == name) {
                bail!("model name `{name}` is given twice");
            }
            specs.push(ModelSpec {
                name: name.to_string(),
                source: source.to_string(),
            });
        }
        Ok(specs)
    }
}

/// Parses `args` (program name first) as a command with `T` as its
/// arguments, filling what neither the command line nor the environment
/// gives from the TOML file named by `--config`.
pub fn parse_with_file<T: Parser>(args: Vec<OsString>) -> anyhow::Result<T> {
    let matches = T::command().try_get_matches_from(args.clone())?;
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return Ok(T::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let command = T::command();
    let mut merged = args;
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            bail!("{}: unknown setting `{key}`", path.display());
        };
        let given = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        if arg.get_id() == "config" {
            bail!("{}: `config` cannot name another file", path.display());
        }
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!("{}: `{key}` cannot be {}", path.display(), other.type_str()),
            };
            merged.push(OsString::from(format!("--{long}={text}")));
        }
    }
    let matches = T::command().try_get_matches_from(merged)?;
    Ok(T::from_arg_matches(&matches)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Parser, Debug)]
    struct Probe {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<ServeArgs> {
        let mut all = vec![OsString::from("pulse")];
        all.extend(args.iter().map(OsString::from));
        parse_with_file::<Probe>(all).map(|p| p.serve)
    }

    #[test]
    fn parses_model_specs() {
        let args = parse(&["--model", "mini=/models/mini", "--model", "org/other"]).unwrap();
        assert_eq!(
            args.model_specs().unwrap(),
            vec![
                ModelSpec {
                    name: "mini".into(),
                    source: "/models/mini".into()
                },
                ModelSpec {
                    name: "org/other".into(),
                    source: "org/other".into()
                },
            ]
        );
        let twice = parse(&["--model", "a=x", "--model", "a=y"]).unwrap();
        assert!(
            twice
                .model_specs()
                .unwrap_err()
                .to_string()
                .contains("given twice")
        );
    }

    #[test]
    fn file_fills_what_flags_do_not_give() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pulse.toml");
        std::fs::write(
            &file,
            "max-wait-ms = 9\nmax_batch_texts = 7\nmodel = [\"a=x\", \"b=y\"]\nlog-format = \"json\"\n",
        )
        .unwrap();
        let args = parse(&["--config", file.to_str().unwrap(), "--max-batch-texts", "3"]).unwrap();
        assert_eq!(args.max_wait_ms, 9);
        assert_eq!(args.max_batch_texts.get(), 3, "the flag wins over the file");
        assert_eq!(args.model_specs().unwrap().len(), 2);
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn llm_settings_come_from_flags_and_a_key_file() {
        let args = parse(&[]).unwrap();
        assert!(args.llm.provider().unwrap().is_none());
        let no_model = parse(&["--llm-base-url", "http://127.0.0.1:1/v1"]).unwrap();
        let err = no_model.llm.provider().err().unwrap().to_string();
        assert!(err.contains("--llm-model"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk-from-file\nignored\n").unwrap();
        let args = parse(&[
            "--llm-base-url",
            "http://127.0.0.1:1/v1",
            "--llm-model",
            "m",
            "--llm-provider",
            "anthropic",
            "--llm-api-key-file",
            key.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(args.llm.api_key().unwrap().as_deref(), Some("sk-from-file"));
        let flag = parse(&["--llm-api-key", "sk-flag"]).unwrap();
        assert_eq!(flag.llm.api_key().unwrap().as_deref(), Some("sk-flag"));
        assert!(
            !format!("{flag:?}").contains("sk-flag"),
            "Debug shows the key"
        );
        let provider = args.llm.provider().unwrap().unwrap();
        assert_eq!((provider.name(), provider.model()), ("anthropic", "m"));
        let bad = parse(&["--llm-member-overlap", "1.5"]).unwrap();
        assert!(bad.llm.summary_config().is_err());
        std::fs::write(&key, "\n").unwrap();
        assert!(args.llm.api_key().is_err());
    }

    #[test]
    fn unknown_file_settings_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pulse.toml");
        std::fs::write(&file, "max-wiat-ms = 9\n").unwrap();
        let err = parse(&["--config", file.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown setting `max-wiat-ms`"), "{err}");
    }
}
