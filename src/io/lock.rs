//! Exclusive locks on the directories a command writes (a run directory, a prior being
//! written), so that two processes never write one directory at once.
//!
//! The lock is the OS's advisory file lock (`flock` on Unix, `LockFileEx` on Windows) on a
//! small lock file holding the owner's process id. The OS releases it when the process ends,
//! however it ends (`kill -9` included), so a stale lock file never blocks a later run. Lock
//! files are never deleted: deleting one while another process waits on it would let two
//! processes lock two different files of the same name.
//!
//! Locks are re-entrant within a process: the command line holds a run directory's lock for
//! the whole command and the library takes it again inside [`crate::LaLoRA::train`]. Two
//! threads of one process are therefore not kept apart.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use crate::error::{Error, Result};

/// Lock files this process holds, with how many [`DirLock`]s share each.
static HELD: LazyLock<Mutex<HashMap<PathBuf, (File, usize)>>> = LazyLock::new(Default::default);

/// An exclusive lock, released when the last handle to it in this process is dropped.
#[derive(Debug)]
pub struct DirLock {
    key: PathBuf,
}

impl DirLock {
    /// Locks the run directory `dir` (created if missing) through `dir/.lock`.
    pub fn run_dir(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Self::acquire(&dir.join(".lock"), dir)
    }

    /// Locks the prior directory `dir` through `.{name}.lock` beside it: a prior is written
    /// into a temporary directory that then replaces `dir`, so a lock file inside `dir`
    /// would be replaced with it.
    pub fn prior_dir(dir: &Path) -> Result<Self> {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "prior".into());
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        Self::acquire(&parent.join(format!(".{name}.lock")), dir)
    }

    /// Locks `lock_file` (created if missing) on behalf of `dir`, which errors name, and
    /// writes this process's id into it.
    ///
    /// # Errors
    /// [`Error::Locked`] with the holder's process id when another process holds the lock.
    pub fn acquire(lock_file: &Path, dir: &Path) -> Result<Self> {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(lock_file).map_err(|e| Error::io(lock_file, e))?;
        let key = std::fs::canonicalize(lock_file).map_err(|e| Error::io(lock_file, e))?;
        if let Some((_, count)) = held.get_mut(&key) {
            *count += 1;
            return Ok(DirLock { key });
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(Error::Locked { path: dir.to_path_buf(), pid: text.trim().parse().ok() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(lock_file, e)),
        }
        let wrote = (|| {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        })();
        wrote.map_err(|e| Error::io(lock_file, e))?;
        held.insert(key.clone(), (file, 1));
        Ok(DirLock { key })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, count)) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Closing the file releases the OS lock.
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lalora-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn another_holder_is_refused_with_its_pid_and_the_lock_is_reentrant_here() {
        let dir = scratch("held").join("run");
        let first = DirLock::run_dir(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(".lock")).unwrap().trim(), std::process::id().to_string());
        // Re-entrant in this process: the library locks what the command line already holds.
        let again = DirLock::run_dir(&dir).unwrap();
        drop(again);
        // Another open file description stands in for another process: it cannot lock.
        let other = File::options().read(true).write(true).open(dir.join(".lock")).unwrap();
        assert!(matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)), "still held by `first`");
        drop(first);
        other.try_lock().expect("released when the last handle is dropped");
        // Now the other holder has it: this process is refused, with the pid it wrote.
        let mut other = other;
        other.set_len(0).unwrap();
        writeln!(other, "4242").unwrap();
        let err = DirLock::run_dir(&dir).unwrap_err();
        assert!(matches!(err, Error::Locked { pid: Some(4242), .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("4242") && text.contains(&dir.display().to_string()), "{text}");
        drop(other);
        DirLock::run_dir(&dir).expect("free again");
    }

    #[test]
    fn a_prior_is_locked_beside_it() {
        let parent = scratch("prior");
        let dir = parent.join("prior");
        let lock = DirLock::prior_dir(&dir).unwrap();
        assert!(parent.join(".prior.lock").exists() && !dir.exists());
        let other = File::options().read(true).write(true).open(parent.join(".prior.lock")).unwrap();
        assert!(other.try_lock().is_err());
        drop(lock);
        assert!(other.try_lock().is_ok());
    }
}
