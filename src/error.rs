//! The library's one error type. Every variant that comes from a user's input names the place
//! of the mistake: the file, and the field, tensor or line inside it.

use std::path::PathBuf;

/// Errors a user can cause: bad paths, malformed files, wrong shapes, bad settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written (a full disk is said so, with the file).
    #[error("{}", io_message(path, source))]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A JSON file is not valid JSON or does not have the expected structure.
    #[error("{path}: malformed JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What serde said (it names the line and column).
        source: serde_json::Error,
    },
    /// A configuration value is missing, out of range or unsupported.
    #[error("{path}: field `{field}`: {reason}")]
    BadConfig {
        /// The file (or `<command line>` for flags).
        path: PathBuf,
        /// The field or flag.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting passed as a flag or function argument is out of range or unsupported.
    #[error("--{name}: {reason}")]
    BadArgument {
        /// The flag's name (without dashes).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A safetensors file is not readable as such.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the model needs is not in the checkpoint.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor {
        /// The checkpoint file or directory.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A tensor has the wrong shape for the model's configuration.
    #[error("{path}: tensor `{name}` has shape {found:?}, the configuration expects {expected:?}")]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Shape on disk.
        found: Vec<usize>,
        /// Shape the configuration implies.
        expected: Vec<usize>,
    },
    /// A tensor is stored in a dtype lalora cannot read.
    #[error("{path}: tensor `{name}` has dtype {dtype}, expected one of F32, F16, BF16, F64")]
    TensorDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// A tensor holds NaN or infinite values where finite ones are required.
    #[error("{path}: tensor `{name}` contains non-finite values")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// The tokenizer file could not be loaded or used.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A record in a data file is malformed.
    #[error("{path}:{line}: {reason}")]
    BadRecord {
        /// The data file.
        path: PathBuf,
        /// 1-based line number (row number in a parquet file).
        line: usize,
        /// What is wrong with the record.
        reason: String,
    },
    /// A parquet file cannot be read as such.
    #[error("{path}: not a readable parquet file: {reason}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What the parquet reader said.
        reason: String,
    },
    /// A data file (or the part of it that is usable) is empty.
    #[error("{path}: {reason}")]
    EmptyData {
        /// The data file.
        path: PathBuf,
        /// Why nothing is usable.
        reason: String,
    },
    /// Two files that must belong together do not (an adapter for another model, a prior for
    /// other adapters, ...).
    #[error("{path}: {reason}")]
    Mismatch {
        /// The file that does not fit.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A Hugging Face model id that cannot be resolved to a local snapshot.
    #[error("model id `{id}`: {reason}")]
    Hub {
        /// The id as given, with its revision (`org/name@main`).
        id: String,
        /// What was looked for and where, or why the download failed.
        reason: String,
    },
    /// A directory is locked by another process (a run or a prior being written).
    #[error("{} is in use by {}: wait for it to finish, or use another directory", path.display(), holder(pid))]
    Locked {
        /// The locked directory.
        path: PathBuf,
        /// The process holding the lock, when it could be read.
        pid: Option<u32>,
    },
    /// A fresh run was asked for in a directory that already holds one.
    #[error("{}: already holds a run ({found}): continue it with --resume, or start over in it with --force", path.display())]
    ExistingRun {
        /// The run directory.
        path: PathBuf,
        /// The run files found there.
        found: String,
    },
    /// A numerical problem during a run (a non-finite loss, say), with where it happened.
    #[error("{0}")]
    Numerical(String),
}

/// `PATH: what the OS said`, or `disk full while writing PATH`.
fn io_message(path: &std::path::Path, source: &std::io::Error) -> String {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    if matches!(source.kind(), StorageFull | QuotaExceeded) {
        return format!("disk full while writing {} ({source})", path.display());
    }
    format!("{}: {source}", path.display())
}

/// Who holds a lock, for messages.
fn holder(pid: &Option<u32>) -> String {
    match pid {
        Some(pid) => format!("another lalora process (pid {pid})"),
        None => "another lalora process".to_string(),
    }
}

/// Shorthand for results with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A bad value of `field` in `path`.
    pub fn config(path: impl Into<PathBuf>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadConfig { path: path.into(), field: field.into(), reason: reason.into() }
    }

    /// A bad command-line flag or library argument (no file involved).
    pub fn arg(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArgument { name: name.into(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_said_so_with_the_file() {
        // ENOSPC, as writing to /dev/full gives.
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").and_then(|mut f| std::io::Write::write_all(&mut f, b"x"));
        let source = full.err().unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::StorageFull));
        let text = Error::io("run/checkpoint.tmp/optimizer.bin", source).to_string();
        assert!(text.starts_with("disk full while writing run/checkpoint.tmp/optimizer.bin"), "{text}");
        assert!(!text.contains("Io {"), "{text}");
        let other = Error::io("a.json", std::io::Error::from(std::io::ErrorKind::PermissionDenied)).to_string();
        assert!(other.starts_with("a.json: "), "{other}");
    }
}
