//! Generation sets: greedy decoding with the KV cache, then exact match of the extracted answer
//! (the text after the last `####`, else the last number), as in GSM8K.

use super::EvalOptions;
use crate::data::Record;
use crate::error::Result;
use crate::generate::{decoding_model, generate_batch, SamplingConfig};
use crate::llama::Llama;
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::KernelBackend;

/// One tokenised generation item.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationItem {
    /// Prompt tokens (BOS included).
    pub prompt: Vec<u32>,
    /// The reference answer.
    pub answer: String,
}

impl GenerationItem {
    /// Tokenises a generation record.
    pub fn from_record(record: &Record, tokenizer: &Tokenizer) -> Result<Self> {
        let Record::Generation { prompt, answer } = record else { unreachable!("load_eval_set only passes generation records") };
        Ok(GenerationItem { prompt: tokenizer.encode(prompt)?, answer: answer.clone() })
    }
}

/// The answer in a model's output: what follows the last `####` up to the end of the line
/// (answers may be several words, e.g. "Queen Zovi"), else the last number in the text.
/// Commas and a trailing period are dropped.
pub fn extract_answer(text: &str) -> Option<String> {
    let clean = |s: &str| s.trim().trim_end_matches('.').replace(',', "");
    if let Some(i) = text.rfind("####") {
        let rest = clean(text[i + 4..].lines().next().unwrap_or(""));
        if !rest.is_empty() {
            return Some(rest);
        }
    }
    last_number(text).map(|n| clean(&n))
}

fn last_number(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut end = chars.len();
    while end > 0 && !chars[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && (chars[start - 1].is_ascii_digit() || chars[start - 1] == '.' || chars[start - 1] == ',') {
        start -= 1;
    }
    if start > 0 && chars[start - 1] == '-' {
        start -= 1;
    }
    Some(chars[start..end].iter().collect::<String>().trim_start_matches(['.', ',']).to_string())
}

/// Whether an extracted answer equals the reference: its first words (as many as the
/// reference has, so anything the model adds after the answer is ignored) equal the
/// reference's, numerically for a one-number reference. Commas and periods that end a word
/// are ignored.
pub fn answers_match(extracted: &str, expected: &str) -> bool {
    let words = |s: &str| -> Vec<String> { s.split_whitespace().map(|w| w.trim_end_matches('.').replace(',', "")).collect() };
    let (ours, reference) = (words(extracted), words(expected));
    if ours.len() < reference.len() || reference.is_empty() {
        return false;
    }
    if let ([number], Ok(x)) = (reference.as_slice(), ours[0].parse::<f64>()) {
        if let Ok(y) = number.parse::<f64>() {
            return (x - y).abs() < 1e-9;
        }
    }
    ours[..reference.len()] == reference[..]
}

/// Fraction of items whose greedy generation contains the right answer. Decoding stops at an
/// end-of-sequence token or after the first line. Items are decoded `options.batch_size` at a
/// time, grouped by prompt length to keep padding small, on a [`decoding_model`] copy of
/// `model` (adapters merged); the answers equal one-by-one decoding.
pub fn score_generation<B: KernelBackend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    items: &[GenerationItem],
    options: &EvalOptions,
    progress: &Progress,
) -> Result<f64> {
    let config = SamplingConfig { max_new_tokens: options.max_new_tokens, ..Default::default() };
    let newline: Vec<u32> = tokenizer.encode_with("\n", false)?;
    let mut stop = model.config.eos_token_ids.clone();
    if newline.len() == 1 {
        stop.push(newline[0]);
    }
    let keep = options.max_len.saturating_sub(options.max_new_tokens).max(1);
    let prompts: Vec<&[u32]> = items.iter().map(|item| &item.prompt[item.prompt.len().saturating_sub(keep)..]).collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let model = decoding_model(model);
    let mut correct = 0;
    for chunk in order.chunks(options.batch_size.max(1)) {
        let batch: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i]).collect();
        let outputs = generate_batch(&model, &batch, &config, &stop);
        for (&i, output) in chunk.iter().zip(&outputs) {
            let text = tokenizer.decode(output)?;
            if extract_answer(&text).is_some_and(|a| answers_match(&a, &items[i].answer)) {
                correct += 1;
            }
        }
        progress.inc(chunk.len() as u64);
    }
    Ok(correct as f64 / items.len().max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_extracted_gsm8k_style() {
        assert_eq!(extract_answer(" 3 + 4 = 7. 7 - 2 = 5. #### 5").as_deref(), Some("5"));
        assert_eq!(extract_answer("#### 1,234.\nmore #### text").as_deref(), Some("text"));
        assert_eq!(extract_answer("so the answer is 42.").as_deref(), Some("42"));
        assert_eq!(extract_answer("it drops to -3").as_deref(), Some("-3"));
        assert_eq!(extract_answer("no digits here"), None);
        assert!(answers_match("1,234", "1234"));
        assert!(answers_match("5.0", "5"));
        assert!(!answers_match("6", "5"));
        assert!(answers_match("abc", " abc "));
        // Several words, and words the model adds after the answer.
        assert_eq!(extract_answer(" The ruler of Bribis is Queen Zovi. #### Queen Zovi.").as_deref(), Some("Queen Zovi"));
        assert!(answers_match("Queen Zovi", "Queen Zovi"));
        assert!(!answers_match("Queen", "Queen Zovi"));
        assert!(!answers_match("Queen Lura", "Queen Zovi"));
        assert!(answers_match("5. And then 6", "5"));
        assert!(answers_match("honey honey", "honey"));
        assert!(!answers_match("", "5"));
    }
}
