//! Field mapping: reading data files whose columns have other names than lalora's fields.
//!
//! `prompt=question,completion=answer` reads the record field `prompt` from the column (or
//! JSON key) `question` and `completion` from `answer`, so GSM8K's files train as prompt +
//! completion. The mapping is applied to every format (JSONL objects and parquet rows) before
//! the record's kind is decided, so the mapped names then follow the usual rules.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The record fields a mapping may fill (the reader's names and aliases).
pub const RECORD_FIELDS: [&str; 10] =
    ["text", "prompt", "completion", "query", "response", "context", "choices", "label", "answer", "messages"];

/// Record field <- source column pairs, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMap {
    pairs: Vec<(String, String)>,
}

impl FieldMap {
    /// No renaming.
    pub fn none() -> Self {
        Self::default()
    }

    /// Parses `field=column[,field=column...]` (the `--field` flag). Errors name the flag.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (field, column) = item
                .split_once('=')
                .map(|(f, c)| (f.trim(), c.trim()))
                .filter(|(f, c)| !f.is_empty() && !c.is_empty())
                .ok_or_else(|| Error::arg("field", format!("`{item}` is not `field=column`")))?;
            if !RECORD_FIELDS.contains(&field) {
                return Err(Error::arg("field", format!("`{field}` is not a record field; fields are {}", RECORD_FIELDS.join(", "))));
            }
            if pairs.iter().any(|(f, _)| f == field) {
                return Err(Error::arg("field", format!("`{field}` is mapped twice")));
            }
            pairs.push((field.to_string(), column.to_string()));
        }
        Ok(FieldMap { pairs })
    }

    /// Whether no field is renamed.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The (record field, source column) pairs.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The source columns the mapping reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(_, c)| c.as_str())
    }

    /// Renames the mapped columns of one record to their field names. A mapped column that
    /// is absent is an error naming it; all columns are taken out before any is put back, so
    /// `prompt=answer,answer=prompt` swaps.
    pub fn apply(&self, object: &mut Map<String, Value>) -> std::result::Result<(), String> {
        let mut taken = Vec::with_capacity(self.pairs.len());
        for (field, column) in &self.pairs {
            let value = object.remove(column).ok_or_else(|| format!("no column `{column}` (mapped to `{field}`)"))?;
            taken.push((field.clone(), value));
        }
        object.extend(taken);
        Ok(())
    }
}

impl std::fmt::Display for FieldMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: Vec<String> = self.pairs.iter().map(|(field, column)| format!("{field}={column}")).collect();
        f.write_str(&text.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renames() {
        let map = FieldMap::parse("prompt=question, completion=answer").unwrap();
        assert_eq!(map.to_string(), "prompt=question,completion=answer");
        let mut row = serde_json::json!({"question": "q", "answer": "a", "id": 3}).as_object().unwrap().clone();
        map.apply(&mut row).unwrap();
        assert_eq!(Value::Object(row), serde_json::json!({"prompt": "q", "completion": "a", "id": 3}));
        let swap = FieldMap::parse("prompt=answer,answer=prompt").unwrap();
        let mut row = serde_json::json!({"prompt": "p", "answer": "a"}).as_object().unwrap().clone();
        swap.apply(&mut row).unwrap();
        assert_eq!(Value::Object(row), serde_json::json!({"prompt": "a", "answer": "p"}));
        assert!(FieldMap::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_mappings_name_the_flag_and_the_item() {
        let e = |s: &str| FieldMap::parse(s).unwrap_err().to_string();
        assert!(e("prompt").contains("--field: `prompt` is not `field=column`"), "{}", e("prompt"));
        assert!(e("prompt=").contains("not `field=column`"));
        assert!(e("question=prompt").contains("`question` is not a record field"));
        assert!(e("prompt=a,prompt=b").contains("mapped twice"));
        let map = FieldMap::parse("prompt=question").unwrap();
        let mut row = Map::new();
        assert_eq!(map.apply(&mut row).unwrap_err(), "no column `question` (mapped to `prompt`)");
    }
}
