//! Datasets: JSON-lines and Parquet files (rows.rs) and built-in synthetic tasks, as examples of
//! the shape a stage needs (SFT pairs, preference triples, or prompts), with the file's column
//! names mapped by `dataset.fields`. Bad rows are errors naming file, line or row, and field: a
//! dataset is fixed input, so these are permanent (exit code 2).
use std::path::Path;

mod chat;
mod rows;

use rlhf_spec::{DatasetFields, DatasetFormat, ResolvedDataset, StageKind, SyntheticTask};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::tokenizer::chat::ChatTemplate;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Example {
    /// SFT: learn `response` after `prompt`.
    Sft { prompt: String, response: String },
    /// RM and DPO: `chosen` is preferred over `rejected` after `prompt`.
    Preference {
        prompt: String,
        chosen: String,
        rejected: String,
    },
    /// RL kinds: a prompt to generate from; `reference` is a good answer when the task knows one
    /// (the `exactAnswer` reward compares with it).
    Prompt {
        prompt: String,
        reference: Option<String>,
    },
}

/// Which example shape a stage kind trains on.
fn needed(kind: StageKind) -> &'static [&'static str] {
    match kind {
        StageKind::Sft => &["prompt", "response"],
        StageKind::Rm | StageKind::Dpo => &["prompt", "chosen", "rejected"],
        StageKind::Ppo | StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce => &["prompt"],
    }
}

/// A stage's examples; `rendered` when chat rows were rendered by the chat template (their text
/// carries the template's special tokens: tokenize it without adding any).
#[derive(Debug)]
pub struct Dataset {
    pub examples: Vec<Example>,
    pub rendered: bool,
}

/// The examples of `dataset` for a stage of `kind`; chat rows need `template`.
pub fn load(
    dataset: &ResolvedDataset,
    kind: StageKind,
    template: Option<&ChatTemplate>,
) -> Result<Dataset> {
    match dataset {
        ResolvedDataset::File {
            path,
            format,
            fields,
        } => load_file(Path::new(path), *format, fields, kind, template),
        ResolvedDataset::Synthetic {
            task,
            samples,
            seed,
        } => Ok(Dataset {
            examples: synthetic(*task, *samples as usize, *seed, kind),
            rendered: false,
        }),
    }
}

/// JSON lines (blank lines skipped) with the JSONL field names, no chat rows.
pub fn load_jsonl(path: &Path, kind: StageKind) -> Result<Vec<Example>> {
    let fields = DatasetFields::default();
    Ok(load_file(path, DatasetFormat::Jsonl, &fields, kind, None)?.examples)
}

/// The examples of a dataset file, its columns named by `fields` where they differ.
pub fn load_file(
    path: &Path,
    format: DatasetFormat,
    fields: &DatasetFields,
    kind: StageKind,
    template: Option<&ChatTemplate>,
) -> Result<Dataset> {
    let mut out = Dataset {
        examples: Vec::new(),
        rendered: false,
    };
    for row in rows::read(path, format)? {
        let (examples, rendered) = examples(&row, fields, kind, template)?;
        out.examples.extend(examples);
        out.rendered |= rendered;
    }
    if out.examples.is_empty() {
        return Err(Error::invalid(path, "the dataset has no examples"));
    }
    Ok(out)
}

/// The examples of one row (several for a conversation with several assistant turns), and
/// whether a chat template rendered them; errors name the row and the file's column.
fn examples(
    row: &rows::Row,
    fields: &DatasetFields,
    kind: StageKind,
    template: Option<&ChatTemplate>,
) -> Result<(Vec<Example>, bool)> {
    let at = |message: String| Error::invalid(&row.at, message);
    let cell = |name: &'static str| {
        let column = fields.column(name);
        (column, row.value.get(column))
    };
    let field = |name: &'static str| -> Result<String> {
        match cell(name) {
            (_, Some(Value::String(s))) => Ok(s.clone()),
            (column, Some(other)) => Err(at(format!(
                "field `{column}` must be a string, found {}",
                json_type(other)
            ))),
            (column, None) => Err(at(format!(
                "field `{column}` is missing (a {} dataset needs {})",
                kind.as_str(),
                needed(kind)
                    .iter()
                    .map(|f| fields.column(f))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    };
    // A conversation cell (a list) makes the row a chat row, rendered by the template.
    let conversation = |name: &'static str| match cell(name) {
        (column, Some(v @ Value::Array(_))) => Some((column, v)),
        _ => None,
    };
    let chat_cell = match kind {
        StageKind::Sft => conversation("messages"),
        StageKind::Rm | StageKind::Dpo => conversation("chosen"),
        _ => conversation("prompt").or_else(|| conversation("messages")),
    };
    if let Some((column, value)) = chat_cell {
        let template = template.ok_or_else(|| {
            at(format!(
                "field `{column}` is a conversation, but the tokenizer folder has no chat template \
                 (chat_template.jinja or tokenizer_config.json's chat_template)"
            ))
        })?;
        let examples = match kind {
            StageKind::Sft => chat::sft(row, column, value, template)?,
            StageKind::Rm | StageKind::Dpo => {
                let rejected = conversation("rejected").ok_or_else(|| {
                    at(format!(
                        "field `{}` must be a conversation like `{column}`",
                        fields.column("rejected")
                    ))
                })?;
                vec![chat::preference(
                    row,
                    conversation("prompt"),
                    (column, value),
                    rejected,
                    template,
                )?]
            }
            _ => vec![Example::Prompt {
                prompt: chat::prompt(row, column, value, template)?,
                reference: field("reference").ok(),
            }],
        };
        return Ok((examples, true));
    }
    let example = match kind {
        StageKind::Sft => Example::Sft {
            prompt: field("prompt")?,
            response: field("response")?,
        },
        StageKind::Rm | StageKind::Dpo => Example::Preference {
            prompt: field("prompt")?,
            chosen: field("chosen")?,
            rejected: field("rejected")?,
        },
        StageKind::Ppo | StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce => {
            Example::Prompt {
                prompt: field("prompt")?,
                reference: field("reference").ok(),
            }
        }
    };
    Ok((vec![example], false))
}

/// Most held-out examples a stage evaluates on.
const MAX_HELD_OUT: usize = 256;

/// Splits off the last eighth of the examples (at most 256) for held-out evaluation. A dataset
/// of fewer than 8 examples keeps them all for training and is evaluated on them.
pub fn split_held_out(mut examples: Vec<Example>) -> (Vec<Example>, Vec<Example>) {
    if examples.len() < 8 {
        return (examples.clone(), examples);
    }
    let held = (examples.len() / 8).min(MAX_HELD_OUT);
    let held_out = examples.split_off(examples.len() - held);
    (examples, held_out)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const WORDS: &[&str] = &[
    "cat", "dog", "owl", "fox", "bee", "cow", "elk", "yak", "ant", "bat", "eel", "hen",
];

/// Examples of a synthetic task whose answers are checkable: copy the words, or add the numbers.
pub fn synthetic(task: SyntheticTask, samples: usize, seed: u64, kind: StageKind) -> Vec<Example> {
    let mut rng = SplitMix64(seed);
    (0..samples)
        .map(|_| {
            let (prompt, good, bad) = match task {
                SyntheticTask::Copy => {
                    let n = 2 + rng.below(3) as usize;
                    let words: Vec<&str> = (0..n)
                        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                        .collect();
                    let wrong: Vec<&str> = (0..n)
                        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
                        .collect();
                    (
                        format!("copy: {} =>", words.join(" ")),
                        format!(" {}.", words.join(" ")),
                        format!(" {}.", wrong.join(" ")),
                    )
                }
                SyntheticTask::Arithmetic => {
                    // Single digits: 100 problems a tiny model can learn on a CPU in a minute
                    // (with operands up to 49 it memorised sums and RL could not generalise).
                    let (a, b) = (rng.below(10), rng.below(10));
                    let off = 1 + rng.below(9);
                    (
                        format!("{a}+{b}="),
                        format!("{}.", a + b),
                        format!("{}.", a + b + off),
                    )
                }
            };
            let bad = if bad == good {
                format!("{bad} no")
            } else {
                bad
            };
            match kind {
                StageKind::Sft => Example::Sft {
                    prompt,
                    response: good,
                },
                StageKind::Rm | StageKind::Dpo => Example::Preference {
                    prompt,
                    chosen: good,
                    rejected: bad,
                },
                StageKind::Ppo | StageKind::Grpo | StageKind::Rloo | StageKind::Reinforce => {
                    Example::Prompt {
                        prompt,
                        reference: Some(good),
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("rlhf-data-{}-{name}.jsonl", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_each_kind_and_skips_blank_lines() {
        let path = write(
            "ok",
            "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n\n{\"prompt\": \"q\", \"chosen\": \"c\", \"rejected\": \"d\"}\n",
        );
        let got = load_jsonl(&path, StageKind::Rm).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Example::Preference {
                prompt: "q".into(),
                chosen: "c".into(),
                rejected: "d".into()
            }
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let path = write(
            "bad",
            "{\"prompt\": \"p\", \"response\": \"r\"}\n{\"prompt\": \"p\", \"response\": 3}\n",
        );
        let err = load_jsonl(&path, StageKind::Sft).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: field `response` must be a string, found a number",
                path.display()
            )
        );
        assert_eq!(err.exit_code(), 2);
        let path = write("missing", "{\"prompt\": \"p\"}\n");
        let err = load_jsonl(&path, StageKind::Dpo).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:1: field `chosen` is missing (a dpo dataset needs prompt, chosen, rejected)",
                path.display()
            )
        );
        let path = write("notjson", "{\"prompt\": \n");
        assert!(
            load_jsonl(&path, StageKind::Ppo)
                .unwrap_err()
                .to_string()
                .starts_with(&format!("{}:1: not JSON", path.display()))
        );
    }

    #[test]
    fn an_eighth_is_held_out_and_tiny_sets_evaluate_on_themselves() {
        let (train, held) = split_held_out(synthetic(SyntheticTask::Copy, 64, 0, StageKind::Sft));
        assert_eq!((train.len(), held.len()), (56, 8));
        assert_eq!(
            held,
            synthetic(SyntheticTask::Copy, 64, 0, StageKind::Sft)[56..].to_vec()
        );
        let (_, held) = split_held_out(synthetic(SyntheticTask::Copy, 4000, 0, StageKind::Sft));
        assert_eq!(held.len(), 256);
        let (train, held) = split_held_out(synthetic(SyntheticTask::Copy, 5, 0, StageKind::Sft));
        assert_eq!((train.len(), held), (5, train));
    }

    #[test]
    fn synthetic_tasks_are_seeded_and_checkable() {
        let a = synthetic(SyntheticTask::Arithmetic, 5, 3, StageKind::Rm);
        assert_eq!(a, synthetic(SyntheticTask::Arithmetic, 5, 3, StageKind::Rm));
        assert_ne!(a, synthetic(SyntheticTask::Arithmetic, 5, 4, StageKind::Rm));
        for ex in &a {
            let Example::Preference {
                prompt,
                chosen,
                rejected,
            } = ex
            else {
                panic!("preference examples")
            };
            let (x, y) = prompt.trim_end_matches('=').split_once('+').unwrap();
            let sum: u64 = x.parse::<u64>().unwrap() + y.parse::<u64>().unwrap();
            assert_eq!(chosen, &format!("{sum}."));
            assert_ne!(chosen, rejected);
        }
        let Example::Sft { prompt, response } =
            &synthetic(SyntheticTask::Copy, 1, 0, StageKind::Sft)[0]
        else {
            panic!()
        };
        assert_eq!(
            prompt.trim_start_matches("copy: ").trim_end_matches(" =>"),
            response.trim().trim_end_matches('.')
        );
    }
}
