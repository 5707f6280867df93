//! Arbitrary text through the default model's tokenizer, as every request
//! text goes: it must never panic, never give more tokens than the model
//! takes, and say `truncated` exactly when it cut. Every 64th input is also
//! embedded (slower), which must give a finite unit vector.
//!
//! `scripts/fuzz [seconds]` runs it (nightly, cargo-fuzz).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pulse_models::{DEFAULT_MODEL, DeviceSpec, Embedder, EmbedderOptions, ResolveOptions};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

static EMBEDDER: LazyLock<Embedder> = LazyLock::new(|| {
    let options = EmbedderOptions {
        device: DeviceSpec::Cpu,
        threads: Some(1),
        resolve: ResolveOptions {
            offline: true,
            progress: false,
            ..ResolveOptions::from_env()
        },
        ..EmbedderOptions::default()
    };
    Embedder::load(DEFAULT_MODEL, &options).expect("the default model (scripts/fetch-model)")
});
static RUNS: AtomicUsize = AtomicUsize::new(0);

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let embedder = &*EMBEDDER;
    let max = embedder.info().max_seq_length;
    let Some(Ok(tokens)) = embedder.tokenize(&[text.as_ref()]).into_iter().next() else {
        return;
    };
    assert!(tokens.len() <= max, "{} tokens > {max}", tokens.len());
    assert_eq!(tokens.ids.len(), tokens.type_ids.len());
    if tokens.truncated {
        assert_eq!(tokens.len(), max, "cut short of the maximum");
    }
    if RUNS.fetch_add(1, Ordering::Relaxed).is_multiple_of(64) {
        let vectors = embedder
            .embed_tokenized(&[tokens])
            .expect("a tokenized text embeds");
        let norm: f32 = vectors[0].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(vectors[0].iter().all(|v| v.is_finite()));
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
});
