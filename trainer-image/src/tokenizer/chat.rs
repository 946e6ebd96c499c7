//! A tokenizer folder's chat template (Jinja), rendered as transformers' `apply_chat_template`
//! renders it: the template of `chat_template.jinja` or of `tokenizer_config.json`'s
//! `chat_template` (a string, or a list of named templates of which `default` is taken), with
//! `messages`, `add_generation_prompt`, `bos_token` and `eos_token`, the functions real templates
//! call (`raise_exception`, `strftime_now`), Python's string methods (`.strip()`, ...), and
//! Jinja's block trimming as transformers sets it. Rendered by minijinja.
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

const TEMPLATE_FILE: &str = "chat_template.jinja";
const CONFIG_FILE: &str = "tokenizer_config.json";

#[derive(Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    /// The file the template came from, for errors.
    origin: PathBuf,
}

/// A special token of tokenizer_config.json: a string or an AddedToken object's `content`.
fn special_token(config: &Value, key: &str) -> String {
    match &config[key] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// The chat template of the tokenizer folder `dir`; None when it has none.
    pub fn from_folder(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join(CONFIG_FILE);
        let config: Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::parse(&config_path, &e))?,
            Err(_) => Value::Null,
        };
        let file = dir.join(TEMPLATE_FILE);
        let (source, origin) = if file.is_file() {
            let text = std::fs::read_to_string(&file).map_err(|source| Error::Read {
                path: file.clone(),
                source,
            })?;
            (text, file)
        } else {
            match named_template(&config["chat_template"], &config_path)? {
                Some(text) => (text, config_path),
                None => return Ok(None),
            }
        };
        Ok(Some(Self {
            source,
            bos_token: special_token(&config, "bos_token"),
            eos_token: special_token(&config, "eos_token"),
            origin,
        }))
    }

    /// The text of `messages` (a list of `{role, content}` objects), ending with the prompt of
    /// the assistant's next turn when `add_generation_prompt`. A template's
    /// `raise_exception(...)` or a syntax error is bad input naming the template's file.
    pub fn render(&self, messages: &Value, add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks on.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_function("strftime_now", |format: String| {
            chrono::Local::now().format(&format).to_string()
        });
        let bad = |e: minijinja::Error| {
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            Error::invalid(&self.origin, format!("chat template: {detail}"))
        };
        let template = env.template_from_str(&self.source).map_err(bad)?;
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(bad)
    }
}

/// tokenizer_config.json's `chat_template`: a string, or `[{name, template}]` of which the one
/// named `default` is used.
fn named_template(value: &Value, origin: &Path) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(|t| Some(t.to_string()))
            .ok_or_else(|| {
                Error::invalid(origin, "chat_template lists no template named \"default\"")
            }),
        _ => Err(Error::invalid(
            origin,
            "chat_template must be a string or a list of named templates",
        )),
    }
}
