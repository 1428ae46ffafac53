//! Parquet data files read as JSONL files are: the same records, the same field mapping,
//! clear errors. The files are written here with the same `parquet` crate, in the layout
//! pyarrow (and so HF `datasets`) writes: optional UTF-8 columns, 3-level lists.
#![cfg(feature = "parquet")]

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::temp_dir;
use lalora::data::{lm_sequences_with, read_records, read_records_with, ChatMessage, FieldMap, LmOptions, Record};
use lalora::Tokenizer;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

/// One column of a test file; each variant is one row per entry.
enum Column {
    /// `optional binary (STRING)`; `None` is null.
    Text(&'static str, Vec<Option<&'static str>>),
    /// `optional binary` without a logical type (raw bytes).
    Bytes(&'static str, Vec<Vec<u8>>),
    /// `optional int64`.
    Int(&'static str, Vec<i64>),
    /// `optional double`.
    Float(&'static str, Vec<f64>),
    /// `list<string>`.
    TextList(&'static str, Vec<Vec<&'static str>>),
    /// `list<struct<role: string, content: string>>`, TRL's conversational column.
    Messages(&'static str, Vec<Vec<(&'static str, &'static str)>>),
}

impl Column {
    fn schema(&self) -> String {
        match self {
            Column::Text(n, _) => format!("optional binary {n} (STRING);"),
            Column::Bytes(n, _) => format!("optional binary {n};"),
            Column::Int(n, _) => format!("optional int64 {n};"),
            Column::Float(n, _) => format!("optional double {n};"),
            Column::TextList(n, _) => {
                format!("optional group {n} (LIST) {{ repeated group list {{ optional binary element (STRING); }} }}")
            }
            Column::Messages(n, _) => format!(
                "optional group {n} (LIST) {{ repeated group list {{ optional group element {{ \
                 optional binary role (STRING); optional binary content (STRING); }} }} }}"
            ),
        }
    }

    fn rows(&self) -> usize {
        match self {
            Column::Text(_, v) => v.len(),
            Column::Bytes(_, v) => v.len(),
            Column::Int(_, v) => v.len(),
            Column::Float(_, v) => v.len(),
            Column::TextList(_, v) => v.len(),
            Column::Messages(_, v) => v.len(),
        }
    }
}

/// Values, definition and repetition levels of a list column's leaf, `pick` choosing the
/// leaf's value from each element. Max definition level `leaf_def` (an empty list has 1).
fn list_levels<T: Clone>(rows: &[Vec<T>], leaf_def: i16, pick: impl Fn(&T) -> ByteArray) -> (Vec<ByteArray>, Vec<i16>, Vec<i16>) {
    let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    for row in rows {
        if row.is_empty() {
            def.push(1);
            rep.push(0);
        }
        for (i, item) in row.iter().enumerate() {
            values.push(pick(item));
            def.push(leaf_def);
            rep.push(if i == 0 { 0 } else { 1 });
        }
    }
    (values, def, rep)
}

/// One leaf column to write: its values, definition levels and (for lists) repetition levels.
type Leaf = (Vec<ByteArray>, Vec<i16>, Option<Vec<i16>>);

/// Writes `columns` to `path` as one row group.
fn write_parquet(path: &Path, columns: &[Column], compression: Compression) {
    let schema = format!("message schema {{ {} }}", columns.iter().map(Column::schema).collect::<Vec<_>>().join(" "));
    let schema = Arc::new(parse_message_type(&schema).unwrap());
    let props = Arc::new(WriterProperties::builder().set_compression(compression).build());
    let mut writer = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let bytes = |s: &str| ByteArray::from(s.as_bytes().to_vec());
    for column in columns {
        // Leaf columns in schema order: one per column, two for messages (role, content).
        let mut leaves: Vec<Leaf> = Vec::new();
        match column {
            Column::Text(_, v) => {
                let values = v.iter().flatten().map(|s| bytes(s)).collect();
                leaves.push((values, v.iter().map(|x| x.is_some() as i16).collect(), None));
            }
            Column::Bytes(_, v) => leaves.push((v.iter().map(|b| ByteArray::from(b.clone())).collect(), vec![1; v.len()], None)),
            Column::TextList(_, rows) => {
                let (values, def, rep) = list_levels(rows, 3, |s| bytes(s));
                leaves.push((values, def, Some(rep)));
            }
            Column::Messages(_, rows) => {
                for pick in [0, 1] {
                    let (values, def, rep) = list_levels(rows, 4, |(role, content)| bytes(if pick == 0 { role } else { content }));
                    leaves.push((values, def, Some(rep)));
                }
            }
            Column::Int(_, v) => {
                let mut col = group.next_column().unwrap().unwrap();
                col.typed::<Int64Type>().write_batch(v, Some(&vec![1; v.len()]), None).unwrap();
                col.close().unwrap();
            }
            Column::Float(_, v) => {
                let mut col = group.next_column().unwrap().unwrap();
                col.typed::<DoubleType>().write_batch(v, Some(&vec![1; v.len()]), None).unwrap();
                col.close().unwrap();
            }
        }
        for (values, def, rep) in leaves {
            let mut col = group.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>().write_batch(&values, Some(&def), rep.as_deref()).unwrap();
            col.close().unwrap();
        }
    }
    group.close().unwrap();
    writer.close().unwrap();
    assert!(columns.iter().all(|c| c.rows() == columns[0].rows()));
}

fn scratch(name: &str) -> PathBuf {
    temp_dir(&format!("parquet-{name}"))
}

fn gsm8k_like() -> Vec<Column> {
    vec![
        Column::Text(
            "question",
            vec![
                Some("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"),
                Some("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"),
            ],
        ),
        Column::Text(
            "answer",
            vec![
                Some("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"),
                Some("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"),
            ],
        ),
    ]
}

#[test]
fn a_gsm8k_like_file_reads_like_its_jsonl_twin_with_a_field_mapping() {
    let dir = scratch("gsm8k");
    let parquet_path = dir.join("test-00000-of-00001.parquet");
    write_parquet(&parquet_path, &gsm8k_like(), Compression::SNAPPY);
    let jsonl_path = dir.join("test.jsonl");
    let Column::Text(_, questions) = &gsm8k_like()[0] else { unreachable!() };
    let Column::Text(_, answers) = &gsm8k_like()[1] else { unreachable!() };
    let lines: Vec<String> =
        questions.iter().zip(answers).map(|(q, a)| serde_json::json!({"question": q, "answer": a}).to_string()).collect();
    std::fs::write(&jsonl_path, lines.join("\n") + "\n").unwrap();

    let map = FieldMap::parse("prompt=question,completion=answer").unwrap();
    let from_parquet = read_records_with(&parquet_path, &map).unwrap();
    let from_jsonl = read_records_with(&jsonl_path, &map).unwrap();
    assert_eq!(from_parquet, from_jsonl);
    assert_eq!(from_parquet.len(), 2);
    let Record::PromptCompletion { prompt, completion } = &from_parquet[1].1 else { panic!("{:?}", from_parquet[1]) };
    assert!(prompt.starts_with("Weng earns $12") && completion.ends_with("#### 10"));

    // Mapping only the question gives generation records (prompt + answer), as in JSONL.
    let generation = read_records_with(&parquet_path, &FieldMap::parse("prompt=question").unwrap()).unwrap();
    assert!(matches!(&generation[0].1, Record::Generation { answer, .. } if answer.ends_with("#### 72")));

    // Tokenised sequences are the same too.
    let tokenizer = Tokenizer::from_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny").as_path()).unwrap();
    let options = LmOptions { max_len: 512, eos: Some(0), fields: Some(&map), chat: None };
    let a = lm_sequences_with(&parquet_path, &tokenizer, &options).unwrap();
    let b = lm_sequences_with(&jsonl_path, &tokenizer, &options).unwrap();
    assert_eq!(a, b);
    assert!(a[0].first_target > 10 && a[0].num_targets() > 10);
}

#[test]
fn every_record_kind_reads_from_parquet_with_every_codec() {
    let dir = scratch("kinds");
    let cases: Vec<(&str, Vec<Column>, Record)> = vec![
        (
            "text",
            vec![Column::Text("text", vec![Some("The capital of Zorvia is Pellmar.")])],
            Record::text("The capital of Zorvia is Pellmar."),
        ),
        (
            "query",
            vec![Column::Text("query", vec![Some("q")]), Column::Text("response", vec![Some("r")]), Column::Int("id", vec![7])],
            Record::PromptCompletion { prompt: "q".into(), completion: "r".into() },
        ),
        (
            "choice",
            vec![
                Column::Text("context", vec![Some("c")]),
                Column::TextList("choices", vec![vec![" x", " y"]]),
                Column::Int("label", vec![1]),
            ],
            Record::MultipleChoice { context: "c".into(), choices: vec![" x".into(), " y".into()], label: 1 },
        ),
        (
            "number_answer",
            vec![Column::Text("prompt", vec![Some("2+2=")]), Column::Int("answer", vec![4])],
            Record::Generation { prompt: "2+2=".into(), answer: "4".into() },
        ),
        (
            "messages",
            vec![Column::Messages("messages", vec![vec![("user", "hi"), ("assistant", "hello")]])],
            Record::Chat { messages: vec![ChatMessage::new("user", "hi"), ChatMessage::new("assistant", "hello")] },
        ),
    ];
    let codecs = [
        Compression::UNCOMPRESSED,
        Compression::SNAPPY,
        Compression::ZSTD(Default::default()),
        Compression::GZIP(Default::default()),
        Compression::LZ4_RAW,
    ];
    for (name, columns, expected) in &cases {
        for codec in codecs {
            let path = dir.join(format!("{name}-{codec:?}.parquet").replace(['(', ')', ' ', '{', '}', ':'], ""));
            write_parquet(&path, columns, codec);
            let records = read_records(&path).unwrap_or_else(|e| panic!("{name} {codec:?}: {e}"));
            assert_eq!(records, vec![(1, expected.clone())], "{name} {codec:?}");
        }
    }
}

#[test]
fn bad_parquet_inputs_name_the_file_and_the_column() {
    let dir = scratch("bad");
    let err = |name: &str, columns: Vec<Column>, map: &str| {
        let path = dir.join(name);
        write_parquet(&path, &columns, Compression::SNAPPY);
        let e = read_records_with(&path, &FieldMap::parse(map).unwrap()).unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
        e
    };
    let e = err("gsm.parquet", gsm8k_like(), "prompt=problem");
    assert!(e.contains("field `problem`: no such column (mapped to `prompt`)") && e.contains("question (BYTE_ARRAY String"), "{e}");
    let e = err("unknown.parquet", vec![Column::Text("body", vec![Some("x")]), Column::Int("n", vec![1])], "");
    assert!(e.contains("no column lalora reads") && e.contains("body (BYTE_ARRAY String") && e.contains("n (INT64)"), "{e}");
    let e = err("int_text.parquet", vec![Column::Int("text", vec![3])], "");
    assert!(e.contains("int_text.parquet:1: row 1: field `text` must be a string"), "{e}");
    let e = err("mapped.parquet", vec![Column::Int("body", vec![3])], "text=body");
    assert!(e.contains("field `text` (column `body`) must be a string"), "{e}");
    let e = err(
        "label.parquet",
        vec![
            Column::Text("context", vec![Some("c")]),
            Column::TextList("choices", vec![vec!["a", "b"]]),
            Column::Float("label", vec![0.5]),
        ],
        "",
    );
    assert!(e.contains("field `label` must be a non-negative integer"), "{e}");
    let e = err("binary.parquet", vec![Column::Bytes("text", vec![vec![0xff, 0xfe]])], "");
    assert!(e.contains("row 1: column `text`: binary data that is not UTF-8"), "{e}");
    let e = err("nan.parquet", vec![Column::Text("prompt", vec![Some("p")]), Column::Float("answer", vec![f64::NAN])], "");
    assert!(e.contains("column `answer`: non-finite number NaN"), "{e}");
    let e = err("empty.parquet", vec![Column::Text("text", vec![])], "");
    assert!(e.contains("holds no records"), "{e}");
    let e = err("null.parquet", vec![Column::Text("text", vec![Some("a"), None])], "");
    assert!(e.contains("null.parquet:2: row 2: no known fields"), "{e}");

    let not_parquet = dir.join("data.parquet");
    std::fs::write(&not_parquet, "{\"text\": \"I am JSON\"}\n").unwrap();
    let e = read_records(&not_parquet).unwrap_err().to_string();
    assert!(e.contains("data.parquet: not a readable parquet file"), "{e}");
    let e = read_records(&dir.join("missing.parquet")).unwrap_err().to_string();
    assert!(e.contains("missing.parquet"), "{e}");
}
