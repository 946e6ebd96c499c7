//! Dataset files as users bring them: Parquet (written here with Snappy compression, as the
//! Hub's files are) and JSONL, with the file's column names mapped by `dataset.fields`; bad rows
//! name the file, the row and the column; a `.parquet` path trains end to end through
//! `rlhf-trainer local` with its format inferred; chat rows (message lists) are rendered with
//! the tokenizer's chat template into the token ids transformers' apply_chat_template gives,
//! learning assistant turns only.
mod common;

use std::path::Path;
use std::sync::Arc;

use common::{CHATML_STYLE, chat_reference, run_local, scratch, tiny_job};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use rlhf_spec::{DatasetFields, DatasetFormat, ResolvedDataset, StageKind};
use rlhf_trainer::batch::join;
use rlhf_trainer::data::{Example, load};
use rlhf_trainer::error::Result;
use rlhf_trainer::tokenizer::Tokenizer;
use rlhf_trainer::tokenizer::chat::ChatTemplate;
use serde_json::{Value, json};

/// A Snappy-compressed Parquet file of optional UTF-8 columns (None: a null cell).
fn write_parquet(path: &Path, columns: &[(&str, Vec<Option<&str>>)]) {
    let schema = columns
        .iter()
        .map(|(name, _)| format!("OPTIONAL BYTE_ARRAY {name} (UTF8);"))
        .collect::<String>();
    let schema = Arc::new(parse_message_type(&format!("message rows {{ {schema} }}")).unwrap());
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for (_, cells) in columns {
        let mut column = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = cells
            .iter()
            .flatten()
            .map(|s| ByteArray::from(*s))
            .collect();
        let levels: Vec<i16> = cells.iter().map(|c| i16::from(c.is_some())).collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, Some(&levels), None)
            .unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

fn file(path: &Path, format: DatasetFormat, fields: DatasetFields) -> ResolvedDataset {
    ResolvedDataset::File {
        path: path.display().to_string(),
        format,
        fields,
    }
}

/// The examples of a file without a chat template.
fn examples(dataset: &ResolvedDataset, kind: StageKind) -> Result<Vec<Example>> {
    load(dataset, kind, None).map(|d| d.examples)
}

fn question_answer() -> DatasetFields {
    DatasetFields {
        prompt: Some("question".into()),
        response: Some("answer".into()),
        ..DatasetFields::default()
    }
}

#[test]
fn parquet_rows_with_mapped_columns_become_examples_and_bad_rows_are_named() {
    let dir = scratch("datasets");
    let path = dir.join("qa.parquet");
    write_parquet(
        &path,
        &[
            ("question", vec![Some("2+2="), Some("3+4=")]),
            ("answer", vec![Some("4"), Some("7")]),
        ],
    );
    let rows = examples(
        &file(&path, DatasetFormat::Parquet, question_answer()),
        StageKind::Sft,
    )
    .unwrap();
    assert_eq!(
        rows,
        [
            Example::Sft {
                prompt: "2+2=".into(),
                response: "4".into()
            },
            Example::Sft {
                prompt: "3+4=".into(),
                response: "7".into()
            },
        ]
    );

    // A null cell in row 2 is an error naming file, row and the file's column.
    write_parquet(
        &path,
        &[
            ("question", vec![Some("a"), Some("b")]),
            ("answer", vec![Some("x"), None]),
        ],
    );
    let err = examples(
        &file(&path, DatasetFormat::Parquet, question_answer()),
        StageKind::Sft,
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(
        err.to_string(),
        format!(
            "{}: row 2: field `answer` must be a string, found null",
            path.display()
        )
    );
    // Without the mapping the default names are looked for, and listed.
    let err = examples(
        &file(&path, DatasetFormat::Parquet, DatasetFields::default()),
        StageKind::Sft,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("row 1: field `prompt` is missing (a sft dataset needs prompt, response)"),
        "{err}"
    );
    // A file that is not Parquet.
    let text = dir.join("text.parquet");
    std::fs::write(&text, "{\"prompt\": \"x\"}\n").unwrap();
    let err = examples(
        &file(&text, DatasetFormat::Parquet, DatasetFields::default()),
        StageKind::Sft,
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string()
            .starts_with(&format!("{}: parquet: ", text.display())),
        "{err}"
    );

    // JSONL maps its fields the same way.
    let jsonl = dir.join("pairs.jsonl");
    std::fs::write(
        &jsonl,
        "{\"question\": \"q\", \"good\": \"a\", \"bad\": \"b\"}\n",
    )
    .unwrap();
    let fields = DatasetFields {
        prompt: Some("question".into()),
        chosen: Some("good".into()),
        rejected: Some("bad".into()),
        ..DatasetFields::default()
    };
    assert_eq!(
        examples(&file(&jsonl, DatasetFormat::Jsonl, fields), StageKind::Dpo).unwrap(),
        [Example::Preference {
            prompt: "q".into(),
            chosen: "a".into(),
            rejected: "b".into()
        }]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_parquet_dataset_trains_through_rlhf_trainer_local() {
    let dir = scratch("datasets-local");
    let prompts: Vec<String> = (0..16).map(|i| format!("copy: {i} =>")).collect();
    let answers: Vec<String> = (0..16).map(|i| format!(" {i}")).collect();
    write_parquet(
        &dir.join("train.parquet"),
        &[
            (
                "question",
                prompts.iter().map(|s| Some(s.as_str())).collect(),
            ),
            ("answer", answers.iter().map(|s| Some(s.as_str())).collect()),
        ],
    );
    let stages = "\n    - name: sft\n      kind: sft\n      dataset: {path: train.parquet, fields: {prompt: question, response: answer}}\n      \
                  training: {batchSize: 4, microBatchSize: 2, maxSteps: 2, maxLength: 24}\n";
    let (out, _) = run_local(&dir, "parquet", &tiny_job("parquet", "{}", stages));
    let log = std::fs::read_to_string(out.join("sft/metrics.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"step\":2")), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_rows_tokenize_as_apply_chat_template_and_learn_assistant_turns_only() {
    let dir = scratch("datasets-chat");
    let conversation = json!([
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "8"},
    ]);
    let cases = json!([{"messages": conversation, "generation": false}]);
    let (folder, expected) = chat_reference(&dir, CHATML_STYLE, "", "<|im_end|>", &cases);
    let template = ChatTemplate::from_folder(&folder).unwrap().unwrap();
    let tok = Tokenizer::from_folder(&folder).unwrap().rendered();

    let jsonl = dir.join("chat.jsonl");
    let row = json!({"conversation": conversation, "prompt_list": [{"role": "user", "content": "2+2?"}],
                     "good": [{"role": "assistant", "content": "4"}], "bad": [{"role": "assistant", "content": "5"}]});
    std::fs::write(&jsonl, format!("{row}\n")).unwrap();
    let fields = DatasetFields {
        messages: Some("conversation".into()),
        prompt: Some("prompt_list".into()),
        chosen: Some("good".into()),
        rejected: Some("bad".into()),
        ..DatasetFields::default()
    };
    let dataset = file(&jsonl, DatasetFormat::Jsonl, fields);
    let sft = load(&dataset, StageKind::Sft, Some(&template)).unwrap();
    assert!(sft.rendered);
    assert_eq!(sft.examples.len(), 2, "one example per assistant turn");
    let Example::Sft { prompt, response } = &sft.examples[1] else {
        panic!("{:?}", sft.examples[1])
    };
    assert_eq!(
        response, "8<|im_end|>\n",
        "the last turn's response is its text alone"
    );
    let (ids, prompt_len) = join(&tok, prompt, response, 512).unwrap();
    let ids: Vec<Value> = ids.into_iter().map(Value::from).collect();
    assert_eq!(
        Value::Array(ids.clone()),
        expected[0]["ids"],
        "token ids of apply_chat_template"
    );
    let learned: Vec<u32> = ids[prompt_len..]
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        tok.decode(&learned).unwrap(),
        "8<|im_end|>\n",
        "only the assistant turn is learned"
    );

    let dpo = load(&dataset, StageKind::Dpo, Some(&template))
        .unwrap()
        .examples;
    let Example::Preference {
        prompt,
        chosen,
        rejected,
    } = &dpo[0]
    else {
        panic!("{dpo:?}")
    };
    assert!(
        prompt.ends_with("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"),
        "{prompt}"
    );
    assert_eq!(
        (chosen.as_str(), rejected.as_str()),
        ("4<|im_end|>\n", "5<|im_end|>\n")
    );
    let rl = load(&dataset, StageKind::Grpo, Some(&template))
        .unwrap()
        .examples;
    assert!(matches!(&rl[0], Example::Prompt { prompt: p, .. } if p == prompt));

    // A conversation without a template, and a message without content, name row and column.
    let err = load(&dataset, StageKind::Sft, None).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains(":1: field `conversation` is a conversation, but the tokenizer folder has no chat template"), "{err}");
    std::fs::write(&jsonl, "{\"conversation\": [{\"role\": \"user\"}]}\n").unwrap();
    let err = load(&dataset, StageKind::Sft, Some(&template)).unwrap_err();
    assert!(
        err.to_string()
            .ends_with(":1: field `conversation` message 0 needs string `role` and `content`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
