//! all-MiniLM-L6-v2 against embeddings made by Python sentence-transformers
//! (`../shared/fixtures/minilm`). Needs the model in the cache:
//! `scripts/fetch-model` (the test scripts run it).

mod common;

use common::{cosine, offline_cpu_options};
use pulse_models::{DEFAULT_MODEL, DTypeSpec, Embedder, EmbedderOptions, EncoderKind, ModelError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

struct Case {
    id: String,
    text: String,
    tokens: usize,
    truncated: bool,
    embedding: Vec<f32>,
}

fn fixtures_dir() -> PathBuf {
    std::env::var_os("PULSE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn cases() -> Vec<Case> {
    let path = fixtures_dir().join("minilm/cases.jsonl");
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

fn load(encoder: EncoderKind) -> Embedder {
    Embedder::load(DEFAULT_MODEL, &offline_cpu_options(encoder))
        .unwrap_or_else(|e| panic!("{e}\n(run scripts/fetch-model first)"))
}

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| load(EncoderKind::Native))
}

/// Embeds `cases` in batches that mix short and long texts: each batch takes
/// texts from both ends of the fixture file, where the short and long ones are.
fn embed_mixed(embedder: &Embedder, cases: &[Case], batch_size: usize) -> Vec<Vec<f32>> {
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

#[test]
fn matches_sentence_transformers_in_mixed_batches() {
    let cases = cases();
    assert_eq!(cases.len(), 142);
    let embedder = embedder();
    let info = embedder.info();
    assert_eq!((info.dimension, info.max_seq_length), (384, 256));
    assert!(info.normalize);

    let vectors = embed_mixed(embedder, &cases, 13);
    let parity = Parity::of(&cases, &vectors);
    assert!(parity.lowest >= 0.9999, "{parity}");
}

/// How close embeddings come to the fixtures.
struct Parity {
    lowest: f32,
    lowest_case: String,
    mean: f32,
}

impl Parity {
    fn of(cases: &[Case], vectors: &[Vec<f32>]) -> Self {
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

/// `--dtype int8` and `--dtype bf16`: the dense layers' weights in that
/// precision, within the bound of the fixtures. bf16 loads only on
/// CPUs with AVX-512 BF16; elsewhere it must say so.
#[test]
fn reduced_precisions_stay_close_to_sentence_transformers() {
    let cases = cases();
    for (dtype, name) in [(DTypeSpec::Int8, "int8"), (DTypeSpec::BF16, "bf16")] {
        let options = EmbedderOptions {
            dtype,
            ..offline_cpu_options(EncoderKind::Native)
        };
        let embedder = match Embedder::load(DEFAULT_MODEL, &options) {
            Ok(embedder) => embedder,
            Err(err) if dtype == DTypeSpec::BF16 => {
                assert!(err.to_string().contains("AVX-512 BF16"), "{err}");
                eprintln!("bf16 not measured: {err}");
                continue;
            }
            Err(err) => panic!("{name}: {err}"),
        };
        assert_eq!(embedder.info().dtype, name);
        let parity = Parity::of(&cases, &embed_mixed(&embedder, &cases, 13));
        eprintln!("{name} on {}: {parity}", embedder.info().kernels);
        assert!(parity.lowest >= 0.999, "{name}: {parity}");
    }
}

#[test]
fn the_candle_reference_refuses_int8() {
    let options = EmbedderOptions {
        dtype: DTypeSpec::Int8,
        ..offline_cpu_options(EncoderKind::CandleReference)
    };
    let err = Embedder::load(DEFAULT_MODEL, &options).err().unwrap();
    assert!(
        err.to_string().contains("f32 only, not bert in int8"),
        "{err}"
    );
}

#[test]
fn token_counts_and_truncation_match_sentence_transformers() {
    let cases = cases();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    for (case, tokenized) in cases.iter().zip(embedder().tokenize(&texts)) {
        let tokenized = tokenized.unwrap();
        assert_eq!(
            (tokenized.len(), tokenized.truncated),
            (case.tokens, case.truncated),
            "{}",
            case.id
        );
    }
}

#[test]
fn a_text_alone_equals_the_same_text_in_a_batch() {
    let cases = cases();
    let embedder = embedder();
    let batched = embed_mixed(embedder, &cases, 16);
    for (case, in_batch) in cases.iter().zip(&batched) {
        let alone = embedder.embed(&[case.text.as_str()]).unwrap().remove(0);
        let c = cosine(&alone, in_batch);
        assert!(c >= 0.99999, "{}: cosine {c} alone vs in a batch", case.id);
    }
}

#[test]
fn native_encoder_agrees_with_candle_bert_model() {
    let cases = cases();
    let reference = load(EncoderKind::CandleReference);
    let ours = embed_mixed(embedder(), &cases, 11);
    let theirs = embed_mixed(&reference, &cases, 11);
    for ((case, a), b) in cases.iter().zip(&ours).zip(&theirs) {
        let c = cosine(a, b);
        assert!(c >= 0.99999, "{}: cosine {c} between encoders", case.id);
    }
}

#[test]
fn hostile_texts_have_defined_results() {
    let megabyte = "brand ".repeat((1 << 20) / 6);
    // Hieroglyphs are outside the vocabulary; private-use and control
    // characters are cleaned away by the tokenizer's normaliser.
    let unknown = "\u{13000}\u{13001} \u{13002}";
    let cleaned = "\u{e000}\u{0001}\u{0002}";
    let texts = [megabyte.as_str(), unknown, cleaned, "", " \t\n "];
    let tokenized: Vec<_> = embedder()
        .tokenize(&texts)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(tokenized[0].truncated);
    assert_eq!(tokenized[0].len(), 256);
    // [CLS] [UNK] [UNK] [SEP]: one unknown token per word.
    assert_eq!(tokenized[1].ids.len(), 4);
    assert_eq!(tokenized[1].ids[1], tokenized[1].ids[2]);
    assert!(!tokenized[1].truncated);
    // What is left of the rest is [CLS] [SEP], as in sentence-transformers.
    for t in &tokenized[2..] {
        assert_eq!(t.len(), 2);
    }
    for vector in embedder().embed_tokenized(&tokenized).unwrap() {
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(vector.iter().all(|x| x.is_finite()));
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
}

#[test]
fn embedding_nothing_gives_nothing() {
    assert!(embedder().embed(&[]).unwrap().is_empty());
}

fn model_dir() -> PathBuf {
    embedder().info().dir.clone()
}

/// A copy of the model directory (weights linked, not copied) to break.
fn model_copy() -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    let src = model_dir();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let target = copy.path().join(entry.file_name());
        std::os::unix::fs::symlink(entry.path(), target).unwrap();
    }
    copy
}

#[test]
fn a_directory_without_tokenizer_json_is_a_precise_error() {
    let copy = model_copy();
    std::fs::remove_file(copy.path().join("tokenizer.json")).unwrap();
    let err = Embedder::load(
        copy.path().to_str().unwrap(),
        &offline_cpu_options(EncoderKind::Native),
    )
    .err()
    .expect("loading must fail");
    assert!(
        matches!(
            err,
            ModelError::MissingFile {
                file: "tokenizer.json",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn an_unknown_model_type_is_named() {
    let copy = model_copy();
    let config_path = copy.path().join("config.json");
    let config = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("\"bert\"", "\"funnel-of-doom\"");
    std::fs::remove_file(&config_path).unwrap();
    std::fs::write(&config_path, config).unwrap();
    let err = Embedder::load(
        copy.path().to_str().unwrap(),
        &offline_cpu_options(EncoderKind::Native),
    )
    .err()
    .expect("loading must fail");
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture(ref t) if t == "funnel-of-doom"),
        "{err}"
    );
}

#[test]
fn threads_option_gives_the_same_vectors() {
    let single = Embedder::load(
        DEFAULT_MODEL,
        &EmbedderOptions {
            threads: Some(1),
            ..offline_cpu_options(EncoderKind::Native)
        },
    )
    .unwrap();
    let texts = ["one thread", "or all of them, the vectors stay the same"];
    let a = single.embed(&texts).unwrap();
    let b = embedder().embed(&texts).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(cosine(x, y) >= 0.99999);
    }
}

/// The encoder on a CUDA GPU in f16 and bf16 against the fixtures. Needs a
/// GPU: `scripts/test-cuda`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_half_precision_matches_sentence_transformers() {
    use pulse_models::DeviceSpec;
    let cases = cases();
    for (dtype, name) in [(DTypeSpec::F16, "f16"), (DTypeSpec::BF16, "bf16")] {
        let options = EmbedderOptions {
            device: DeviceSpec::Cuda(0),
            dtype,
            ..offline_cpu_options(EncoderKind::Native)
        };
        let embedder = Embedder::load(DEFAULT_MODEL, &options).unwrap();
        assert_eq!(embedder.info().device, "cuda:0");
        assert_eq!(embedder.info().dtype, name);
        let parity = Parity::of(&cases, &embed_mixed(&embedder, &cases, 13));
        eprintln!("cuda {name}: {parity}");
        assert!(parity.lowest >= 0.999, "{name}: {parity}");
    }
}
