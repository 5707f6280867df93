//! Architectures without real weights here, run as tiny randomly initialised
//! models built by the test: shapes, masking, batch invariance, and agreement
//! with candle-transformers' own implementations of the same architecture.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::xlm_roberta::{self, XLMRobertaModel};
use common::{cosine, offline_cpu_options};
use pulse_models::{
    Architecture, DeviceSpec, Embedder, EmbedderOptions, EncoderKind, Pooling, ResolveOptions,
};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

const WORDS: [&str; 12] = [
    "brand", "signal", "trend", "coffee", "shoes", "great", "awful", "new", "price", "store",
    "today", "again",
];
const HIDDEN: usize = 32;
const HEADS: usize = 4;
const INTERMEDIATE: usize = 64;
const LAYERS: usize = 2;
const MAX_POSITIONS: usize = 40;

struct Family {
    model_type: &'static str,
    /// Special tokens in id order; the pad token's id is `pad_id`.
    specials: [&'static str; 4],
    bos: &'static str,
    eos: &'static str,
    unk: &'static str,
    pad_id: u32,
    type_vocab: usize,
}

const XLM_ROBERTA: Family = Family {
    model_type: "xlm-roberta",
    specials: ["<s>", "<pad>", "</s>", "<unk>"],
    bos: "<s>",
    eos: "</s>",
    unk: "<unk>",
    pad_id: 1,
    type_vocab: 1,
};

const BERT: Family = Family {
    model_type: "bert",
    specials: ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
    bos: "[CLS]",
    eos: "[SEP]",
    unk: "[UNK]",
    pad_id: 0,
    type_vocab: 2,
};

fn vocab_size() -> usize {
    4 + WORDS.len()
}

fn config_json(family: &Family) -> serde_json::Value {
    json!({
        "model_type": family.model_type,
        "vocab_size": vocab_size(),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": MAX_POSITIONS,
        "type_vocab_size": family.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "pad_token_id": family.pad_id,
        "position_embedding_type": "absolute",
    })
}

fn tokenizer_json(family: &Family) -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (id, token) in family.specials.iter().chain(WORDS.iter()).enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    let id_of = |t: &str| family.specials.iter().position(|s| *s == t).unwrap();
    let special = |t: &str| json!({"id": t, "ids": [id_of(t)], "tokens": [t]});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": family.bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": family.eos, "type_id": 0}}
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}}
            ],
            "special_tokens": {family.bos: special(family.bos), family.eos: special(family.eos)}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": family.unk}
    })
}

/// Random weights large enough that attention is far from uniform, so a
/// padding leak would show.
struct RandomWeights {
    prefix: &'static str,
    tensors: HashMap<String, Tensor>,
}

impl RandomWeights {
    fn put(&mut self, name: &str, shape: &[usize], std: f32, mean: f64) {
        let t = (Tensor::randn(0f32, std, shape, &Device::Cpu).unwrap() + mean).unwrap();
        self.tensors.insert(format!("{}{name}", self.prefix), t);
    }

    fn linear(&mut self, at: &str, out: usize, inp: usize, std: f32) {
        self.put(&format!("{at}.weight"), &[out, inp], std, 0.0);
        self.put(&format!("{at}.bias"), &[out], 0.1, 0.0);
    }

    fn layer_norm(&mut self, at: &str) {
        self.put(&format!("{at}.weight"), &[HIDDEN], 0.1, 1.0);
        self.put(&format!("{at}.bias"), &[HIDDEN], 0.1, 0.0);
    }
}

fn random_weights(family: &Family, prefix: &'static str) -> HashMap<String, Tensor> {
    let mut w = RandomWeights {
        prefix,
        tensors: HashMap::new(),
    };
    w.put(
        "embeddings.word_embeddings.weight",
        &[vocab_size(), HIDDEN],
        1.0,
        0.0,
    );
    w.put(
        "embeddings.position_embeddings.weight",
        &[MAX_POSITIONS, HIDDEN],
        1.0,
        0.0,
    );
    w.put(
        "embeddings.token_type_embeddings.weight",
        &[family.type_vocab, HIDDEN],
        1.0,
        0.0,
    );
    w.layer_norm("embeddings.LayerNorm");
    for l in 0..LAYERS {
        let at = format!("encoder.layer.{l}");
        for p in ["query", "key", "value"] {
            w.linear(&format!("{at}.attention.self.{p}"), HIDDEN, HIDDEN, 0.4);
        }
        w.linear(&format!("{at}.attention.output.dense"), HIDDEN, HIDDEN, 0.2);
        w.layer_norm(&format!("{at}.attention.output.LayerNorm"));
        w.linear(
            &format!("{at}.intermediate.dense"),
            INTERMEDIATE,
            HIDDEN,
            0.2,
        );
        w.linear(&format!("{at}.output.dense"), HIDDEN, INTERMEDIATE, 0.2);
        w.layer_norm(&format!("{at}.output.LayerNorm"));
    }
    w.tensors
}

/// Writes a tiny model of `family` into a fresh directory, its weights under
/// `prefix` (as task checkpoints store them), with `pooling`/`normalize`
/// given through sentence-transformers' modules when `pooling` is set.
fn tiny_model(
    family: &Family,
    prefix: &'static str,
    pooling: Option<(Pooling, bool)>,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, value: serde_json::Value| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
    };
    write("config.json", config_json(family));
    write("tokenizer.json", tokenizer_json(family));
    if let Some((pooling, normalize)) = pooling {
        let mut modules = vec![
            json!({"path": "", "type": "sentence_transformers.models.Transformer"}),
            json!({"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if normalize {
            modules.push(
                json!({"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}),
            );
        }
        write("modules.json", json!(modules));
        let flag = match pooling {
            Pooling::Cls => "pooling_mode_cls_token",
            Pooling::Mean => "pooling_mode_mean_tokens",
            Pooling::Max => "pooling_mode_max_tokens",
            Pooling::MeanSqrtLen => "pooling_mode_mean_sqrt_len_tokens",
            Pooling::LastToken => "pooling_mode_lasttoken",
        };
        write(
            "1_Pooling/config.json",
            json!({"word_embedding_dimension": HIDDEN, flag: true}),
        );
    }
    candle_core::safetensors::save(
        &random_weights(family, prefix),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    dir
}

fn load(dir: &Path, encoder: EncoderKind) -> pulse_models::Result<Embedder> {
    Embedder::load(dir.to_str().unwrap(), &offline_cpu_options(encoder))
}

const TEXTS: [&str; 5] = [
    "brand",
    "coffee price again today",
    "great new shoes at the store today great price",
    "awful",
    "trend signal brand coffee shoes great awful new price store today again brand",
];

fn assert_batch_invariant(embedder: &Embedder) {
    let batched = embedder.embed(&TEXTS).unwrap();
    assert_eq!(batched.len(), TEXTS.len());
    for (text, in_batch) in TEXTS.iter().zip(&batched) {
        assert_eq!(in_batch.len(), HIDDEN);
        let alone = embedder.embed(&[text]).unwrap().remove(0);
        let c = cosine(&alone, in_batch);
        assert!(c >= 0.99999, "{text:?}: cosine {c} alone vs in a batch");
    }
}

#[test]
fn xlm_roberta_matches_candle_implementation() {
    let dir = tiny_model(&XLM_ROBERTA, "", None);
    let embedder = load(dir.path(), EncoderKind::Native).unwrap();
    assert_eq!(embedder.info().architecture, Architecture::XlmRoberta);
    assert_eq!(embedder.info().pooling, Pooling::Mean);
    assert_eq!(embedder.info().max_seq_length, MAX_POSITIONS - 2);
    let ours = embedder.embed(&TEXTS).unwrap();

    // candle-transformers' XLM-RoBERTa, mean-pooled by hand over the mask.
    let config: xlm_roberta::Config = serde_json::from_value(config_json(&XLM_ROBERTA)).unwrap();
    let weights = dir.path().join("model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
        .unwrap();
    let reference = XLMRobertaModel::new(&config, vb).unwrap();
    let tokenized: Vec<_> = embedder
        .tokenize(&TEXTS)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let seq = tokenized.iter().map(|t| t.len()).max().unwrap();
    let mut ids = vec![XLM_ROBERTA.pad_id; TEXTS.len() * seq];
    let mut mask = vec![0u32; TEXTS.len() * seq];
    for (row, t) in tokenized.iter().enumerate() {
        ids[row * seq..row * seq + t.len()].copy_from_slice(&t.ids);
        mask[row * seq..row * seq + t.len()].fill(1);
    }
    let ids = Tensor::from_vec(ids, (TEXTS.len(), seq), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (TEXTS.len(), seq), &Device::Cpu).unwrap();
    let hidden = reference
        .forward(&ids, &mask, &ids.zeros_like().unwrap(), None, None, None)
        .unwrap();
    let maskf = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let pooled = (hidden.broadcast_mul(&maskf).unwrap().sum(1).unwrap())
        .broadcast_div(&maskf.sum(1).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for ((text, a), b) in TEXTS.iter().zip(&ours).zip(&pooled) {
        let c = cosine(a, b);
        assert!(
            c >= 0.99999,
            "{text:?}: cosine {c} against candle's XLM-RoBERTa"
        );
    }
}

#[test]
fn xlm_roberta_is_batch_invariant_under_a_task_prefix() {
    let dir = tiny_model(&XLM_ROBERTA, "roberta.", Some((Pooling::Cls, true)));
    let embedder = load(dir.path(), EncoderKind::Native).unwrap();
    assert_batch_invariant(&embedder);
    for v in embedder.embed(&TEXTS).unwrap() {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}

#[test]
fn bert_native_matches_candle_bert_model_for_every_pooling() {
    for pooling in Pooling::ALL {
        let dir = tiny_model(&BERT, "bert.", Some((pooling, false)));
        let ours = load(dir.path(), EncoderKind::Native).unwrap();
        let reference = load(dir.path(), EncoderKind::CandleReference).unwrap();
        assert_batch_invariant(&ours);
        let a = ours.embed(&TEXTS).unwrap();
        let b = reference.embed(&TEXTS).unwrap();
        for ((text, x), y) in TEXTS.iter().zip(&a).zip(&b) {
            let c = cosine(x, y);
            assert!(c >= 0.99999, "{pooling}, {text:?}: cosine {c}");
        }
    }
}

#[test]
fn long_texts_are_cut_to_the_position_table() {
    let dir = tiny_model(&XLM_ROBERTA, "", None);
    let embedder = load(dir.path(), EncoderKind::Native).unwrap();
    let long = WORDS.repeat(10).join(" ");
    let tokenized = embedder.tokenize(&[&long, "brand"]);
    let long_tokens = tokenized[0].as_ref().unwrap();
    assert!(long_tokens.truncated);
    assert_eq!(long_tokens.len(), MAX_POSITIONS - 2);
    assert!(!tokenized[1].as_ref().unwrap().truncated);
    let vectors = embedder.embed(&[&long]).unwrap();
    assert!(vectors[0].iter().all(|x| x.is_finite()));
}

#[test]
fn candle_reference_refuses_xlm_roberta() {
    let dir = tiny_model(&XLM_ROBERTA, "", None);
    let err = load(dir.path(), EncoderKind::CandleReference)
        .err()
        .unwrap();
    assert!(err.to_string().contains("bert in f32 only"), "{err}");
}

#[test]
fn weights_without_an_encoder_are_a_clear_error() {
    let dir = tiny_model(&BERT, "", None);
    let mut odd = HashMap::new();
    odd.insert(
        "lm_head.weight".to_string(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&odd, dir.path().join("model.safetensors")).unwrap();
    let err = load(dir.path(), EncoderKind::Native)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("embeddings.word_embeddings.weight"), "{err}");
}

/// Enough of the Hugging Face hub's HTTP interface for `hf-hub` to list a
/// repository and download its files: serves one model directory.
mod mock_hub {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct MockHub {
        pub url: String,
        pub requests: Arc<AtomicUsize>,
    }

    pub fn serve(dir: &Path, repo: &'static str, commit: &'static str) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let dir = dir.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                answer(stream, &dir, repo, commit);
            }
        });
        MockHub { url, requests }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            for entry in std::fs::read_dir(dir.join(&rel)).unwrap().flatten() {
                let rel = rel.join(entry.file_name());
                if entry.path().is_dir() {
                    pending.push(rel);
                } else {
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        found
    }

    fn answer(mut stream: TcpStream, dir: &Path, repo: &str, commit: &str) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let mut range_start = None;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some(value) = header.to_ascii_lowercase().strip_prefix("range: bytes=") {
                range_start = value
                    .split('-')
                    .next()
                    .and_then(|s| s.trim().parse::<usize>().ok());
            }
        }
        let info_path = format!("/api/models/{repo}/revision/main");
        let file_prefix = format!("/{repo}/resolve/main/");
        let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path == info_path {
            let siblings: Vec<_> = files(dir)
                .into_iter()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({ "sha": commit, "siblings": siblings }).to_string();
            (
                "200 OK",
                vec!["Content-Type: application/json".into()],
                body.into_bytes(),
            )
        } else if let Some(bytes) = path
            .strip_prefix(&file_prefix)
            .and_then(|file| std::fs::read(dir.join(file)).ok())
        {
            let start = range_start.unwrap_or(0).min(bytes.len());
            let etag = path.replace('/', "_");
            (
                "206 Partial Content",
                vec![
                    format!("ETag: \"{etag}\""),
                    format!("X-Repo-Commit: {commit}"),
                    format!(
                        "Content-Range: bytes {start}-{}/{}",
                        bytes.len() - 1,
                        bytes.len()
                    ),
                ],
                bytes[start..].to_vec(),
            )
        } else {
            ("404 Not Found", vec![], b"not found".to_vec())
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for header in headers {
            response.push_str(&header);
            response.push_str("\r\n");
        }
        response.push_str("\r\n");
        let _ = stream.write_all(response.as_bytes());
        let _ = stream.write_all(&body);
    }
}

#[test]
fn downloads_from_the_hub_into_the_cache_then_resolves_offline() {
    use pulse_models::{ModelOrigin, resolve_with};
    use std::sync::atomic::Ordering;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    let model = tiny_model(&BERT, "", Some((Pooling::Mean, true)));
    let hub = mock_hub::serve(model.path(), "org/tiny", COMMIT);
    let cache = tempfile::tempdir().unwrap();
    let online = ResolveOptions {
        hf_cache: cache.path().to_path_buf(),
        offline: false,
        progress: false,
        endpoint: Some(hub.url.clone()),
    };
    let downloaded = resolve_with("org/tiny", &online).unwrap();
    assert_eq!(
        downloaded.origin,
        ModelOrigin::HfHub {
            repo: "org/tiny".into(),
            revision: COMMIT.into()
        }
    );
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(
            downloaded.dir.join(file).is_file(),
            "{file} was not downloaded"
        );
    }
    let options = EmbedderOptions {
        device: DeviceSpec::Cpu,
        resolve: online.clone(),
        ..EmbedderOptions::default()
    };
    let from_hub = Embedder::from_resolved(downloaded, &options).unwrap();
    let local = load(model.path(), EncoderKind::Native).unwrap();
    assert_eq!(
        from_hub.embed(&TEXTS).unwrap(),
        local.embed(&TEXTS).unwrap()
    );

    let served = hub.requests.load(Ordering::SeqCst);
    let offline = ResolveOptions {
        offline: true,
        ..online
    };
    let cached = resolve_with("org/tiny", &offline).unwrap();
    assert!(
        matches!(cached.origin, ModelOrigin::HfCache { ref revision, .. } if revision == COMMIT)
    );
    assert_eq!(
        hub.requests.load(Ordering::SeqCst),
        served,
        "the cache answered alone"
    );
}

#[test]
fn a_hub_without_the_model_is_listed_among_the_places_tried() {
    let model = tiny_model(&BERT, "", None);
    let hub = mock_hub::serve(model.path(), "org/tiny", "c0ffee");
    let cache = tempfile::tempdir().unwrap();
    let options = ResolveOptions {
        hf_cache: cache.path().to_path_buf(),
        offline: false,
        progress: false,
        endpoint: Some(hub.url.clone()),
    };
    let err = pulse_models::resolve_with("org/other", &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Hugging Face hub:") && err.contains("404"),
        "{err}"
    );
}
