//! Deterministic synthetic tasks for the forgetting demo.
//!
//! Three *source* skills are what the tiny base model learns in pretraining:
//! - `facts`: knowledge about an invented world of countries (capital, river, flag, ruler,
//!   main export);
//! - `strings`: transformations of random words (reverse, capitals, first/last letter,
//!   doubled);
//! - `grammar`: subject-verb agreement across prepositional phrases.
//!
//! The *target* task, `arithmetic`, is GSM8K-style word problems about the same invented
//! countries and cities. The pretraining corpus holds no word problem and none of their
//! notation; it does state small sums in words (the *background* `numbers` knowledge), so
//! fine-tuning teaches a format on top of knowledge the model has, as with a real LLM.
//!
//! Two more targets make a sequence for continual learning ([`target_tasks`]): `envoys`
//! (whom an envoy meets: the ruler of the country travelled to) and `trade` (which export a
//! country receives in a shipment story), both stories built on the `facts` knowledge.
//!
//! Everything is a pure function of the seed: each part draws from its own
//! [`rand::rngs::StdRng`] stream, and the versions pinned in `Cargo.lock` make the output
//! byte-identical on every platform. [`write_tasks`] writes the JSONL files lalora reads.

mod arithmetic;
mod facts;
mod files;
mod grammar;
mod numbers;
mod sampling;
mod stories;
mod strings;
mod words;

pub use crate::data::Record;
pub use files::{write_tasks, TaskFiles};

/// Whether a task is knowledge to keep or the new task to learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRole {
    /// Learned in pretraining; its score after fine-tuning measures forgetting.
    Source,
    /// Learned by LoRA fine-tuning.
    Target,
    /// General knowledge in the pretraining corpus, neither evaluated nor fine-tuned on.
    Background,
}

impl TaskRole {
    /// Prefix of the task's file names: "source" or "target".
    pub fn file_prefix(self) -> &'static str {
        match self {
            TaskRole::Source => "source",
            TaskRole::Target => "target",
            TaskRole::Background => "background",
        }
    }

    /// Name of the held-out split: "eval" for sources, "test" for the target.
    pub fn held_out_name(self) -> &'static str {
        match self {
            TaskRole::Source | TaskRole::Background => "eval",
            TaskRole::Target => "test",
        }
    }
}

/// A named list of records, written as the JSONL file `{name}.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSplit {
    /// File stem, e.g. "source-facts.train".
    pub name: String,
    /// The records, in file order.
    pub records: Vec<Record>,
}

impl TaskSplit {
    /// The records as JSONL: one line each, every line ending in a newline.
    pub fn to_jsonl(&self) -> String {
        self.records.iter().map(|r| r.to_json_line() + "\n").collect()
    }
}

/// One generated task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Short name, e.g. "facts".
    pub name: String,
    /// Source skill or target task.
    pub role: TaskRole,
    /// Texts this skill adds to the base model's pretraining corpus (empty for the target).
    pub pretrain: Vec<String>,
    /// Training records: `{"text"}` for sources (what the Laplace prior is fitted on, drawn
    /// apart from `pretrain` from the same distribution), `{"prompt","completion"}` for the
    /// target.
    pub train: Vec<Record>,
    /// Held-out records: multiple choice for sources, `{"prompt","answer"}` for the target.
    pub eval: Vec<Record>,
}

impl Task {
    /// The train and held-out splits, named after the files they go to
    /// (`source-facts.train`, `source-facts.eval`, `target-arithmetic.test`, ...).
    pub fn splits(&self) -> [TaskSplit; 2] {
        let stem = format!("{}-{}", self.role.file_prefix(), self.name);
        [
            TaskSplit { name: format!("{stem}.train"), records: self.train.clone() },
            TaskSplit { name: format!("{stem}.{}", self.role.held_out_name()), records: self.eval.clone() },
        ]
    }
}

/// How many records of each kind to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSizes {
    /// Countries in the invented world, each with five facts (at least 4 are made).
    pub fact_entities: usize,
    /// Pretraining texts per source skill.
    pub pretrain_per_source: usize,
    /// Laplace-fit texts per source skill.
    pub source_train: usize,
    /// Held-out multiple-choice questions per source skill.
    pub source_eval: usize,
    /// Target training problems.
    pub target_train: usize,
    /// Target test problems.
    pub target_test: usize,
}

impl Default for TaskSizes {
    /// Sizes for the demo: 30 000 pretraining texts (each of the 900 fact statements about
    /// 11 times), learnable by a ~1M-parameter model in minutes.
    fn default() -> Self {
        TaskSizes {
            fact_entities: 60,
            pretrain_per_source: 10_000,
            source_train: 400,
            source_eval: 120,
            target_train: 3000,
            target_test: 200,
        }
    }
}

impl TaskSizes {
    /// A few dozen records of each kind, for tests and CI: the first records of the same
    /// world as the default sizes (the bundled model knows its facts).
    pub fn tiny() -> Self {
        TaskSizes {
            fact_entities: TaskSizes::default().fact_entities,
            pretrain_per_source: 200,
            source_train: 24,
            source_eval: 16,
            target_train: 48,
            target_test: 16,
        }
    }

    /// What is generated for these sizes: at least the default sizes, so that smaller sizes
    /// cut the same world rather than draw a different one.
    fn generated(&self) -> TaskSizes {
        let d = TaskSizes::default();
        TaskSizes {
            fact_entities: self.fact_entities,
            pretrain_per_source: self.pretrain_per_source.max(d.pretrain_per_source),
            source_train: self.source_train.max(d.source_train),
            source_eval: self.source_eval.max(d.source_eval),
            target_train: self.target_train.max(d.target_train),
            target_test: self.target_test.max(d.target_test),
        }
    }
}

impl Task {
    /// The task with its lists cut to `sizes` (sources and background by the source sizes,
    /// the target by the target sizes).
    fn cut(mut self, sizes: &TaskSizes) -> Task {
        let (train, eval) = match self.role {
            TaskRole::Target => (sizes.target_train, sizes.target_test),
            _ => (sizes.source_train, sizes.source_eval),
        };
        self.pretrain.truncate(sizes.pretrain_per_source);
        self.train.truncate(train);
        self.eval.truncate(eval);
        self
    }
}

/// The three source skills: `facts`, `strings` and `grammar`, in that order.
pub fn source_tasks(seed: u64, sizes: &TaskSizes) -> Vec<Task> {
    let all = sizes.generated();
    [facts::facts_task(seed, &all), strings::strings_task(seed, &all), grammar::grammar_task(seed, &all)]
        .into_iter()
        .map(|t| t.cut(sizes))
        .collect()
}

/// Background knowledge for the pretraining corpus only: `numbers` (sums in words).
pub fn background_tasks(seed: u64, sizes: &TaskSizes) -> Vec<Task> {
    vec![numbers::numbers_task(seed, &sizes.generated()).cut(sizes)]
}

/// The target task: `arithmetic` word problems about the facts world.
pub fn target_task(seed: u64, sizes: &TaskSizes) -> Task {
    arithmetic::arithmetic_task(seed, &sizes.generated()).cut(sizes)
}

/// Every target task, in the order a continual run learns them: `arithmetic`, `envoys`,
/// `trade`. The first is [`target_task`]; the others are cut to the same target sizes.
pub fn target_tasks(seed: u64, sizes: &TaskSizes) -> Vec<Task> {
    let all = sizes.generated();
    vec![target_task(seed, sizes), stories::ENVOYS.task(seed, &all).cut(sizes), stories::TRADE.task(seed, &all).cut(sizes)]
}

/// The base model's pretraining texts: every source's `pretrain` texts, interleaved one
/// from each source in turn so that any prefix of the corpus mixes all skills.
pub fn pretraining_corpus(sources: &[Task]) -> Vec<String> {
    let longest = sources.iter().map(|t| t.pretrain.len()).max().unwrap_or(0);
    (0..longest).flat_map(|i| sources.iter().filter_map(move |t| t.pretrain.get(i).cloned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_tasks_other_seed_other_tasks() {
        let sizes = TaskSizes::tiny();
        assert_eq!(source_tasks(1, &sizes), source_tasks(1, &sizes));
        assert_eq!(target_task(1, &sizes), target_task(1, &sizes));
        let (a, b) = (source_tasks(1, &sizes), source_tasks(2, &sizes));
        for (x, y) in a.iter().zip(&b) {
            assert_ne!(x.pretrain, y.pretrain, "{}", x.name);
            assert_ne!(x.eval, y.eval, "{}", x.name);
        }
        assert_ne!(target_task(1, &sizes).train, target_task(2, &sizes).train);
    }

    #[test]
    fn tasks_have_the_requested_sizes_and_roles() {
        let sizes = TaskSizes::tiny();
        let sources = source_tasks(3, &sizes);
        let names: Vec<&str> = sources.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["facts", "strings", "grammar"]);
        for task in &sources {
            assert_eq!(task.role, TaskRole::Source);
            assert_eq!(task.pretrain.len(), sizes.pretrain_per_source, "{}", task.name);
            assert_eq!(task.train.len(), sizes.source_train, "{}", task.name);
            assert_eq!(task.eval.len(), sizes.source_eval, "{}", task.name);
            assert!(task.train.iter().all(|r| matches!(r, Record::Text { .. })));
            assert!(task.eval.iter().all(|r| matches!(r, Record::MultipleChoice { .. })));
        }
        let target = target_task(3, &sizes);
        assert_eq!(target.role, TaskRole::Target);
        assert!(target.pretrain.is_empty());
        let split_names = target.splits().map(|s| s.name);
        assert_eq!(split_names, ["target-arithmetic.train", "target-arithmetic.test"]);
    }

    #[test]
    fn every_choice_label_is_in_range_and_its_choice_unique() {
        for task in source_tasks(4, &TaskSizes::default()) {
            for record in &task.eval {
                let Record::MultipleChoice { choices, label, .. } = record else { panic!("{record:?}") };
                assert!(*label < choices.len(), "{record:?}");
                assert_eq!(choices.iter().filter(|c| **c == choices[*label]).count(), 1, "{record:?}");
            }
        }
    }

    #[test]
    fn pretraining_corpus_interleaves_and_holds_no_arithmetic() {
        let sizes = TaskSizes::default();
        let sources = source_tasks(5, &sizes);
        let corpus = pretraining_corpus(&sources);
        assert_eq!(corpus.len(), 3 * sizes.pretrain_per_source);
        assert_eq!(corpus[..3], [sources[0].pretrain[0].clone(), sources[1].pretrain[0].clone(), sources[2].pretrain[0].clone()]);
        // Digits, questions and `####` appear (as recall); arithmetic does not.
        let with_background: Vec<Task> = sources.iter().cloned().chain(background_tasks(5, &sizes)).collect();
        let corpus_all = pretraining_corpus(&with_background);
        assert!(corpus_all.iter().any(|t| t.contains(" plus ")));
        for text in &corpus_all {
            assert!(!text.chars().any(|c| "+*=".contains(c)), "{text}");
            assert!(!text.contains(" - ") && !text.contains("now?"), "{text}");
            assert!(text.len() <= 100, "{text}");
        }
        assert!(corpus.iter().any(|t| t.contains("####") && t.chars().any(|c| c.is_ascii_digit())));
    }

    #[test]
    fn splits_serialise_one_record_per_line() {
        let task = target_task(0, &TaskSizes::tiny());
        let [train, test] = task.splits();
        let jsonl = test.to_jsonl();
        assert_eq!(jsonl.lines().count(), test.records.len());
        assert!(jsonl.ends_with('\n'));
        assert_eq!(train.records, task.train);
    }
}
