//! Training algorithms: SFT, reward model, DPO, and the RL kinds (PPO, GRPO, RLOO, REINFORCE++). Losses and advantage estimators are small
//! pure functions (losses.rs), unit-tested against reference values.
pub mod dpo;
pub mod losses;
pub mod optim;
pub mod rl;
pub mod rm;
pub mod sft;
pub mod supervised;

use tch::Tensor;

use crate::models::CausalLm;

/// Log-probs (B, T - start) of the tokens from position `start` on under `model`'s full
/// distribution at `temperature` (softmax of logits / temperature), and the logits
/// (B, T - start, V) that scored them, already divided: position t predicts t + 1.
pub fn continuation_logprobs(
    model: &dyn CausalLm,
    ids: &Tensor,
    attention_mask: &Tensor,
    start: i64,
    temperature: f64,
) -> (Tensor, Tensor) {
    let n = ids.size()[1] - start;
    // The head runs on the scored positions only: (B, T, V) logits are the biggest activation.
    let hidden = model
        .hidden_states(ids, Some(attention_mask))
        .narrow(1, start - 1, n);
    let logits = model.lm_head(&hidden).to_kind(tch::Kind::Float);
    // Skipped at 1 so the default keeps its exact numbers and makes no extra (B, T, V) copy.
    let logits = if temperature == 1.0 {
        logits
    } else {
        logits / temperature
    };
    (
        losses::token_logprobs(&logits, &ids.narrow(1, start, n)),
        logits,
    )
}

/// `loss.backward()`, then the rest of the backward pass of `models`' checkpointed forwards.
pub fn backward(loss: &Tensor, models: &[&dyn CausalLm]) {
    loss.backward();
    for m in models {
        m.finish_backward();
    }
}

/// (first, second) halves of a batch's per-row values: pair batches hold chosen rows, then rejected.
pub fn halves(x: &Tensor) -> (Tensor, Tensor) {
    let half = x.size()[0] / 2;
    (x.narrow(0, 0, half), x.narrow(0, half, half))
}
