//! Activation checkpointing per transformer block. tch has no checkpoint API (nor custom autograd
//! functions), so the backward pass is driven by hand: the training forward runs the blocks
//! without recording (keeping only each block's input) and hands the loss a leaf tensor; after
//! `loss.backward()` has filled the leaf's gradient, [`Recompute::backward`] re-runs the blocks
//! from last to first with recording on, one at a time, and back-propagates the incoming
//! gradient through each ((y * g).sum().backward() gives the weights' and the input's gradients
//! for upstream gradient g), then through the embedding. Peak activation memory is one block's.
use std::cell::{Cell, RefCell};

use tch::{Kind, Tensor};

/// Whether autograd is recording (tch has no query for it): a product with a leaf that requires
/// grad requires grad only then.
pub fn grad_mode_enabled() -> bool {
    (Tensor::ones([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true) * 2.0)
        .requires_grad()
}

/// One checkpointed forward awaiting its backward.
struct Segment {
    /// Each block's input, without history.
    inputs: Vec<Tensor>,
    /// The last block's output as a leaf: the loss's graph starts here.
    leaf: Tensor,
    /// What the family needs to recompute (ids, positions, masks, rotary tables).
    context: Vec<Tensor>,
}

#[derive(Debug, Default)]
pub struct Recompute {
    enabled: Cell<bool>,
    pending: RefCell<Vec<Segment>>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Segment({} blocks)", self.inputs.len())
    }
}

impl Recompute {
    pub fn set_enabled(&self, on: bool) {
        self.enabled.set(on);
    }

    /// Whether this forward should be checkpointed: enabled, a full sequence (no cached
    /// positions) and autograd recording.
    pub fn active(&self, cached_positions: i64) -> bool {
        self.enabled.get() && cached_positions == 0 && grad_mode_enabled()
    }

    /// Runs `blocks` blocks from `x0` without recording; returns the leaf the rest of the
    /// forward (final norm, heads, loss) continues from.
    pub fn forward(
        &self,
        x0: Tensor,
        blocks: usize,
        block: impl Fn(usize, &Tensor) -> Tensor,
        context: Vec<Tensor>,
    ) -> Tensor {
        let (inputs, last) = tch::no_grad(|| {
            let mut inputs = Vec::with_capacity(blocks);
            let mut x = x0;
            for i in 0..blocks {
                let y = block(i, &x);
                inputs.push(x);
                x = y;
            }
            (inputs, x)
        });
        let leaf = last.detach().set_requires_grad(true);
        self.pending.borrow_mut().push(Segment {
            inputs,
            leaf: leaf.shallow_clone(),
            context,
        });
        leaf
    }

    /// Back-propagates every pending segment (newest first) through the blocks, recomputed one at
    /// a time by `block(i, x, context)`, then through `embed(context)` (the recorded x0).
    pub fn backward(
        &self,
        block: impl Fn(usize, &Tensor, &[Tensor]) -> Tensor,
        embed: impl Fn(&[Tensor]) -> Tensor,
    ) {
        let segments: Vec<Segment> = self.pending.borrow_mut().drain(..).collect();
        for seg in segments.into_iter().rev() {
            let mut upstream = seg.leaf.grad();
            if !upstream.defined() {
                continue; // the loss did not use this forward
            }
            for (i, input) in seg.inputs.iter().enumerate().rev() {
                let x = input.detach().set_requires_grad(true);
                let y = block(i, &x, &seg.context);
                (y.to_kind(Kind::Float) * upstream.to_kind(Kind::Float))
                    .sum(Kind::Float)
                    .backward();
                upstream = x.grad();
            }
            let x0 = embed(&seg.context);
            if x0.requires_grad() {
                (x0.to_kind(Kind::Float) * upstream.to_kind(Kind::Float))
                    .sum(Kind::Float)
                    .backward();
            }
        }
    }
}
