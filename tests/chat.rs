//! Chat templates render as transformers' `apply_chat_template` does, and only assistant turns
//! carry the loss (fixture: scripts/make_chat_fixture.py, transformers 5.23.0).

mod common;

use std::collections::BTreeMap;

use common::*;
use lalora::chat::ChatTemplate;
use lalora::data::{lm_sequences_with, Batch, ChatMessage, LmOptions};
use lalora::Tokenizer;
use serde_json::Value;

struct Case {
    conversation: u64,
    template: String,
    messages: Vec<ChatMessage>,
    expected: Value,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("chat/expected.json")).unwrap();
    let expected: Value = serde_json::from_str(&text).unwrap();
    expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            conversation: c["conversation"].as_u64().unwrap(),
            template: c["template"].as_str().unwrap().to_string(),
            messages: serde_json::from_value(c["messages"].clone()).unwrap(),
            expected: c.clone(),
        })
        .collect()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixture("chat")).unwrap()
}

/// The fixture's `default` template, found as lalora finds a model's template.
fn default_template() -> ChatTemplate {
    ChatTemplate::from_model_dir(&fixture("chat")).unwrap().expect("the fixture has a chat template")
}

/// The fixture's `tracked` template (TRL generation markers), built by hand.
fn tracked_template() -> ChatTemplate {
    let path = fixture("chat/tokenizer_config.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let source = config["chat_template"].as_array().unwrap().iter().find(|t| t["name"] == "tracked").unwrap()["template"]
        .as_str()
        .unwrap()
        .to_string();
    let tokens: BTreeMap<String, String> =
        ["bos_token", "eos_token", "pad_token"].iter().map(|k| (k.to_string(), config[*k].as_str().unwrap().to_string())).collect();
    ChatTemplate::new(&source, tokens, path).unwrap()
}

#[test]
fn rendering_and_token_ids_equal_transformers() {
    let tokenizer = tokenizer();
    let (default, tracked) = (default_template(), tracked_template());
    let mut checked = 0;
    for case in cases() {
        let template = if case.template == "default" { &default } else { &tracked };
        let label = format!("conversation {} / {}", case.conversation, case.template);
        if let Some(error) = case.expected.get("error") {
            let ours = template.render(&case.messages, false).unwrap_err().to_string();
            assert!(ours.contains(error.as_str().unwrap()), "{label}: {ours}");
            continue;
        }
        let text = template.render(&case.messages, false).unwrap();
        assert_eq!(text, case.expected["text"].as_str().unwrap(), "{label}");
        let prompt = template.render(&case.messages, true).unwrap();
        assert_eq!(prompt, case.expected["prompt_text"].as_str().unwrap(), "{label}");
        let ids: Vec<u32> = serde_json::from_value(case.expected["ids"].clone()).unwrap();
        let sequence = template.sequence(&tokenizer, &case.messages).unwrap();
        assert_eq!(sequence.ids, ids, "{label}");
        let prompt_ids = template.prompt_ids(&tokenizer, &case.messages).unwrap();
        assert_eq!(prompt_ids, tokenizer.encode_with(&prompt, false).unwrap(), "{label}");
        assert!(prompt_ids.len() > ids.len() || case.messages.last().unwrap().role != "assistant", "{label}");
        checked += 1;
    }
    assert_eq!(checked, 7, "seven rendered cases and one rejected conversation");
}

#[test]
fn the_loss_mask_equals_transformers_assistant_mask() {
    let tokenizer = tokenizer();
    let (default, tracked) = (default_template(), tracked_template());
    let mut compared = 0;
    for case in cases().iter().filter(|c| c.expected.get("assistant_mask").is_some()) {
        let mask: Vec<bool> = case.expected["assistant_mask"].as_array().unwrap().iter().map(|v| v == 1).collect();
        assert!(mask.iter().any(|&m| m), "the fixture has assistant tokens");
        let ours = tracked.sequence(&tokenizer, &case.messages).unwrap();
        assert_eq!(ours.target_mask.as_deref(), Some(&mask[..]), "conversation {}", case.conversation);
        // Without generation markers the default template finds the same spans where it
        // renders the same text (conversation 1 has a system message, so both do).
        let plain = default.sequence(&tokenizer, &case.messages).unwrap();
        if plain.ids == ours.ids {
            assert_eq!(plain.target_mask, ours.target_mask);
            compared += 1;
        }
        // Masked tokens decode to the assistant replies with their end-of-turn tokens.
        let masked: Vec<u32> = ours.ids.iter().zip(&mask).filter(|(_, m)| **m).map(|(id, _)| *id).collect();
        let replies: String =
            case.messages.iter().filter(|m| m.role == "assistant").map(|m| format!("{}<|eot_id|>", m.content.trim())).collect();
        assert_eq!(tokenizer.inner().decode(&masked, false).unwrap(), replies);
    }
    assert_eq!(compared, 1);
}

#[test]
fn chat_records_train_on_assistant_turns_only() {
    let tokenizer = tokenizer();
    let template = default_template();
    let dir = temp_dir("chat-data");
    let path = dir.join("chat.jsonl");
    let messages = cases()[0].messages.clone();
    std::fs::write(&path, format!("{}\n", serde_json::json!({ "messages": messages }))).unwrap();
    let options = LmOptions { max_len: 512, eos: Some(1), fields: None, chat: Some(&template) };
    let sequences = lm_sequences_with(&path, &tokenizer, &options).unwrap();
    let expected = template.sequence(&tokenizer, &messages).unwrap();
    assert_eq!(sequences, vec![expected.clone()], "eos is not appended to chat turns");
    let mask = expected.target_mask.clone().unwrap();
    let batch = Batch::<TestBackend>::new(&[&expected], &device());
    let loss: Vec<f32> = batch.loss_mask.into_data().to_vec().unwrap();
    // Position t carries the loss of predicting token t + 1.
    for t in 0..expected.ids.len() {
        let scored = t + 1 < expected.ids.len() && mask[t + 1];
        assert_eq!(loss[t] == 1.0, scored, "position {t}");
    }
    assert_eq!(batch.num_targets, mask[1..].iter().filter(|&&m| m).count());
    assert_eq!(expected.num_targets(), batch.num_targets);
    // Truncation keeps the mask aligned.
    let short = expected.clone().truncated(10);
    assert_eq!(short.target_mask.as_ref().map(Vec::len), Some(10));

    // Without a template, a messages record is an error naming the file and line.
    let e = lm_sequences_with(&path, &tokenizer, &LmOptions { max_len: 512, ..Default::default() }).unwrap_err().to_string();
    assert!(e.contains("chat.jsonl:1:") && e.contains("needs a chat template"), "{e}");
}

#[test]
fn models_without_templates_and_broken_configs_are_reported() {
    // The bundled tiny model has no tokenizer_config.json: no template, no error.
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny");
    assert!(ChatTemplate::from_model_dir(&tiny).unwrap().is_none());
    let dir = temp_dir("chat-bad");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": "{% for m in messages %}{{ m.content }"}"#).unwrap();
    let e = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json: field `chat_template`: not a valid Jinja template"), "{e}");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": [{"name": "tool_use", "template": "x"}]}"#).unwrap();
    let e = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("no template named `default` among [tool_use]"), "{e}");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": 3}"#).unwrap();
    let e = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("malformed JSON"), "{e}");
    // chat_template.jinja wins over the config's key, as in transformers 5.
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": "config", "bos_token": {"content": "<s>"}}"#).unwrap();
    std::fs::write(dir.join("chat_template.jinja"), "{{ bos_token }}jinja").unwrap();
    let template = ChatTemplate::from_model_dir(&dir).unwrap().unwrap();
    assert_eq!(template.render(&[ChatMessage::new("user", "x")], false).unwrap(), "<s>jinja");
    assert_eq!((template.special_token("bos_token"), template.special_token("eos_token")), (Some("<s>"), None));
}
