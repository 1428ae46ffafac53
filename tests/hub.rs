//! Model ids resolve through a Hugging Face cache tree laid out as `huggingface_hub` writes it
//! (refs, snapshots of symlinks into blobs), built here around the bundled model.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use lalora::io::hub::{resolve_model, HubCache};
use lalora::llama::Llama;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny")
}

/// A cache with `lalora/tiny` at two commits: `main` -> COMMIT, tag `v1` -> OLD_COMMIT, whose
/// snapshot lacks its weights (a partial download).
fn fake_cache(name: &str) -> PathBuf {
    let root = temp_dir(&format!("hub-{name}")).join("hub");
    let repo = root.join("models--lalora--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{OLD_COMMIT}\n")).unwrap();
    for (commit, files) in [(COMMIT, &["config.json", "model.safetensors", "tokenizer.json"][..]), (OLD_COMMIT, &["config.json"][..])] {
        let snapshot = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        for file in files {
            // Blobs are named by hash in a real cache; any unique name will do here.
            let blob = repo.join("blobs").join(format!("{commit}-{file}"));
            std::fs::copy(tiny().join(file), &blob).unwrap();
            link(&Path::new("../../blobs").join(blob.file_name().unwrap()), &snapshot.join(file));
        }
    }
    root
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

#[cfg(not(unix))]
fn link(target: &Path, at: &Path) {
    std::fs::copy(at.parent().unwrap().join(target), at).unwrap();
}

#[test]
fn branches_tags_and_commits_resolve_to_snapshots_that_load() {
    let root = fake_cache("resolve");
    let cache = HubCache::new(&root);
    let snapshot = cache.snapshot("lalora/tiny", "main").unwrap();
    assert_eq!(snapshot, root.join("models--lalora--tiny/snapshots").join(COMMIT));
    assert_eq!(cache.snapshot("lalora/tiny", COMMIT).unwrap(), snapshot);
    assert_eq!(cache.snapshot("lalora/tiny", &COMMIT[..10]).unwrap(), snapshot, "a unique commit prefix");

    let from_cache = Llama::<TestBackend>::load(&snapshot, &device()).unwrap();
    let from_dir = Llama::<TestBackend>::load(&tiny(), &device()).unwrap();
    let (a, b) = (from_cache.embed_tokens.val().into_data(), from_dir.embed_tokens.val().into_data());
    assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    lalora::Tokenizer::from_dir(&snapshot).unwrap();
}

#[test]
fn missing_models_revisions_and_files_are_named() {
    let root = fake_cache("errors");
    let cache = HubCache::new(&root);
    let e = cache.snapshot("meta-llama/Llama-3.2-1B", "main").unwrap_err().to_string();
    let repo_dir = root.join("models--meta-llama--Llama-3.2-1B");
    assert!(
        e.contains("model id `meta-llama/Llama-3.2-1B@main`: not in the HF cache at")
            && e.contains(&format!("(looked for {})", repo_dir.display()))
            && e.contains("huggingface-cli download meta-llama/Llama-3.2-1B"),
        "{e}"
    );
    let e = cache.snapshot("lalora/tiny", "v2").unwrap_err().to_string();
    assert!(e.contains("refs/v2 or a snapshot of that commit") && e.contains("refs [main, v1]") && e.contains(COMMIT), "{e}");
    let e = cache.snapshot("lalora/tiny", "v1").unwrap_err().to_string();
    assert!(e.contains(OLD_COMMIT) && e.contains("lacks model.safetensors") && e.contains("incomplete download"), "{e}");
    // A ref pointing at a commit whose snapshot is gone.
    std::fs::write(root.join("models--lalora--tiny/refs/gone"), "abcdef0").unwrap();
    let e = cache.snapshot("lalora/tiny", "gone").unwrap_err().to_string();
    assert!(e.contains("points to commit abcdef0, whose snapshot is missing"), "{e}");
    // A dangling link (blob deleted) counts as missing.
    std::fs::remove_file(root.join(format!("models--lalora--tiny/blobs/{COMMIT}-model.safetensors"))).unwrap();
    let e = cache.snapshot("lalora/tiny", "main").unwrap_err().to_string();
    assert!(e.contains("lacks model.safetensors"), "{e}");
}

/// The only test in this file that sets environment variables.
#[test]
fn resolve_model_reads_the_cache_from_the_environment_and_keeps_directories() {
    let root = fake_cache("env");
    std::env::set_var("HF_HUB_CACHE", &root);
    std::env::set_var("HF_HUB_OFFLINE", "1");
    let snapshot = resolve_model("lalora/tiny").unwrap();
    assert_eq!(snapshot, root.join("models--lalora--tiny/snapshots").join(COMMIT));
    assert_eq!(resolve_model(&format!("lalora/tiny@{COMMIT}")).unwrap(), snapshot);
    let dir = tiny().display().to_string();
    assert_eq!(resolve_model(&dir).unwrap(), tiny());
    let e = resolve_model("lalora/other@main").unwrap_err().to_string();
    assert!(e.contains("lalora/other@main") && e.contains(&root.display().to_string()), "{e}");
    let e = resolve_model("./no/such/model").unwrap_err().to_string();
    assert!(e.contains("./no/such/model") && e.contains("no such directory"), "{e}");
}
