//! Model ids from the Hugging Face cache: `org/name[@revision]` -> a local snapshot directory.
//!
//! The cache is the one `huggingface_hub` (and so transformers, `huggingface-cli download`)
//! fills: `HF_HUB_CACHE`, else `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else
//! `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. A repository lives in
//! `models--{org}--{name}/`, with `refs/{branch or tag}` files holding a commit hash and
//! `snapshots/{commit}/` holding the files (symlinks into `blobs/`).
//!
//! Resolution is offline. With the cargo feature `hub`, a model missing from the cache is
//! downloaded into it through the `hf-hub` crate (unless `HF_HUB_OFFLINE=1`), with the token
//! from `HF_TOKEN` or the cache's token file.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The revision used when a model id names none.
pub const DEFAULT_REVISION: &str = "main";

/// What a `--model` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// An existing local directory, used as it is.
    Dir(PathBuf),
    /// A Hub repository id with a revision (a branch, a tag or a commit hash).
    Hub {
        /// `org/name` (or a bare `name`).
        repo: String,
        /// Branch, tag or commit hash; [`DEFAULT_REVISION`] when none was given.
        revision: String,
    },
}

impl ModelSpec {
    /// Reads a `--model` value: an existing directory stays a directory; otherwise a value
    /// shaped like a Hub id (`name`, `org/name`, either with `@revision`) is a Hub id.
    pub fn parse(spec: &str) -> Result<Self> {
        let as_path = Path::new(spec);
        if as_path.is_dir() {
            return Ok(ModelSpec::Dir(as_path.to_path_buf()));
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, revision)) => (repo, revision),
            None => (spec, DEFAULT_REVISION),
        };
        if !is_repo_id(repo) || revision.is_empty() {
            let reason = if as_path.exists() { "is not a directory" } else { "no such directory" };
            return Err(Error::io(
                as_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{reason}, and not a Hugging Face model id (`org/name` or `org/name@revision`)"),
                ),
            ));
        }
        Ok(ModelSpec::Hub { repo: repo.to_string(), revision: revision.to_string() })
    }
}

/// Whether `id` has the shape of a Hub repository id: one or two `/`-separated parts of
/// letters, digits, `-`, `_` and `.`, neither starting with `-` or `.`, without `--` or `..`.
fn is_repo_id(id: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    let parts: Vec<&str> = id.split('/').collect();
    matches!(parts.len(), 1 | 2) && parts.iter().all(|p| part_ok(p))
}

/// The local Hugging Face hub cache (the directory holding `models--*` folders).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
    /// `HF_HOME` (or its default), where `huggingface-cli login` keeps the token file.
    home: PathBuf,
}

impl HubCache {
    /// A cache rooted at `root` (its token file is looked for in `root/../token`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let home = root.parent().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
        HubCache { root, home }
    }

    /// The cache the environment names, as `huggingface_hub` finds it.
    pub fn from_env() -> Self {
        Self::from_vars(|key| std::env::var_os(key))
    }

    /// [`Self::from_env`] with the variables read through `var` (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let set = |key: &str| var(key).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = set("HF_HOME").unwrap_or_else(|| {
            let cache = set("XDG_CACHE_HOME").unwrap_or_else(|| home_dir(&var).join(".cache"));
            cache.join("huggingface")
        });
        let root = set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")).unwrap_or_else(|| home.join("hub"));
        HubCache { root, home }
    }

    /// The directory holding the `models--*` folders.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `huggingface-cli login` stores the token (`HF_HOME/token`).
    pub fn token_path(&self) -> PathBuf {
        self.home.join("token")
    }

    /// The folder of a model repository: `models--{org}--{name}`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The snapshot directory of `repo` at `revision` (a branch or tag in `refs/`, or a commit
    /// hash, full or an unambiguous prefix of at least 7 characters). Offline; checks that the
    /// snapshot holds `config.json` and every weight file the checkpoint lists.
    pub fn snapshot(&self, repo: &str, revision: &str) -> Result<PathBuf> {
        let repo_dir = self.repo_dir(repo);
        let ref_file = repo_dir.join("refs").join(revision);
        let not_found = |looked_for: String, extra: String| Error::Hub {
            id: format!("{repo}@{revision}"),
            reason: format!("not in the HF cache at {} (looked for {looked_for}){extra}", self.root.display()),
        };
        if !repo_dir.is_dir() {
            return Err(not_found(
                repo_dir.display().to_string(),
                format!(
                    "; download it with `huggingface-cli download {repo}`{}, or pass a model directory",
                    if cfg!(feature = "hub") { "" } else { " or build lalora with `--features hub`" }
                ),
            ));
        }
        let commit = if ref_file.is_file() {
            let text = std::fs::read_to_string(&ref_file).map_err(|e| Error::io(&ref_file, e))?;
            text.trim().to_string()
        } else {
            self.find_commit(&repo_dir, revision).ok_or_else(|| {
                not_found(
                    format!("{} or a snapshot of that commit", ref_file.display()),
                    format!(
                        "; the cache has refs [{}] and snapshots [{}]",
                        list_dir(&repo_dir.join("refs")).join(", "),
                        list_dir(&repo_dir.join("snapshots")).join(", ")
                    ),
                )
            })?
        };
        let snapshot = repo_dir.join("snapshots").join(&commit);
        if !snapshot.is_dir() {
            return Err(not_found(
                snapshot.display().to_string(),
                format!(" ({} points to commit {commit}, whose snapshot is missing)", ref_file.display()),
            ));
        }
        let missing = missing_model_files(&snapshot)?;
        if !missing.is_empty() {
            return Err(Error::Hub {
                id: format!("{repo}@{revision}"),
                reason: format!("the snapshot {} lacks {} (an incomplete download?)", snapshot.display(), missing.join(", ")),
            });
        }
        Ok(snapshot)
    }

    /// A snapshot named `revision`, or the one snapshot whose name starts with it (>= 7 hex digits).
    fn find_commit(&self, repo_dir: &Path, revision: &str) -> Option<String> {
        let snapshots = list_dir(&repo_dir.join("snapshots"));
        if snapshots.iter().any(|s| s == revision) {
            return Some(revision.to_string());
        }
        let is_hex_prefix = revision.len() >= 7 && revision.chars().all(|c| c.is_ascii_hexdigit());
        let mut matching = snapshots.into_iter().filter(|s| is_hex_prefix && s.starts_with(revision));
        match (matching.next(), matching.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// The access token: `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the token
    /// file (`HF_TOKEN_PATH`, else `HF_HOME/token`).
    pub fn token(&self) -> Option<String> {
        self.token_from_vars(|key| std::env::var_os(key))
    }

    /// [`Self::token`] with the variables read through `var` (for tests).
    pub fn token_from_vars(&self, var: impl Fn(&str) -> Option<OsString>) -> Option<String> {
        let clean = |s: String| Some(s.trim().to_string()).filter(|t| !t.is_empty());
        for key in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
            if let Some(token) = var(key).and_then(|v| v.into_string().ok()).and_then(clean) {
                return Some(token);
            }
        }
        let path = var("HF_TOKEN_PATH").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| self.token_path());
        std::fs::read_to_string(path).ok().and_then(clean)
    }
}

/// The user's home directory from `HOME` (`USERPROFILE` on Windows), else `.`.
fn home_dir(var: &impl Fn(&str) -> Option<OsString>) -> PathBuf {
    var("HOME").or_else(|| var("USERPROFILE")).filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| ".".into())
}

/// Names of the entries of `dir`, sorted (empty if it cannot be read).
fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The files a model directory needs that are absent (or dangling links): `config.json` and
/// either `model.safetensors` or the index with every shard it lists.
pub fn missing_model_files(dir: &Path) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    if !dir.join("config.json").is_file() {
        missing.push("config.json".to_string());
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let index: Index = crate::io::read_json(&index)?;
        let mut shards: Vec<String> = index.weight_map.into_values().collect();
        shards.sort();
        shards.dedup();
        missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file()));
    } else if !dir.join("model.safetensors").is_file() {
        missing.push("model.safetensors (or model.safetensors.index.json)".to_string());
    }
    Ok(missing)
}

/// Resolves a `--model` value to a local model directory: a directory as it is, a Hub id
/// through the HF cache (downloading it first with the `hub` feature when it is missing and
/// `HF_HUB_OFFLINE` is not set).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    match ModelSpec::parse(spec)? {
        ModelSpec::Dir(dir) => Ok(dir),
        ModelSpec::Hub { repo, revision } => {
            let cache = HubCache::from_env();
            match cache.snapshot(&repo, &revision) {
                Ok(dir) => Ok(dir),
                #[cfg(feature = "hub")]
                Err(_) if !offline() => download::download_model(&cache, &repo, &revision),
                Err(e) => Err(e),
            }
        }
    }
}

/// Whether `HF_HUB_OFFLINE` asks for no network access.
#[cfg(feature = "hub")]
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

#[cfg(feature = "hub")]
mod download {
    //! Downloads into the HF cache through the `hf-hub` crate (blocking, ureq + rustls).

    use std::path::PathBuf;

    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};

    use super::HubCache;
    use crate::error::{Error, Result};

    /// Files of a model repository lalora uses: configs, tokenizer files and safetensors weights.
    fn wanted(name: &str) -> bool {
        let top_level = !name.contains('/');
        top_level
            && (name.ends_with(".safetensors")
                || matches!(
                    name,
                    "config.json"
                        | "generation_config.json"
                        | "model.safetensors.index.json"
                        | "tokenizer.json"
                        | "tokenizer_config.json"
                        | "special_tokens_map.json"
                ))
    }

    /// Downloads the files lalora needs of `repo` at `revision` into `cache` and returns the
    /// snapshot directory.
    pub fn download_model(cache: &HubCache, repo: &str, revision: &str) -> Result<PathBuf> {
        let id = format!("{repo}@{revision}");
        let fail = |what: &str, e: hf_hub::api::sync::ApiError| Error::Hub {
            id: id.clone(),
            reason: format!("not in the HF cache at {}, and downloading {what} failed: {e}", cache.root().display()),
        };
        let mut builder = ApiBuilder::new().with_cache_dir(cache.root().to_path_buf()).with_token(cache.token());
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder.build().map_err(|e| fail("(client setup)", e))?;
        let repo_api = api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string()));
        let info = repo_api.info().map_err(|e| fail("the file list", e))?;
        let mut snapshot = None;
        for file in info.siblings.iter().map(|s| s.rfilename.as_str()).filter(|n| wanted(n)) {
            let path = repo_api.get(file).map_err(|e| fail(file, e))?;
            snapshot = path.parent().map(PathBuf::from);
        }
        let snapshot = snapshot.ok_or_else(|| Error::Hub {
            id: id.clone(),
            reason: "the repository has no config.json, tokenizer or safetensors files".into(),
        })?;
        let missing = super::missing_model_files(&snapshot)?;
        if !missing.is_empty() {
            return Err(Error::Hub { id, reason: format!("downloaded, but the repository lacks {}", missing.join(", ")) });
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn the_cache_root_follows_huggingface_hub_precedence() {
        let root = |pairs: &[(&str, &str)]| HubCache::from_vars(vars(pairs)).root().to_path_buf();
        assert_eq!(root(&[("HOME", "/h")]), PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(root(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]), PathBuf::from("/x/huggingface/hub"));
        assert_eq!(root(&[("HOME", "/h"), ("HF_HOME", "/hf")]), PathBuf::from("/hf/hub"));
        assert_eq!(root(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/old")]), PathBuf::from("/old"));
        assert_eq!(root(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/old"), ("HF_HUB_CACHE", "/c")]), PathBuf::from("/c"));
        let cache = HubCache::from_vars(vars(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]));
        assert_eq!(cache.token_path(), PathBuf::from("/hf/token"), "the token stays in HF_HOME");
        assert_eq!(cache.repo_dir("meta-llama/Llama-3.2-1B"), PathBuf::from("/c/models--meta-llama--Llama-3.2-1B"));
    }

    #[test]
    fn model_specs_are_directories_or_repo_ids() {
        let here = env!("CARGO_MANIFEST_DIR");
        assert_eq!(ModelSpec::parse(here).unwrap(), ModelSpec::Dir(here.into()));
        let hub = |repo: &str, revision: &str| ModelSpec::Hub { repo: repo.into(), revision: revision.into() };
        assert_eq!(ModelSpec::parse("meta-llama/Llama-3.2-1B").unwrap(), hub("meta-llama/Llama-3.2-1B", "main"));
        assert_eq!(ModelSpec::parse("org/m@v1.0").unwrap(), hub("org/m", "v1.0"));
        assert_eq!(ModelSpec::parse("gpt2@refs/pr/1").unwrap(), hub("gpt2", "refs/pr/1"));
        for bad in ["./no/such/dir", "/abs/path", "a/b/c", "org/-x", "org/a..b", "org--x/y", "org/m@", ""] {
            let e = ModelSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a Hugging Face model id"), "{bad}: {e}");
        }
    }

    #[test]
    fn tokens_come_from_the_environment_then_the_token_file() {
        let dir = std::env::temp_dir().join(format!("lalora-hub-token-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("hub")).unwrap();
        let cache = HubCache::new(dir.join("hub"));
        assert_eq!(cache.token_from_vars(vars(&[])), None);
        std::fs::write(dir.join("token"), "hf_file\n").unwrap();
        assert_eq!(cache.token_from_vars(vars(&[])).as_deref(), Some("hf_file"));
        assert_eq!(cache.token_from_vars(vars(&[("HF_TOKEN", "hf_env")])).as_deref(), Some("hf_env"));
        assert_eq!(cache.token_from_vars(vars(&[("HF_TOKEN", " ")])).as_deref(), Some("hf_file"), "blank is unset");
        std::fs::write(dir.join("other"), "hf_other").unwrap();
        let path = dir.join("other").display().to_string();
        assert_eq!(cache.token_from_vars(vars(&[("HF_TOKEN_PATH", &path)])).as_deref(), Some("hf_other"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
