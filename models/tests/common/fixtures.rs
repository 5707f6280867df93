//! sentence-transformers' reference embeddings (`../shared/fixtures/<model>`)
//! and how close pulse comes to them.

use super::common::cosine;
use pulse_models::{DTypeSpec, Embedder};
use std::path::{Path, PathBuf};

pub struct Case {
    pub id: String,
    pub text: String,
    pub tokens: usize,
    pub truncated: bool,
    pub embedding: Vec<f32>,
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("PULSE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

/// The cases of `<model>/cases.jsonl`.
pub fn cases(model: &str) -> Vec<Case> {
    let path = fixtures_dir().join(model).join("cases.jsonl");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (set PULSE_FIXTURES)", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            Case {
                id: v["id"].as_str().unwrap().to_string(),
                text: v["text"].as_str().unwrap().to_string(),
                tokens: v["tokens"].as_u64().unwrap() as usize,
                truncated: v["truncated"].as_bool().unwrap(),
                embedding: v["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            }
        })
        .collect()
}

/// Embeds `cases` in batches that mix short and long texts: each batch takes
/// texts from both ends of the fixture file, where the short and long ones are.
pub fn embed_mixed(embedder: &Embedder, cases: &[Case], batch_size: usize) -> Vec<Vec<f32>> {
    let n = cases.len();
    let order: Vec<usize> = (0..n)
        .map(|i| if i % 2 == 0 { i / 2 } else { n - 1 - i / 2 })
        .collect();
    let mut out = vec![Vec::new(); n];
    for chunk in order.chunks(batch_size) {
        let texts: Vec<&str> = chunk.iter().map(|&i| cases[i].text.as_str()).collect();
        for (&i, vector) in chunk.iter().zip(embedder.embed(&texts).unwrap()) {
            out[i] = vector;
        }
    }
    out
}

/// Every case's token count and truncation as sentence-transformers saw them.
pub fn assert_token_counts(embedder: &Embedder, cases: &[Case]) {
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    for (case, tokenized) in cases.iter().zip(embedder.tokenize(&texts)) {
        let tokenized = tokenized.unwrap();
        assert_eq!(
            (tokenized.len(), tokenized.truncated),
            (case.tokens, case.truncated),
            "{}",
            case.id
        );
    }
}

/// How close embeddings come to the fixtures.
pub struct Parity {
    pub lowest: f32,
    lowest_case: String,
    mean: f32,
}

impl Parity {
    pub fn of(cases: &[Case], vectors: &[Vec<f32>]) -> Self {
        let cosines: Vec<f32> = cases
            .iter()
            .zip(vectors)
            .map(|(case, v)| cosine(&case.embedding, v))
            .collect();
        let (lowest, at) =
            cosines.iter().enumerate().fold(
                (f32::INFINITY, 0),
                |a, (i, &c)| if c < a.0 { (c, i) } else { a },
            );
        Parity {
            lowest,
            lowest_case: cases[at].id.clone(),
            mean: cosines.iter().sum::<f32>() / cosines.len() as f32,
        }
    }
}

impl std::fmt::Display for Parity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lowest cosine {:.6} ({}), mean {:.6}",
            self.lowest, self.lowest_case, self.mean
        )
    }
}

/// `--dtype int8` and `--dtype bf16` (the dense layers' weights in that
/// precision) within cosine 0.999 of the fixtures, each model loaded by
/// `load`. bf16 loads only on CPUs with AVX-512 BF16; elsewhere it must say
/// so, and is reported as not measured.
pub fn assert_reduced_precisions(
    cases: &[Case],
    load: impl Fn(DTypeSpec) -> pulse_models::Result<Embedder>,
) {
    for (dtype, name) in [(DTypeSpec::Int8, "int8"), (DTypeSpec::BF16, "bf16")] {
        let embedder = match load(dtype) {
            Ok(embedder) => embedder,
            Err(err) if dtype == DTypeSpec::BF16 => {
                assert!(err.to_string().contains("AVX-512 BF16"), "{err}");
                eprintln!("bf16 not measured: {err}");
                continue;
            }
            Err(err) => panic!("{name}: {err}"),
        };
        assert_eq!(embedder.info().dtype, name);
        let parity = Parity::of(cases, &embed_mixed(&embedder, cases, 13));
        eprintln!("{name} on {}: {parity}", embedder.info().kernels);
        assert!(parity.lowest >= 0.999, "{name}: {parity}");
    }
}
