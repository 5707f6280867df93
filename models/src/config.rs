//! Reads a sentence-transformers model directory's configuration: the
//! transformer's `config.json`, `modules.json`, `sentence_bert_config.json`
//! and the pooling module's `config.json`.

use crate::error::{ModelError, PromptError, Result, parse_json};
use candle_transformers::models::bert;
use pulse_kernels::Pooling;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The encoder families pulse runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// BERT and models of its shape (MiniLM, BGE, E5, GTE-small).
    Bert,
    /// RoBERTa and XLM-RoBERTa: BERT's layers with positions counted from
    /// `pad_token_id + 1`.
    XlmRoberta,
    /// MPNet: RoBERTa's positions, no token types, and a relative position
    /// bias (bucketed by distance, one value per head) on every layer's
    /// attention scores.
    Mpnet,
}

impl Architecture {
    fn from_model_type(model_type: &str) -> Result<Self> {
        match model_type {
            "bert" => Ok(Architecture::Bert),
            "xlm-roberta" | "roberta" => Ok(Architecture::XlmRoberta),
            "mpnet" => Ok(Architecture::Mpnet),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Architecture::Bert => "bert",
            Architecture::XlmRoberta => "xlm-roberta",
            Architecture::Mpnet => "mpnet",
        })
    }
}

/// What a model directory says about how to run it.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// `model_type` exactly as `config.json` spells it.
    pub model_type: String,
    pub encoder: bert::Config,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Longest input in tokens, special tokens included.
    pub max_seq_length: usize,
    pub do_lower_case: bool,
    /// Buckets of MPNet's relative position bias (`None` for models
    /// without one).
    pub relative_attention_buckets: Option<usize>,
    /// Texts put before the input, by name, from
    /// `config_sentence_transformers.json` (E5's `query: `, BGE's
    /// instruction).
    pub prompts: BTreeMap<String, String>,
    /// The prompt applied when a request names none.
    pub default_prompt_name: Option<String>,
}

impl ModelConfig {
    pub fn hidden_size(&self) -> usize {
        self.encoder.hidden_size
    }

    /// The prompt text for a request, as sentence-transformers chooses it:
    /// a literal `prompt` as given (empty: none), else the prompt called
    /// `name`, else the model's default prompt, else none.
    pub fn prompt<'a>(
        &'a self,
        name: Option<&str>,
        prompt: Option<&'a str>,
    ) -> Result<&'a str, PromptError> {
        match (name, prompt) {
            (Some(_), Some(_)) => Err(PromptError::Both),
            (None, Some(prompt)) => Ok(prompt),
            (Some(name), None) => {
                self.prompts
                    .get(name)
                    .map(String::as_str)
                    .ok_or_else(|| PromptError::Unknown {
                        name: name.to_string(),
                        known: self.prompts.keys().cloned().collect(),
                    })
            }
            (None, None) => Ok(self
                .default_prompt_name
                .as_ref()
                .and_then(|name| self.prompts.get(name))
                .map_or("", String::as_str)),
        }
    }

    /// How many positions the position-embedding table serves.
    fn max_positions(&self) -> usize {
        match self.architecture {
            Architecture::Bert => self.encoder.max_position_embeddings,
            Architecture::XlmRoberta | Architecture::Mpnet => self
                .encoder
                .max_position_embeddings
                .saturating_sub(self.encoder.pad_token_id + 1),
        }
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                file: "config.json",
            });
        }
        let raw: serde_json::Value = parse_json(&config_path)?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::InvalidConfig {
                path: config_path.clone(),
                message: "no `model_type`".into(),
            })?
            .to_string();
        let architecture = Architecture::from_model_type(&model_type)?;
        let invalid = |message: String| ModelError::InvalidConfig {
            path: config_path.clone(),
            message,
        };
        let mut raw = raw;
        let relative_attention_buckets = match architecture {
            Architecture::Mpnet => {
                let buckets = raw
                    .get("relative_attention_num_buckets")
                    .map_or(Some(32), serde_json::Value::as_u64)
                    .filter(|&n| n >= 4)
                    .ok_or_else(|| {
                        invalid(
                            "`relative_attention_num_buckets` is not a count of 4 or more".into(),
                        )
                    })?;
                // MPNet has no token types; candle's config wants the count.
                if let Some(fields) = raw.as_object_mut() {
                    fields
                        .entry("type_vocab_size")
                        .or_insert(serde_json::Value::from(0));
                }
                Some(buckets as usize)
            }
            Architecture::Bert | Architecture::XlmRoberta => None,
        };
        let mut encoder: bert::Config =
            serde_json::from_value(raw).map_err(|e| invalid(e.to_string()))?;
        // candle's loader retries under a `{model_type}.` prefix on failure;
        // pulse finds the prefix itself, so a failure stays the real error.
        encoder.model_type = None;

        let modules = read_modules(dir)?;
        let pooling = match &modules.pooling_dir {
            Some(pooling_dir) => read_pooling(&pooling_dir.join("config.json"))?,
            // sentence-transformers wraps a plain transformer in mean pooling.
            None => Pooling::Mean,
        };
        let sbert = read_sbert_config(dir)?;
        let prompts = read_prompts(dir)?;
        let mut config = ModelConfig {
            architecture,
            model_type,
            encoder,
            pooling,
            normalize: modules.normalize,
            max_seq_length: 0,
            do_lower_case: sbert.do_lower_case,
            relative_attention_buckets,
            prompts: prompts.prompts,
            default_prompt_name: prompts.default_prompt_name,
        };
        let wanted = match sbert.max_seq_length {
            Some(n) => n,
            None => read_tokenizer_max_length(dir)?.unwrap_or(usize::MAX),
        };
        config.max_seq_length = wanted.min(config.max_positions());
        if config.max_seq_length < 2 {
            return Err(ModelError::InvalidConfig {
                path: config_path,
                message: format!(
                    "a maximum length of {} tokens leaves no room for text",
                    config.max_seq_length
                ),
            });
        }
        Ok(config)
    }
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

struct Modules {
    pooling_dir: Option<PathBuf>,
    normalize: bool,
}

fn read_modules(dir: &Path) -> Result<Modules> {
    let path = dir.join("modules.json");
    if !path.is_file() {
        return Ok(Modules {
            pooling_dir: None,
            normalize: false,
        });
    }
    let entries: Vec<ModuleEntry> = parse_json(&path)?;
    let mut modules = Modules {
        pooling_dir: None,
        normalize: false,
    };
    for entry in entries {
        let kind = entry.kind.rsplit('.').next().unwrap_or_default();
        match kind {
            "Pooling" => modules.pooling_dir = Some(dir.join(&entry.path)),
            "Normalize" => modules.normalize = true,
            "Transformer" => {}
            other => {
                return Err(ModelError::InvalidConfig {
                    path,
                    message: format!(
                        "module `{other}` is not supported (pulse runs Transformer, Pooling, Normalize)"
                    ),
                });
            }
        }
    }
    Ok(modules)
}

#[derive(Deserialize)]
struct PoolingFlags {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default = "included")]
    include_prompt: bool,
}

fn included() -> bool {
    true
}

fn read_pooling(path: &Path) -> Result<Pooling> {
    let flags: PoolingFlags = parse_json(path)?;
    if !flags.include_prompt {
        return Err(ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message: "pooling that leaves the prompt's tokens out (include_prompt: false) is not supported".into(),
        });
    }
    if flags.pooling_mode_weightedmean_tokens {
        return Err(ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message: "weighted-mean pooling is not supported".into(),
        });
    }
    let chosen: Vec<Pooling> = [
        (flags.pooling_mode_cls_token, Pooling::Cls),
        (flags.pooling_mode_mean_tokens, Pooling::Mean),
        (flags.pooling_mode_max_tokens, Pooling::Max),
        (
            flags.pooling_mode_mean_sqrt_len_tokens,
            Pooling::MeanSqrtLen,
        ),
        (flags.pooling_mode_lasttoken, Pooling::LastToken),
    ]
    .into_iter()
    .filter_map(|(on, pooling)| on.then_some(pooling))
    .collect();
    match chosen.as_slice() {
        [one] => Ok(*one),
        [] => Err(ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message: "no pooling mode is enabled".into(),
        }),
        many => Err(ModelError::InvalidConfig {
            path: path.to_path_buf(),
            message: format!(
                "pooling modes {} are combined; pulse supports one at a time",
                many.iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        }),
    }
}

#[derive(Deserialize, Default)]
struct SbertConfig {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

fn read_sbert_config(dir: &Path) -> Result<SbertConfig> {
    let path = dir.join("sentence_bert_config.json");
    if path.is_file() {
        parse_json(&path)
    } else {
        Ok(SbertConfig::default())
    }
}

#[derive(Deserialize, Default)]
struct Prompts {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
    #[serde(default)]
    default_prompt_name: Option<String>,
}

fn read_prompts(dir: &Path) -> Result<Prompts> {
    let path = dir.join("config_sentence_transformers.json");
    if !path.is_file() {
        return Ok(Prompts::default());
    }
    let prompts: Prompts = parse_json(&path)?;
    if let Some(name) = &prompts.default_prompt_name
        && !prompts.prompts.contains_key(name)
    {
        return Err(ModelError::InvalidConfig {
            path,
            message: format!("the default prompt `{name}` is not among the prompts"),
        });
    }
    Ok(prompts)
}

fn read_tokenizer_max_length(dir: &Path) -> Result<Option<usize>> {
    #[derive(Deserialize)]
    struct TokenizerConfig {
        model_max_length: Option<f64>,
    }
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let config: TokenizerConfig = parse_json(&path)?;
    // transformers writes a huge float for "no limit".
    Ok(config
        .model_max_length
        .filter(|n| *n > 0.0 && *n < 1e9)
        .map(|n| n as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERT_CONFIG: &str = r#"{
        "model_type": "bert", "vocab_size": 100, "hidden_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0
    }"#;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    /// A BERT model whose one module is pooling configured by `pooling`.
    fn with_pooling(pooling: &str) -> tempfile::TempDir {
        dir_with(&[
            ("config.json", BERT_CONFIG),
            (
                "modules.json",
                r#"[{"path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
            ),
            ("1_Pooling/config.json", pooling),
        ])
    }

    #[test]
    fn reads_sentence_transformers_modules() {
        let dir = dir_with(&[
            ("config.json", BERT_CONFIG),
            (
                "modules.json",
                r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                    {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                    {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
            ),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_cls_token": true}"#,
            ),
            (
                "sentence_bert_config.json",
                r#"{"max_seq_length": 256, "do_lower_case": true}"#,
            ),
        ]);
        let config = ModelConfig::load(dir.path()).unwrap();
        assert_eq!(config.architecture, Architecture::Bert);
        assert_eq!(config.pooling, Pooling::Cls);
        assert!(config.normalize);
        assert!(config.do_lower_case);
        // Capped by the 64 positions the model has.
        assert_eq!(config.max_seq_length, 64);
    }

    #[test]
    fn plain_transformer_defaults_to_mean_without_normalize() {
        let dir = dir_with(&[("config.json", BERT_CONFIG)]);
        let config = ModelConfig::load(dir.path()).unwrap();
        assert_eq!(config.pooling, Pooling::Mean);
        assert!(!config.normalize);
        assert_eq!(config.max_seq_length, 64);
    }

    #[test]
    fn roberta_positions_start_after_padding() {
        let xlmr = BERT_CONFIG
            .replace("\"bert\"", "\"xlm-roberta\"")
            .replace("\"pad_token_id\": 0", "\"pad_token_id\": 1");
        let dir = dir_with(&[("config.json", &xlmr)]);
        let config = ModelConfig::load(dir.path()).unwrap();
        assert_eq!(config.architecture, Architecture::XlmRoberta);
        assert_eq!(config.max_seq_length, 62);
    }

    #[test]
    fn mpnet_has_no_token_types_and_bucketed_positions() {
        let mpnet = BERT_CONFIG
            .replace("\"bert\"", "\"mpnet\"")
            .replace(
                "\"type_vocab_size\": 2,",
                "\"relative_attention_num_buckets\": 16,",
            )
            .replace("\"pad_token_id\": 0", "\"pad_token_id\": 1");
        let dir = dir_with(&[("config.json", &mpnet)]);
        let config = ModelConfig::load(dir.path()).unwrap();
        assert_eq!(config.architecture, Architecture::Mpnet);
        assert_eq!(config.encoder.type_vocab_size, 0);
        assert_eq!(config.relative_attention_buckets, Some(16));
        assert_eq!(config.max_seq_length, 62);
        let broken = mpnet.replace(
            "\"relative_attention_num_buckets\": 16",
            "\"relative_attention_num_buckets\": -3",
        );
        let dir = dir_with(&[("config.json", &broken)]);
        let err = ModelConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("relative_attention_num_buckets"), "{err}");
    }

    #[test]
    fn prompts_are_chosen_as_sentence_transformers_chooses_them() {
        let dir = dir_with(&[
            ("config.json", BERT_CONFIG),
            (
                "config_sentence_transformers.json",
                r#"{"prompts": {"query": "query: ", "passage": "passage: "},
                    "default_prompt_name": "passage"}"#,
            ),
        ]);
        let config = ModelConfig::load(dir.path()).unwrap();
        assert_eq!(config.prompt(None, None), Ok("passage: "));
        assert_eq!(config.prompt(Some("query"), None), Ok("query: "));
        assert_eq!(config.prompt(None, Some("")), Ok(""));
        assert_eq!(config.prompt(None, Some("Represent: ")), Ok("Represent: "));
        assert_eq!(
            config.prompt(Some("query"), Some("x")),
            Err(PromptError::Both)
        );
        let unknown = config.prompt(Some("doc"), None).unwrap_err().to_string();
        assert!(
            unknown.contains("`doc`") && unknown.contains("passage, query"),
            "{unknown}"
        );

        let plain = dir_with(&[("config.json", BERT_CONFIG)]);
        let config = ModelConfig::load(plain.path()).unwrap();
        assert_eq!(config.prompt(None, None), Ok(""));
        let none = config.prompt(Some("query"), None).unwrap_err().to_string();
        assert!(none.contains("its prompts: none"), "{none}");

        let dangling = dir_with(&[
            ("config.json", BERT_CONFIG),
            (
                "config_sentence_transformers.json",
                r#"{"prompts": {"query": "query: "}, "default_prompt_name": "passage"}"#,
            ),
        ]);
        let err = ModelConfig::load(dangling.path()).unwrap_err().to_string();
        assert!(err.contains("default prompt `passage`"), "{err}");
    }

    #[test]
    fn pooling_without_the_prompt_is_refused() {
        let dir = with_pooling(r#"{"pooling_mode_mean_tokens": true, "include_prompt": false}"#);
        let err = ModelConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("include_prompt"), "{err}");
    }

    #[test]
    fn unknown_model_type_is_named() {
        let dir = dir_with(&[("config.json", &BERT_CONFIG.replace("\"bert\"", "\"mamba\""))]);
        let err = ModelConfig::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedArchitecture(ref t) if t == "mamba"),
            "{err}"
        );
        assert!(err.to_string().contains("`mamba`"));
    }

    #[test]
    fn combined_pooling_modes_are_rejected() {
        let dir =
            with_pooling(r#"{"pooling_mode_cls_token": true, "pooling_mode_max_tokens": true}"#);
        let err = ModelConfig::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("cls + max"), "{err}");
    }

    #[test]
    fn missing_and_broken_configs_are_errors() {
        let empty = dir_with(&[]);
        assert!(matches!(
            ModelConfig::load(empty.path()),
            Err(ModelError::MissingFile {
                file: "config.json",
                ..
            })
        ));
        let broken = dir_with(&[("config.json", "{not json")]);
        assert!(matches!(
            ModelConfig::load(broken.path()),
            Err(ModelError::InvalidConfig { .. })
        ));
        let untyped = dir_with(&[("config.json", "{}")]);
        let err = ModelConfig::load(untyped.path()).unwrap_err().to_string();
        assert!(err.contains("model_type"), "{err}");
    }
}
