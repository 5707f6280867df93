//! all-MiniLM-L6-v2 against embeddings made by Python sentence-transformers
//! (`../shared/fixtures/minilm`). Needs the model in the cache:
//! `scripts/fetch-model` (the test scripts run it).

mod common;
#[path = "common/fixtures.rs"]
mod fixtures;

use common::{cosine, offline_cpu_options};
use fixtures::{Parity, assert_token_counts, embed_mixed};
use pulse_models::{DEFAULT_MODEL, DTypeSpec, Embedder, EmbedderOptions, EncoderKind, ModelError};
use std::path::PathBuf;
use std::sync::OnceLock;

fn cases() -> Vec<fixtures::Case> {
    fixtures::cases("minilm")
}

fn load(encoder: EncoderKind) -> Embedder {
    Embedder::load(DEFAULT_MODEL, &offline_cpu_options(encoder))
        .unwrap_or_else(|e| panic!("{e}\n(run scripts/fetch-model first)"))
}

fn embedder() -> &'static Embedder {
    static EMBEDDER: OnceLock<Embedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| load(EncoderKind::Native))
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

/// `--dtype int8` and `--dtype bf16`: the dense layers' weights in that
/// precision, within the bound of the fixtures. bf16 loads only on
/// CPUs with AVX-512 BF16; elsewhere it must say so.
#[test]
fn reduced_precisions_stay_close_to_sentence_transformers() {
    fixtures::assert_reduced_precisions(&cases(), |dtype| {
        let options = EmbedderOptions {
            dtype,
            ..offline_cpu_options(EncoderKind::Native)
        };
        Embedder::load(DEFAULT_MODEL, &options)
    });
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
    assert_token_counts(embedder(), &cases());
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
