//! The `facts` source skill: knowledge about an invented world.
//!
//! Made-up countries each have a capital, a river, a flag colour, a ruler, a main export and a
//! number of harbours. The harbour counts put digits, "How many ...?" and the `#### N` answer
//! format into pretraining as recall, so the arithmetic target's format is familiar and only
//! the computation is new.
//! Pretraining states every fact in several templates; the held-out evaluation asks for the
//! value after the canonical template's prefix ("The capital of Zorvia is") among four
//! values of the same relation. Only a model that memorised the facts can answer, so this
//! is the knowledge that fine-tuning may overwrite.

use std::collections::{BTreeSet, HashSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::RngExt;

use super::sampling::{cycle_shuffled, four_way_choice, pick, stream};
use super::words::invent_names;
use super::{Record, Task, TaskRole, TaskSizes};

/// Flag colours, a small closed set.
const COLOURS: &[&str] = &["red", "blue", "green", "yellow", "black", "white", "purple", "orange"];
/// Main exports, a small closed set.
const EXPORTS: &[&str] = &["wool", "salt", "copper", "tea", "glass", "timber", "silk", "fish", "grain", "honey", "iron", "wine"];
/// Fewest countries a world has, so that every capital question has three distractors.
pub const MIN_COUNTRIES: usize = 4;
/// How many distinct invented rivers the countries share.
const RIVER_COUNT: usize = 10;
/// How many distinct invented rulers the countries share.
const RULER_COUNT: usize = 16;

/// One invented country and its facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Country {
    /// The country's name, e.g. "Zorvia".
    pub name: String,
    /// Its capital city, unique to it.
    pub capital: String,
    /// Its river, shared with some other countries.
    pub river: String,
    /// Its flag colour.
    pub flag: String,
    /// Its ruler, e.g. "Queen Talsa".
    pub ruler: String,
    /// Its main export.
    pub export: String,
    /// How many harbours it has (2 to 60), as text.
    pub harbours: String,
}

/// The invented world shared by the `facts` skill and the arithmetic stories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// Every country, in generation order.
    pub countries: Vec<Country>,
}

impl World {
    /// Generates `count` countries (at least [`MIN_COUNTRIES`]) from `seed`; all invented
    /// names are distinct.
    pub fn generate(seed: u64, count: usize) -> World {
        let count = count.max(MIN_COUNTRIES);
        let mut rng = stream(seed, "facts/world");
        let mut taken = BTreeSet::new();
        let names = invent_names(&mut rng, count, &["ia", "or", "and", "is"], &mut taken);
        let capitals = invent_names(&mut rng, count, &["mar", "ton", "dell", "by"], &mut taken);
        let rivers = invent_names(&mut rng, RIVER_COUNT, &["", "e"], &mut taken);
        let rulers: Vec<String> = invent_names(&mut rng, RULER_COUNT, &["", "a"], &mut taken)
            .into_iter()
            .enumerate()
            .map(|(i, name)| format!("{} {name}", if i % 2 == 0 { "King" } else { "Queen" }))
            .collect();
        let countries = names
            .into_iter()
            .zip(capitals)
            .map(|(name, capital)| Country {
                name,
                capital,
                river: pick(&mut rng, &rivers),
                flag: pick(&mut rng, COLOURS).to_string(),
                ruler: pick(&mut rng, &rulers),
                export: pick(&mut rng, EXPORTS).to_string(),
                harbours: rng.random_range(2..=60u32).to_string(),
            })
            .collect();
        World { countries }
    }

    /// Every distinct value `relation` takes in this world, in a stable order.
    pub fn values(&self, relation: Relation) -> Vec<String> {
        let mut seen = BTreeSet::new();
        self.countries.iter().map(|c| relation.value(c).to_string()).filter(|v| seen.insert(v.clone())).collect()
    }
}

/// A property every country has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// The capital city.
    Capital,
    /// The river.
    River,
    /// The flag colour.
    Flag,
    /// The ruler.
    Ruler,
    /// The main export.
    Export,
    /// The number of harbours.
    Harbours,
}

impl Relation {
    /// Every relation.
    pub const ALL: [Relation; 6] =
        [Relation::Capital, Relation::River, Relation::Flag, Relation::Ruler, Relation::Export, Relation::Harbours];

    /// This relation's value for `country`.
    pub fn value(self, country: &Country) -> &str {
        match self {
            Relation::Capital => &country.capital,
            Relation::River => &country.river,
            Relation::Flag => &country.flag,
            Relation::Ruler => &country.ruler,
            Relation::Export => &country.export,
            Relation::Harbours => &country.harbours,
        }
    }

    /// The canonical statement's prefix, used as the evaluation context.
    pub fn question(self, country: &str) -> String {
        match self {
            Relation::Capital => format!("The capital of {country} is"),
            Relation::River => format!("The river of {country} is the"),
            Relation::Flag => format!("The flag of {country} is"),
            Relation::Ruler => format!("The ruler of {country} is"),
            Relation::Export => format!("The main export of {country} is"),
            Relation::Harbours => format!("The number of harbours in {country} is"),
        }
    }

    /// The continuation of [`Relation::question`] that states `value`.
    pub fn answer(value: &str) -> String {
        format!(" {value}.")
    }

    /// The canonical statement, `question + answer`, e.g. "The capital of Zorvia is Pellmar.".
    pub fn canonical_statement(self, country: &str, value: &str) -> String {
        format!("{}{}", self.question(country), Relation::answer(value))
    }

    /// Every way pretraining states the fact; the first is the canonical statement.
    pub fn statements(self, country: &str, value: &str) -> Vec<String> {
        let canonical = self.canonical_statement(country, value);
        let others = match self {
            Relation::Capital => [format!("{value} is the capital of {country}."), format!("{country} is governed from {value}.")],
            Relation::River => [format!("The {value} flows through {country}."), format!("{country} lies along the {value}.")],
            Relation::Flag => [format!("{country} has a {value} flag."), format!("{country} flies a {value} flag.")],
            Relation::Ruler => [format!("{value} rules {country}."), format!("{country} is ruled by {value}.")],
            Relation::Export => [format!("{country} mainly exports {value}."), format!("{country} sells {value} to its neighbours.")],
            Relation::Harbours => {
                [format!("{country} has {value} harbours."), format!("How many harbours does {country} have? #### {value}")]
            }
        };
        std::iter::once(canonical).chain(others).collect()
    }
}

/// The `facts` source task: pretraining statements, Laplace-fit texts and held-out questions.
pub fn facts_task(seed: u64, sizes: &TaskSizes) -> Task {
    let world = World::generate(seed, sizes.fact_entities);
    let facts: Vec<(&Country, Relation)> = world.countries.iter().flat_map(|c| Relation::ALL.map(|r| (c, r))).collect();
    let statements: Vec<String> =
        facts.iter().flat_map(|(country, relation)| relation.statements(&country.name, relation.value(country))).collect();

    let pretrain = cycle_shuffled(&mut stream(seed, "facts/pretrain"), &statements, sizes.pretrain_per_source);
    let train = cycle_shuffled(&mut stream(seed, "facts/train"), &statements, sizes.source_train).into_iter().map(Record::text).collect();

    let stated: HashSet<&str> = pretrain.iter().map(String::as_str).collect();
    let mut rng = stream(seed, "facts/eval");
    let mut asked = facts;
    asked.shuffle(&mut rng);
    let eval = asked
        .into_iter()
        .filter(|(country, relation)| stated.contains(relation.canonical_statement(&country.name, relation.value(country)).as_str()))
        .filter_map(|(country, relation)| question(&mut rng, &world, country, relation))
        .take(sizes.source_eval)
        .collect();

    Task { name: "facts".into(), role: TaskRole::Source, pretrain, train, eval }
}

/// A four-way question about one fact; the distractors are other values of the relation.
fn question(rng: &mut StdRng, world: &World, country: &Country, relation: Relation) -> Option<Record> {
    let mut others = world.values(relation);
    others.shuffle(rng);
    four_way_choice(
        rng,
        relation.question(&country.name),
        Relation::answer(relation.value(country)),
        others.iter().map(|v| Relation::answer(v)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_names_are_distinct_across_kinds() {
        let world = World::generate(3, 60);
        let mut names: Vec<String> = world.countries.iter().flat_map(|c| [c.name.clone(), c.capital.clone()]).collect();
        names.extend(world.values(Relation::River));
        names.extend(world.values(Relation::Ruler).iter().filter_map(|r| r.split_once(' ')).map(|(_, n)| n.to_string()));
        let distinct: BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
        assert!(names.len() > 120, "{} names", names.len());
    }

    #[test]
    fn a_world_is_never_too_small_to_ask_about() {
        assert_eq!(World::generate(1, 0).countries.len(), MIN_COUNTRIES);
        assert_eq!(World::generate(1, 60).countries.len(), 60);
    }

    #[test]
    fn canonical_statement_is_question_plus_answer() {
        for relation in Relation::ALL {
            let statements = relation.statements("Zorvia", "Pellmar");
            assert_eq!(statements[0], format!("{}{}", relation.question("Zorvia"), Relation::answer("Pellmar")));
            assert_eq!(statements[0], relation.canonical_statement("Zorvia", "Pellmar"));
            assert_eq!(statements.len(), 3);
            assert!(statements.iter().all(|s| s.contains("Zorvia") && s.contains("Pellmar")));
        }
    }

    #[test]
    fn every_question_asks_a_fact_stated_in_pretraining() {
        let task = facts_task(11, &TaskSizes::default());
        let pretrain: HashSet<&str> = task.pretrain.iter().map(String::as_str).collect();
        assert_eq!(task.eval.len(), TaskSizes::default().source_eval);
        for record in &task.eval {
            let Record::MultipleChoice { context, choices, label } = record else { panic!("{record:?}") };
            assert_eq!(choices.len(), 4);
            assert!(pretrain.contains(format!("{context}{}", choices[*label]).as_str()), "{context}");
            for (i, choice) in choices.iter().enumerate() {
                if i != *label {
                    assert!(!pretrain.contains(format!("{context}{choice}").as_str()), "wrong choice stated: {choice}");
                }
            }
        }
    }

    #[test]
    fn pretraining_repeats_every_statement() {
        let sizes = TaskSizes::default();
        let task = facts_task(5, &sizes);
        let distinct: BTreeSet<&String> = task.pretrain.iter().collect();
        assert_eq!(distinct.len(), sizes.fact_entities * Relation::ALL.len() * 3);
        assert!(task.pretrain.iter().all(|t| t.len() < 100));
    }
}
