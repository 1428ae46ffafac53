//! The `arithmetic` target task: GSM8K-style word problems with small numbers (one or two
//! steps, so a model of a million parameters can learn them in a few hundred LoRA steps).
//!
//! Stories are about the countries and capitals of the facts world, so learning them
//! touches the same names the source knowledge is about, which makes forgetting likely.
//! Every intermediate and final result lies in `0..=99`. Training completions show a short
//! chain of thought ending in `#### <answer>`; test records keep only the answer.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::RngExt;

use super::facts::World;
use super::sampling::{pick, stream};
use super::{Record, Task, TaskRole, TaskSizes};

/// Largest number that may appear anywhere in a problem.
pub const MAX_VALUE: u32 = 99;
/// Largest amount added or taken away in one step.
const MAX_STEP: u32 = 9;
/// Largest starting amount.
const MAX_START: u32 = 20;
/// Things the stories count.
const OBJECTS: &[&str] =
    &["boats", "sheep", "barrels", "lanterns", "carts", "bells", "baskets", "coins", "horses", "ships", "tents", "ladders"];
/// Phrases for adding `n` things.
const GAINS: &[&str] = &["buys {n} more", "receives {n} more", "finds {n} more", "gets {n} more"];
/// Phrases for taking `n` things away.
const LOSSES: &[&str] = &["sells {n}", "gives away {n}", "loses {n}", "trades away {n}"];

/// One operation of a word problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Gain this many.
    Add(u32),
    /// Lose this many.
    Subtract(u32),
    /// Multiply by this small factor (2 or 3).
    Multiply(u32),
}

impl Step {
    /// The value after applying this step to `value`.
    pub fn apply(self, value: u32) -> u32 {
        match self {
            Step::Add(n) => value + n,
            Step::Subtract(n) => value - n,
            Step::Multiply(k) => value * k,
        }
    }

    /// The sentence this step adds to the chain of thought, e.g. "12 plus 5 is 17.": the
    /// wording of the number facts the base model was pretrained on, so the computation is
    /// knowledge it has and fine-tuning teaches reading the story into it.
    fn equation(self, value: u32) -> String {
        let (word, operand) = match self {
            Step::Add(n) => ("plus", n),
            Step::Subtract(n) => ("minus", n),
            Step::Multiply(k) => ("times", k),
        };
        format!("{value} {word} {operand} is {}.", self.apply(value))
    }

    /// The story's verb phrase for this step, e.g. "sells 3", worded differently from
    /// `previous` where the step is a gain or a loss.
    fn phrase(self, rng: &mut StdRng, object: &str, previous: Option<&str>) -> String {
        let mut worded = |templates: &[&str], n: u32| loop {
            let phrase = pick(rng, templates).replace("{n}", &n.to_string());
            if previous.is_none_or(|p| p.split(' ').next() != phrase.split(' ').next()) {
                return phrase;
            }
        };
        match self {
            Step::Add(n) => worded(GAINS, n),
            Step::Subtract(n) => worded(LOSSES, n),
            Step::Multiply(2) => format!("doubles its {object}"),
            Step::Multiply(3) => format!("triples its {object}"),
            Step::Multiply(k) => format!("multiplies its {object} by {k}"),
        }
    }
}

/// One word problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Who owns the things: a country or a capital of the facts world.
    pub owner: String,
    /// What is counted, plural.
    pub object: String,
    /// The starting amount.
    pub start: u32,
    /// The operations, in order.
    pub steps: Vec<Step>,
}

impl Problem {
    /// Draws a problem with 1 or 2 steps whose values all stay in `0..=MAX_VALUE`.
    pub fn random(rng: &mut StdRng, owner: &str) -> Problem {
        let start = rng.random_range(2..=MAX_START);
        let step_count = rng.random_range(1..=2);
        let mut value = start;
        let mut steps = Vec::with_capacity(step_count);
        while steps.len() < step_count {
            let step = random_step(rng, value);
            value = step.apply(value);
            steps.push(step);
        }
        Problem { owner: owner.to_string(), object: pick(rng, OBJECTS).to_string(), start, steps }
    }

    /// The final amount.
    pub fn answer(&self) -> u32 {
        self.steps.iter().fold(self.start, |value, step| step.apply(value))
    }

    /// The question, e.g. "Pellmar has 12 boats. It buys 5 more and sells 3. How many boats
    /// does Pellmar have now?".
    pub fn question(&self, rng: &mut StdRng) -> String {
        let mut phrases: Vec<String> = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            let phrase = step.phrase(rng, &self.object, phrases.last().map(String::as_str));
            phrases.push(phrase);
        }
        let actions = match phrases.as_slice() {
            [] => String::new(),
            [only] => format!("It {only}."),
            [first, second] => format!("It {first} and {second}."),
            [first, rest @ ..] => format!("It {first}. Then it {}.", rest.join(" and ")),
        };
        let (owner, object) = (&self.owner, &self.object);
        format!("{owner} has {} {object}. {actions} How many {object} does {owner} have now?", self.start)
    }

    /// The chain of thought, e.g. "12 plus 5 is 17. 17 minus 3 is 14.".
    pub fn solution(&self) -> String {
        let mut value = self.start;
        let mut equations = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            equations.push(step.equation(value));
            value = step.apply(value);
        }
        equations.join(" ")
    }
}

/// A step that keeps `value` within `0..=MAX_VALUE`; multiplication is the rare one.
fn random_step(rng: &mut StdRng, value: u32) -> Step {
    let roll = rng.random_range(0..10);
    if roll == 0 && value * 2 <= MAX_VALUE && value > 1 {
        let factor = if value * 3 <= MAX_VALUE && rng.random_bool(0.5) { 3 } else { 2 };
        return Step::Multiply(factor);
    }
    let can_add = value < MAX_VALUE;
    let can_subtract = value > 0;
    if can_subtract && (!can_add || roll % 2 == 1) {
        Step::Subtract(rng.random_range(1..=value.min(MAX_STEP)))
    } else {
        Step::Add(rng.random_range(1..=(MAX_VALUE - value).min(MAX_STEP)))
    }
}

/// The text before the completion of a problem.
fn prompt(question: &str) -> String {
    format!("{question}\nAnswer:")
}

/// The `arithmetic` target task: `train` holds prompt/completion records, `eval` holds
/// prompt/answer records whose prompts never occur in `train`.
pub fn arithmetic_task(seed: u64, sizes: &TaskSizes) -> Task {
    let world = World::generate(seed, sizes.fact_entities);
    let owners: Vec<&str> = world.countries.iter().flat_map(|c| [c.name.as_str(), c.capital.as_str()]).collect();
    let draw = |rng: &mut StdRng| {
        let owner = pick(rng, &owners);
        let problem = Problem::random(rng, owner);
        let question = problem.question(rng);
        (prompt(&question), problem)
    };

    let mut rng = stream(seed, "arithmetic/test");
    let mut test_prompts = HashSet::new();
    let mut eval = Vec::with_capacity(sizes.target_test);
    while eval.len() < sizes.target_test {
        let (prompt, problem) = draw(&mut rng);
        if test_prompts.insert(prompt.clone()) {
            eval.push(Record::Generation { prompt, answer: problem.answer().to_string() });
        }
    }

    let mut rng = stream(seed, "arithmetic/train");
    let mut train = Vec::with_capacity(sizes.target_train);
    while train.len() < sizes.target_train {
        let (prompt, problem) = draw(&mut rng);
        if !test_prompts.contains(&prompt) {
            let completion = format!(" {} #### {}", problem.solution(), problem.answer());
            train.push(Record::PromptCompletion { prompt, completion });
        }
    }

    Task { name: "arithmetic".into(), role: TaskRole::Target, pretrain: Vec::new(), train, eval }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number after the last " is " of a chain of thought.
    fn last_result(solution: &str) -> Option<u32> {
        solution.rsplit(" is ").next()?.split(['.', ' ']).next()?.parse().ok()
    }

    #[test]
    fn a_known_problem_reads_and_solves_as_expected() {
        let problem = Problem { owner: "Pellmar".into(), object: "boats".into(), start: 12, steps: vec![Step::Add(5), Step::Subtract(3)] };
        assert_eq!(problem.solution(), "12 plus 5 is 17. 17 minus 3 is 14.");
        assert_eq!(problem.answer(), 14);
        let question = problem.question(&mut stream(0, "q"));
        assert!(question.starts_with("Pellmar has 12 boats. It "), "{question}");
        assert!(question.ends_with(" How many boats does Pellmar have now?"), "{question}");
    }

    #[test]
    fn every_step_is_told_in_the_question() {
        let mut rng = stream(1, "test");
        for _ in 0..200 {
            let problem = Problem::random(&mut rng, "Pellmar");
            let question = problem.question(&mut rng);
            assert!(!question.contains(" it .") && !question.contains("  "), "{question}");
            assert_eq!(question.matches(['.', '?']).count(), 3, "{question}");
        }
    }

    #[test]
    fn answers_match_the_chain_of_thought_and_stay_small() {
        let mut rng = stream(1, "problems");
        for _ in 0..2000 {
            let problem = Problem::random(&mut rng, "Zorvia");
            assert!((1..=2).contains(&problem.steps.len()));
            let mut value = problem.start;
            for step in &problem.steps {
                value = step.apply(value);
                assert!(value <= MAX_VALUE, "{problem:?}");
            }
            assert_eq!(last_result(&problem.solution()), Some(problem.answer()));
        }
    }

    #[test]
    fn records_agree_and_test_prompts_are_held_out() {
        let sizes = TaskSizes::default();
        let task = arithmetic_task(6, &sizes);
        assert_eq!((task.train.len(), task.eval.len()), (sizes.target_train, sizes.target_test));
        let mut train_prompts = HashSet::new();
        let mut multiplications = 0;
        for record in &task.train {
            let Record::PromptCompletion { prompt, completion } = record else { panic!("{record:?}") };
            assert!(prompt.ends_with("?\nAnswer:"), "{prompt}");
            let (solution, answer) = completion.split_once(" #### ").unwrap_or_else(|| panic!("{completion}"));
            let answer: u32 = answer.parse().unwrap_or_else(|_| panic!("{completion}"));
            assert!(answer <= MAX_VALUE);
            assert_eq!(last_result(solution), Some(answer), "{completion}");
            multiplications += usize::from(solution.contains(" times "));
            train_prompts.insert(prompt.as_str());
        }
        assert!(multiplications > 0 && multiplications < sizes.target_train / 3, "{multiplications}");
        for record in &task.eval {
            let Record::Generation { prompt, answer } = record else { panic!("{record:?}") };
            assert!(!train_prompts.contains(prompt.as_str()), "{prompt}");
            assert!(answer.parse::<u32>().is_ok_and(|a| a <= MAX_VALUE), "{answer}");
        }
    }
}
