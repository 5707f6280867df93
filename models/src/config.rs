//! Reads a sentence-transformers model directory's configuration: the
//! transformer's `config.json`, `modules.json`, `sentence_bert_config.json`
//! and the pooling module's `config.json`.

use crate::error::{ModelError, Result, parse_json};
use candle_transformers::models::bert;
use pulse_kernels::Pooling;
use serde::Deserialize;
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
}

impl Architecture {
    fn from_model_type(model_type: &str) -> Result<Self> {
        match model_type {
            "bert" => Ok(Architecture::Bert),
            "xlm-roberta" | "roberta" => Ok(Architecture::XlmRoberta),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Architecture::Bert => "bert",
            Architecture::XlmRoberta => "xlm-roberta",
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
}

impl ModelConfig {
    pub fn hidden_size(&self) -> usize {
        self.encoder.hidden_size
    }

    /// How many positions the position-embedding table serves.
    fn max_positions(&self) -> usize {
        match self.architecture {
            Architecture::Bert => self.encoder.max_position_embeddings,
            Architecture::XlmRoberta => self
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
        let mut encoder: bert::Config =
            serde_json::from_value(raw).map_err(|e| ModelError::InvalidConfig {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
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
        let mut config = ModelConfig {
            architecture,
            model_type,
            encoder,
            pooling,
            normalize: modules.normalize,
            max_seq_length: 0,
            do_lower_case: sbert.do_lower_case,
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

#[derive(Deserialize, Default)]
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
}

fn read_pooling(path: &Path) -> Result<Pooling> {
    let flags: PoolingFlags = parse_json(path)?;
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
        let dir = dir_with(&[
            ("config.json", BERT_CONFIG),
            (
                "modules.json",
                r#"[{"path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
            ),
            (
                "1_Pooling/config.json",
                r#"{"pooling_mode_cls_token": true, "pooling_mode_max_tokens": true}"#,
            ),
        ]);
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
