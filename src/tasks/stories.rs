//! Target tasks told as a short story about two countries of the facts world, answered by a
//! fact about one of them:
//! - `envoys`: "An envoy from Zorvia travels to Bribis. Whom does the envoy meet in Bribis?"
//!   -> the ruler of the receiving country (Bribis);
//! - `trade`: "Zorvia ships its main export to Bribis. What does Bribis receive?" -> the main
//!   export of the sending country (Zorvia).
//!
//! The knowledge is the `facts` source's (every fact is stated in pretraining); what is new is
//! the story format and picking the right one of the two countries (the receiver for envoys,
//! the sender for trade, so learning one pulls against the other). Learning either rewrites
//! how the model reads sentences about countries, the knowledge the `facts` source measures,
//! which is what makes forgetting likely.

use std::collections::HashSet;

use super::facts::{Country, Relation, World};
use super::sampling::{pick, stream};
use super::{Record, Task, TaskRole, TaskSizes};

/// Which of the story's two countries the answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// The first country named (`{from}`).
    From,
    /// The second country named (`{to}`).
    To,
}

/// One story task: how it is told and which fact answers it.
#[derive(Debug, Clone, Copy)]
pub struct Story {
    /// The task's name, e.g. "trade".
    pub name: &'static str,
    /// Ways of telling the story, with `{from}` and `{to}` for the two countries; the test
    /// uses the first, so the test prompts are worded as in training but never pair the same
    /// two countries.
    pub tellings: &'static [&'static str],
    /// The fact that answers the question.
    pub relation: Relation,
    /// Whose fact it is.
    pub subject: Subject,
}

/// Envoys meet the ruler of the country they travel to.
pub const ENVOYS: Story = Story {
    name: "envoys",
    tellings: &[
        "An envoy from {from} travels to {to}. Whom does the envoy meet in {to}?",
        "{from} sends an envoy to {to}. Who receives the envoy in {to}?",
        "An envoy goes from {from} to {to}. Whom does the envoy greet in {to}?",
    ],
    relation: Relation::Ruler,
    subject: Subject::To,
};

/// A shipment brings the sender's main export.
pub const TRADE: Story = Story {
    name: "trade",
    tellings: &[
        "{from} ships its main export to {to}. What does {to} receive?",
        "{from} sends its main export to {to}. What does {to} receive?",
        "{from} sells its main export to {to}. What does {to} receive?",
    ],
    relation: Relation::Export,
    subject: Subject::From,
};

impl Story {
    /// The prompt telling the story with `telling` about `from` and `to`.
    fn prompt(&self, telling: &str, from: &str, to: &str) -> String {
        format!("{}\nAnswer:", telling.replace("{from}", from).replace("{to}", to))
    }

    /// The country whose fact answers the story.
    fn subject<'a>(&self, from: &'a Country, to: &'a Country) -> &'a Country {
        match self.subject {
            Subject::From => from,
            Subject::To => to,
        }
    }

    /// The training completion: the fact as pretraining states it, then the answer.
    pub fn solution(&self, subject: &Country) -> String {
        let value = self.relation.value(subject);
        format!(" {} #### {value}", self.relation.canonical_statement(&subject.name, value))
    }

    /// The task from `seed`: `train` holds prompt/completion records, `eval` prompt/answer
    /// records for (from, to) pairs that never occur in `train`.
    pub fn task(&self, seed: u64, sizes: &TaskSizes) -> Task {
        let world = World::generate(seed, sizes.fact_entities);
        let draw_pair = |rng: &mut rand::rngs::StdRng| loop {
            let (from, to) = (pick(rng, &world.countries), pick(rng, &world.countries));
            if from.name != to.name {
                return (from, to);
            }
        };

        let mut rng = stream(seed, &format!("{}/test", self.name));
        let mut test_pairs = HashSet::new();
        let mut eval = Vec::with_capacity(sizes.target_test);
        let pairs = world.countries.len() * (world.countries.len() - 1);
        // At most half the pairs are tested, so training always has pairs left.
        while eval.len() < sizes.target_test.min(pairs / 2) {
            let (from, to) = draw_pair(&mut rng);
            if test_pairs.insert((from.name.clone(), to.name.clone())) {
                let answer = self.relation.value(self.subject(&from, &to)).to_string();
                eval.push(Record::Generation { prompt: self.prompt(self.tellings[0], &from.name, &to.name), answer });
            }
        }

        let mut rng = stream(seed, &format!("{}/train", self.name));
        let mut train = Vec::with_capacity(sizes.target_train);
        while train.len() < sizes.target_train {
            let (from, to) = draw_pair(&mut rng);
            if test_pairs.contains(&(from.name.clone(), to.name.clone())) {
                continue;
            }
            let telling = pick(&mut rng, self.tellings);
            let completion = self.solution(self.subject(&from, &to));
            train.push(Record::PromptCompletion { prompt: self.prompt(telling, &from.name, &to.name), completion });
        }

        Task { name: self.name.into(), role: TaskRole::Target, pretrain: Vec::new(), train, eval }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::extract_answer;

    /// The two countries a prompt of `story` names, found by trying every telling.
    fn countries_in(story: &Story, world: &World, prompt: &str) -> (Country, Country) {
        for from in &world.countries {
            for to in &world.countries {
                if story.tellings.iter().any(|t| story.prompt(t, &from.name, &to.name) == prompt) {
                    return (from.clone(), to.clone());
                }
            }
        }
        panic!("no two countries tell {prompt:?}");
    }

    /// Every answer is the subject's fact, every completion states it as pretraining does,
    /// and no test pair is trained on (in any telling).
    fn check_story(story: &Story) {
        let sizes = TaskSizes::default();
        let task = story.task(0, &sizes);
        let world = World::generate(0, sizes.fact_entities);
        assert_eq!((task.name.as_str(), task.train.len(), task.eval.len()), (story.name, sizes.target_train, sizes.target_test));
        let mut trained_pairs = HashSet::new();
        for record in &task.train {
            let Record::PromptCompletion { prompt, completion } = record else { panic!("{record:?}") };
            let (from, to) = countries_in(story, &world, prompt);
            let subject = story.subject(&from, &to);
            let value = story.relation.value(subject);
            assert_eq!(extract_answer(completion).as_deref(), Some(value), "{prompt}{completion}");
            assert!(completion.starts_with(&format!(" {}", story.relation.question(&subject.name))), "{completion}");
            trained_pairs.insert((from.name, to.name));
        }
        for record in &task.eval {
            let Record::Generation { prompt, answer } = record else { panic!("{record:?}") };
            let (from, to) = countries_in(story, &world, prompt);
            assert_eq!(answer, story.relation.value(story.subject(&from, &to)), "{prompt}");
            assert!(!trained_pairs.contains(&(from.name, to.name)), "test pair trained on: {prompt}");
        }
    }

    #[test]
    fn the_trade_answer_is_the_senders_export() {
        check_story(&TRADE);
        let world = World::generate(0, 4);
        let (zorvia, bribis) = (&world.countries[0], &world.countries[1]);
        assert_eq!(TRADE.subject(zorvia, bribis).name, zorvia.name);
        assert_eq!(TRADE.solution(zorvia), format!(" The main export of {} is {}. #### {}", zorvia.name, zorvia.export, zorvia.export));
    }

    #[test]
    fn the_envoys_answer_is_the_receivers_ruler() {
        check_story(&ENVOYS);
        let world = World::generate(0, 4);
        let (zorvia, bribis) = (&world.countries[0], &world.countries[1]);
        assert_eq!(ENVOYS.subject(zorvia, bribis).name, bribis.name);
        assert_eq!(ENVOYS.solution(bribis), format!(" The ruler of {} is {}. #### {}", bribis.name, bribis.ruler, bribis.ruler));
    }

    #[test]
    fn the_two_stories_ask_different_countries_for_different_facts() {
        let world = World::generate(0, 8);
        let (a, b) = (&world.countries[0], &world.countries[1]);
        assert_ne!(ENVOYS.subject(a, b).name, TRADE.subject(a, b).name);
        assert_ne!(ENVOYS.relation, TRADE.relation);
    }
}
