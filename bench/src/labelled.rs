//! Labelled short texts for judging embeddings: a directory in the layout
//! of Debian's `fortunes` package (one file per category, entries separated
//! by a line holding `%`), a WordNet dictionary directory (one gloss per
//! synset, labelled with its lexicographer file, e.g. `noun.animal`), or a
//! JSON-lines file of `{"label": …, "text": …}`.

use anyhow::{Context, bail};
use pulse_trends::quality::{adjusted_rand_index, v_measure};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where `scripts/fetch-fortunes` puts Debian's `fortunes`.
pub const FORTUNES: &str = "/usr/share/games/fortunes";

/// Where `scripts/fetch-wordnet` puts Debian's `wordnet-base`.
pub const WORDNET: &str = "/usr/share/wordnet";

/// One text and its label; also one line of the JSON-lines layout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LabelledText {
    pub label: String,
    pub text: String,
}

/// A set named on the command line as `NAME[:STRIDE]`: `fortunes`
/// (Debian's fortunes), `wordnet` (WordNet glosses by lexicographer file),
/// or a directory / JSON-lines file of `{"label", "text"}`; every
/// STRIDE-th text is taken (all without a stride).
pub struct SetSpec {
    pub name: String,
    pub path: PathBuf,
    pub stride: usize,
}

impl SetSpec {
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let (name, stride) = match spec.rsplit_once(':') {
            Some((name, stride)) => (
                name,
                stride
                    .parse::<usize>()
                    .with_context(|| format!("`{spec}`: the stride is not a number"))?,
            ),
            None => (spec, 1),
        };
        let path = match name {
            "fortunes" => PathBuf::from(FORTUNES),
            "wordnet" => PathBuf::from(WORDNET),
            other => PathBuf::from(other),
        };
        Ok(SetSpec {
            name: name.to_string(),
            path,
            stride,
        })
    }

    pub fn load(&self) -> anyhow::Result<Vec<LabelledText>> {
        load(&self.path, self.stride).with_context(|| {
            format!(
                "set `{}` (scripts/fetch-fortunes and scripts/fetch-wordnet install the named sets)",
                self.name
            )
        })
    }
}

/// How a labelling (trends, −1 for noise) agrees with a set's labels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    pub trends: usize,
    /// Share of texts in a trend.
    pub coverage: f64,
    /// Over all texts, noise as one class.
    pub v_measure: f64,
    pub ari: f64,
    /// Over the texts in a trend.
    pub clustered_v_measure: f64,
    pub clustered_ari: f64,
}

pub fn scores(truth: &[i64], labels: &[i32]) -> Scores {
    let clustered: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
    let kept_truth: Vec<i64> = clustered.iter().map(|&i| truth[i]).collect();
    let kept_labels: Vec<i32> = clustered.iter().map(|&i| labels[i]).collect();
    let trends = labels
        .iter()
        .copied()
        .max()
        .map_or(0, |m| (m + 1).max(0) as usize);
    let (clustered_v_measure, clustered_ari) = if clustered.is_empty() {
        (0.0, 0.0)
    } else {
        (
            v_measure(&kept_truth, &kept_labels),
            adjusted_rand_index(&kept_truth, &kept_labels),
        )
    };
    Scores {
        trends,
        coverage: clustered.len() as f64 / labels.len().max(1) as f64,
        v_measure: v_measure(truth, labels),
        ari: adjusted_rand_index(truth, labels),
        clustered_v_measure,
        clustered_ari,
    }
}

/// Every `stride`-th text of the set at `path`, in a stable order
/// (fortunes: categories sorted by name, entries in file order; WordNet:
/// nouns, verbs, adjectives, adverbs, synsets in file order).
pub fn load(path: &Path, stride: usize) -> anyhow::Result<Vec<LabelledText>> {
    if stride == 0 {
        bail!("the stride must be at least 1");
    }
    let all = if path.join("data.noun").is_file() {
        from_wordnet(path)?
    } else if path.is_dir() {
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

/// WordNet 3.0's lexicographer file names, indexed by a synset's
/// `lex_filenum` (lexnames(5WN); Debian's package ships no `lexnames` file).
const LEXNAMES: [&str; 45] = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
];

/// One text per synset: its gloss without the usage examples, labelled with
/// its lexicographer file. A missing `data.*` other than `data.noun` is
/// skipped, so a partial dictionary still loads.
fn from_wordnet(dir: &Path) -> anyhow::Result<Vec<LabelledText>> {
    let mut all = Vec::new();
    for pos in ["noun", "verb", "adj", "adv"] {
        let path = dir.join(format!("data.{pos}"));
        if pos != "noun" && !path.exists() {
            continue;
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            // The licence header's lines start with two spaces.
            if line.starts_with("  ") || line.trim().is_empty() {
                continue;
            }
            let synset =
                wordnet_synset(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
            all.push(synset);
        }
    }
    Ok(all)
}

fn wordnet_synset(line: &str) -> anyhow::Result<LabelledText> {
    let Some((fields, gloss)) = line.split_once(" | ") else {
        bail!("a synset with no gloss (no ` | `)");
    };
    let Some(number) = fields.split(' ').nth(1) else {
        bail!("a synset with no lex_filenum field");
    };
    let label = number
        .parse::<usize>()
        .ok()
        .and_then(|n| LEXNAMES.get(n))
        .with_context(|| format!("unknown lex_filenum {number:?}"))?;
    let definition = gloss.split_once("; \"").map_or(gloss, |(d, _)| d);
    Ok(LabelledText {
        label: label.to_string(),
        text: definition
            .trim()
            .trim_end_matches(';')
            .trim_end()
            .to_string(),
    })
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

    fn pairs(texts: &[LabelledText]) -> Vec<(&str, &str)> {
        texts
            .iter()
            .map(|t| (t.label.as_str(), t.text.as_str()))
            .collect()
    }

    #[test]
    fn reads_fortune_files_and_skips_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("food"), "Eat.\n%\nDrink.\n%\n").unwrap();
        std::fs::write(dir.path().join("art"), "Paint\nwell.\n%\n\n%\nSing.\n").unwrap();
        std::fs::write(dir.path().join("art.dat"), [0u8, 1, 2]).unwrap();
        let texts = load(dir.path(), 1).unwrap();
        assert_eq!(
            pairs(&texts),
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

    const WORDNET_HEADER: &str = "  1 This software and database is provided | as is  \n  2   \n";

    #[test]
    fn reads_wordnet_glosses_without_their_examples() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("data.verb"),
            format!(
                "{WORDNET_HEADER}00001740 29 v 01 breathe 0 000 | draw air into, and expel out of, \
                 the lungs; \"I can breathe\"; \"She breathes\"  \n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("data.noun"),
            format!(
                "{WORDNET_HEADER}00001740 03 n 01 entity 0 000 | that which exists  \n\
                 01234567 05 n 01 dog 0 000 | a domestic animal; kept as a pet;  \n"
            ),
        )
        .unwrap();
        // A fortunes-like file beside them must not turn the directory into fortunes.
        std::fs::write(dir.path().join("lexnames"), "ignored\n").unwrap();
        let texts = load(dir.path(), 1).unwrap();
        assert_eq!(
            pairs(&texts),
            [
                ("noun.Tops", "that which exists"),
                ("noun.animal", "a domestic animal; kept as a pet"),
                ("verb.body", "draw air into, and expel out of, the lungs"),
            ]
        );
        assert_eq!(load(dir.path(), 2).unwrap()[1].label, "verb.body");
    }

    #[test]
    fn names_the_line_of_an_unknown_wordnet_lexname() {
        let dir = tempfile::tempdir().unwrap();
        let noun = dir.path().join("data.noun");
        for bad in [
            "01234567 45 n 01 dog 0 000 | a dog  ",
            "01234567 xx n 01 dog 0 000 | a dog  ",
        ] {
            std::fs::write(&noun, format!("{WORDNET_HEADER}{bad}\n")).unwrap();
            let error = format!("{:#}", load(dir.path(), 1).unwrap_err());
            assert!(error.contains("data.noun:3"), "{error}");
            assert!(error.contains("lex_filenum"), "{error}");
        }
        std::fs::write(
            &noun,
            format!("{WORDNET_HEADER}01234567 05 n 01 dog 0 000\n"),
        )
        .unwrap();
        let error = format!("{:#}", load(dir.path(), 1).unwrap_err());
        assert!(error.contains("data.noun:3"), "{error}");
        std::fs::write(&noun, WORDNET_HEADER).unwrap();
        assert!(load(dir.path(), 1).is_err());
    }
}
