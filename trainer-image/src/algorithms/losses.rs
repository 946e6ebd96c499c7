//! Losses and advantage estimators of SFT, reward modelling, PPO and DPO: small pure functions on
//! tensors, checked against hand-computed and PyTorch reference values (losses/tests.rs).
//!
//! B is rows, T tokens, V the vocabulary. A mask is float or bool, 1 = a real response token.
//! Padding never reaches a result, even when it holds inf or NaN: masks select with `masked_fill`
//! rather than multiply.
use rlhf_spec::KlEstimator;
use tch::{Kind, Tensor};

use crate::error::Result;

/// Added to the variance before whitening, as TRL and OpenRLHF do.
const WHITEN_EPS: f64 = 1e-8;

/// Ziegler et al.'s bound on the adaptive KL controller's proportional error.
const KL_ERROR_CLIP: f64 = 0.2;

/// The mask as bool, whatever kind it came as.
fn keep(mask: &Tensor) -> Tensor {
    mask.to_kind(Kind::Bool)
}

/// `x` on real tokens, 0 on padding.
fn zero_padding(x: &Tensor, mask: &Tensor) -> Tensor {
    x.masked_fill(&keep(mask).logical_not(), 0.0)
}

/// Real tokens counted over `dim` (all dims when None), in fp32.
fn count(mask: &Tensor, dim: Option<i64>) -> Tensor {
    keep(mask)
        .to_kind(Kind::Float)
        .sum_dim_intlist(dim, false, None::<Kind>)
}

/// sum(x * mask) over `dim` (all dims when None). A sequence's log-prob is this over dim 1 of
/// `token_logprobs`.
pub fn masked_sum(x: &Tensor, mask: &Tensor, dim: Option<i64>) -> Tensor {
    zero_padding(x, mask).sum_dim_intlist(dim, false, None::<Kind>)
}

/// sum(x * mask) / sum(mask) over `dim` (all dims when None). A slice without a real token gives
/// 0 rather than NaN, so an all-padding micro-batch cannot poison the weights.
pub fn masked_mean(x: &Tensor, mask: &Tensor, dim: Option<i64>) -> Tensor {
    masked_sum(x, mask, dim) / count(mask, dim).clamp_min(1.0)
}

/// Mean and unbiased variance (divisor n - 1) of n values from their sum and sum of squares.
/// n - 1 is floored at 1, so one value gives variance 0 rather than 0/0; rounding cannot make
/// the variance negative.
pub fn mean_and_variance(sum: f64, sum_sq: f64, n: f64) -> (f64, f64) {
    let mean = sum / n.max(1.0);
    let var = ((sum_sq - n * mean * mean) / (n - 1.0).max(1.0)).max(0.0);
    (mean, var)
}

/// (x - mean) / sqrt(var + 1e-8), with the mean and the unbiased variance (divisor n - 1) taken
/// over the real tokens, as TRL and OpenRLHF whiten advantages. `all_sum` turns this batch's
/// [sum, sum of squares, count] into the totals the moments come from: the identity whitens
/// one batch, a sum over ranks whitens the whole round (`Dist::sum`). Moments in f64; padding
/// comes out 0; any shape.
pub fn masked_whiten(
    x: &Tensor,
    mask: &Tensor,
    all_sum: impl FnOnce(&[f64]) -> Result<Vec<f64>>,
) -> Result<Tensor> {
    let x = zero_padding(&x.to_kind(Kind::Double), mask);
    let local = [
        x.sum(Kind::Double).double_value(&[]),
        x.square().sum(Kind::Double).double_value(&[]),
        count(mask, None).double_value(&[]),
    ];
    let [sum, sum_sq, n] = <[f64; 3]>::try_from(all_sum(&local)?).expect("three sums");
    let (mean, var) = mean_and_variance(sum, sum_sq, n);
    let whitened = (x - mean) / (var + WHITEN_EPS).sqrt();
    Ok(zero_padding(&whitened, mask).to_kind(Kind::Float))
}

/// log softmax(logits)[token] at each position, in fp32 whatever the logits' kind:
/// logits (B, T, V), tokens (B, T) -> (B, T). Gathers, then subtracts logsumexp, so no
/// (B, T, V) log-softmax is kept.
pub fn token_logprobs(logits: &Tensor, tokens: &Tensor) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let picked = logits
        .gather(-1, &tokens.unsqueeze(-1), false)
        .squeeze_dim(-1); // (B, T)
    picked - logits.logsumexp([-1], false)
}

/// Entropy of softmax(logits) at each position, -sum_v p log p, in fp32: (B, T, V) -> (B, T).
pub fn entropy_from_logits(logits: &Tensor) -> Tensor {
    let logp = logits.log_softmax(-1, Kind::Float); // (B, T, V)
    -(logp.exp() * &logp).sum_dim_intlist(-1, false, None::<Kind>)
}

/// Next-token cross-entropy, mean over the kept tokens of the batch:
///   loss = sum_{b, t} m[b, t+1] * -log softmax(logits[b, t])[labels[b, t+1]] / sum m[:, 1:].
/// The logits at t predict the token at t + 1, so the shift happens here: logits and labels
/// both (B, T) over the same sequence, `loss_mask` (B, T) marks the labels to learn (as HF's
/// labels do, the first position is never a target). Labels under a 0 mask may be anything,
/// -100 included. logits (B, T, V) -> ().
pub fn sft_loss(logits: &Tensor, labels: &Tensor, loss_mask: &Tensor) -> Tensor {
    let t = labels.size()[1];
    let mask = loss_mask.narrow(1, 1, t - 1); // (B, T-1)
    let targets = labels
        .narrow(1, 1, t - 1)
        .masked_fill(&keep(&mask).logical_not(), 0i64);
    let nll = -token_logprobs(&logits.narrow(1, 0, t - 1), &targets); // (B, T-1)
    masked_mean(&nll, &mask, None)
}

/// The reward model's pairwise (Bradley-Terry) loss, mean -log sigmoid(r_chosen - r_rejected),
/// through log_sigmoid so a margin of -100 costs 100 rather than inf; and the accuracy
/// mean(r_chosen > r_rejected), where a tie counts as wrong. (B), (B) -> ((), ()).
pub fn pairwise_rm_loss(chosen: &Tensor, rejected: &Tensor) -> (Tensor, Tensor) {
    let margin = chosen - rejected;
    let accuracy = margin.gt(0.0).to_kind(Kind::Float).mean(Kind::Float);
    (-margin.log_sigmoid().mean(Kind::Float), accuracy)
}

const K3_LOG_RATIO_LIMIT: f64 = 10.0;

/// Per-token estimate of KL(policy p || reference q) from the log-probs of the sampled tokens,
/// (B, T) -> (B, T): K1 = log p - log q; K3 = (r - 1) - log r with r = q / p = exp(log q - log p)
/// (Schulman's k3: unbiased and never negative; expm1 keeps it exact for small log r).
pub fn kl_penalty(logp: &Tensor, ref_logp: &Tensor, estimator: KlEstimator) -> Tensor {
    match estimator {
        KlEstimator::K1 => logp - ref_logp,
        KlEstimator::K3 => {
            // Clamped as OpenRLHF does: exp of a log ratio above ~88 overflows fp32 to inf.
            let log_ratio = (ref_logp - logp).clamp(-K3_LOG_RATIO_LIMIT, K3_LOG_RATIO_LIMIT);
            log_ratio.expm1() - log_ratio
        }
    }
}

/// PPO's per-token rewards (B, T): -kl_coef * kl on every real token, plus the sequence score
/// (B), clipped to [-reward_clip, reward_clip] (0: no clip), on each row's last real token.
/// Padding gets 0; a row without real tokens gets nothing, its score included.
pub fn token_rewards(
    kl: &Tensor,
    kl_coef: f64,
    scores: &Tensor,
    mask: &Tensor,
    reward_clip: f64,
) -> Tensor {
    let scores = if reward_clip > 0.0 {
        scores.clamp(-reward_clip, reward_clip)
    } else {
        scores.shallow_clone()
    };
    let t = kl.size()[1];
    // Position + 1 on real tokens, 0 on padding: the argmax is the last real token.
    let positions = Tensor::arange_start(1, t + 1, (Kind::Int64, kl.device()))
        * keep(mask).to_kind(Kind::Int64);
    let last = positions.argmax(1, true); // (B, 1)
    let at_last = kl
        .zeros_like()
        .scatter(1, &last, &scores.to_kind(kl.kind()).unsqueeze(1)); // (B, T)
    zero_padding(&(kl * -kl_coef + at_last), mask)
}

/// Generalised advantage estimation (Schulman et al. 2016), token by token, backwards over T:
///   delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lambda A_{t+1},   R_t = A_t + V_t,
/// where t + 1 is the row's next real token: padding is skipped (its rewards and values never
/// count), and after a row's last real token V = A = 0. rewards, values, mask (B, T), rows of
/// any lengths -> (advantages, returns) (B, T), detached, 0 on padding. Whitening the advantages
/// is the caller's step (`masked_whiten`).
pub fn gae(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    gamma: f64,
    lambda: f64,
) -> (Tensor, Tensor) {
    let (rewards, values, keep) = (rewards.detach(), values.detach(), keep(mask));
    let mut next_value = values.select(1, 0).zeros_like(); // (B)
    let mut next_adv = next_value.zeros_like(); // (B)
    let mut advantages = Vec::new();
    for t in (0..values.size()[1]).rev() {
        let (r, v, real) = (rewards.select(1, t), values.select(1, t), keep.select(1, t)); // (B)
        let adv = r + gamma * &next_value - &v + gamma * lambda * &next_adv;
        // Padding carries the later token's value and advantage through unchanged.
        next_adv = adv.where_self(&real, &next_adv);
        next_value = v.where_self(&real, &next_value);
        advantages.push(next_adv.shallow_clone());
    }
    advantages.reverse();
    let advantages = zero_padding(&Tensor::stack(&advantages, 1), &keep); // (B, T)
    let returns = zero_padding(&(&advantages + &values), &keep);
    (advantages, returns)
}

/// The per-token clipped surrogate and what it clipped (see [`clipped_surrogate`]).
pub struct Surrogate {
    /// (B, T) per-token loss, 0 on padding; the caller aggregates it (learn.rs).
    pub loss: Tensor,
    /// Share of real tokens clipped at 1 - clip_low (negative advantage), detached.
    pub clipped_low: Tensor,
    /// Share of real tokens clipped at 1 + clip_high (positive advantage), detached.
    pub clipped_high: Tensor,
    /// 0.5 masked mean (logp - old_logp)^2 (TRL's), detached.
    pub approx_kl: Tensor,
}

/// PPO's clipped surrogate (Schulman et al. 2017) over tokens (B, T), with r = exp(logp - old_logp)
/// and asymmetric bounds (DAPO's clip-higher when clip_high > clip_low):
///   loss_t = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)).
/// The clipped term wins above 1 + clip_high when A > 0 and below 1 - clip_low when A < 0.
pub fn clipped_surrogate(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    (clip_low, clip_high): (f64, f64),
) -> Surrogate {
    let log_ratio = logp - old_logp;
    let ratio = log_ratio.exp();
    let unclipped = -advantages * &ratio;
    let clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high);
    let clip_won = clipped.gt_tensor(&unclipped);
    let share = |side: Tensor| {
        masked_mean(
            &clip_won.logical_and(&side).to_kind(Kind::Float),
            mask,
            None,
        )
        .detach()
    };
    Surrogate {
        loss: zero_padding(&unclipped.maximum(&clipped), mask),
        clipped_low: share(advantages.lt(0.0)),
        clipped_high: share(advantages.gt(0.0)),
        approx_kl: (masked_mean(&log_ratio.square(), mask, None) * 0.5).detach(),
    }
}

/// The critic's clipped value loss per token (B, T), 0 on padding:
///   0.5 max((V - R)^2, (V_old + clip(V - V_old, -clip_range, clip_range) - R)^2).
pub fn value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip_range: f64,
) -> Tensor {
    let clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range);
    let worse = (values - returns)
        .square()
        .maximum(&(clipped_values - returns).square());
    zero_padding(&(0.5 * worse), mask)
}

/// The KL penalty coefficient over training: fixed, or adapted towards a target KL.
#[derive(Clone, Debug, PartialEq)]
pub enum KlController {
    Fixed(f64),
    Adaptive(AdaptiveKlController),
}

impl KlController {
    /// Adaptive when there is a target KL (`rl.targetKl`, which must be > 0), else fixed.
    pub fn new(kl_coef: f64, target: Option<f64>, horizon: u64) -> Self {
        match target {
            Some(target) => Self::Adaptive(AdaptiveKlController {
                value: kl_coef,
                target,
                horizon,
            }),
            None => Self::Fixed(kl_coef),
        }
    }

    /// The coefficient to use now.
    pub fn value(&self) -> f64 {
        match self {
            Self::Fixed(value) => *value,
            Self::Adaptive(controller) => controller.value,
        }
    }

    /// Restores a saved coefficient (resuming from a checkpoint).
    pub fn set_value(&mut self, value: f64) {
        match self {
            Self::Fixed(v) => *v = value,
            Self::Adaptive(controller) => controller.value = value,
        }
    }

    /// After a batch of `n_steps` samples whose mean KL was `current_kl`.
    pub fn update(&mut self, current_kl: f64, n_steps: u64) {
        if let Self::Adaptive(controller) = self {
            controller.update(current_kl, n_steps);
        }
    }
}

/// Ziegler et al. 2019's proportional controller: moves `value` so the KL tends to `target`, by at
/// most 20% per `horizon` samples.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveKlController {
    pub value: f64,
    pub target: f64,
    pub horizon: u64,
}

impl AdaptiveKlController {
    /// value *= 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon.
    pub fn update(&mut self, current_kl: f64, n_steps: u64) {
        let error = (current_kl / self.target - 1.0).clamp(-KL_ERROR_CLIP, KL_ERROR_CLIP);
        self.value *= 1.0 + error * n_steps as f64 / self.horizon as f64;
    }
}

/// DPO's sigmoid loss (Rafailov et al. 2023) with conservative label smoothing (cDPO), from
/// sequence log-probs (sums over response tokens), each (B):
///   h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)),
///   loss = mean -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h).
/// Also the implicit rewards beta (log pi - log ref) of the chosen and the rejected answers, (B)
/// each, detached. Returns (loss (), chosen_rewards, rejected_rewards).
pub fn dpo_loss(
    policy_chosen_logp: &Tensor,
    policy_rejected_logp: &Tensor,
    ref_chosen_logp: &Tensor,
    ref_rejected_logp: &Tensor,
    beta: f64,
    label_smoothing: f64,
) -> (Tensor, Tensor, Tensor) {
    let chosen = policy_chosen_logp - ref_chosen_logp;
    let rejected = policy_rejected_logp - ref_rejected_logp;
    let logits = (&chosen - &rejected) * beta;
    let losses =
        -(1.0 - label_smoothing) * logits.log_sigmoid() - label_smoothing * (-logits).log_sigmoid();
    (
        losses.mean(Kind::Float),
        (chosen * beta).detach(),
        (rejected * beta).detach(),
    )
}

#[cfg(test)]
mod tests;
