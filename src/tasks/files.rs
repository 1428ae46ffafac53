//! Writing the generated tasks to disk as the JSONL files lalora reads.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::write_atomic;

use super::{background_tasks, pretraining_corpus, source_tasks, target_tasks, Record, Task, TaskSizes, TaskSplit};

/// Where [`write_tasks`] put each file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFiles {
    /// `pretrain.jsonl`: `{"text"}` lines the base model is pretrained on.
    pub pretrain: PathBuf,
    /// For each source skill: its name, its Laplace-fit `{"text"}` file and its held-out
    /// multiple-choice file.
    pub sources: Vec<(String, PathBuf, PathBuf)>,
    /// `target-arithmetic.train.jsonl`: `{"prompt","completion"}` lines.
    pub target_train: PathBuf,
    /// `target-arithmetic.test.jsonl`: `{"prompt","answer"}` lines.
    pub target_eval: PathBuf,
    /// Every target task in continual-learning order (`arithmetic`, `envoys`, `trade`): its
    /// name, its `{"prompt","completion"}` training file and its `{"prompt","answer"}` test file.
    pub targets: Vec<(String, PathBuf, PathBuf)>,
    /// Texts to train the BPE tokenizer on: the pretraining corpus and the arithmetic target's
    /// training examples (prompt followed by completion), so digits and `####` get tokens too.
    /// (The later targets are left out: the bundled tokenizer predates them.)
    pub tokenizer_corpus: Vec<String>,
}

/// Generates every task from `seed` and writes it under `dir` (created if missing):
/// `pretrain.jsonl`, `source-{name}.train.jsonl`, `source-{name}.eval.jsonl`,
/// `target-{name}.train.jsonl` and `target-{name}.test.jsonl` for every target task, and
/// `README.txt`.
/// Each file is written atomically (a temporary file, then renamed into place).
pub fn write_tasks(dir: &Path, seed: u64, sizes: &TaskSizes) -> Result<TaskFiles> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let sources = source_tasks(seed, sizes);
    let targets = target_tasks(seed, sizes);
    let target = &targets[0];
    let pretrained: Vec<Task> = sources.iter().cloned().chain(background_tasks(seed, sizes)).collect();
    let corpus = pretraining_corpus(&pretrained);

    let pretrain_split = TaskSplit { name: "pretrain".into(), records: corpus.iter().cloned().map(Record::text).collect() };
    let pretrain = write_split(dir, &pretrain_split)?;
    let mut source_files = Vec::with_capacity(sources.len());
    for task in &sources {
        let (train, eval) = write_task(dir, task)?;
        source_files.push((task.name.clone(), train, eval));
    }
    let mut target_files = Vec::with_capacity(targets.len());
    for task in &targets {
        let (train, test) = write_task(dir, task)?;
        target_files.push((task.name.clone(), train, test));
    }
    let (target_train, target_eval) = (target_files[0].1.clone(), target_files[0].2.clone());
    write_atomic(&dir.join("README.txt"), readme(seed, &sources, &targets).as_bytes())?;

    let examples = target.train.iter().filter_map(|record| match record {
        Record::PromptCompletion { prompt, completion } => Some(format!("{prompt}{completion}")),
        _ => None,
    });
    let tokenizer_corpus = corpus.iter().cloned().chain(examples).collect();
    Ok(TaskFiles { pretrain, sources: source_files, target_train, target_eval, targets: target_files, tokenizer_corpus })
}

/// Writes both splits of `task`; returns the train and held-out paths.
fn write_task(dir: &Path, task: &Task) -> Result<(PathBuf, PathBuf)> {
    let [train, held_out] = task.splits();
    Ok((write_split(dir, &train)?, write_split(dir, &held_out)?))
}

/// Writes `split` to `dir/{name}.jsonl` and returns that path.
fn write_split(dir: &Path, split: &TaskSplit) -> Result<PathBuf> {
    let path = dir.join(format!("{}.jsonl", split.name));
    write_atomic(&path, split.to_jsonl().as_bytes())?;
    Ok(path)
}

/// The README describing each file in two lines.
fn readme(seed: u64, sources: &[Task], targets: &[Task]) -> String {
    let target = &targets[0];
    let mut text = format!(
        "Synthetic tasks of the lalora forgetting demo, generated from seed {seed}.\n\
         Every file is JSONL: one JSON object per line.\n\n\
         pretrain.jsonl\n  {{\"text\"}} lines the tiny base model is pretrained on: the source skills below and sums stated in words, interleaved.\n  \
         It holds no arithmetic, so the base model starts out bad at the target task.\n"
    );
    for task in sources {
        let about = match task.name.as_str() {
            "facts" => "facts about invented countries (capital, river, flag, ruler, export)",
            "strings" => "transformations of random words (reverse, capitals, first/last letter, doubled)",
            _ => "subject-verb agreement across prepositional phrases",
        };
        let [train, eval] = task.splits();
        text += &format!(
            "\n{}.jsonl\n  {{\"text\"}} lines on {about},\n  \
             drawn apart from pretraining from the same distribution: the data the Laplace prior is fitted on.\n\
             {}.jsonl\n  Held-out {{\"context\",\"choices\",\"label\"}} questions on the `{}` skill,\n  \
             scored by the log-likelihood of each choice; its score after fine-tuning measures forgetting.\n",
            train.name, eval.name, task.name,
        );
    }
    let [train, test] = target.splits();
    text += &format!(
        "\n{}.jsonl\n  {{\"prompt\",\"completion\"}} arithmetic word problems about the invented countries,\n  \
         the completion a short chain of thought ending in \"#### <answer>\": the LoRA fine-tuning data.\n\
         {}.jsonl\n  Held-out {{\"prompt\",\"answer\"}} problems of the same kind, scored by exact match\n  \
         of the number generated after \"####\": the target score.\n",
        train.name, test.name,
    );
    for task in &targets[1..] {
        let about = match task.name.as_str() {
            "envoys" => "whom an envoy from one country to another meets (the receiving country's ruler, a fact)",
            _ => "which main export a country receives when another ships it one (the sender's export, a fact)",
        };
        let [train, test] = task.splits();
        text += &format!(
            "\n{}.jsonl\n  {{\"prompt\",\"completion\"}} problems on {about}.\n  \
             A further target for continual learning (lalora continual), learnt after arithmetic.\n\
             {}.jsonl\n  Held-out {{\"prompt\",\"answer\"}} problems, scored by exact match of the answer after \"####\".\n",
            train.name, test.name,
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::target_task;

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lalora-tasks-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// Every record of a JSONL file.
    fn read_records(path: &Path) -> Vec<Record> {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.lines().map(|line| Record::from_json_line(line).unwrap_or_else(|e| panic!("{line}: {e}"))).collect()
    }

    #[test]
    fn written_files_round_trip_and_match_the_tasks() {
        let dir = scratch("round-trip");
        let sizes = TaskSizes::tiny();
        let files = write_tasks(&dir, 42, &sizes).expect("write tasks");
        let sources = source_tasks(42, &sizes);
        let target = target_task(42, &sizes);

        let pretrain = read_records(&files.pretrain);
        let pretrained: Vec<Task> = sources.iter().cloned().chain(background_tasks(42, &sizes)).collect();
        assert_eq!(pretrain, pretraining_corpus(&pretrained).into_iter().map(Record::text).collect::<Vec<_>>());
        assert_eq!(files.sources.len(), 3);
        for ((name, train, eval), task) in files.sources.iter().zip(&sources) {
            assert_eq!(*name, task.name);
            assert_eq!(*train, dir.join(format!("source-{name}.train.jsonl")));
            assert_eq!(read_records(train), task.train);
            assert_eq!(read_records(eval), task.eval);
        }
        assert_eq!(files.target_eval, dir.join("target-arithmetic.test.jsonl"));
        assert_eq!(read_records(&files.target_train), target.train);
        assert_eq!(read_records(&files.target_eval), target.eval);
        assert_eq!(files.tokenizer_corpus.len(), pretrain.len() + target.train.len());
        let names: Vec<&str> = files.targets.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["arithmetic", "envoys", "trade"]);
        for ((name, train, test), task) in files.targets.iter().zip(target_tasks(42, &sizes)) {
            assert_eq!(*train, dir.join(format!("target-{name}.train.jsonl")));
            assert_eq!(read_records(train), task.train);
            assert_eq!(read_records(test), task.eval);
            assert_eq!(task.train.len(), sizes.target_train, "{name}");
            assert_eq!(task.eval.len(), sizes.target_test, "{name}");
        }
        assert!(files.tokenizer_corpus.iter().any(|t| t.contains("####")));

        let readme = fs::read_to_string(dir.join("README.txt")).expect("readme");
        let target_paths = files.targets.iter().flat_map(|(_, train, test)| [train, test]);
        for path in [&files.pretrain, &files.target_train, &files.target_eval].into_iter().chain(target_paths) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            assert!(readme.contains(name), "README misses {name}");
        }
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .expect("list dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn same_seed_writes_byte_identical_files() {
        let (a, b) = (scratch("same-a"), scratch("same-b"));
        let sizes = TaskSizes::tiny();
        let files_a = write_tasks(&a, 7, &sizes).expect("write a");
        let files_b = write_tasks(&b, 7, &sizes).expect("write b");
        let read = |p: &Path| fs::read(p).unwrap_or_default();
        assert!(!read(&files_a.target_train).is_empty());
        assert_eq!(read(&files_a.pretrain), read(&files_b.pretrain));
        assert_eq!(read(&files_a.target_train), read(&files_b.target_train));
        assert_eq!(read(&a.join("README.txt")), read(&b.join("README.txt")));
        let _ = (fs::remove_dir_all(&a), fs::remove_dir_all(&b));
    }

    #[test]
    fn writing_into_a_file_path_is_an_error() {
        let dir = scratch("not-a-dir");
        fs::create_dir_all(&dir).expect("mkdir");
        let blocker = dir.join("blocker");
        fs::write(&blocker, b"x").expect("write blocker");
        assert!(write_tasks(&blocker, 1, &TaskSizes::tiny()).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
