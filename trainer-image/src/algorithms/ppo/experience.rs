//! Experience making: sample responses with the actor, then score them without gradients: the
//! actor's and reference's log-probs under their full distributions at the sampling temperature
//! (see [`scoring_temperature`]), the critic's values, the
//! reward model's score, per-token KL rewards, GAE advantages (whitened) and returns.
use tch::{Device, Kind, Tensor};

use super::super::continuation_logprobs;
use super::super::losses::{gae, kl_penalty, masked_mean, masked_whiten, token_rewards};
use super::Models;
use crate::error::Result;
use crate::generation::{SamplingParams, generate};
use crate::models::heads::ScalarHead;
use crate::tokenizer::Tokenizer;
use rlhf_spec::{KlEstimator, ResolvedGeneration, ResolvedPpo};

/// One round's experience, all response-aligned (B, N) unless said otherwise.
pub struct Experience {
    /// (B, P + N) prompt and response, and its attention mask.
    pub sequences: Tensor,
    pub attention_mask: Tensor,
    pub prompt_len: i64,
    pub mask: Tensor,
    pub logp: Tensor,
    pub values: Tensor,
    pub advantages: Tensor,
    pub returns: Tensor,
    /// (B) reward-model scores.
    pub scores: Tensor,
    pub kl: Tensor,
}

impl Experience {
    /// Mean over rows of each row's mean per-token KL.
    pub fn mean_kl(&self) -> f64 {
        masked_mean(&self.kl, &self.mask, Some(1))
            .mean(Kind::Float)
            .double_value(&[])
    }

    /// Positions of the (B, P + N) sequences: the work per model pass.
    pub fn positions(&self) -> i64 {
        self.sequences.numel() as i64
    }
}

/// Left-padded prompt batch (B, P) and mask, each prompt keeping its last `max_prompt` tokens.
pub fn prompt_batch(
    tok: &Tokenizer,
    prompts: &[&str],
    max_prompt: usize,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let rows: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let ids = tok.encode(p)?;
            Ok(ids[ids.len().saturating_sub(max_prompt)..]
                .iter()
                .map(|&i| i64::from(i))
                .collect())
        })
        .collect::<Result<_>>()?;
    let width = rows.iter().map(Vec::len).max().unwrap_or(1);
    let pad = i64::from(tok.pad_token_id);
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for row in &rows {
        let fill = width - row.len();
        ids.extend(std::iter::repeat_n(pad, fill).chain(row.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, fill).chain(std::iter::repeat_n(1, row.len())));
    }
    let shape = [rows.len() as i64, width as i64];
    Ok((
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    ))
}

/// The critic's value (B, N) of the state each response token is chosen in.
pub fn critic_values(critic: &ScalarHead, seq: &Tensor, attn: &Tensor, prompt_len: i64) -> Tensor {
    let n = seq.size()[1] - prompt_len;
    critic.per_token(seq, attn).narrow(1, prompt_len - 1, n)
}

/// The temperature every PPO log-prob (old, reference, new, entropy) is taken at: the sampling
/// one, since the responses come from softmax(logits / T) and ratio and KL must compare that
/// policy (as TRL and OpenRLHF do); 1 for greedy decoding, which has no such distribution.
pub fn scoring_temperature(g: &ResolvedGeneration) -> f64 {
    if g.temperature > 0.0 {
        g.temperature
    } else {
        1.0
    }
}

/// What generation needs besides the prompts.
pub struct Sampling<'a> {
    pub tok: &'a Tokenizer,
    pub generation: &'a ResolvedGeneration,
    pub max_length: u32,
    pub seed: i64,
}

/// Samples responses to `prompts`: (sequences, attention mask, response mask as float, P).
fn sample(
    m: &Models<'_>,
    prompts: &[&str],
    s: &Sampling<'_>,
    device: Device,
) -> Result<(Tensor, Tensor, Tensor, i64)> {
    let g = s.generation;
    let max_prompt = (s.max_length - g.max_new_tokens) as usize;
    let (ids, prompt_mask) = prompt_batch(s.tok, prompts, max_prompt, device)?;
    let params = SamplingParams {
        max_new_tokens: i64::from(g.max_new_tokens),
        temperature: g.temperature,
        top_k: i64::from(g.top_k),
        top_p: g.top_p,
        eos_token_id: s.tok.eos_token_id.map(i64::from),
        pad_token_id: i64::from(s.tok.pad_token_id),
        seed: s.seed,
    };
    let out = generate(m.actor, &ids, &prompt_mask, &params);
    Ok((
        out.sequences,
        out.attention_mask,
        out.response_mask.to_kind(Kind::Float),
        ids.size()[1],
    ))
}

pub fn make_experience(
    m: &Models<'_>,
    prompts: &[&str],
    sampling: &Sampling<'_>,
    ppo: &ResolvedPpo,
    kl_coef: f64,
    device: Device,
) -> Result<Experience> {
    let (seq, attn, mask, prompt_len) = sample(m, prompts, sampling, device)?;
    let t = scoring_temperature(sampling.generation);
    tch::no_grad(|| {
        let (logp, _) = continuation_logprobs(m.actor, &seq, &attn, prompt_len, t);
        let (ref_logp, _) = continuation_logprobs(m.reference, &seq, &attn, prompt_len, t);
        let values = critic_values(m.critic, &seq, &attn, prompt_len);
        let scores = m.reward.last_token(&seq, &attn);
        let kl = kl_penalty(&logp, &ref_logp, ppo.kl_estimator);
        let rewards = token_rewards(&kl, kl_coef, &scores, &mask, ppo.reward_clip);
        let (advantages, returns) = gae(&rewards, &values, &mask, ppo.gamma, ppo.lambda);
        let advantages = masked_whiten(&advantages, &mask, true);
        Ok(Experience {
            sequences: seq,
            attention_mask: attn,
            prompt_len,
            mask,
            logp,
            values,
            advantages,
            returns,
            scores,
            kl,
        })
    })
}

/// Held-out evaluation: the actor's greedy answers to `prompts`, their mean reward-model score
/// and mean per-token KL (k1) to the reference (at temperature 1: greedy answers have no
/// sampling temperature).
pub fn evaluate(
    m: &Models<'_>,
    prompts: &[&str],
    sampling: &Sampling<'_>,
    device: Device,
) -> Result<(f64, f64)> {
    let greedy = ResolvedGeneration {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        ..sampling.generation.clone()
    };
    let (seq, attn, mask, prompt_len) = sample(
        m,
        prompts,
        &Sampling {
            generation: &greedy,
            ..*sampling
        },
        device,
    )?;
    tch::no_grad(|| {
        let reward = m
            .reward
            .last_token(&seq, &attn)
            .mean(Kind::Float)
            .double_value(&[]);
        let (logp, _) = continuation_logprobs(m.actor, &seq, &attn, prompt_len, 1.0);
        let (ref_logp, _) = continuation_logprobs(m.reference, &seq, &attn, prompt_len, 1.0);
        let kl = masked_mean(
            &kl_penalty(&logp, &ref_logp, KlEstimator::K1),
            &mask,
            Some(1),
        )
        .mean(Kind::Float)
        .double_value(&[]);
        Ok((reward, kl))
    })
}
