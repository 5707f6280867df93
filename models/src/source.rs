//! Turns a model name into a directory of model files.
//!
//! Order: a local directory, then the Hugging Face cache, then a download
//! with `hf-hub` (unless `HF_HUB_OFFLINE` is set). The cache layout is the one
//! the Python `huggingface_hub` package writes, so models fetched by either
//! are found by both.

use crate::error::{ModelError, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// The model pulse uses when none is named.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
pub(crate) const SAFETENSORS_FILE: &str = "model.safetensors";
pub(crate) const PYTORCH_FILE: &str = "pytorch_model.bin";
/// Small files a sentence-transformers model may carry beside its weights.
const OPTIONAL_FILES: [&str; 3] = [
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

/// Where a resolved model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelOrigin {
    LocalDir,
    HfCache { repo: String, revision: String },
    HfHub { repo: String, revision: String },
}

impl fmt::Display for ModelOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelOrigin::LocalDir => f.write_str("local directory"),
            ModelOrigin::HfCache { repo, revision } => {
                write!(f, "Hugging Face cache ({repo}@{revision})")
            }
            ModelOrigin::HfHub { repo, revision } => {
                write!(f, "Hugging Face hub ({repo}@{revision})")
            }
        }
    }
}

/// A model name resolved to a directory holding its files.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub name: String,
    pub dir: PathBuf,
    pub origin: ModelOrigin,
}

impl ResolvedModel {
    /// The commit the files belong to, where the hub or its cache says.
    pub fn revision(&self) -> Option<&str> {
        match &self.origin {
            ModelOrigin::LocalDir => None,
            ModelOrigin::HfCache { revision, .. } | ModelOrigin::HfHub { revision, .. } => {
                Some(revision)
            }
        }
    }
}

/// Where and how to look for models.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// The Hugging Face hub cache (the folder holding `models--org--name`).
    pub hf_cache: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Show a progress bar while downloading.
    pub progress: bool,
    /// The hub's address (`HF_ENDPOINT`); `None` is hf-hub's default.
    pub endpoint: Option<String>,
}

impl ResolveOptions {
    /// Reads `HF_HUB_CACHE`, `HF_HOME`, `XDG_CACHE_HOME`, `HF_HUB_OFFLINE`
    /// and `HF_ENDPOINT` the way `huggingface_hub` does.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let hf_cache = if let Some(dir) = var("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else if let Some(home) = var("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else {
            user_cache_dir().join("huggingface").join("hub")
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        ResolveOptions {
            hf_cache,
            offline,
            progress: true,
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
        }
    }
}

/// `$XDG_CACHE_HOME`, else `~/.cache`.
pub fn user_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache")
}

/// A Hugging Face model id with an optional revision (`org/name@rev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    pub fn parse(name: &str) -> Result<Self> {
        let (repo, revision) = match name.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (name, "main"),
        };
        let valid_part = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let valid_revision = !revision.is_empty()
            && !revision.contains("..")
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if parts.len() > 2 || !parts.iter().all(|p| valid_part(p)) || !valid_revision {
            return Err(ModelError::InvalidName(name.to_string()));
        }
        Ok(HubId {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    fn cache_folder(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

/// Resolves `name` with options taken from the environment.
pub fn resolve(name: &str) -> Result<ResolvedModel> {
    resolve_with(name, &ResolveOptions::from_env())
}

pub fn resolve_with(name: &str, options: &ResolveOptions) -> Result<ResolvedModel> {
    let mut tried = Vec::new();
    let path = expand_home(name);
    if path.is_dir() {
        return Ok(ResolvedModel {
            name: name.to_string(),
            dir: path,
            origin: ModelOrigin::LocalDir,
        });
    }
    tried.push(format!("local directory {}: not found", path.display()));
    if looks_like_path(name) {
        return Err(ModelError::NotFound {
            name: name.to_string(),
            tried,
        });
    }
    let id = HubId::parse(name)?;
    // The revision reported is the commit the snapshot holds.
    let found = |dir: PathBuf, from_cache: bool| {
        let (repo, revision) = (id.repo.clone(), snapshot_commit(&dir, &id));
        let origin = if from_cache {
            ModelOrigin::HfCache { repo, revision }
        } else {
            ModelOrigin::HfHub { repo, revision }
        };
        ResolvedModel {
            name: name.to_string(),
            dir,
            origin,
        }
    };

    match find_in_cache(&id, &options.hf_cache) {
        Ok(dir) => return Ok(found(dir, true)),
        Err(why) => tried.push(format!(
            "Hugging Face cache {}: {why}",
            options.hf_cache.display()
        )),
    }
    if options.offline {
        tried.push("Hugging Face hub: skipped because HF_HUB_OFFLINE is set".to_string());
    } else {
        match download(&id, options) {
            Ok(dir) => return Ok(found(dir, false)),
            Err(why) => tried.push(format!("Hugging Face hub: {why}")),
        }
    }
    if name == DEFAULT_MODEL {
        tried.push(
            "hint: scripts/fetch-model puts the default model into the cache without the hub"
                .to_string(),
        );
    }
    Err(ModelError::NotFound {
        name: name.to_string(),
        tried,
    })
}

fn looks_like_path(name: &str) -> bool {
    name.starts_with('/')
        || name.starts_with("./")
        || name.starts_with("../")
        || name.starts_with('~')
        || name == "."
        || name == ".."
}

fn expand_home(name: &str) -> PathBuf {
    match (name.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(name),
    }
}

/// The commit a snapshot directory holds: the cache names snapshots after them.
fn snapshot_commit(snapshot: &Path, id: &HubId) -> String {
    snapshot
        .file_name()
        .and_then(|n| n.to_str())
        .map_or_else(|| id.revision.clone(), str::to_string)
}

/// The snapshot directory of `id` in the cache, if it holds a usable model.
fn find_in_cache(id: &HubId, cache: &Path) -> std::result::Result<PathBuf, String> {
    let repo_dir = cache.join(id.cache_folder());
    if !repo_dir.is_dir() {
        return Err(format!("no {}", id.cache_folder()));
    }
    // A branch or tag is a file under refs/ naming a commit; a commit is a
    // snapshot directory of its own.
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(&id.revision)) {
        Ok(commit) => commit.trim().to_string(),
        Err(_) => id.revision.clone(),
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Err(format!(
            "{} has no snapshot for revision {}",
            id.cache_folder(),
            id.revision
        ));
    }
    let missing = missing_required_files(&snapshot);
    if !missing.is_empty() {
        return Err(format!(
            "{} lacks {}",
            snapshot.display(),
            missing.join(", ")
        ));
    }
    Ok(snapshot)
}

fn missing_required_files(dir: &Path) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for file in [CONFIG_FILE, TOKENIZER_FILE] {
        if !dir.join(file).is_file() {
            missing.push(file);
        }
    }
    if !dir.join(SAFETENSORS_FILE).is_file() && !dir.join(PYTORCH_FILE).is_file() {
        missing.push("model.safetensors (or pytorch_model.bin)");
    }
    missing
}

fn download(id: &HubId, options: &ResolveOptions) -> std::result::Result<PathBuf, String> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let mut builder = ApiBuilder::from_cache(Cache::new(options.hf_cache.clone()))
        .with_progress(options.progress);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| e.to_string())?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let info = repo.info().map_err(|e| e.to_string())?;
    let available: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let has = |f: &str| available.iter().any(|a| a == f);

    let weights = if has(SAFETENSORS_FILE) {
        SAFETENSORS_FILE
    } else if has(PYTORCH_FILE) {
        PYTORCH_FILE
    } else {
        return Err(format!(
            "{} has neither {SAFETENSORS_FILE} nor {PYTORCH_FILE}",
            id.repo
        ));
    };
    let mut wanted: Vec<&str> = vec![CONFIG_FILE, TOKENIZER_FILE, weights];
    wanted.extend(OPTIONAL_FILES.iter().copied().filter(|f| has(f)));
    wanted.extend(
        available
            .iter()
            .map(String::as_str)
            .filter(|f| f.ends_with("_Pooling/config.json")),
    );
    let mut config_path = None;
    for file in wanted {
        let path = repo.get(file).map_err(|e| format!("{file}: {e}"))?;
        if file == CONFIG_FILE {
            config_path = Some(path);
        }
    }
    config_path
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| format!("{} has no {CONFIG_FILE}", id.repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_in(cache: &Path) -> ResolveOptions {
        ResolveOptions {
            hf_cache: cache.to_path_buf(),
            offline: true,
            progress: false,
            endpoint: None,
        }
    }

    fn write_model_files(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for f in [CONFIG_FILE, TOKENIZER_FILE, SAFETENSORS_FILE] {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
    }

    #[test]
    fn parses_hub_ids() {
        assert_eq!(
            HubId::parse("org/name@v1.0").unwrap(),
            HubId {
                repo: "org/name".into(),
                revision: "v1.0".into()
            }
        );
        assert_eq!(HubId::parse("bert-base-uncased").unwrap().revision, "main");
        for bad in [
            "a/b/c",
            "org/",
            "/x",
            "org/na me",
            "org/name@",
            "org/..",
            "o/n@../x",
        ] {
            assert!(HubId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_directory_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let name = tmp.path().to_str().unwrap();
        let resolved = resolve_with(name, &offline_in(tmp.path())).unwrap();
        assert_eq!(resolved.origin, ModelOrigin::LocalDir);
        assert_eq!(resolved.dir, tmp.path());
    }

    #[test]
    fn finds_a_branch_and_a_commit_in_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--tiny");
        write_model_files(&repo.join("snapshots/abc123"));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();

        let by_branch = resolve_with("org/tiny", &offline_in(cache.path())).unwrap();
        assert_eq!(by_branch.dir, repo.join("snapshots/abc123"));
        assert_eq!(by_branch.revision(), Some("abc123"));
        let by_commit = resolve_with("org/tiny@abc123", &offline_in(cache.path())).unwrap();
        assert_eq!(by_commit.dir, repo.join("snapshots/abc123"));
    }

    #[test]
    fn not_found_lists_every_place_tried() {
        let cache = tempfile::tempdir().unwrap();
        let err = resolve_with("org/absent", &offline_in(cache.path())).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ModelError::NotFound { ref tried, .. } if tried.len() == 3),
            "{text}"
        );
        assert!(text.contains("local directory org/absent"), "{text}");
        assert!(text.contains("models--org--absent"), "{text}");
        assert!(text.contains("HF_HUB_OFFLINE"), "{text}");
    }

    #[test]
    fn incomplete_cache_snapshot_is_reported() {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--org--partial");
        std::fs::create_dir_all(repo.join("snapshots/c1")).unwrap();
        std::fs::write(repo.join("snapshots/c1").join(CONFIG_FILE), "{}").unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "c1").unwrap();
        let text = resolve_with("org/partial", &offline_in(cache.path()))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("lacks tokenizer.json, model.safetensors"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_path_is_not_looked_up_on_the_hub() {
        let cache = tempfile::tempdir().unwrap();
        let err = resolve_with("./no/such/dir", &offline_in(cache.path())).unwrap_err();
        assert!(matches!(err, ModelError::NotFound { ref tried, .. } if tried.len() == 1));
    }
}
