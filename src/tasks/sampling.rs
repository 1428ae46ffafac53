//! Seeded sampling helpers shared by the task generators: independent random streams,
//! picking, even cycling through a pool, and assembling shuffled multiple-choice records.
//!
//! Every generator draws from its own stream ([`stream`]) so that adding draws to one task
//! never changes the samples of another.

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::SeedableRng;

use super::Record;

/// A random stream for one named part of the data, derived from the user's seed.
///
/// The label is hashed (FNV-1a) and mixed with the seed (SplitMix64), so streams with
/// different labels are unrelated and the result is the same on every platform.
pub fn stream(seed: u64, label: &str) -> StdRng {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in label.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = seed ^ hash;
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// A copy of one element of a non-empty slice.
///
/// # Panics
/// If `items` is empty; callers pass non-empty tables.
pub fn pick<T: Clone>(rng: &mut StdRng, items: &[T]) -> T {
    items.choose(rng).cloned().expect("pick from a non-empty table")
}

/// A multiple-choice record whose choices are `correct` and the first three distinct
/// `distractors` that differ from it, in a random order; `label` points at `correct`.
///
/// Returns `None` when fewer than three usable distractors are given.
pub fn four_way_choice(
    rng: &mut StdRng,
    context: String,
    correct: String,
    distractors: impl IntoIterator<Item = String>,
) -> Option<Record> {
    let mut choices = vec![correct.clone()];
    for distractor in distractors {
        if choices.len() == 4 {
            break;
        }
        if !choices.contains(&distractor) {
            choices.push(distractor);
        }
    }
    (choices.len() == 4).then(|| shuffled_choice(rng, context, choices))
}

/// A multiple-choice record from `choices` whose first entry is the correct one; the
/// order is shuffled and `label` follows the correct entry.
pub fn shuffled_choice(rng: &mut StdRng, context: String, mut choices: Vec<String>) -> Record {
    let correct = choices[0].clone();
    choices.shuffle(rng);
    let label = choices.iter().position(|c| *c == correct).unwrap_or(0);
    Record::MultipleChoice { context, choices, label }
}

/// Texts of `count` draws that cycle through `pool`: every full pass visits each entry once,
/// in a fresh random order, so each entry appears `count / pool.len()` times or one more.
pub fn cycle_shuffled(rng: &mut StdRng, pool: &[String], count: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(count);
    let mut order: Vec<usize> = (0..pool.len()).collect();
    while out.len() < count && !pool.is_empty() {
        order.shuffle(rng);
        out.extend(order.iter().take(count - out.len()).map(|&i| pool[i].clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn streams_depend_on_seed_and_label() {
        let draw = |seed, label| stream(seed, label).random::<u64>();
        assert_eq!(draw(1, "facts"), draw(1, "facts"));
        assert_ne!(draw(1, "facts"), draw(2, "facts"));
        assert_ne!(draw(1, "facts"), draw(1, "strings"));
    }

    #[test]
    fn four_way_choice_keeps_the_correct_answer_under_its_label() {
        let mut rng = stream(0, "mc");
        let distractors = ["b", "a", "b", "c", "d", "e"].map(String::from);
        let Some(Record::MultipleChoice { choices, label, .. }) = four_way_choice(&mut rng, "ctx".into(), "a".into(), distractors) else {
            panic!("expected a multiple-choice record");
        };
        assert_eq!(choices[label], "a");
        let mut sorted = choices.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c", "d"]);
        assert!(four_way_choice(&mut rng, "ctx".into(), "a".into(), ["a", "b"].map(String::from)).is_none());
    }

    #[test]
    fn cycling_visits_every_entry_evenly() {
        let mut rng = stream(0, "cycle");
        let pool: Vec<String> = (0..7).map(|i| i.to_string()).collect();
        let drawn = cycle_shuffled(&mut rng, &pool, 30);
        assert_eq!(drawn.len(), 30);
        for entry in &pool {
            let n = drawn.iter().filter(|d| *d == entry).count();
            assert!(n == 4 || n == 5, "{entry} drawn {n} times");
        }
    }
}
