//! The `grammar` source skill: subject-verb agreement across prepositional phrases.
//!
//! Sentences follow a small English-like grammar, "The [adj] noun (prep the [adj] place)*
//! verb [adverb].", where the verb agrees with the subject, not with the nearer place noun.
//! Pretraining contains only grammatical sentences. The held-out evaluation gives the
//! sentence up to the verb as context and both verb forms as choices, BLiMP style; its
//! place nouns always have the other number, so the nearest noun is a misleading cue.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::RngExt;

use super::sampling::{pick, shuffled_choice, stream};
use super::{Record, Task, TaskRole, TaskSizes};

/// Subject nouns, singular and plural.
const SUBJECTS: &[(&str, &str)] = &[
    ("dog", "dogs"),
    ("cat", "cats"),
    ("bird", "birds"),
    ("child", "children"),
    ("farmer", "farmers"),
    ("teacher", "teachers"),
    ("fox", "foxes"),
    ("horse", "horses"),
    ("girl", "girls"),
    ("boy", "boys"),
    ("sailor", "sailors"),
    ("baker", "bakers"),
];
/// Nouns inside prepositional phrases, singular and plural.
const PLACES: &[(&str, &str)] = &[
    ("tree", "trees"),
    ("house", "houses"),
    ("gate", "gates"),
    ("hill", "hills"),
    ("bridge", "bridges"),
    ("wall", "walls"),
    ("lake", "lakes"),
    ("barn", "barns"),
];
/// Adjectives; the empty string means none.
const ADJECTIVES: &[&str] = &["", "", "old", "small", "big", "quiet", "tall", "young", "green", "dark"];
/// Prepositions.
const PREPOSITIONS: &[&str] = &["near", "behind", "beside", "under", "by", "past"];
/// Verb phrases, agreeing with a singular and a plural subject.
const VERBS: &[(&str, &str)] = &[
    ("runs", "run"),
    ("sleeps", "sleep"),
    ("sings", "sing"),
    ("waits", "wait"),
    ("laughs", "laugh"),
    ("swims", "swim"),
    ("works", "work"),
    ("smiles", "smile"),
    ("is tired", "are tired"),
    ("was late", "were late"),
];
/// Sentence endings after the verb; the empty string means none.
const ADVERBS: &[&str] = &["", "", "today", "again", "often", "at night"];

/// A sentence split where the agreement is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgreementPair {
    /// Everything before the verb, e.g. "The dogs near the old tree".
    pub prefix: String,
    /// The grammatical rest, e.g. " run.".
    pub grammatical: String,
    /// The same rest with the verb in the wrong number, e.g. " runs.".
    pub ungrammatical: String,
}

impl AgreementPair {
    /// The whole grammatical sentence.
    pub fn sentence(&self) -> String {
        format!("{}{}", self.prefix, self.grammatical)
    }
}

/// Draws a sentence with `phrases` prepositional phrases. With `attract`, every place noun
/// takes the number opposite to the subject's.
pub fn random_pair(rng: &mut StdRng, phrases: usize, attract: bool) -> AgreementPair {
    let plural = rng.random_bool(0.5);
    let number = |pair: (&'static str, &'static str), plural: bool| if plural { pair.1 } else { pair.0 };
    let mut prefix = String::from("The");
    push_noun_phrase(&mut prefix, pick(rng, ADJECTIVES), number(pick(rng, SUBJECTS), plural));
    for _ in 0..phrases {
        let place_plural = if attract { !plural } else { rng.random_bool(0.5) };
        prefix.push(' ');
        prefix.push_str(pick(rng, PREPOSITIONS));
        prefix.push_str(" the");
        push_noun_phrase(&mut prefix, pick(rng, ADJECTIVES), number(pick(rng, PLACES), place_plural));
    }
    let verb = pick(rng, VERBS);
    let adverb = pick(rng, ADVERBS);
    let rest = |verb: &str| {
        if adverb.is_empty() {
            format!(" {verb}.")
        } else {
            format!(" {verb} {adverb}.")
        }
    };
    AgreementPair { prefix, grammatical: rest(number(verb, plural)), ungrammatical: rest(number(verb, !plural)) }
}

/// Appends " [adjective] noun" to `text`.
fn push_noun_phrase(text: &mut String, adjective: &str, noun: &str) {
    for word in [adjective, noun] {
        if !word.is_empty() {
            text.push(' ');
            text.push_str(word);
        }
    }
}

/// The `grammar` source task.
pub fn grammar_task(seed: u64, sizes: &TaskSizes) -> Task {
    let sentences = |rng: &mut StdRng, count: usize| -> Vec<String> {
        (0..count)
            .map(|_| {
                let phrases = rng.random_range(0..=2);
                random_pair(rng, phrases, false).sentence()
            })
            .collect()
    };
    let pretrain = sentences(&mut stream(seed, "grammar/pretrain"), sizes.pretrain_per_source);
    let train = sentences(&mut stream(seed, "grammar/train"), sizes.source_train).into_iter().map(Record::text).collect();

    let seen: HashSet<&str> = pretrain.iter().map(String::as_str).collect();
    let mut rng = stream(seed, "grammar/eval");
    let mut eval = Vec::with_capacity(sizes.source_eval);
    while eval.len() < sizes.source_eval {
        let phrases = rng.random_range(1..=2);
        let pair = random_pair(&mut rng, phrases, true);
        if seen.contains(pair.sentence().as_str()) {
            continue;
        }
        eval.push(shuffled_choice(&mut rng, pair.prefix, vec![pair.grammatical, pair.ungrammatical]));
    }

    Task { name: "grammar".into(), role: TaskRole::Source, pretrain, train, eval }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `verb_phrase` (" runs today.") uses the singular form of its verb.
    fn is_singular(verb_phrase: &str) -> bool {
        let first = verb_phrase.trim_start().split([' ', '.']).next().unwrap_or_default();
        VERBS.iter().any(|(singular, _)| singular.split(' ').next() == Some(first))
    }

    /// Whether the subject (the second word) of `prefix` is singular.
    fn subject_is_singular(prefix: &str) -> bool {
        let words: Vec<&str> = prefix.split(' ').collect();
        let subject = if ADJECTIVES.contains(&words[1]) { words[2] } else { words[1] };
        SUBJECTS.iter().any(|(singular, _)| *singular == subject)
    }

    #[test]
    fn verbs_agree_with_the_subject_not_the_attractor() {
        let mut rng = stream(4, "test");
        for _ in 0..200 {
            let pair = random_pair(&mut rng, 2, true);
            assert_eq!(is_singular(&pair.grammatical), subject_is_singular(&pair.prefix), "{pair:?}");
            assert_ne!(is_singular(&pair.ungrammatical), subject_is_singular(&pair.prefix), "{pair:?}");
            assert!(pair.grammatical.ends_with('.') && pair.ungrammatical.ends_with('.'));
        }
    }

    #[test]
    fn pretraining_is_grammatical_and_eval_is_held_out() {
        let sizes = TaskSizes::default();
        let task = grammar_task(8, &sizes);
        let pretrain: HashSet<&str> = task.pretrain.iter().map(String::as_str).collect();
        assert_eq!(task.eval.len(), sizes.source_eval);
        let mut first_label = 0;
        for record in &task.eval {
            let Record::MultipleChoice { context, choices, label } = record else { panic!("{record:?}") };
            assert_eq!(choices.len(), 2);
            assert_ne!(choices[0], choices[1]);
            assert_eq!(is_singular(&choices[*label]), subject_is_singular(context), "{record:?}");
            assert!(!pretrain.contains(format!("{context}{}", choices[*label]).as_str()));
            first_label += usize::from(*label == 0);
        }
        assert!(first_label > sizes.source_eval / 4 && first_label < sizes.source_eval * 3 / 4, "{first_label}");
        for text in &task.pretrain {
            let (prefix, verb) = split_at_verb(text);
            assert_eq!(is_singular(verb), subject_is_singular(prefix), "{text}");
        }
    }

    /// Splits a sentence before its verb.
    fn split_at_verb(text: &str) -> (&str, &str) {
        let at = VERBS
            .iter()
            .flat_map(|(s, p)| [*s, *p])
            .filter_map(|verb| text.find(&format!(" {verb}")).filter(|i| text[i + 1 + verb.len()..].starts_with([' ', '.'])))
            .min()
            .unwrap_or(text.len());
        text.split_at(at)
    }
}
