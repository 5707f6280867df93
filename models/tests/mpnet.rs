//! all-mpnet-base-v2 against embeddings made by Python sentence-transformers
//! (`../shared/fixtures/mpnet`). Needs the model in the cache:
//! `scripts/fetch-model all-mpnet-base-v2` (the test scripts run it; it
//! downloads only what is not cached yet).

mod common;
#[path = "common/fixtures.rs"]
mod fixtures;

use common::offline_cpu_options;
use fixtures::{Parity, assert_token_counts, embed_mixed};
use pulse_models::{Architecture, DTypeSpec, Embedder, EmbedderOptions, EncoderKind};

const MPNET: &str = "sentence-transformers/all-mpnet-base-v2";

fn load(dtype: DTypeSpec) -> pulse_models::Result<Embedder> {
    let options = EmbedderOptions {
        dtype,
        ..offline_cpu_options(EncoderKind::Native)
    };
    Embedder::load(MPNET, &options)
}

/// f32, then the dense layers' weights in int8 and bf16 (bf16 loads only on
/// CPUs with AVX-512 BF16; elsewhere it must say so). One test, so that the
/// 110M-parameter model is loaded once per precision and no two load at once.
#[test]
fn matches_sentence_transformers_in_every_cpu_precision() {
    let cases = fixtures::cases("mpnet");
    assert_eq!(cases.len(), 142);
    let embedder = load(DTypeSpec::F32)
        .unwrap_or_else(|e| panic!("{e}\n(run scripts/fetch-model all-mpnet-base-v2 first)"));
    let info = embedder.info();
    assert_eq!(info.architecture, Architecture::Mpnet);
    assert_eq!((info.dimension, info.max_seq_length), (768, 384));
    assert!(info.normalize);
    assert_token_counts(&embedder, &cases);
    let parity = Parity::of(&cases, &embed_mixed(&embedder, &cases, 13));
    eprintln!("f32 on {}: {parity}", info.kernels);
    assert!(parity.lowest >= 0.9999, "f32: {parity}");
    drop(embedder);

    fixtures::assert_reduced_precisions(&cases, load);
}

/// On a CUDA GPU in f32, f16 and bf16 against the fixtures. Needs a GPU:
/// `scripts/test-cuda`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_matches_sentence_transformers() {
    use pulse_models::DeviceSpec;
    let cases = fixtures::cases("mpnet");
    for (dtype, name, floor) in [
        (DTypeSpec::F32, "f32", 0.9999),
        (DTypeSpec::F16, "f16", 0.999),
        (DTypeSpec::BF16, "bf16", 0.999),
    ] {
        let options = EmbedderOptions {
            device: DeviceSpec::Cuda(0),
            dtype,
            ..offline_cpu_options(EncoderKind::Native)
        };
        let embedder = Embedder::load(MPNET, &options).unwrap();
        assert_eq!(embedder.info().device, "cuda:0");
        let parity = Parity::of(&cases, &embed_mixed(&embedder, &cases, 13));
        eprintln!("cuda {name}: {parity}");
        assert!(parity.lowest >= floor, "{name}: {parity}");
    }
}
