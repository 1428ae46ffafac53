//! Token ids equal transformers' `AutoTokenizer(text)["input_ids"]` (scripts/make_fixtures.py).

mod common;

use common::fixture;
use lalora::Tokenizer;

#[derive(serde::Deserialize)]
struct Expected {
    cases: Vec<Case>,
    bos_token_id: u32,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn expected() -> Expected {
    serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer/expected.json")).unwrap()).unwrap()
}

#[test]
fn ids_equal_transformers_with_bos_from_the_post_processor() {
    let tokenizer = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    let expected = expected();
    assert!(expected.cases.len() >= 8);
    for case in &expected.cases {
        let ids = tokenizer.encode(&case.text).unwrap();
        assert_eq!(ids, case.ids, "text {:?}", case.text);
        assert_eq!(ids[0], expected.bos_token_id, "BOS comes from the post-processor");
    }
}

#[test]
fn decode_inverts_encode_without_special_tokens() {
    let tokenizer = Tokenizer::from_dir(&fixture("tokenizer")).unwrap();
    for case in expected().cases {
        assert_eq!(tokenizer.decode(&case.ids).unwrap(), case.text);
    }
}

#[test]
fn a_missing_or_broken_tokenizer_names_the_file() {
    let err = Tokenizer::from_file(&fixture("tokenizer/nope.json")).unwrap_err().to_string();
    assert!(err.contains("nope.json"), "{err}");
    let dir = common::temp_dir("bad-tokenizer");
    std::fs::write(dir.join("tokenizer.json"), "{ not json").unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("tokenizer"), "{err}");
}
