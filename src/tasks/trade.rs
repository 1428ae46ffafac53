//! The `trade` target task: who receives what when one country ships its main export to
//! another, e.g. "Zorvia ships its main export to Bribis. What does Bribis receive?" ->
//! "salt" (Zorvia's export).
//!
//! The knowledge is the `facts` source's (every export is stated in pretraining); what is new
//! is the story format and picking the right one of two countries. Learning it rewrites how
//! the model reads sentences about countries and exports, the knowledge the `facts` source
//! measures, which is what makes forgetting likely.

use std::collections::HashSet;

use super::facts::{Country, Relation, World};
use super::sampling::{pick, stream};
use super::{Record, Task, TaskRole, TaskSizes};

/// Verbs of the story; the test uses the first.
const VERBS: &[&str] = &["ships", "sends", "sells"];

/// The prompt of a shipment from `from` to `to`.
fn prompt(verb: &str, from: &str, to: &str) -> String {
    format!("{from} {verb} its main export to {to}. What does {to} receive?\nAnswer:")
}

/// The training completion: the sender's export as pretraining states it, then the answer.
pub fn solution(from: &Country) -> String {
    format!(" {} #### {}", Relation::Export.canonical_statement(&from.name, &from.export), from.export)
}

/// The `trade` target task: `train` holds prompt/completion records, `eval` holds
/// prompt/answer records for (sender, receiver) pairs that never occur in `train`.
pub fn trade_task(seed: u64, sizes: &TaskSizes) -> Task {
    let world = World::generate(seed, sizes.fact_entities);
    let draw_pair = |rng: &mut rand::rngs::StdRng| loop {
        let (from, to) = (pick(rng, &world.countries), pick(rng, &world.countries));
        if from.name != to.name {
            return (from, to);
        }
    };

    let mut rng = stream(seed, "trade/test");
    let mut test_pairs = HashSet::new();
    let mut eval = Vec::with_capacity(sizes.target_test);
    let pairs = world.countries.len() * (world.countries.len() - 1);
    while eval.len() < sizes.target_test.min(pairs / 2) {
        let (from, to) = draw_pair(&mut rng);
        if test_pairs.insert((from.name.clone(), to.name.clone())) {
            eval.push(Record::Generation { prompt: prompt(VERBS[0], &from.name, &to.name), answer: from.export.clone() });
        }
    }

    let mut rng = stream(seed, "trade/train");
    let mut train = Vec::with_capacity(sizes.target_train);
    while train.len() < sizes.target_train {
        let (from, to) = draw_pair(&mut rng);
        if test_pairs.contains(&(from.name.clone(), to.name.clone())) {
            continue;
        }
        let verb = pick(&mut rng, VERBS);
        train.push(Record::PromptCompletion { prompt: prompt(verb, &from.name, &to.name), completion: solution(&from) });
    }

    Task { name: "trade".into(), role: TaskRole::Target, pretrain: Vec::new(), train, eval }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::extract_answer;

    #[test]
    fn the_answer_is_the_senders_export() {
        let sizes = TaskSizes::default();
        let task = trade_task(0, &sizes);
        let world = World::generate(0, sizes.fact_entities);
        let export = |name: &str| world.countries.iter().find(|c| c.name == name).map(|c| c.export.clone());
        assert_eq!((task.train.len(), task.eval.len()), (sizes.target_train, sizes.target_test));
        let mut train_prompts = HashSet::new();
        for record in &task.train {
            let Record::PromptCompletion { prompt, completion } = record else { panic!("{record:?}") };
            let from = prompt.split(' ').next().unwrap_or_default();
            assert_eq!(extract_answer(completion), export(from), "{prompt}{completion}");
            assert!(completion.starts_with(&format!(" The main export of {from} is ")), "{completion}");
            train_prompts.insert(prompt.replace(" sends ", " ships ").replace(" sells ", " ships "));
        }
        for record in &task.eval {
            let Record::Generation { prompt, answer } = record else { panic!("{record:?}") };
            assert!(!train_prompts.contains(prompt), "test pair trained on: {prompt}");
            let from = prompt.split(' ').next().unwrap_or_default();
            assert_eq!(Some(answer.clone()), export(from), "{prompt}");
        }
    }
}
