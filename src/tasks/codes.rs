//! The `codes` target task: the three-letter code of a name, e.g. "Zorvia" -> "ZOR".
//!
//! A rule, not a memory: training names are freshly invented (never seen in pretraining) and
//! the test asks for the codes of the facts world's countries and capitals, so the score
//! measures whether the rule was learnt. The chain of thought reuses the `strings` skill
//! ("Zorvia in capitals is ZORVIA."), so fine-tuning teaches one new step on top of a known
//! one, and it touches exactly what the `strings` source measures.

use std::collections::{BTreeSet, HashSet};

use rand::RngExt;

use super::facts::World;
use super::sampling::{pick, stream};
use super::words::invent_name;
use super::{Record, Task, TaskRole, TaskSizes};

/// Letters in a code.
pub const CODE_LENGTH: usize = 3;
/// Ways of asking for a code; the test uses the first.
const QUESTIONS: &[&str] = &["What is the code of {name}?", "Which code does {name} have?", "Give the code of {name}."];

/// The code of `name`: its first [`CODE_LENGTH`] letters in capitals.
pub fn code(name: &str) -> String {
    name.chars().take(CODE_LENGTH).collect::<String>().to_uppercase()
}

/// The prompt asking for the code of `name` with question template `template`.
fn prompt(template: &str, name: &str) -> String {
    format!("{}\nAnswer:", template.replace("{name}", name))
}

/// The training completion: the name in capitals (a known skill), then the code.
pub fn solution(name: &str) -> String {
    format!(" {name} in capitals is {}. #### {}", name.to_uppercase(), code(name))
}

/// The `codes` target task: `train` holds prompt/completion records about invented names
/// (none of which is a name of the facts world), `eval` holds prompt/answer records about the
/// world's countries and capitals.
pub fn codes_task(seed: u64, sizes: &TaskSizes) -> Task {
    let world = World::generate(seed, sizes.fact_entities);
    let world_names: Vec<String> = world.countries.iter().flat_map(|c| [c.name.clone(), c.capital.clone()]).collect();

    let mut rng = stream(seed, "codes/test");
    let mut asked = HashSet::new();
    let mut eval = Vec::with_capacity(sizes.target_test);
    // The world has a bounded number of names: ask each once, then stop.
    while eval.len() < sizes.target_test.min(world_names.len()) {
        let name = pick(&mut rng, &world_names);
        if asked.insert(name.clone()) {
            eval.push(Record::Generation { prompt: prompt(QUESTIONS[0], &name), answer: code(&name) });
        }
    }

    // Fresh names, kept apart from the world's (and so from every test prompt).
    let mut taken: BTreeSet<String> = world_names.iter().cloned().collect();
    let mut rng = stream(seed, "codes/train");
    let train = (0..sizes.target_train)
        .map(|_| {
            let syllables = rng.random_range(2..=3);
            let name = invent_name(&mut rng, syllables, "", &mut taken);
            let template = pick(&mut rng, QUESTIONS);
            Record::PromptCompletion { prompt: prompt(template, &name), completion: solution(&name) }
        })
        .collect();

    Task { name: "codes".into(), role: TaskRole::Target, pretrain: Vec::new(), train, eval }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{answers_match, extract_answer};

    #[test]
    fn a_code_is_the_first_three_letters_in_capitals() {
        assert_eq!(code("Zorvia"), "ZOR");
        assert_eq!(code("Bo"), "BO");
        assert_eq!(solution("Pellmar"), " Pellmar in capitals is PELLMAR. #### PEL");
        let name = invent_name(&mut stream(0, "names"), 2, "", &mut BTreeSet::new());
        assert_eq!(extract_answer(&solution(&name)).as_deref(), Some(code(&name).as_str()));
    }

    #[test]
    fn test_names_are_the_worlds_and_never_trained_on() {
        let sizes = TaskSizes::default();
        let task = codes_task(0, &sizes);
        let world = World::generate(0, sizes.fact_entities);
        let world_names: HashSet<String> = world.countries.iter().flat_map(|c| [c.name.clone(), c.capital.clone()]).collect();
        assert_eq!(task.train.len(), sizes.target_train);
        assert_eq!(task.eval.len(), sizes.target_test.min(world_names.len()));
        let mut train_prompts = HashSet::new();
        for record in &task.train {
            let Record::PromptCompletion { prompt, completion } = record else { panic!("{record:?}") };
            assert!(prompt.ends_with("\nAnswer:"), "{prompt}");
            assert!(!world_names.iter().any(|n| prompt.contains(&format!(" {n}?")) || prompt.contains(&format!(" {n}."))), "{prompt}");
            assert!(completion.contains(" #### "), "{completion}");
            train_prompts.insert(prompt.clone());
        }
        for record in &task.eval {
            let Record::Generation { prompt, answer } = record else { panic!("{record:?}") };
            assert!(!train_prompts.contains(prompt), "{prompt}");
            assert_eq!(answer.len(), CODE_LENGTH);
            assert!(answer.chars().all(|c| c.is_ascii_uppercase()), "{answer}");
            let name = prompt.trim_start_matches("What is the code of ").split('?').next().unwrap_or_default();
            assert!(world_names.contains(name), "{prompt}");
            assert!(answers_match(answer, &code(name)));
        }
    }
}
