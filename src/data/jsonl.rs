//! Data records from JSONL (one JSON object a line) or parquet (one row a record); the
//! fields decide a record's kind.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::fields::FieldMap;
use crate::error::{Error, Result};

/// One turn of a conversation: `{"role": "user", "content": "..."}` (TRL's conversational
/// format; other keys of a message are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or any role the chat template knows).
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// One record of a data file. Serialised without a tag: the field names alone tell the kinds
/// apart, as the reader expects them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Record {
    /// `{"text": ...}`: language modelling on every token.
    Text {
        /// The text.
        text: String,
    },
    /// `{"prompt": ..., "completion": ...}` (or MetaMathQA's `query`/`response`): loss on the
    /// completion only.
    PromptCompletion {
        /// Conditioning text (no loss).
        prompt: String,
        /// Scored text.
        completion: String,
    },
    /// `{"context": ..., "choices": [...], "label": i}`: scored by log-likelihood per choice.
    MultipleChoice {
        /// The shared prefix.
        context: String,
        /// Candidate continuations.
        choices: Vec<String>,
        /// Index of the right choice.
        label: usize,
    },
    /// `{"prompt": ..., "answer": ...}`: greedy generation, exact match of the extracted answer.
    Generation {
        /// The question.
        prompt: String,
        /// The reference answer.
        answer: String,
    },
    /// `{"messages": [{"role": ..., "content": ...}, ...]}`: rendered with the model's chat
    /// template; the loss covers the assistant turns only.
    Chat {
        /// The turns, in order.
        messages: Vec<ChatMessage>,
    },
}

impl Record {
    /// A `{"text": ...}` record.
    pub fn text(text: impl Into<String>) -> Self {
        Record::Text { text: text.into() }
    }

    /// The record as one line of JSON, without a trailing newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("strings, integers and lists of strings serialise")
    }

    /// Parses one JSON line (the reader's rules; the error says what is wrong).
    pub fn from_json_line(line: &str) -> std::result::Result<Record, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
        Record::parse(&value)
    }

    /// Short name of the kind, as used in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Text { .. } => "text",
            Record::PromptCompletion { .. } => "prompt-completion",
            Record::MultipleChoice { .. } => "multiple-choice",
            Record::Generation { .. } => "generation",
            Record::Chat { .. } => "chat",
        }
    }

    fn parse(value: &Value) -> std::result::Result<Record, String> {
        let obj = value.as_object().ok_or("expected a JSON object")?;
        let string = |key: &str| -> std::result::Result<Option<String>, String> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("field `{key}` must be a string")),
            }
        };
        if let Some(text) = string("text")? {
            return Ok(Record::Text { text });
        }
        if let Some(messages) = obj.get("messages").filter(|m| !m.is_null()) {
            return parse_messages(messages).map(|messages| Record::Chat { messages });
        }
        if let Some(context) = string("context")? {
            let choices = obj
                .get("choices")
                .and_then(Value::as_array)
                .ok_or("field `choices` must be a list of strings")?
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("field `choices` must be a list of strings")?;
            if choices.len() < 2 {
                return Err("field `choices` needs at least two entries".into());
            }
            let label = obj.get("label").and_then(Value::as_u64).ok_or("field `label` must be a non-negative integer")? as usize;
            if label >= choices.len() {
                return Err(format!("field `label` is {label} but there are {} choices", choices.len()));
            }
            return Ok(Record::MultipleChoice { context, choices, label });
        }
        let prompt = string("prompt")?.or(string("query")?);
        if let Some(prompt) = prompt {
            if let Some(completion) = string("completion")?.or(string("response")?) {
                return Ok(Record::PromptCompletion { prompt, completion });
            }
            match obj.get("answer") {
                Some(Value::String(answer)) => return Ok(Record::Generation { prompt, answer: answer.clone() }),
                // An answer given as a number is common in math sets.
                Some(n @ Value::Number(_)) => return Ok(Record::Generation { prompt, answer: n.to_string() }),
                Some(_) => return Err("field `answer` must be a string or a number".into()),
                None => {}
            }
            return Err("a `prompt` needs a `completion` (or `response`) or an `answer`".into());
        }
        Err("no known fields: expected `text`, `prompt`+`completion`, `query`+`response`, \
             `context`+`choices`+`label`, `prompt`+`answer`, or `messages`"
            .into())
    }
}

/// `messages`: a non-empty list of `{"role": string, "content": string}` objects.
fn parse_messages(value: &Value) -> std::result::Result<Vec<ChatMessage>, String> {
    let list = value.as_array().ok_or("field `messages` must be a list of {\"role\", \"content\"} objects")?;
    if list.is_empty() {
        return Err("field `messages` is empty".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let text = |key: &str| match m.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(format!("field `messages`, item {i}: `{key}` must be a string")),
            };
            if !m.is_object() {
                return Err(format!("field `messages`, item {i}: must be an object with `role` and `content`"));
            }
            Ok(ChatMessage { role: text("role")?, content: text("content")? })
        })
        .collect()
}

/// Mentions the source column next to a mapped field in a reader's message:
/// "field `prompt` must be a string" -> "field `prompt` (column `question`) must be a string".
fn name_columns(reason: String, fields: &FieldMap) -> String {
    fields.pairs().iter().fold(reason, |reason, (field, column)| {
        reason.replace(&format!("field `{field}`"), &format!("field `{field}` (column `{column}`)"))
    })
}

/// Reads every record of a data file with its 1-based line (JSONL) or row (parquet) number:
/// `.parquet` files as parquet, anything else as JSONL. Blank lines are skipped; a malformed
/// record is an error naming the file and line.
pub fn read_records(path: &Path) -> Result<Vec<(usize, Record)>> {
    read_records_with(path, &FieldMap::none())
}

/// [`read_records`] with the columns renamed by `fields` first (JSONL keys or parquet columns).
pub fn read_records_with(path: &Path, fields: &FieldMap) -> Result<Vec<(usize, Record)>> {
    let bad = |line: usize, reason: String| Error::BadRecord { path: path.to_path_buf(), line, reason: name_columns(reason, fields) };
    let mut records = Vec::new();
    if is_parquet(path) {
        for (row, mut object) in read_parquet(path, fields)? {
            fields.apply(&mut object).map_err(|reason| bad(row, format!("row {row}: {reason}")))?;
            let record = Record::parse(&Value::Object(object)).map_err(|reason| bad(row, format!("row {row}: {reason}")))?;
            records.push((row, record));
        }
    } else {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut value: Value = serde_json::from_str(line).map_err(|e| bad(i + 1, format!("malformed JSON: {e}")))?;
            if let Value::Object(object) = &mut value {
                fields.apply(object).map_err(|reason| bad(i + 1, reason))?;
            }
            let record = Record::parse(&value).map_err(|reason| bad(i + 1, reason))?;
            records.push((i + 1, record));
        }
    }
    if records.is_empty() {
        return Err(Error::EmptyData { path: path.to_path_buf(), reason: "holds no records".into() });
    }
    Ok(records)
}

/// Whether `path` names a parquet file (by its extension).
pub fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

#[cfg(feature = "parquet")]
fn read_parquet(path: &Path, fields: &FieldMap) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    super::parquet::read_parquet_rows(path, fields)
}

#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path, _fields: &FieldMap) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    Err(Error::Parquet { path: path.to_path_buf(), reason: "this lalora was built without the `parquet` feature".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> std::result::Result<Record, String> {
        Record::parse(&serde_json::from_str(line).unwrap())
    }

    #[test]
    fn kinds_are_recognised_by_their_fields() {
        assert_eq!(parse(r#"{"text": "a"}"#).unwrap().kind(), "text");
        assert_eq!(parse(r#"{"prompt": "a", "completion": "b"}"#).unwrap().kind(), "prompt-completion");
        assert_eq!(parse(r#"{"query": "a", "response": "b"}"#).unwrap().kind(), "prompt-completion");
        assert_eq!(parse(r#"{"context": "a", "choices": ["b", "c"], "label": 1}"#).unwrap().kind(), "multiple-choice");
        assert_eq!(parse(r#"{"prompt": "a", "answer": "4"}"#).unwrap().kind(), "generation");
        assert_eq!(parse(r#"{"prompt": "a", "answer": 4}"#).unwrap(), Record::Generation { prompt: "a".into(), answer: "4".into() });
    }

    #[test]
    fn json_lines_use_the_reader_field_names_and_round_trip() {
        let examples = [
            Record::text("The capital of Zorvia is Pellmar."),
            Record::PromptCompletion { prompt: "Q?\nAnswer:".into(), completion: " 1 + 2 = 3. #### 3".into() },
            Record::MultipleChoice { context: "a \"quoted\" ctx".into(), choices: vec![" x.".into(), " y.".into()], label: 1 },
            Record::Generation { prompt: "Q?\nAnswer:".into(), answer: "3".into() },
        ];
        let lines: Vec<String> = examples.iter().map(Record::to_json_line).collect();
        assert_eq!(lines[0], r#"{"text":"The capital of Zorvia is Pellmar."}"#);
        assert_eq!(lines[1], r#"{"prompt":"Q?\nAnswer:","completion":" 1 + 2 = 3. #### 3"}"#);
        assert_eq!(lines[2], r#"{"context":"a \"quoted\" ctx","choices":[" x."," y."],"label":1}"#);
        assert_eq!(lines[3], r#"{"prompt":"Q?\nAnswer:","answer":"3"}"#);
        for (record, line) in examples.iter().zip(&lines) {
            assert_eq!(&Record::from_json_line(line).unwrap(), record);
        }
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        assert!(parse(r#"{"txt": "a"}"#).unwrap_err().contains("no known fields"));
        assert!(parse(r#"{"text": 3}"#).unwrap_err().contains("`text`"));
        assert!(parse(r#"{"context": "a", "choices": ["b", "c"], "label": 2}"#).unwrap_err().contains("`label`"));
        assert!(parse(r#"{"messages": []}"#).unwrap_err().contains("`messages` is empty"));
        assert!(parse(r#"{"messages": "hi"}"#).unwrap_err().contains("must be a list"));
        let e = parse(r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}"#).unwrap_err();
        assert_eq!(e, "field `messages`, item 1: `content` must be a string");
    }

    #[test]
    fn chat_records_parse_and_round_trip() {
        let line = r#"{"messages":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]}"#;
        let record = Record::from_json_line(line).unwrap();
        assert_eq!(record, Record::Chat { messages: vec![ChatMessage::new("user", "2+2?"), ChatMessage::new("assistant", "4")] });
        assert_eq!(record.kind(), "chat");
        assert_eq!(record.to_json_line(), line);
    }

    #[test]
    fn field_maps_apply_to_jsonl_and_name_the_column_in_errors() {
        let dir = std::env::temp_dir().join(format!("lalora-jsonl-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gsm.jsonl");
        std::fs::write(&path, "{\"question\": \"1+1?\", \"answer\": \"2\"}\n").unwrap();
        let map = FieldMap::parse("prompt=question,completion=answer").unwrap();
        let records = read_records_with(&path, &map).unwrap();
        assert_eq!(records, vec![(1, Record::PromptCompletion { prompt: "1+1?".into(), completion: "2".into() })]);
        let generation = read_records_with(&path, &FieldMap::parse("prompt=question").unwrap()).unwrap();
        assert_eq!(generation[0].1.kind(), "generation");
        std::fs::write(&path, "{\"question\": 3, \"answer\": \"2\"}\n").unwrap();
        let e = read_records_with(&path, &map).unwrap_err().to_string();
        assert!(e.contains("gsm.jsonl:1: field `prompt` (column `question`) must be a string"), "{e}");
        std::fs::write(&path, "{\"q\": \"x\"}\n").unwrap();
        let e = read_records_with(&path, &map).unwrap_err().to_string();
        assert!(e.contains("gsm.jsonl:1: no column `question` (mapped to `prompt`)"), "{e}");
    }

    #[test]
    fn file_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("lalora-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.jsonl");
        std::fs::write(&path, "{\"text\": \"ok\"}\n\n{\"text\": \"ok\"\n").unwrap();
        let e = read_records(&path).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:3:") && e.contains("malformed JSON"), "{e}");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_records(&path).unwrap_err().to_string().contains("no records"));
    }
}
