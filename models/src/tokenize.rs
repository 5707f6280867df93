//! Text to token ids, the way sentence-transformers prepares them.

use crate::error::{ModelError, Result};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// One text ready for the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The text had more tokens than the model's maximum and was cut.
    pub truncated: bool,
}

impl TokenizedText {
    /// Tokens the model sees, special tokens included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

pub(crate) struct TextTokenizer {
    inner: Tokenizer,
    lowercase: bool,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, replacing its own truncation and padding:
    /// shipped files often pad to a fixed length and cut at a different
    /// length than the model's `max_seq_length`; pulse pads per batch itself.
    pub(crate) fn load(dir: &Path, max_seq_length: usize, lowercase: bool) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                dir: dir.to_path_buf(),
                file: "tokenizer.json",
            });
        }
        let tokenizer_error = |message: String| ModelError::Tokenizer {
            path: path.clone(),
            message,
        };
        let mut inner = Tokenizer::from_file(&path).map_err(|e| tokenizer_error(e.to_string()))?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tokenizer_error(e.to_string()))?;
        inner.with_padding(None);
        Ok(TextTokenizer { inner, lowercase })
    }

    /// Tokenizes one text; `index` names it in errors.
    pub(crate) fn tokenize(&self, index: usize, text: &str) -> Result<TokenizedText> {
        // sentence-transformers strips every input before tokenizing; an
        // empty text becomes just the special tokens, as it does there.
        let text = text.trim();
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            lowered.as_str()
        } else {
            text
        };
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| ModelError::Tokenize {
                index,
                message: e.to_string(),
            })?;
        Ok(TokenizedText {
            truncated: !encoding.get_overflowing().is_empty(),
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
        })
    }
}
