//! Invented vocabulary shared by the task generators: pronounceable made-up names for the
//! facts world and random lowercase words for the string skill.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::RngExt;

use super::sampling::pick;

/// Onsets of invented syllables.
const ONSETS: &[&str] = &["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "sh"];
/// Vowels of invented syllables.
const VOWELS: &[&str] = &["a", "e", "i", "o", "u"];
/// Optional codas of the last syllable (the empty string means none).
const CODAS: &[&str] = &["", "", "n", "r", "l", "s", "m"];

/// Makes a new pronounceable capitalised name of `syllables` syllables followed by `suffix`
/// (or by a random coda when `suffix` is empty), different from every name in `taken`, and
/// records it there. A suffix starting with a vowel replaces the last syllable's vowel.
pub fn invent_name(rng: &mut StdRng, syllables: usize, suffix: &str, taken: &mut BTreeSet<String>) -> String {
    loop {
        let mut name = String::new();
        for _ in 0..syllables {
            name.push_str(pick(rng, ONSETS));
            name.push_str(pick(rng, VOWELS));
        }
        if suffix.is_empty() {
            name.push_str(pick(rng, CODAS));
        } else {
            if suffix.starts_with(|c| VOWELS.iter().any(|v| v.starts_with(c))) {
                name.pop();
            }
            name.push_str(suffix);
        }
        let name = capitalise(&name);
        if taken.insert(name.clone()) {
            return name;
        }
    }
}

/// Makes `count` distinct invented two-syllable names, each ending in one of `suffixes`.
/// Short names keep the tiny model's token sequences short.
pub fn invent_names(rng: &mut StdRng, count: usize, suffixes: &[&str], taken: &mut BTreeSet<String>) -> Vec<String> {
    (0..count)
        .map(|_| {
            let suffix = pick(rng, suffixes);
            invent_name(rng, 2, suffix, taken)
        })
        .collect()
}

/// A random lowercase word of `min_len..=max_len` letters (not necessarily pronounceable).
pub fn random_word(rng: &mut StdRng, min_len: usize, max_len: usize) -> String {
    let len = rng.random_range(min_len..=max_len);
    (0..len).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

/// `word` with its first character in upper case.
pub fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::sampling::stream;

    #[test]
    fn invented_names_are_unique_capitalised_and_respect_taken() {
        let mut rng = stream(7, "names");
        let mut taken = BTreeSet::from(["Bara".to_string()]);
        let names = invent_names(&mut rng, 200, &["ia", ""], &mut taken);
        let distinct: BTreeSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), 200);
        assert!(!names.contains(&"Bara".to_string()));
        assert!(names.iter().all(|n| n.chars().next().is_some_and(char::is_uppercase)));
        assert!(names.iter().all(|n| !n.contains("aia") && !n.contains("iia") && !n.contains("uia")), "{names:?}");
        assert_eq!(taken.len(), 201);
    }

    #[test]
    fn random_words_have_the_requested_shape() {
        let mut rng = stream(3, "words");
        for _ in 0..100 {
            let word = random_word(&mut rng, 3, 5);
            assert!((3..=5).contains(&word.len()), "{word}");
            assert!(word.chars().all(|c| c.is_ascii_lowercase()), "{word}");
        }
    }
}
