//! Helpers of the tests that compare with Hugging Face transformers (through tests/hf_reference.py).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

pub fn python() -> PathBuf {
    std::env::var_os("RLHF_TORCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        panic!("RLHF_TORCH_PYTHON is not set: run `make test`, or point it at the python of scripts/install-torch.sh's environment")
    })
}

pub fn run_reference(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hf_reference.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("running the python reference");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "hf_reference.py {args:?} failed:\n{text}"
    );
    text
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rlhf-parity-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn reference_batch(dir: &Path) -> (Tensor, Tensor, Tensor) {
    let mut tensors: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut take = |name: &str| {
        tensors
            .remove(name)
            .unwrap_or_else(|| panic!("reference has {name}"))
    };
    (take("input_ids"), take("attention_mask"), take("logits"))
}

/// Greedy decoding of `n` tokens, no EOS, padding id 0.
pub fn greedy(n: i64) -> rlhf_trainer::generation::SamplingParams {
    rlhf_trainer::generation::SamplingParams {
        max_new_tokens: n,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        eos_token_id: None,
        pad_token_id: 0,
        row_seeds: Vec::new(),
    }
}

/// Reads one tensor of a safetensors file.
pub fn read_tensor(file: &Path, name: &str) -> Tensor {
    let mut all: BTreeMap<String, Tensor> = Tensor::read_safetensors(file)
        .unwrap()
        .into_iter()
        .collect();
    all.remove(name)
        .unwrap_or_else(|| panic!("{} has no {name}", file.display()))
}

/// GPT-2's original encoder.json and vocab.bpe, as shipped in the tiktoken-rs crate we build with.
pub fn gpt2_files() -> (PathBuf, PathBuf) {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .output()
        .unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata output");
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tiktoken-rs")
        .expect("tiktoken-rs in the build")["manifest_path"]
        .as_str()
        .unwrap()
        .to_string();
    let assets = Path::new(&manifest).parent().unwrap().join("assets");
    (assets.join("encoder.json"), assets.join("vocab.bpe"))
}

/// An RLHFJob manifest on a random 1-layer Llama (quick on a CPU) with `parallelism` (a YAML flow
/// mapping) and `stages` (YAML list items indented by 4).
pub fn tiny_job(name: &str, parallelism: &str, stages: &str) -> String {
    format!(
        "apiVersion: rlhf.dev/v1alpha1\nkind: RLHFJob\nmetadata: {{name: {name}}}\nspec:\n  image: unused\n  model:\n    family: llama\n    \
         init: random\n    architecture: {{vocabSize: 50257, hiddenSize: 32, numLayers: 1, numHeads: 4, numKvHeads: 2, maxPositions: 64}}\n  \
         parallelism: {parallelism}\n  stages:{stages}"
    )
}

/// `rlhf-trainer local MANIFEST <flag> FOLDER` (flag `--output` or `--resume`), not yet run.
pub fn local(manifest: &Path, flag: &str, folder: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlhf-trainer"));
    c.args([
        "local",
        manifest.to_str().unwrap(),
        flag,
        folder.to_str().unwrap(),
    ]);
    c
}

/// Writes `manifest` as `<dir>/<name>.yaml` and runs it into `<dir>/<name>`, which must succeed;
/// returns that folder and what the run printed.
pub fn run_local(dir: &Path, name: &str, manifest: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, manifest).unwrap();
    let out = dir.join(name);
    let result = local(&path, "--output", &out).output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(
        result.status.success(),
        "{name}: {stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    (out, stdout)
}

/// transformers saves a tokenizer folder `<dir>/tokenizer` with `template` (written to
/// `<dir>/template.jinja`) as its chat template and BOS/EOS as given ("" for none), and renders
/// each case `{"messages", "generation"}`: returns the folder and, per case, `{"text", "ids"}`
/// or `{"error"}` (hf_reference.py chat).
pub fn chat_reference(
    dir: &Path,
    template: &str,
    bos: &str,
    eos: &str,
    cases: &serde_json::Value,
) -> (PathBuf, Vec<serde_json::Value>) {
    let file = dir.join("template.jinja");
    std::fs::write(&file, template).unwrap();
    let folder = dir.join("tokenizer");
    let said = run_reference(&[
        "chat",
        folder.to_str().unwrap(),
        file.to_str().unwrap(),
        bos,
        eos,
        &cases.to_string(),
    ]);
    let expected = serde_json::from_str(said.lines().last().unwrap()).unwrap();
    (folder, expected)
}

/// A chat template in the style of ChatML (Qwen): loops, `loop.first`, attribute access,
/// Python's `.strip()`, a default system turn and the generation prompt.
pub const CHATML_STYLE: &str = r#"{%- for message in messages %}
    {%- if loop.first and message.role != 'system' %}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\n' + message.content.strip() + '<|im_end|>' + '\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;
