//! Labelled short texts for judging embeddings: a directory in the layout
//! of Debian's `fortunes` package (one file per category, entries separated
//! by a line holding `%`) or a JSON-lines file of `{"label": …, "text": …}`.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::Path;

/// Where `scripts/fetch-fortunes` puts Debian's `fortunes`.
pub const FORTUNES: &str = "/usr/share/games/fortunes";

/// One text and its label; also one line of the JSON-lines layout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LabelledText {
    pub label: String,
    pub text: String,
}

/// Every `stride`-th text of the set at `path`, in a stable order
/// (categories sorted by name, entries in file order).
pub fn load(path: &Path, stride: usize) -> anyhow::Result<Vec<LabelledText>> {
    if stride == 0 {
        bail!("the stride must be at least 1");
    }
    let all = if path.is_dir() {
        from_directory(path)?
    } else {
        from_json_lines(path)?
    };
    if all.is_empty() {
        bail!("{} holds no labelled texts", path.display());
    }
    Ok(all.into_iter().step_by(stride).collect())
}

fn from_directory(dir: &Path) -> anyhow::Result<Vec<LabelledText>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        // The package ships `.dat` indexes and `.u8` links beside the texts.
        if path.is_file() && path.extension().is_none() {
            files.push(path);
        }
    }
    files.sort();
    let mut all = Vec::new();
    for path in files {
        let label = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        for text in String::from_utf8_lossy(&bytes).split("\n%\n") {
            let text = text.trim().trim_end_matches("\n%").trim();
            if !text.is_empty() && text != "%" {
                all.push(LabelledText {
                    label: label.clone(),
                    text: text.to_string(),
                });
            }
        }
    }
    Ok(all)
}

fn from_json_lines(path: &Path) -> anyhow::Result<Vec<LabelledText>> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    content
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| {
                format!(
                    "{}:{}: expected {{\"label\": …, \"text\": …}}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Each text's label as a small integer, in order of first appearance.
pub fn label_ids(texts: &[LabelledText]) -> Vec<i64> {
    let mut ids = std::collections::HashMap::new();
    texts
        .iter()
        .map(|t| {
            let next = ids.len() as i64;
            *ids.entry(t.label.as_str()).or_insert(next)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fortune_files_and_skips_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("food"), "Eat.\n%\nDrink.\n%\n").unwrap();
        std::fs::write(dir.path().join("art"), "Paint\nwell.\n%\n\n%\nSing.\n").unwrap();
        std::fs::write(dir.path().join("art.dat"), [0u8, 1, 2]).unwrap();
        let texts = load(dir.path(), 1).unwrap();
        let pairs: Vec<(&str, &str)> = texts
            .iter()
            .map(|t| (t.label.as_str(), t.text.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("art", "Paint\nwell."),
                ("art", "Sing."),
                ("food", "Eat."),
                ("food", "Drink.")
            ]
        );
        assert_eq!(load(dir.path(), 2).unwrap().len(), 2);
        assert_eq!(label_ids(&texts), [0, 0, 1, 1]);
    }

    #[test]
    fn reads_json_lines_and_names_a_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("set.jsonl");
        std::fs::write(
            &path,
            "{\"label\": \"a\", \"text\": \"x\"}\n\n{\"label\": \"b\", \"text\": \"y\"}\n",
        )
        .unwrap();
        assert_eq!(load(&path, 1).unwrap()[1].label, "b");
        std::fs::write(&path, "{\"label\": \"a\"}\n").unwrap();
        let error = format!("{:#}", load(&path, 1).unwrap_err());
        assert!(error.contains("set.jsonl:1"), "{error}");
        std::fs::write(&path, "").unwrap();
        assert!(load(&path, 1).is_err());
        assert!(load(&path, 0).is_err());
    }
}
