//! The rotary decoder the Llama-like families share (Llama, Qwen2/3, Mistral, Gemma 2/3): token
//! embedding -> blocks (layers.rs) -> final norm -> LM head. A family file (llama.rs, qwen.rs,
//! mistral.rs, gemma.rs) only turns its config.json into a [`DecoderSpec`]; the config itself is
//! kept and written back on save, so every field the family has survives a round trip.
pub mod layers;
pub mod spec;

use std::path::Path;

use tch::nn::{self, Init, Module};
use tch::{Device, Tensor};

use super::projection::Projection;
use super::recompute::Recompute;
use super::{CausalLm, KvCache, common};
use crate::error::Result;
use layers::{Block, BlockInputs, RmsNorm};
pub use spec::DecoderSpec;

/// A `*ForCausalLM` of a rotary family. The weights live in the VarStore; the model is immutable.
#[derive(Debug)]
pub struct Decoder {
    pub spec: DecoderSpec,
    /// The config.json it was made from (written back on save).
    config: serde_json::Value,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// None when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    recompute: Recompute,
}

/// Rotary tables and masks for one forward, shared by the blocks of each kind.
struct ForwardInputs {
    /// (cos, sin) per rotary embedding of the spec.
    ropes: Vec<(Tensor, Tensor)>,
    /// The mask per distinct window (`DecoderSpec::windows` order).
    masks: Vec<Tensor>,
}

impl ForwardInputs {
    /// Flattened for activation checkpointing: masks, then cos and sin of each rope.
    fn to_context(&self) -> Vec<Tensor> {
        let masks = self.masks.iter().map(Tensor::shallow_clone);
        let ropes = self
            .ropes
            .iter()
            .flat_map(|(c, s)| [c.shallow_clone(), s.shallow_clone()]);
        masks.chain(ropes).collect()
    }

    fn from_context(context: &[Tensor], masks: usize) -> Self {
        Self {
            masks: context[..masks].iter().map(Tensor::shallow_clone).collect(),
            ropes: context[masks..]
                .chunks(2)
                .map(|p| (p[0].shallow_clone(), p[1].shallow_clone()))
                .collect(),
        }
    }
}

impl Decoder {
    /// Random weights (HF's initialisation: normal 0.02, norms at identity) in `vs`.
    pub fn new(vs: &nn::VarStore, spec: DecoderSpec, config: serde_json::Value) -> Self {
        let m = vs.root() / "model";
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let table = [spec.vocab_size, spec.hidden_size];
        let embed_tokens = (&m / "embed_tokens").var("weight", &table, init);
        let layers = (0..spec.layers.len())
            .map(|i| Block::new(&m / "layers" / i as i64, &spec))
            .collect();
        let norm = RmsNorm::new(&m / "norm", spec.hidden_size, &spec);
        let lm_head = (!spec.tie_word_embeddings)
            .then(|| (vs.root() / "lm_head").var("weight", &table, init));
        Self {
            spec,
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            recompute: Recompute::default(),
        }
    }

    /// Loads the weights of the HF folder `dir` into a model of `spec` on `device`.
    pub fn load(
        dir: &Path,
        device: Device,
        spec: DecoderSpec,
        config: serde_json::Value,
    ) -> Result<(nn::VarStore, Self)> {
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs, spec, config);
        // Tensors that are no variable here (rotary inv_freq buffers, a tied head's copy) are
        // left unread by load_into, which fills the model's variables only.
        common::load_into(&vs, dir, |name| Some(name.to_string()))?;
        Ok((vs, model))
    }

    /// Token embeddings, times sqrt(hidden) rounded to the weights' dtype where the family
    /// scales them (as HF does).
    fn embed(&self, ids: &Tensor) -> Tensor {
        let x = common::embed(&self.embed_tokens, ids);
        if !self.spec.scale_embeddings {
            return x;
        }
        let scale = Tensor::from((self.spec.hidden_size as f64).sqrt() as f32)
            .to_kind(x.kind())
            .to_device(x.device());
        x * scale
    }

    fn inputs(&self, input_ids: &Tensor, attention_mask: &Tensor) -> ForwardInputs {
        let t = input_ids.size()[1];
        let (positions, mask) = common::positions_and_mask(t, attention_mask);
        let kind = self.embed_tokens.kind();
        ForwardInputs {
            ropes: self
                .spec
                .ropes
                .iter()
                .map(|r| r.cos_sin(&positions, kind))
                .collect(),
            masks: self
                .spec
                .windows()
                .iter()
                .map(|w| w.map_or(mask.shallow_clone(), |w| common::sliding_window(&mask, w)))
                .collect(),
        }
    }

    fn block(&self, i: usize, x: &Tensor, inputs: &ForwardInputs, cache: &mut KvCache) -> Tensor {
        let attention = self.spec.layers[i];
        let windows = self.spec.windows();
        let mask_index = windows
            .iter()
            .position(|w| *w == attention.window)
            .expect("every window is in windows()");
        let block_inputs = BlockInputs {
            rope: &inputs.ropes[attention.rope],
            mask: &inputs.masks[mask_index],
        };
        self.layers[i].forward(x, &block_inputs, cache, i)
    }
}

impl CausalLm for Decoder {
    fn hf_config(&self) -> serde_json::Value {
        self.config.clone()
    }

    fn hidden_size(&self) -> i64 {
        self.spec.hidden_size
    }

    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: &mut KvCache) -> Tensor {
        let inputs = self.inputs(input_ids, attention_mask);
        if self.recompute.active(cache.len()) {
            let x0 = tch::no_grad(|| self.embed(input_ids));
            let block = |i: usize, x: &Tensor| self.block(i, x, &inputs, &mut KvCache::default());
            let mut context = vec![input_ids.shallow_clone()];
            context.extend(inputs.to_context());
            let last = self
                .recompute
                .forward(x0, self.layers.len(), block, context);
            return self.norm.forward(&last);
        }
        let mut x = self.embed(input_ids);
        for i in 0..self.layers.len() {
            x = self.block(i, &x, &inputs, cache);
        }
        self.norm.forward(&x)
    }

    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let logits = hidden.matmul(&self.lm_head.as_ref().unwrap_or(&self.embed_tokens).tr());
        match self.spec.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    fn set_checkpointing(&self, on: bool) {
        self.recompute.set_enabled(on);
    }

    /// Context: [ids, masks..., cos and sin per rope].
    fn finish_backward(&self) {
        let masks = self.spec.windows().len();
        self.recompute.backward(
            |i, x, c| {
                let inputs = ForwardInputs::from_context(&c[1..], masks);
                self.block(i, x, &inputs, &mut KvCache::default())
            },
            |c| self.embed(&c[0]),
        );
    }

    fn projections(&self) -> Vec<&Projection> {
        self.layers
            .iter()
            .flat_map(|l| {
                [
                    &l.self_attn.q_proj,
                    &l.self_attn.k_proj,
                    &l.self_attn.v_proj,
                    &l.self_attn.o_proj,
                    &l.mlp.gate_proj,
                    &l.mlp.up_proj,
                    &l.mlp.down_proj,
                ]
            })
            .collect()
    }
}
