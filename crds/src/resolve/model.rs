//! Base model and tokenizer resolution.
use super::FieldError;
use crate::{
    Architecture, BaseWeights, BuiltinTokenizer, ModelFamily, ModelInit, ModelSpec, ResolvedModel,
    ResolvedTokenizer,
};

/// GPT-2's BPE vocabulary; a random model using the builtin tokenizer needs at least this many ids.
pub const GPT2_VOCAB: u32 = 50257;

pub(super) fn resolve_model(
    spec: &ModelSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedModel> {
    let before = errors.len();
    let weights = match (&spec.path, spec.init, &spec.architecture) {
        (Some(_), Some(_), _) => {
            errors.push(FieldError::new(
                format!("{at}.init"),
                "set either path or init, not both",
            ));
            None
        }
        (Some(_), None, Some(_)) => {
            errors.push(FieldError::new(
                format!("{at}.architecture"),
                "architecture is only for init: random (a model folder has its own config.json)",
            ));
            None
        }
        (Some(path), None, None) => Some(BaseWeights::Path(path.clone())),
        (None, Some(ModelInit::Random), Some(arch)) => match spec.family {
            Some(family) => {
                check_architecture(family, arch, &format!("{at}.architecture"), errors);
                Some(BaseWeights::Random(arch.clone()))
            }
            None => {
                errors.push(FieldError::new(
                    format!("{at}.family"),
                    "init: random needs a family (a model folder names its own in config.json)",
                ));
                None
            }
        },
        (None, Some(ModelInit::Random), None) => {
            errors.push(FieldError::new(
                format!("{at}.architecture"),
                "init: random needs an architecture",
            ));
            None
        }
        (None, None, _) => {
            errors.push(FieldError::new(
                at,
                "set path (a Hugging Face folder) or init: random",
            ));
            None
        }
    };
    let tokenizer = resolve_tokenizer(spec, at, errors);
    if let (
        Some(BaseWeights::Random(arch)),
        Some(ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)),
    ) = (&weights, &tokenizer)
        && arch.vocab_size < GPT2_VOCAB
    {
        errors.push(FieldError::new(
            format!("{at}.architecture.vocabSize"),
            format!(
                "{} is smaller than the gpt2 tokenizer's {GPT2_VOCAB} ids",
                arch.vocab_size
            ),
        ));
    }
    if errors.len() > before {
        return None;
    }
    Some(ResolvedModel {
        family: spec.family,
        weights: weights?,
        dtype: spec.dtype,
        tokenizer: tokenizer?,
    })
}

fn resolve_tokenizer(
    spec: &ModelSpec,
    at: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ResolvedTokenizer> {
    let tok = spec.tokenizer.clone().unwrap_or_default();
    match (tok.path, tok.builtin, &spec.path) {
        (Some(_), Some(_), _) => {
            errors.push(FieldError::new(
                format!("{at}.tokenizer"),
                "set either path or builtin, not both",
            ));
            None
        }
        (Some(path), None, _) => Some(ResolvedTokenizer::Path(path)),
        (None, Some(builtin), _) => Some(ResolvedTokenizer::Builtin(builtin)),
        (None, None, Some(model_path)) => Some(ResolvedTokenizer::Path(model_path.clone())),
        (None, None, None) => Some(ResolvedTokenizer::Builtin(BuiltinTokenizer::Gpt2)),
    }
}

fn check_architecture(
    family: ModelFamily,
    arch: &Architecture,
    at: &str,
    errors: &mut Vec<FieldError>,
) {
    if arch.num_heads == 0 || !arch.hidden_size.is_multiple_of(arch.num_heads) {
        errors.push(FieldError::new(
            format!("{at}.numHeads"),
            format!(
                "{} does not divide hiddenSize {}",
                arch.num_heads, arch.hidden_size
            ),
        ));
    }
    match (family.is_rotary(), arch.num_kv_heads) {
        (false, Some(_)) => {
            errors.push(FieldError::new(
                format!("{at}.numKvHeads"),
                format!("{} has no grouped-query attention", family.model_type()),
            ));
        }
        (true, Some(kv)) if kv == 0 || !arch.num_heads.is_multiple_of(kv) => {
            errors.push(FieldError::new(
                format!("{at}.numKvHeads"),
                format!("{kv} does not divide numHeads {}", arch.num_heads),
            ));
        }
        _ => {}
    }
    if family == ModelFamily::Bloom
        && let Some(width) = arch.intermediate_size
        && width != 4 * arch.hidden_size
    {
        errors.push(FieldError::new(
            format!("{at}.intermediateSize"),
            format!(
                "bloom's MLP is always 4 x hiddenSize ({})",
                4 * arch.hidden_size
            ),
        ));
    }
    if family.is_rotary()
        && arch.num_heads > 0
        && !(arch.hidden_size / arch.num_heads).is_multiple_of(2)
    {
        errors.push(FieldError::new(
            format!("{at}.hiddenSize"),
            format!(
                "{}'s rotary embeddings need an even head size (hiddenSize / numHeads)",
                family.model_type()
            ),
        ));
    }
}

/// GPT-2's adapter targets (Hugging Face module names).
const GPT2_MODULES: &[&str] = &["c_attn", "c_proj", "c_fc"];
/// OPT's adapter targets.
const OPT_MODULES: &[&str] = &["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"];
/// BLOOM's adapter targets.
const BLOOM_MODULES: &[&str] = &["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"];
/// The rotary families' adapter targets.
const ROTARY_MODULES: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The adapter targets that exist in `family`, or in any family when it is not known before
/// the trainer reads the model folder (the trainer then refuses targets the model lacks).
pub(super) fn lora_modules(family: Option<ModelFamily>) -> Vec<&'static str> {
    match family {
        Some(ModelFamily::Gpt2) => GPT2_MODULES.to_vec(),
        Some(ModelFamily::Opt) => OPT_MODULES.to_vec(),
        Some(ModelFamily::Bloom) => BLOOM_MODULES.to_vec(),
        Some(_) => ROTARY_MODULES.to_vec(),
        None => {
            let mut all = [GPT2_MODULES, ROTARY_MODULES, OPT_MODULES, BLOOM_MODULES].concat();
            let mut seen = std::collections::HashSet::new();
            all.retain(|m| seen.insert(*m)); // OPT shares q_proj, k_proj, v_proj
            all
        }
    }
}
