//! The `strings` source skill: simple transformations of short random lowercase words.
//!
//! Pretraining states results such as "the reverse of abc is cba." for fresh random words;
//! the held-out evaluation uses words never seen in pretraining, so it measures the skill
//! rather than memory. Each question offers the correct result and three plausible wrong
//! ones (other transformations of the same word).

use std::collections::HashSet;

use rand::rngs::StdRng;

use super::sampling::{four_way_choice, pick, stream};
use super::words::{capitalise, random_word};
use super::{Record, Task, TaskRole, TaskSizes};

/// Shortest and longest word length.
const WORD_LENGTHS: (usize, usize) = (3, 5);

/// A transformation of a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// "abc" -> "cba".
    Reverse,
    /// "abc" -> "ABC".
    Capitals,
    /// "abc" -> "a".
    FirstLetter,
    /// "abc" -> "c".
    LastLetter,
    /// "abc" -> "abcabc".
    Doubled,
    /// "abc" -> "3".
    Length,
}

impl Transform {
    /// Every transformation.
    pub const ALL: [Transform; 6] =
        [Transform::Reverse, Transform::Capitals, Transform::FirstLetter, Transform::LastLetter, Transform::Doubled, Transform::Length];

    /// The result of the transformation on `word`.
    pub fn apply(self, word: &str) -> String {
        match self {
            Transform::Reverse => reversed(word),
            Transform::Capitals => word.to_uppercase(),
            Transform::FirstLetter => letter(word, 0),
            Transform::LastLetter => letter(word, word.len().saturating_sub(1)),
            Transform::Doubled => word.repeat(2),
            Transform::Length => word.len().to_string(),
        }
    }

    /// The statement's prefix, used as the evaluation context.
    pub fn question(self, word: &str) -> String {
        match self {
            Transform::Reverse => format!("the reverse of {word} is"),
            Transform::Capitals => format!("{word} in capitals is"),
            Transform::FirstLetter => format!("the first letter of {word} is"),
            Transform::LastLetter => format!("the last letter of {word} is"),
            Transform::Doubled => format!("{word} doubled is"),
            Transform::Length => format!("the length of {word} is"),
        }
    }

    /// The full statement, e.g. "the reverse of abc is cba.".
    pub fn statement(self, word: &str) -> String {
        format!("{}{}", self.question(word), answer(&self.apply(word)))
    }

    /// Plausible wrong results for `word`; some may coincide with the right one.
    fn near_misses(self, word: &str) -> Vec<String> {
        let rotated = format!("{}{}", &word[1..], &word[..1]);
        match self {
            Transform::Reverse => vec![word.to_string(), rotated.clone(), reversed(&rotated), word.to_uppercase()],
            Transform::Capitals => {
                vec![reversed(word).to_uppercase(), capitalise(word), word.to_string(), rotated.to_uppercase()]
            }
            Transform::FirstLetter => {
                vec![letter(word, word.len() - 1), letter(word, 1), letter(word, 2), letter(word, 0).to_uppercase()]
            }
            Transform::LastLetter => {
                vec![letter(word, 0), letter(word, word.len() - 2), letter(word, 1), letter(word, word.len() - 1).to_uppercase()]
            }
            Transform::Doubled => {
                vec![word.to_string(), format!("{word}{}", reversed(word)), word.repeat(3), format!("{rotated}{word}")]
            }
            Transform::Length => {
                let n = word.len();
                vec![(n + 1).to_string(), (n - 1).to_string(), (n + 2).to_string(), (2 * n).to_string()]
            }
        }
    }
}

/// The `strings` source task.
pub fn strings_task(seed: u64, sizes: &TaskSizes) -> Task {
    let pretrain_words = random_words(&mut stream(seed, "strings/pretrain"), sizes.pretrain_per_source);
    let pretrain: Vec<String> = pretrain_words.iter().map(|(word, t)| t.statement(word)).collect();
    let train = random_words(&mut stream(seed, "strings/train"), sizes.source_train)
        .into_iter()
        .map(|(word, t)| Record::text(t.statement(&word)))
        .collect();

    let seen: HashSet<&str> = pretrain_words.iter().map(|(word, _)| word.as_str()).collect();
    let mut rng = stream(seed, "strings/eval");
    let mut eval = Vec::with_capacity(sizes.source_eval);
    while eval.len() < sizes.source_eval {
        let word = random_word(&mut rng, WORD_LENGTHS.0, WORD_LENGTHS.1);
        if seen.contains(word.as_str()) {
            continue;
        }
        // Cycle through the transformations so each is asked equally often.
        let transform = Transform::ALL[eval.len() % Transform::ALL.len()];
        let misses = transform.near_misses(&word).into_iter().map(|m| answer(&m));
        if let Some(record) = four_way_choice(&mut rng, transform.question(&word), answer(&transform.apply(&word)), misses) {
            eval.push(record);
        }
    }

    Task { name: "strings".into(), role: TaskRole::Source, pretrain, train, eval }
}

/// `count` random words, each with a random transformation.
fn random_words(rng: &mut StdRng, count: usize) -> Vec<(String, Transform)> {
    (0..count)
        .map(|_| {
            let word = random_word(rng, WORD_LENGTHS.0, WORD_LENGTHS.1);
            (word, pick(rng, &Transform::ALL))
        })
        .collect()
}

/// The continuation of a question that states `result`.
fn answer(result: &str) -> String {
    format!(" {result}.")
}

/// `word` backwards (ASCII words only).
fn reversed(word: &str) -> String {
    word.chars().rev().collect()
}

/// The letter at `index` as a string, or "" past the end.
fn letter(word: &str, index: usize) -> String {
    word.chars().nth(index).map(String::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformations_compute_the_stated_results() {
        assert_eq!(Transform::Reverse.statement("abc"), "the reverse of abc is cba.");
        assert_eq!(Transform::Capitals.statement("abc"), "abc in capitals is ABC.");
        assert_eq!(Transform::FirstLetter.statement("abc"), "the first letter of abc is a.");
        assert_eq!(Transform::LastLetter.statement("abcd"), "the last letter of abcd is d.");
        assert_eq!(Transform::Doubled.statement("abc"), "abc doubled is abcabc.");
    }

    /// The transformation and word a question was made from.
    fn parse_question(question: &str) -> Option<(Transform, &str)> {
        Transform::ALL.into_iter().find_map(|t| {
            let template = t.question("\0");
            let (prefix, suffix) = template.split_once('\0')?;
            let word = question.strip_prefix(prefix)?.strip_suffix(suffix)?;
            (!word.contains(' ')).then_some((t, word))
        })
    }

    /// The word a pretraining statement is about.
    fn statement_word(text: &str) -> &str {
        let question = text.rsplit_once(' ').map(|(q, _)| q).unwrap_or_default();
        parse_question(question).unwrap_or_else(|| panic!("unparsable {text}")).1
    }

    #[test]
    fn questions_have_one_correct_choice_for_an_unseen_word() {
        let sizes = TaskSizes::default();
        let task = strings_task(9, &sizes);
        let seen: HashSet<&str> = task.pretrain.iter().map(|text| statement_word(text)).collect();
        assert_eq!(task.eval.len(), sizes.source_eval);
        for record in &task.eval {
            let Record::MultipleChoice { context, choices, label } = record else { panic!("{record:?}") };
            let (transform, word) = parse_question(context).unwrap_or_else(|| panic!("unparsable {context}"));
            assert!(!seen.contains(word), "{word} seen in pretraining");
            assert_eq!(choices[*label], answer(&transform.apply(word)));
            let distinct: HashSet<&String> = choices.iter().collect();
            assert_eq!(distinct.len(), 4, "{choices:?}");
        }
    }

    #[test]
    fn pretraining_texts_are_correct_statements() {
        let task = strings_task(2, &TaskSizes::tiny());
        for text in &task.pretrain {
            let question = text.rsplit_once(' ').map(|(q, _)| q).unwrap_or_default();
            let (transform, word) = parse_question(question).unwrap_or_else(|| panic!("unparsable {text}"));
            assert_eq!(transform.statement(word), *text);
            assert!((WORD_LENGTHS.0..=WORD_LENGTHS.1).contains(&word.len()), "{word}");
        }
    }
}
