//! Background knowledge: how small numbers combine, stated in words ("7 plus 5 is 12.").
//!
//! Part of the pretraining corpus but neither a source skill (it is not evaluated) nor the
//! target: the base model knows its sums the way a language model does from text, but has
//! never seen a word problem, the `+ - * =` notation or a chain of thought. Fine-tuning on
//! the arithmetic task then teaches a format that uses this knowledge, as in the paper's
//! math-reasoning setting.

use rand::rngs::StdRng;

use super::sampling::{cycle_shuffled, stream};
use super::{Task, TaskRole, TaskSizes};

/// Largest left operand of a stated sum or difference.
const MAX_OPERAND: u32 = 40;
/// Largest right operand (the arithmetic task's steps are at most this big).
const MAX_STEP: u32 = 9;

/// Every number fact the corpus states, once each.
pub fn number_facts() -> Vec<String> {
    let mut facts = Vec::new();
    for a in 0..=MAX_OPERAND {
        for b in 1..=MAX_STEP {
            facts.push(format!("{a} plus {b} is {}.", a + b));
            facts.push(format!("{} minus {b} is {a}.", a + b));
        }
    }
    for a in 1..=33 {
        facts.push(format!("{a} times 2 is {}.", 2 * a));
        facts.push(format!("{a} times 3 is {}.", 3 * a));
    }
    facts
}

/// The `numbers` background task: only pretraining texts.
pub fn numbers_task(seed: u64, sizes: &TaskSizes) -> Task {
    let mut rng: StdRng = stream(seed, "numbers/pretrain");
    let pretrain = cycle_shuffled(&mut rng, &number_facts(), sizes.pretrain_per_source);
    Task { name: "numbers".into(), role: TaskRole::Background, pretrain, train: Vec::new(), eval: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_correct_and_use_words_not_symbols() {
        for fact in number_facts() {
            let words: Vec<&str> = fact.trim_end_matches('.').split(' ').collect();
            let (a, op, b, c): (i64, &str, i64, i64) =
                (words[0].parse().unwrap(), words[1], words[2].parse().unwrap(), words[4].parse().unwrap());
            let expected = match op {
                "plus" => a + b,
                "minus" => a - b,
                "times" => a * b,
                other => panic!("{other}"),
            };
            assert_eq!(c, expected, "{fact}");
            assert!(!fact.contains(['+', '-', '*', '=']), "{fact}");
        }
    }
}
