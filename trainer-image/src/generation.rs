//! Batched sampling with the KV cache: temperature, top-k, top-p, per-row stop on EOS, left
//! padding, seeded per row. Generation only picks tokens; RL recomputes behaviour log-probs from
//! the policy's full distribution afterwards (the filtered sampling distribution is not the
//! policy).
//!
//! Each row draws its tokens from its own seeded stream (inverse-CDF sampling with a uniform from
//! [`SplitMix64`]), not from libtorch's global generator: a prompt's response depends on its seed
//! only, not on which rows share its batch, so experience is the same for any world size.
use tch::{Kind, Tensor};

use crate::models::{CausalLm, KvCache};
use crate::rng::SplitMix64;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: i64,
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: i64,
    /// Keep the smallest set of tokens whose probability reaches top_p; 1.0 keeps all.
    pub top_p: f64,
    /// A row stops after producing this token.
    pub eos_token_id: Option<i64>,
    /// Written after a row has stopped.
    pub pad_token_id: i64,
    /// One seed per row (unused when greedy).
    pub row_seeds: Vec<u64>,
}

/// Prompts and what followed them.
#[derive(Debug)]
pub struct Generated {
    /// (B, P + N): the left-padded prompts, then the generated tokens.
    pub sequences: Tensor,
    /// (B, P + N): 1 for real tokens (prompt and response up to and including EOS).
    pub attention_mask: Tensor,
    /// (B, N): 1 for generated tokens up to and including EOS.
    pub response_mask: Tensor,
}

/// Generates up to `max_new_tokens` for left-padded `prompts` (B, P) with `prompt_mask` (B, P).
pub fn generate(
    model: &dyn CausalLm,
    prompts: &Tensor,
    prompt_mask: &Tensor,
    params: &SamplingParams,
) -> Generated {
    tch::no_grad(|| {
        let (b, _) = prompts.size2().expect("prompts are (B, P)");
        let mut streams: Vec<SplitMix64> = (0..b as usize)
            .map(|i| SplitMix64(params.row_seeds.get(i).copied().unwrap_or(i as u64)))
            .collect();
        let device = prompts.device();
        let mut cache = KvCache::default();
        let mut mask = prompt_mask.to_kind(Kind::Int64);
        let mut input = prompts.shallow_clone();
        let mut alive = Tensor::ones([b], (Kind::Bool, device));
        let (mut tokens, mut keep) = (Vec::new(), Vec::new());
        for _ in 0..params.max_new_tokens {
            let hidden = model.forward(&input, &mask, &mut cache);
            let last = model.lm_head(&hidden.select(1, -1)).to_kind(Kind::Float); // (B, V)
            let next = pick(&last, params, &mut streams)
                .where_self(&alive, &Tensor::from(params.pad_token_id).to_device(device));
            keep.push(alive.to_kind(Kind::Int64));
            tokens.push(next.shallow_clone());
            if let Some(eos) = params.eos_token_id {
                alive = alive.logical_and(&next.ne(eos));
            }
            mask = Tensor::cat(&[&mask, &keep[keep.len() - 1].unsqueeze(1)], 1);
            input = next.unsqueeze(1);
            if alive.any().int64_value(&[]) == 0 {
                break;
            }
        }
        let response = Tensor::stack(&tokens, 1);
        let response_mask = Tensor::stack(&keep, 1);
        Generated {
            sequences: Tensor::cat(&[prompts, &response], 1),
            attention_mask: mask,
            response_mask,
        }
    })
}

/// Next token (B) from last-position logits (B, V); each row takes one uniform from its stream.
fn pick(logits: &Tensor, p: &SamplingParams, streams: &mut [SplitMix64]) -> Tensor {
    if p.temperature <= 0.0 {
        return logits.argmax(-1, false);
    }
    let filtered = top_p_filter(&top_k_filter(&(logits / p.temperature), p.top_k), p.top_p);
    let uniforms: Vec<f64> = streams.iter_mut().map(SplitMix64::unit).collect();
    let u = Tensor::from_slice(&uniforms).to_device(logits.device());
    inverse_cdf(&filtered.softmax(-1, Kind::Float), &u)
}

/// The token each row's uniform `u` (B) in [0, 1) falls on under `probs` (B, V): the first whose
/// cumulative probability exceeds u times the row's total (so rounding cannot run off the end).
pub fn inverse_cdf(probs: &Tensor, u: &Tensor) -> Tensor {
    let cdf = probs.to_kind(Kind::Double).cumsum(-1, Kind::Double);
    let v = cdf.size()[1];
    let target = u.to_kind(Kind::Double).unsqueeze(1) * cdf.narrow(1, v - 1, 1);
    cdf.le_tensor(&target)
        .sum_dim_intlist(-1, false, Kind::Int64)
        .clamp_max(v - 1)
}

/// Logits outside each row's k largest become -inf (ties at the k-th value are kept).
pub fn top_k_filter(logits: &Tensor, k: i64) -> Tensor {
    let v = logits.size()[1];
    if k <= 0 || k >= v {
        return logits.shallow_clone();
    }
    let (values, _) = logits.topk(k, -1, true, true);
    let threshold = values.narrow(-1, k - 1, 1); // (B, 1)
    logits.masked_fill(&logits.lt_tensor(&threshold), f64::NEG_INFINITY)
}

/// Keeps, per row, the most likely tokens until their probability reaches `top_p` (at least one).
pub fn top_p_filter(logits: &Tensor, top_p: f64) -> Tensor {
    if top_p >= 1.0 {
        return logits.shallow_clone();
    }
    let (sorted, order) = logits.sort(-1, true);
    let probs = sorted.softmax(-1, Kind::Float);
    // Probability mass before each token; a token is dropped once that mass already reaches top_p.
    let before = probs.cumsum(-1, Kind::Float) - &probs;
    let drop_sorted = before.ge(top_p);
    let drop = drop_sorted.scatter(-1, &order, &drop_sorted);
    logits.masked_fill(&drop, f64::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).view([1, -1])
    }

    fn kept(t: &Tensor) -> Vec<bool> {
        let finite = t.isfinite().view([-1]);
        (0..finite.size()[0])
            .map(|i| finite.int64_value(&[i]) == 1)
            .collect()
    }

    #[test]
    fn inverse_cdf_picks_by_cumulative_mass_and_skips_impossible_tokens() {
        let probs = Tensor::from_slice(&[0.5f32, 0.0, 0.25, 0.25])
            .view([1, 4])
            .repeat([4, 1]);
        let u = Tensor::from_slice(&[0.0f64, 0.49, 0.5, 0.99]);
        let picked = Vec::<i64>::try_from(inverse_cdf(&probs, &u)).unwrap();
        assert_eq!(picked, [0, 0, 2, 3]);
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let t = top_k_filter(&row(&[1.0, 4.0, 3.0, 2.0]), 2);
        assert_eq!(kept(&t), [false, true, true, false]);
        assert_eq!(kept(&top_k_filter(&row(&[1.0, 4.0]), 0)), [true, true]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.25, 0.125, 0.125 (logits are their logs).
        let logits = row(&[0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()]);
        assert_eq!(
            kept(&top_p_filter(&logits, 0.6)),
            [true, true, false, false]
        );
        assert_eq!(
            kept(&top_p_filter(&logits, 0.5)),
            [true, false, false, false]
        );
        assert_eq!(
            kept(&top_p_filter(&logits, 0.1)),
            [true, false, false, false],
            "at least one token survives"
        );
    }

    #[test]
    fn top_p_works_on_unsorted_rows() {
        let logits = Tensor::from_slice(&[0.125f32.ln(), 0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln()])
            .view([1, 4]);
        assert_eq!(
            kept(&top_p_filter(&logits, 0.7)),
            [false, true, true, false]
        );
    }
}
