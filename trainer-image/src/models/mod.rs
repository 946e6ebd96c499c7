//! Model families, one file each, with Hugging Face weight names by construction.
pub mod bloom;
pub mod common;
pub mod decoder;
pub mod gemma;
pub mod gpt2;
pub mod heads;
pub mod hf;
pub mod llama;
pub mod lora;
pub mod mistral;
pub mod opt;
pub mod projection;
pub mod qwen;
pub mod recompute;
pub mod rope;

use std::path::Path;

use tch::{Device, Tensor, nn};

pub use common::KvCache;

use crate::error::{Error, Result};

/// What every family offers the algorithms: a forward pass with a KV cache, the LM head, and
/// saving as an HF folder. Full-sequence calls are the same forward with a fresh cache.
pub trait CausalLm: std::fmt::Debug {
    /// Final hidden states (B, T, C) of `input_ids` (B, T); `attention_mask` (B, S) covers the
    /// cached positions and the new ones (1 = token, 0 = padding). Appends to `cache`.
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Tensor;
    /// Next-token logits (B, T, V) of hidden states.
    fn lm_head(&self, hidden: &Tensor) -> Tensor;
    /// The config.json of a saved folder (HF names, `architectures` the causal-LM class).
    fn hf_config(&self) -> serde_json::Value;
    /// Width of the hidden states (what value and reward heads read).
    fn hidden_size(&self) -> i64;
    /// The blocks' linear projections (where LoRA adapters go).
    fn projections(&self) -> Vec<&projection::Projection>;
    /// Turns activation checkpointing of training forwards on or off (recompute.rs).
    fn set_checkpointing(&self, on: bool);
    /// Completes the backward pass of checkpointed forwards; call right after `loss.backward()`.
    fn finish_backward(&self);

    /// Writes `vs` (this model's variables) as a plain Hugging Face folder with weights in
    /// `dtype`: LoRA adapters are merged into their weights.
    fn save(&self, vs: &nn::VarStore, dir: &Path, dtype: tch::Kind) -> Result<()> {
        hf::write_folder(
            dir,
            &self.hf_config(),
            &lora::merged_tensors(vs, &self.projections()),
            dtype,
        )
    }

    /// Switches every LoRA adapter on or off (off: the base model, e.g. PPO's reference).
    fn set_adapters(&self, on: bool) {
        for p in self.projections() {
            p.set_adapter_enabled(on);
        }
    }

    /// Final hidden states (B, T, C) of a whole sequence (heads for values and rewards read these).
    fn hidden_states(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        let ones;
        let mask = match attention_mask {
            Some(m) => m,
            None => {
                ones = input_ids.ones_like();
                &ones
            }
        };
        self.forward(input_ids, mask, &mut KvCache::default())
    }

    /// Next-token logits (B, T, V) of a whole sequence, in fp32 whatever the weights' dtype.
    fn logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        self.lm_head(&self.hidden_states(input_ids, attention_mask))
            .to_kind(tch::Kind::Float)
    }
}

/// The `model_type`s whose folders load (config.json), in the order errors list them.
pub const MODEL_TYPES: [&str; 9] = [
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "opt",
    "bloom",
];

/// The shared decoder's spec for a rotary family's config; None for other model types.
fn decoder_spec(
    model_type: &str,
    config: &serde_json::Value,
    origin: &Path,
) -> Option<Result<decoder::DecoderSpec>> {
    Some(match model_type {
        "llama" => llama::spec(config, origin),
        "mistral" => mistral::spec(config, origin),
        "qwen2" => qwen::spec(config, origin, qwen::Generation::Qwen2),
        "qwen3" => qwen::spec(config, origin, qwen::Generation::Qwen3),
        "gemma2" => gemma::spec(config, origin, gemma::Generation::Gemma2),
        "gemma3_text" => gemma::spec(config, origin, gemma::Generation::Gemma3),
        _ => return None,
    })
}

/// config.json's `model_type` of the folder `dir`.
pub fn model_type(dir: &Path) -> Result<String> {
    let config: serde_json::Value = hf::read_config(dir)?;
    config_model_type(&config, &dir.join(hf::CONFIG_FILE)).map(str::to_string)
}

fn config_model_type<'a>(config: &'a serde_json::Value, origin: &Path) -> Result<&'a str> {
    config["model_type"]
        .as_str()
        .ok_or_else(|| Error::invalid(origin, "model_type is missing"))
}

/// Checks that the folder `dir` holds the family the job names (when it names one).
pub fn check_family(dir: &Path, family: Option<rlhf_spec::ModelFamily>) -> Result<()> {
    let Some(family) = family else {
        return Ok(());
    };
    let found = model_type(dir)?;
    if found == family.model_type() {
        return Ok(());
    }
    Err(Error::invalid(
        dir.join(hf::CONFIG_FILE),
        format!(
            "model_type {found:?} disagrees with the job's model.family {:?}",
            family.model_type()
        ),
    ))
}

/// Loads any supported HF causal-LM folder, choosing the family from config.json's model_type.
pub fn load_causal_lm(dir: &Path, device: Device) -> Result<(nn::VarStore, Box<dyn CausalLm>)> {
    let config: serde_json::Value = hf::read_config(dir)?;
    let origin = dir.join(hf::CONFIG_FILE);
    let kind = config_model_type(&config, &origin)?;
    match kind {
        "gpt2" => return gpt2::Gpt2::load(dir, device).map(|(vs, m)| (vs, boxed(m))),
        "opt" => return opt::Opt::load(dir, device).map(|(vs, m)| (vs, boxed(m))),
        "bloom" => return bloom::Bloom::load(dir, device).map(|(vs, m)| (vs, boxed(m))),
        _ => {}
    }
    if kind == "gemma3" {
        return Err(Error::invalid(
            origin,
            "model_type \"gemma3\" is Gemma 3's multimodal model; save its language model \
             (Gemma3ForCausalLM, model_type \"gemma3_text\") to train it here",
        ));
    }
    match decoder_spec(kind, &config, &origin) {
        Some(spec) => {
            let (vs, model) = decoder::Decoder::load(dir, device, spec?, config)?;
            Ok((vs, Box::new(model)))
        }
        None => Err(unsupported(kind, &origin)),
    }
}

fn boxed(model: impl CausalLm + 'static) -> Box<dyn CausalLm> {
    Box::new(model)
}

/// A randomly initialised model of `family` with the inline architecture of an RLHFJob.
pub fn random_causal_lm(
    family: rlhf_spec::ModelFamily,
    arch: &rlhf_spec::Architecture,
    vs: &nn::VarStore,
) -> Result<Box<dyn CausalLm>> {
    let (vocab, hidden, layers, heads) = (
        i64::from(arch.vocab_size),
        i64::from(arch.hidden_size),
        i64::from(arch.num_layers),
        i64::from(arch.num_heads),
    );
    let origin = Path::new("<model.architecture>");
    let config = match family {
        rlhf_spec::ModelFamily::Gpt2 => serde_json::json!({
            "model_type": "gpt2",
            "vocab_size": vocab, "n_positions": arch.max_positions, "n_embd": hidden, "n_layer": layers, "n_head": heads,
            "n_inner": arch.intermediate_size,
        }),
        rlhf_spec::ModelFamily::Opt => serde_json::json!({
            "architectures": [architecture(family)],
            "model_type": "opt",
            "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "ffn_dim": arch.intermediate_size.map(i64::from).unwrap_or(4 * hidden),
            "max_position_embeddings": arch.max_positions, "word_embed_proj_dim": hidden,
            "do_layer_norm_before": true, "activation_function": "relu", "tie_word_embeddings": true,
        }),
        rlhf_spec::ModelFamily::Bloom => {
            // BLOOM's MLP is 4 x hidden by construction; its positions are ALiBi's (unbounded).
            if let Some(width) = arch
                .intermediate_size
                .filter(|w| i64::from(*w) != 4 * hidden)
            {
                return Err(Error::invalid(
                    origin,
                    format!("intermediateSize {width}: bloom's MLP is 4 x hiddenSize"),
                ));
            }
            serde_json::json!({
                "architectures": [architecture(family)],
                "model_type": "bloom",
                "vocab_size": vocab, "hidden_size": hidden, "n_layer": layers, "n_head": heads,
                "apply_residual_connection_post_layernorm": false, "tie_word_embeddings": true,
            })
        }
        _ => {
            let head_dim = hidden / heads.max(1);
            serde_json::json!({
                "architectures": [architecture(family)],
                "model_type": family.model_type(),
                "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                "num_key_value_heads": arch.num_kv_heads.map_or(heads, i64::from), "head_dim": head_dim,
                "max_position_embeddings": arch.max_positions,
                // The families' default MLP width: 8/3 x hidden, rounded up to a multiple of 64.
                "intermediate_size": arch.intermediate_size.map(i64::from).unwrap_or((8 * hidden / 3 + 63) / 64 * 64),
                // Gemma's query scale defaults to 256^-1/2; a random model uses the usual head_dim^-1/2.
                "query_pre_attn_scalar": head_dim,
                // A window as long as the context: sliding blocks see everything.
                "sliding_window": arch.max_positions,
            })
        }
    };
    causal_lm_from_config(&config, origin, vs)
}

/// A randomly initialised model (normal 0.02, as HF initialises) of an HF `config` (any
/// supported model_type; `origin` names it in errors).
pub fn causal_lm_from_config(
    config: &serde_json::Value,
    origin: &Path,
    vs: &nn::VarStore,
) -> Result<Box<dyn CausalLm>> {
    let kind = config_model_type(config, origin)?;
    match kind {
        "gpt2" => {
            let parsed = serde_json::from_value(config.clone())
                .map_err(|e| Error::invalid(origin, e.to_string()))?;
            return Ok(Box::new(gpt2::Gpt2::new(vs, parsed)?));
        }
        "opt" => return Ok(Box::new(opt::Opt::new(vs, config.clone(), origin)?)),
        "bloom" => return Ok(Box::new(bloom::Bloom::new(vs, config.clone(), origin)?)),
        _ => {}
    }
    match decoder_spec(kind, config, origin) {
        Some(spec) => Ok(Box::new(decoder::Decoder::new(vs, spec?, config.clone()))),
        None => Err(unsupported(kind, origin)),
    }
}

fn unsupported(kind: &str, origin: &Path) -> Error {
    Error::invalid(
        origin,
        format!(
            "model_type {kind:?} is not supported ({})",
            MODEL_TYPES.join(", ")
        ),
    )
}

/// The `*ForCausalLM` class transformers loads a family's folder with.
fn architecture(family: rlhf_spec::ModelFamily) -> &'static str {
    use rlhf_spec::ModelFamily as F;
    match family {
        F::Gpt2 => "GPT2LMHeadModel",
        F::Opt => "OPTForCausalLM",
        F::Bloom => "BloomForCausalLM",
        F::Llama => "LlamaForCausalLM",
        F::Mistral => "MistralForCausalLM",
        F::Qwen2 => "Qwen2ForCausalLM",
        F::Qwen3 => "Qwen3ForCausalLM",
        F::Gemma2 => "Gemma2ForCausalLM",
        F::Gemma3Text => "Gemma3ForCausalLM",
    }
}

/// Number of weights in `vs` (tied weights once): the N of the FLOP estimates (README).
pub fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.variables().values().map(|t| t.numel() as i64).sum()
}
