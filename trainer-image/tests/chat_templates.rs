//! Chat templates render as transformers' `apply_chat_template` does, to the same text and token
//! ids: three templates written here in the styles of Llama 3, ChatML (Qwen) and Gemma, using
//! the Jinja that real templates use (loops, conditionals, `set`, slicing, filters, Python string
//! methods, `raise_exception`, `strftime_now`, `add_generation_prompt`), saved by transformers
//! as a tokenizer folder's chat template; a template's `raise_exception` is an error naming it.
mod common;

use common::{CHATML_STYLE, chat_reference, scratch};
use rlhf_trainer::tokenizer::Tokenizer;
use rlhf_trainer::tokenizer::chat::ChatTemplate;
use serde_json::{Value, json};

const LLAMA3_STYLE: &str = r#"{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "Today Date: " + strftime_now("%d %b %Y") %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" + system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception("Only user and assistant turns may follow the system message") }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

const GEMMA_STYLE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") + message['content'] | trim + '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"#;

fn cases() -> Value {
    let conversation = json!([
        {"role": "system", "content": "  Answer briefly.  "},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": " 5 "},
        {"role": "user", "content": "And 4 + 4?"},
        {"role": "assistant", "content": "8"},
    ]);
    json!([
        {"messages": conversation, "generation": false},
        {"messages": [{"role": "user", "content": "copy: red blue =>"}], "generation": true},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "generation": false},
        {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "generation": true},
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "generation": true},
    ])
}

/// transformers renders and tokenizes every case with `template`; so do we, and must agree.
fn agrees_with_transformers(name: &str, template: &str, bos: &str, eos: &str) {
    let dir = scratch(&format!("chat-{name}"));
    let cases = cases();
    let (folder, expected) = chat_reference(&dir, template, bos, eos, &cases);
    let chat = ChatTemplate::from_folder(&folder)
        .unwrap()
        .expect("transformers saved the template");
    let tok = Tokenizer::from_folder(&folder).unwrap();
    let mut rendered = 0;
    for (case, reference) in cases.as_array().unwrap().iter().zip(&expected) {
        let ours = chat.render(&case["messages"], case["generation"].as_bool().unwrap());
        match reference.get("error") {
            Some(message) => {
                let err = ours.expect_err("transformers raised");
                assert_eq!(err.exit_code(), 2);
                assert!(
                    err.to_string().contains(message.as_str().unwrap()),
                    "{name}: {err} vs {message}"
                );
            }
            None => {
                let text = ours.unwrap();
                assert_eq!(text, reference["text"].as_str().unwrap(), "{name}: text");
                let ids: Vec<Value> = tok
                    .encode_continuation(&text)
                    .unwrap()
                    .into_iter()
                    .map(Value::from)
                    .collect();
                assert_eq!(Value::Array(ids), reference["ids"], "{name}: ids");
                rendered += 1;
            }
        }
    }
    println!("{name}: {rendered} conversations render and tokenize as in transformers");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn llama3_style_template_matches_transformers() {
    agrees_with_transformers("llama3", LLAMA3_STYLE, "<|begin_of_text|>", "<|eot_id|>");
}

#[test]
fn chatml_style_template_matches_transformers() {
    agrees_with_transformers("chatml", CHATML_STYLE, "", "<|im_end|>");
}

#[test]
fn gemma_style_template_matches_transformers() {
    agrees_with_transformers("gemma", GEMMA_STYLE, "<bos>", "<eos>");
}

#[test]
fn a_folder_without_a_template_has_none() {
    let dir = scratch("chat-none");
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "</s>"}"#,
    )
    .unwrap();
    assert!(ChatTemplate::from_folder(&dir).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
