//! Chat rows: message lists (`[{role, content}, ...]`) rendered with the tokenizer folder's chat
//! template into the text examples the stages train on. The rendered text carries the
//! template's special tokens, so it is tokenized without adding any (Tokenizer::rendered).
//! - SFT `messages`: one example per assistant turn, its prompt the conversation before it with
//!   the generation prompt, its response the text that turn adds: the loss falls on assistant
//!   turns only, each once.
//! - RM/DPO `chosen`/`rejected` (and an optional `prompt` list before them): the last message
//!   of each is the assistant's answer.
//! - RL `prompt` (or `messages`): the conversation with the generation prompt.
use serde_json::Value;

use super::Example;
use super::rows::Row;
use crate::error::{Error, Result};
use crate::tokenizer::chat::ChatTemplate;

/// A conversation cell: checked to be a list of objects with string `role` and `content`.
fn conversation<'a>(row: &Row, column: &str, value: &'a Value) -> Result<&'a [Value]> {
    let bad = |why: &str| Error::invalid(&row.at, format!("field `{column}` {why}"));
    let list = value
        .as_array()
        .ok_or_else(|| bad("must be a list of messages"))?;
    for (i, m) in list.iter().enumerate() {
        if !(m["role"].is_string() && m["content"].is_string()) {
            return Err(bad(&format!(
                "message {i} needs string `role` and `content`"
            )));
        }
    }
    Ok(list)
}

/// The text `messages[..=last]` adds to the rendering of `messages[..last]` with the generation
/// prompt: (prompt, response). Templates that do not render a conversation as a prefix of its
/// continuation cannot be split into turns.
fn split_turn(
    row: &Row,
    template: &ChatTemplate,
    messages: &[Value],
    last: usize,
) -> Result<(String, String)> {
    let prompt = template.render(&Value::from(&messages[..last]), true)?;
    let full = template.render(&Value::from(&messages[..=last]), false)?;
    match full.strip_prefix(&prompt) {
        Some(response) => Ok((prompt, response.to_string())),
        None => Err(Error::invalid(
            &row.at,
            format!(
                "the chat template does not render message {last} as a continuation of the \
                 messages before it (with the generation prompt), so its turn cannot be learned alone"
            ),
        )),
    }
}

fn assistant_last(row: &Row, column: &str, messages: &[Value]) -> Result<usize> {
    match messages.last() {
        Some(m) if m["role"] == "assistant" => Ok(messages.len() - 1),
        _ => Err(Error::invalid(
            &row.at,
            format!("field `{column}` must end with an assistant message"),
        )),
    }
}

/// SFT examples of a conversation: one per assistant turn.
pub fn sft(row: &Row, column: &str, cell: &Value, template: &ChatTemplate) -> Result<Vec<Example>> {
    let messages = conversation(row, column, cell)?;
    let turns: Vec<usize> = (0..messages.len())
        .filter(|&i| messages[i]["role"] == "assistant")
        .collect();
    if turns.is_empty() {
        return Err(Error::invalid(
            &row.at,
            format!("field `{column}` has no assistant message to learn"),
        ));
    }
    turns
        .into_iter()
        .map(|i| {
            let (prompt, response) = split_turn(row, template, messages, i)?;
            Ok(Example::Sft { prompt, response })
        })
        .collect()
}

/// A preference pair: `prompt` messages (may be absent) followed by each answer's messages.
pub fn preference(
    row: &Row,
    prompt: Option<(&str, &Value)>,
    chosen: (&str, &Value),
    rejected: (&str, &Value),
    template: &ChatTemplate,
) -> Result<Example> {
    let before = match prompt {
        Some((column, cell)) => conversation(row, column, cell)?.to_vec(),
        None => Vec::new(),
    };
    let answer = |(column, cell): (&str, &Value)| -> Result<(String, String)> {
        let mut messages = before.clone();
        messages.extend_from_slice(conversation(row, column, cell)?);
        let last = assistant_last(row, column, &messages)?;
        split_turn(row, template, &messages, last)
    };
    let (prompt, chosen) = answer(chosen)?;
    let (other_prompt, rejected) = answer(rejected)?;
    if prompt != other_prompt {
        return Err(Error::invalid(
            &row.at,
            "chosen and rejected must answer the same conversation",
        ));
    }
    Ok(Example::Preference {
        prompt,
        chosen,
        rejected,
    })
}

/// An RL prompt: the conversation with the assistant's generation prompt.
pub fn prompt(row: &Row, column: &str, cell: &Value, template: &ChatTemplate) -> Result<String> {
    template.render(&Value::from(conversation(row, column, cell)?), true)
}
