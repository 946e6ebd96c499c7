//! A scalar head on a causal LM: per-token values (the PPO critic) or one score per sequence at
//! its last real token (the reward model). Saved as HF's `*ForSequenceClassification` with one
//! label (`score.weight`, [1, C]), so a reward model loads in transformers too.
use std::path::Path;

use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use super::{CausalLm, hf, load_causal_lm};
use crate::error::Result;

pub const SCORE: &str = "score.weight";

#[derive(Debug)]
pub struct ScalarHead {
    pub lm: Box<dyn CausalLm>,
    /// (1, C)
    score: Tensor,
}

impl ScalarHead {
    /// A new head (normal 0.02, as HF initialises `score`) on `lm`, whose weights are in `vs`.
    pub fn attach(vs: &nn::VarStore, lm: Box<dyn CausalLm>) -> Self {
        let score = (vs.root() / "score").var(
            "weight",
            &[1, lm.hidden_size()],
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        );
        Self { lm, score }
    }

    /// Loads an HF folder: a causal LM (new head) or a saved scalar-head model (its head).
    pub fn load(dir: &Path, device: Device) -> Result<(nn::VarStore, Self)> {
        let (vs, lm) = load_causal_lm(dir, device)?;
        let head = Self::attach(&vs, lm);
        if let Some(saved) = hf::read_weights(dir)?.remove(SCORE) {
            let vars =
                std::collections::BTreeMap::from([(SCORE.to_string(), head.score.shallow_clone())]);
            hf::copy_into(
                &vars,
                &std::collections::BTreeMap::from([(SCORE.to_string(), saved)]),
                dir,
            )?;
        }
        Ok((vs, head))
    }

    /// One value per position (B, T).
    pub fn per_token(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let hidden = self.lm.hidden_states(input_ids, Some(attention_mask)); // (B, T, C)
        hidden
            .matmul(&self.score.tr())
            .squeeze_dim(-1)
            .to_kind(Kind::Float)
    }

    /// One score per sequence (B), read at each row's last real token (any padding side).
    pub fn last_token(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let t = input_ids.size()[1];
        let positions = Tensor::arange(t, (Kind::Int64, input_ids.device())) + 1;
        let last = (attention_mask.to_kind(Kind::Int64) * positions).argmax(-1, true); // (B, 1)
        self.per_token(input_ids, attention_mask)
            .gather(1, &last, false)
            .squeeze_dim(1)
    }

    /// Writes `vs` as `<Family>ForSequenceClassification` with one label, weights in `dtype`. transformers finds
    /// each row's last token through `pad_token_id`, so it is recorded.
    pub fn save(
        &self,
        vs: &nn::VarStore,
        dir: &Path,
        pad_token_id: i64,
        dtype: Kind,
    ) -> Result<()> {
        let mut config = self.lm.hf_config();
        let lm_class = config["architectures"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        config["architectures"] = serde_json::json!([lm_class
            .replace("LMHeadModel", "ForSequenceClassification")
            .replace("ForCausalLM", "ForSequenceClassification")]);
        config["num_labels"] = 1.into();
        config["id2label"] = serde_json::json!({"0": "LABEL_0"});
        config["label2id"] = serde_json::json!({"LABEL_0": 0});
        config["pad_token_id"] = pad_token_id.into();
        hf::write_folder(
            dir,
            &config,
            &super::lora::merged_tensors(vs, &self.lm.projections()),
            dtype,
        )
    }
}
