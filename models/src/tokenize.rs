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

    /// Tokenizes one text with `prompt` put before it, as
    /// sentence-transformers does (so the prompt's tokens count, and are cut
    /// last); `index` names the text in errors.
    pub(crate) fn tokenize(&self, index: usize, text: &str, prompt: &str) -> Result<TokenizedText> {
        let prompted;
        let text = if prompt.is_empty() {
            text
        } else {
            prompted = format!("{prompt}{text}");
            prompted.as_str()
        };
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

/// Token ids a caller tokenized itself (special tokens included, as the
/// model is to see them), checked against the vocabulary and cut at
/// `max_seq_length`; `index` names the input in errors.
pub(crate) fn from_token_ids(
    index: usize,
    ids: &[u32],
    vocab_size: usize,
    max_seq_length: usize,
) -> Result<TokenizedText> {
    let invalid = |message: String| ModelError::Tokenize { index, message };
    if ids.is_empty() {
        return Err(invalid("no token ids".into()));
    }
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(invalid(format!(
            "token id {id} is outside the model's vocabulary of {vocab_size}"
        )));
    }
    let kept = &ids[..ids.len().min(max_seq_length)];
    Ok(TokenizedText {
        ids: kept.to_vec(),
        type_ids: vec![0; kept.len()],
        truncated: kept.len() < ids.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_checked_and_cut() {
        let text = from_token_ids(0, &[101, 2000, 102], 30522, 256).unwrap();
        assert_eq!(
            (text.ids, text.type_ids, text.truncated),
            (vec![101, 2000, 102], vec![0; 3], false)
        );
        let cut = from_token_ids(0, &[1, 2, 3, 4], 10, 3).unwrap();
        assert_eq!((cut.ids, cut.truncated), (vec![1, 2, 3], true));
        let outside = from_token_ids(4, &[1, 10], 10, 3).unwrap_err().to_string();
        assert!(
            outside.contains("text 4") && outside.contains("token id 10"),
            "{outside}"
        );
        assert!(from_token_ids(0, &[], 10, 3).is_err());
    }
}
