use std::path::PathBuf;

/// Everything that can go wrong finding, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model `{name}` was not found; tried:\n  - {}", tried.join("\n  - "))]
    NotFound { name: String, tried: Vec<String> },

    #[error(
        "invalid model name `{0}`: expected a local directory or a Hugging Face id `org/name[@revision]`"
    )]
    InvalidName(String),

    #[error("model directory {dir} has no {file}")]
    MissingFile { dir: PathBuf, file: &'static str },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid {path}: {message}")]
    InvalidConfig { path: PathBuf, message: String },

    #[error("unsupported architecture `{0}` (supported: bert, xlm-roberta and mpnet families)")]
    UnsupportedArchitecture(String),

    #[error("cannot load tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("{0}")]
    Prompt(#[from] PromptError),

    #[error("text {index} cannot be tokenized: {message}")]
    Tokenize { index: usize, message: String },

    #[error("invalid device `{0}`: expected auto, cpu or cuda[:N]")]
    InvalidDevice(String),

    #[error("device {0} needs pulse built with the `cuda` feature")]
    CudaNotBuilt(String),

    #[error("invalid dtype `{0}`: expected auto, f32, f16, bf16 or int8")]
    InvalidDType(String),

    #[error("dtype {dtype} is not supported on {device}")]
    UnsupportedDType { dtype: String, device: String },

    #[error("cannot build a thread pool: {0}")]
    ThreadPool(String),

    #[error("download from the Hugging Face hub failed: {0}")]
    Hub(String),

    #[error(transparent)]
    Pooling(#[from] pulse_kernels::PoolingError),

    #[error("encoder layer: {0}")]
    Layer(#[from] pulse_kernels::transformer::TransformerError),

    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// A request's prompt that the model cannot give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("the model has no prompt named `{name}`; its prompts: {}", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    Unknown { name: String, known: Vec<String> },
    #[error("give a prompt or a prompt name, not both")]
    Both,
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

pub(crate) fn read_to_string(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
