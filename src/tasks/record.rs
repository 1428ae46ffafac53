//! One JSONL record of a generated task, in the formats lalora's data reader accepts.

use serde::{Deserialize, Serialize};

/// One JSONL record in one of the formats lalora reads.
///
/// Serialised without a tag: the field names alone tell the formats apart, exactly as
/// `lalora::data` expects them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskRecord {
    /// `{"text": ...}`: plain language-modelling text.
    Text {
        /// The text.
        text: String,
    },
    /// `{"prompt": ..., "completion": ...}`: supervised example, loss on the completion only.
    PromptCompletion {
        /// Conditioning text.
        prompt: String,
        /// Text the model learns to produce after the prompt.
        completion: String,
    },
    /// `{"context": ..., "choices": [...], "label": i}`: scored by log-likelihood per choice.
    MultipleChoice {
        /// Shared prefix of every choice.
        context: String,
        /// Candidate continuations of the context.
        choices: Vec<String>,
        /// Index of the correct choice.
        label: usize,
    },
    /// `{"prompt": ..., "answer": ...}`: greedy generation, exact match of the answer.
    Generation {
        /// The question.
        prompt: String,
        /// The reference answer.
        answer: String,
    },
}

impl TaskRecord {
    /// A `{"text": ...}` record.
    pub fn text(text: impl Into<String>) -> Self {
        TaskRecord::Text { text: text.into() }
    }

    /// The record as one line of JSON, without a trailing newline.
    pub fn to_json_line(&self) -> String {
        // Serialising strings, integers and lists of strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one line written by [`TaskRecord::to_json_line`].
    pub fn from_json_line(line: &str) -> serde_json::Result<Self> {
        serde_json::from_str(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> Vec<TaskRecord> {
        vec![
            TaskRecord::text("The capital of Zorvia is Pellmar."),
            TaskRecord::PromptCompletion { prompt: "Q?\nAnswer:".into(), completion: " 1 + 2 = 3. #### 3".into() },
            TaskRecord::MultipleChoice {
                context: "a \"quoted\" ctx".into(),
                choices: vec![" x.".into(), " y.".into()],
                label: 1,
            },
            TaskRecord::Generation { prompt: "Q?\nAnswer:".into(), answer: "3".into() },
        ]
    }

    #[test]
    fn json_lines_use_the_reader_field_names() {
        let lines: Vec<String> = examples().iter().map(TaskRecord::to_json_line).collect();
        assert_eq!(lines[0], r#"{"text":"The capital of Zorvia is Pellmar."}"#);
        assert_eq!(lines[1], r#"{"prompt":"Q?\nAnswer:","completion":" 1 + 2 = 3. #### 3"}"#);
        assert_eq!(lines[2], r#"{"context":"a \"quoted\" ctx","choices":[" x."," y."],"label":1}"#);
        assert_eq!(lines[3], r#"{"prompt":"Q?\nAnswer:","answer":"3"}"#);
        assert!(lines.iter().all(|line| !line.contains('\n')));
    }

    #[test]
    fn json_lines_round_trip_to_the_same_variant() {
        for record in examples() {
            assert_eq!(TaskRecord::from_json_line(&record.to_json_line()).ok(), Some(record));
        }
    }
}
