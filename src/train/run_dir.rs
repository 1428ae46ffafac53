//! A run directory: what a training run writes and what a resume reads back.
//!
//! - `config.json`: the settings ([`RunConfig`]: LoRA and training) and the inputs
//!   ([`RunInputs`]: hashes of the model, data, starting adapters and prior), written before
//!   step 0; a resume must match both, and the error names every item that differs.
//! - `log.jsonl`: one line per step and per evaluation. A resume drops the lines past its
//!   checkpoint, so steps redone after a kill are logged once.
//! - `checkpoint/`: the adapters (PEFT layout), the optimiser state, the step, the data
//!   position and the last loss, written into `checkpoint.tmp/` and then swapped in. Only
//!   weights that are finite and give a finite loss are checkpointed.
//! - `.lock`: held by the process that writes the directory (see [`DirLock`]).
//!
//! A fresh run refuses a directory that already holds a run, unless forced (the old run's
//! files are then removed first).

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::optim::Optimizer;
use burn::record::{BinBytesRecorder, BinFileRecorder, FullPrecisionSettings, Recorder};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::fingerprint::RunInputs;
use crate::data::DataPosition;
use crate::error::{Error, Result};
use crate::io::lock::DirLock;
use crate::io::{peft, read_json, write_atomic, write_json_atomic};
use crate::llama::Llama;
use crate::lora::LoraConfig;
use crate::KernelAutodiffBackend;

/// The files and directories that make a directory a run directory (`.lock` aside).
pub const RUN_FILES: [&str; 8] =
    ["config.json", "log.jsonl", "checkpoint", "checkpoint.old", "checkpoint.tmp", "adapter", "eval.json", "run.json"];

/// What `config.json` holds: the settings of [`super::RunConfig`] and the inputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub lora: LoraConfig,
    pub train: TrainConfig,
    pub inputs: RunInputs,
}

/// What a checkpoint records besides the weights and the optimiser state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CheckpointState {
    pub step: usize,
    pub data: DataPosition,
    /// Token-mean NLL of the checkpoint's step (reported when a finished run is resumed).
    #[serde(default)]
    pub loss: Option<f64>,
}

/// An open, locked run directory.
pub(crate) struct RunDir {
    path: PathBuf,
    _lock: DirLock,
}

impl RunDir {
    /// Opens `path` as [`open_run_dir`] does and keeps its lock.
    pub fn open(path: &Path, resume: bool, force: bool) -> Result<Self> {
        Ok(RunDir { _lock: open_run_dir(path, resume, force)?, path: path.to_path_buf() })
    }

    /// Starts the run: a fresh one writes `config.json` and then `files` (name, JSON value:
    /// the command line's `run.json`); a resumed one checks `config.json` against `record`,
    /// where only the settings at the paths in `allowed` may differ (they are then recorded,
    /// and the change logged), and writes only those of `files` that are missing.
    pub fn begin(&self, record: &RunRecord, resume: bool, allowed: &[String], files: &[(String, serde_json::Value)]) -> Result<()> {
        let path = self.path.join("config.json");
        if !resume {
            write_json_atomic(&path, record)?;
            for (name, value) in files {
                write_json_atomic(&self.path.join(name), value)?;
            }
            return Ok(());
        }
        let as_json = |r: &RunRecord| serde_json::to_value(r).map_err(|source| Error::Json { path: path.clone(), source });
        let saved: serde_json::Value = read_json(&path)?;
        // Read through the type, so f32 settings compare as written; an older file without
        // `inputs` shows that item as null.
        let saved = match serde_json::from_value::<RunRecord>(saved.clone()) {
            Ok(r) => as_json(&r)?,
            Err(_) => saved,
        };
        let (changes, differences): (Vec<_>, Vec<_>) =
            differences(&saved, &as_json(record)?, "").into_iter().partition(|(field, ..)| allowed.contains(field));
        if differences.is_empty() {
            // A run killed between config.json and its other files gets them now.
            for (name, value) in files.iter().filter(|(name, _)| !self.path.join(name).exists()) {
                write_json_atomic(&self.path.join(name), value)?;
            }
            if !changes.is_empty() {
                write_json_atomic(&path, record)?;
                let changed: serde_json::Map<String, serde_json::Value> =
                    changes.iter().map(|(field, was, now)| (field.clone(), serde_json::json!({ "was": was, "now": now }))).collect();
                self.log(serde_json::json!({ "changed": changed }))?;
            }
            return Ok(());
        }
        let listed: Vec<String> = differences.iter().map(|(field, was, now)| format!("{field} was {was}, is now {now}")).collect();
        Err(Error::Mismatch {
            path,
            reason: format!(
                "the run was made with other settings or inputs ({}); resume with the same ones, or start over with --force",
                listed.join("; ")
            ),
        })
    }

    /// Appends one line to `log.jsonl`.
    pub fn log(&self, value: serde_json::Value) -> Result<()> {
        let path = self.path.join("log.jsonl");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{value}").map_err(|e| Error::io(&path, e))
    }

    /// Keeps the log lines of steps up to `step` (a resume redoes the ones after it); a line
    /// cut short by a kill is dropped too.
    pub fn rewind_log(&self, step: usize) -> Result<()> {
        let path = self.path.join("log.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|v| v.get("step").and_then(|s| s.as_u64()).is_none_or(|s| s as usize <= step))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if kept.len() != text.len() {
            write_atomic(&path, kept.as_bytes())?;
        }
        Ok(())
    }

    /// Writes a checkpoint into `checkpoint.tmp/`, then swaps it in, so the previous
    /// checkpoint survives an interruption.
    pub fn save_checkpoint<B: KernelAutodiffBackend, O: Optimizer<Llama<B>, B>>(
        &self,
        model: &Llama<B>,
        lora: &LoraConfig,
        optim: &O,
        state: &CheckpointState,
    ) -> Result<()> {
        let tmp = self.path.join("checkpoint.tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        peft::save_adapter(model, lora, &tmp.join("adapter"))?;
        let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(optim.to_record(), ())
            .map_err(|e| Error::io(tmp.join("optimizer.bin"), std::io::Error::other(e.to_string())))?;
        write_atomic(&tmp.join("optimizer.bin"), &bytes)?;
        write_json_atomic(&tmp.join("state.json"), state)?;
        let current = self.path.join("checkpoint");
        let old = self.path.join("checkpoint.old");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        if current.exists() {
            std::fs::rename(&current, &old).map_err(|e| Error::io(&current, e))?;
        }
        std::fs::rename(&tmp, &current).map_err(|e| Error::io(&current, e))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// The newest complete checkpoint directory, if any.
    fn checkpoint_dir(&self) -> Option<PathBuf> {
        ["checkpoint", "checkpoint.old"].iter().map(|n| self.path.join(n)).find(|p| p.join("state.json").exists())
    }

    /// Loads the newest checkpoint into `model` and `optim` and returns its state; `None`
    /// (and the inputs unchanged) when the run stopped before its first checkpoint.
    pub fn resume<B: KernelAutodiffBackend, O: Optimizer<Llama<B>, B>>(
        &self,
        model: Llama<B>,
        optim: O,
    ) -> Result<(Llama<B>, O, Option<CheckpointState>)> {
        let Some(dir) = self.checkpoint_dir() else { return Ok((model, optim, None)) };
        let state: CheckpointState = read_json(&dir.join("state.json"))?;
        let model = peft::load_adapter(model, &dir.join("adapter"))?.0;
        let device = model.embed_tokens.device();
        let file = dir.join("optimizer.bin");
        if !file.exists() {
            return Err(Error::io(&file, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
        }
        let record = BinFileRecorder::<FullPrecisionSettings>::new()
            .load(dir.join("optimizer"), &device)
            .map_err(|e| Error::config(&file, "<optimiser state>", format!("not readable: {e}")))?;
        Ok((model, optim.load_record(record), Some(state)))
    }
}

/// Locks the run directory `path` (created if missing) for a run that starts fresh or, with
/// `resume`, continues. A fresh run refuses a directory that holds a run (any of
/// [`RUN_FILES`]) unless `force`, which deletes that run's files (other files stay); a resume
/// needs the directory's `config.json`. Training takes the lock itself; a caller that writes
/// into the directory after training (the command line's adapter and `eval.json`) holds this
/// one until then.
///
/// # Errors
/// [`Error::Locked`] naming the holder's pid, [`Error::ExistingRun`] naming the files found.
pub fn open_run_dir(path: &Path, resume: bool, force: bool) -> Result<DirLock> {
    let lock = DirLock::run_dir(path)?;
    let found: Vec<&str> = RUN_FILES.iter().copied().filter(|f| path.join(f).exists()).collect();
    if resume {
        let config = path.join("config.json");
        if !config.exists() {
            let reason = "nothing to resume: the run directory has no config.json (start the run without --resume)";
            return Err(Error::io(config, std::io::Error::new(std::io::ErrorKind::NotFound, reason)));
        }
    } else if !found.is_empty() {
        if !force {
            return Err(Error::ExistingRun { path: path.to_path_buf(), found: found.join(", ") });
        }
        for name in found {
            let p = path.join(name);
            let removed = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            removed.map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(lock)
}

/// Every place where two JSON values differ, as (dotted path, saved, wanted).
pub(crate) fn differences(saved: &serde_json::Value, wanted: &serde_json::Value, at: &str) -> Vec<(String, String, String)> {
    use serde_json::Value;
    match (saved, wanted) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                    differences(a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), &path)
                })
                .collect()
        }
        _ if saved == wanted => Vec::new(),
        _ => vec![(at.to_string(), saved.to_string(), wanted.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named_by_their_paths() {
        let a = serde_json::json!({"lora": {"rank": 8, "alpha": 16.0}, "train": {"lr": 1e-3}});
        let b = serde_json::json!({"lora": {"rank": 4, "alpha": 16.0}, "train": {"lr": 2e-3}});
        let found = differences(&a, &b, "");
        assert_eq!(found[0], ("lora.rank".to_string(), "8".to_string(), "4".to_string()));
        assert_eq!(found[1].0, "train.lr");
        assert!(differences(&a, &a, "").is_empty());
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lalora-run-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_fresh_run_refuses_an_existing_one_unless_forced() {
        let dir = scratch("existing");
        drop(RunDir::open(&dir, false, false).expect("a new directory"));
        drop(RunDir::open(&dir, false, false).expect("only the lock file: not a run yet"));
        std::fs::write(dir.join("log.jsonl"), "{\"step\": 1}\n").unwrap();
        std::fs::create_dir_all(dir.join("adapter")).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let err = RunDir::open(&dir, false, false).err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, Error::ExistingRun { .. }), "{err:?}");
        assert!(text.contains(&dir.display().to_string()) && text.contains("--resume") && text.contains("--force"), "{text}");
        assert!(text.contains("log.jsonl") && text.contains("adapter"), "{text}");
        assert!(dir.join("log.jsonl").exists(), "a refused run writes nothing");
        let resume = RunDir::open(&dir, true, false).err().unwrap().to_string();
        assert!(resume.contains("config.json") && resume.contains("nothing to resume"), "{resume}");
        drop(RunDir::open(&dir, false, true).expect("forced"));
        assert!(!dir.join("log.jsonl").exists() && !dir.join("adapter").exists(), "the old run's files are gone");
        assert!(dir.join("notes.txt").exists(), "other files are kept");
    }

    #[test]
    fn a_rewound_log_keeps_the_steps_up_to_the_checkpoint() {
        let dir = scratch("rewind");
        let run = RunDir::open(&dir, false, false).unwrap();
        let lines = "{\"step\":1,\"nll\":2}\n{\"step\":2,\"nll\":1}\n{\"step\":2,\"eval\":[]}\n{\"step\":3,\"nll\":0.5}\n{\"step\":4,\"n";
        std::fs::write(dir.join("log.jsonl"), lines).unwrap();
        run.rewind_log(2).unwrap();
        let kept = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        assert_eq!(kept, "{\"step\":1,\"nll\":2}\n{\"step\":2,\"nll\":1}\n{\"step\":2,\"eval\":[]}\n");
    }
}
