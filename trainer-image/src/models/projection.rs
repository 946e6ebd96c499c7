//! A linear projection of a transformer block (attention and MLP matrices), with an optional LoRA
//! adapter: y = x W + b + (dropout(x) A^T B^T) * alpha / r, where W stays frozen and only A and B
//! train. GPT-2's Conv1D stores W as [in, out], nn.Linear (Llama) as [out, in]; both are here.
use std::cell::{Cell, OnceCell};

use tch::Tensor;
use tch::nn::{self, Init};

use super::recompute::grad_mode_enabled;

/// How the weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// [in, out] (HF GPT-2's Conv1D).
    InOut,
    /// [out, in] (torch.nn.Linear).
    OutIn,
}

#[derive(Debug)]
struct Adapter {
    /// [r, in]
    a: Tensor,
    /// [out, r]
    b: Tensor,
    scale: f64,
    dropout: f64,
    enabled: Cell<bool>,
}

#[derive(Debug)]
pub struct Projection {
    /// The module's HF path (`transformer.h.0.attn.c_attn`): its variables are `<name>.weight`...
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    layout: Layout,
    adapter: OnceCell<Adapter>,
}

impl Projection {
    pub fn new(p: nn::Path, d_in: i64, d_out: i64, layout: Layout, bias: bool, init: Init) -> Self {
        let dims = match layout {
            Layout::InOut => [d_in, d_out],
            Layout::OutIn => [d_out, d_in],
        };
        let weight = p.var("weight", &dims, init);
        let bias = bias.then(|| p.var("bias", &[d_out], Init::Const(0.0)));
        Self {
            name: p.components().collect::<Vec<_>>().join("."),
            weight,
            bias,
            layout,
            adapter: OnceCell::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The module's own name (`c_attn`, `q_proj`): what LoRA's targetModules list.
    pub fn module(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or(&self.name)
    }

    fn dims(&self) -> (i64, i64) {
        let s = self.weight.size();
        match self.layout {
            Layout::InOut => (s[0], s[1]),
            Layout::OutIn => (s[1], s[0]),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = match self.layout {
            Layout::InOut => x.matmul(&self.weight),
            Layout::OutIn => x.matmul(&self.weight.tr()),
        };
        let y = match &self.bias {
            Some(b) => y + b,
            None => y,
        };
        match self.adapter.get() {
            Some(ad) if ad.enabled.get() => {
                let x = if ad.dropout > 0.0 && grad_mode_enabled() {
                    x.dropout(ad.dropout, true)
                } else {
                    x.shallow_clone()
                };
                y + x.matmul(&ad.a.tr()).matmul(&ad.b.tr()) * ad.scale
            }
            _ => y,
        }
    }

    /// Adds a LoRA adapter of rank `r` (variables `<name>.lora_A.weight` [r, in], Kaiming-uniform
    /// like PEFT, and `<name>.lora_B.weight` [out, r], zeros: the model starts unchanged).
    pub fn attach_lora(&self, root: &nn::Path, r: i64, alpha: f64, dropout: f64) {
        let mut parts = self.name.split('.');
        let first = root.sub(parts.next().unwrap_or_default());
        let p = parts.fold(first, |p, c| p.sub(c));
        let (d_in, d_out) = self.dims();
        let bound = 1.0 / (d_in as f64).sqrt();
        let mut a = p.sub("lora_A").var(
            "weight",
            &[r, d_in],
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        );
        let mut b = p.sub("lora_B").var("weight", &[d_out, r], Init::Const(0.0));
        for t in [&mut a, &mut b] {
            t.set_data(&t.to_kind(self.weight.kind())); // in place: the VarStore keeps tracking it
        }
        let _ = self.adapter.set(Adapter {
            a,
            b,
            scale: alpha / r as f64,
            dropout,
            enabled: Cell::new(true),
        });
    }

    pub fn has_adapter(&self) -> bool {
        self.adapter.get().is_some()
    }

    pub fn set_adapter_enabled(&self, on: bool) {
        if let Some(ad) = self.adapter.get() {
            ad.enabled.set(on);
        }
    }

    /// `<name>.weight` with the adapter folded in (W + scale x BA, in the stored layout), for
    /// export as a plain model; None without an adapter.
    pub fn merged_weight(&self) -> Option<(String, Tensor)> {
        let ad = self.adapter.get()?;
        let delta = tch::no_grad(|| ad.b.matmul(&ad.a) * ad.scale); // [out, in]
        let delta = match self.layout {
            Layout::InOut => delta.tr(),
            Layout::OutIn => delta,
        };
        Some((
            format!("{}.weight", self.name),
            tch::no_grad(|| &self.weight + delta),
        ))
    }
}
