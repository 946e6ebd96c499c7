//! Experience making: sample `groupSize` responses per prompt with the actor (each row from its
//! own seed), then score them without gradients: the actor's and reference's log-probs under
//! their full distributions at the sampling temperature (see [`scoring_temperature`]), the
//! critic's values (PPO), the rewards of every source, and the advantages of the stage's
//! estimator (advantages.rs; PPO's GAE, whitened over all ranks).
use tch::{Device, Kind, Tensor};

use super::super::continuation_logprobs;
use super::super::losses::{gae, kl_penalty, masked_mean, masked_whiten, token_rewards};
use super::advantages::{
    flat_groups, group_mean_baseline, group_normalised, leave_one_out, per_token,
};
use super::scoring::Responses;
use super::{Estimator, Models, PromptRow};
use crate::distributed::Dist;
use crate::error::Result;
use crate::generation::{SamplingParams, generate};
use crate::models::heads::ScalarHead;
use crate::record::Evaluation;
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;
use rlhf_spec::{KlEstimator, ResolvedGeneration, ResolvedRl};

/// One round's experience on this rank, response-aligned (B, N) unless said otherwise.
pub struct Experience {
    /// (B, P + N) prompt and response, and its attention mask.
    pub sequences: Tensor,
    pub attention_mask: Tensor,
    pub prompt_len: i64,
    /// Response tokens (float).
    pub mask: Tensor,
    /// `mask` without the rows left out of the loss (dynamic sampling).
    pub loss_mask: Tensor,
    pub logp: Tensor,
    pub ref_logp: Tensor,
    /// PPO only.
    pub values: Option<Tensor>,
    pub returns: Option<Tensor>,
    pub advantages: Tensor,
    /// (B) summed, weighted rewards after the missing-EOS penalty and clipping.
    pub scores: Tensor,
    /// Each source's raw scores, by name.
    pub sources: Vec<(String, Vec<f64>)>,
    pub kl: Tensor,
    /// Per row: the response ended with EOS.
    pub ended: Vec<bool>,
    /// Per row: response tokens.
    pub lengths: Vec<i64>,
    /// Per group (groups of more than one): the scores' standard deviation.
    pub group_std: Vec<f64>,
    /// Groups left out of the loss.
    pub groups_dropped: usize,
}

impl Experience {
    /// Sum over rows of each row's mean per-token KL.
    pub fn row_kl_sum(&self) -> f64 {
        masked_mean(&self.kl, &self.mask, Some(1))
            .sum(Kind::Double)
            .double_value(&[])
    }

    /// Positions of the (B, P + N) sequences: the work per model pass.
    pub fn positions(&self) -> i64 {
        self.sequences.numel() as i64
    }

    pub fn rows(&self) -> i64 {
        self.sequences.size()[0]
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

/// The temperature every log-prob (old, reference, new, entropy) is taken at: the sampling
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
}

/// Sampled responses to rows of prompts.
pub struct Sampled {
    pub sequences: Tensor,
    pub attention_mask: Tensor,
    /// (B, N) response tokens, float.
    pub mask: Tensor,
    pub prompt_len: i64,
    pub ended: Vec<bool>,
    pub lengths: Vec<i64>,
    /// The responses' text (EOS and padding left out).
    pub texts: Vec<String>,
}

/// Samples one response per entry of `prompts`, row i from `row_seeds[i]`.
pub fn sample(
    m: &Models<'_>,
    prompts: &[&str],
    row_seeds: Vec<u64>,
    s: &Sampling<'_>,
    device: Device,
) -> Result<Sampled> {
    let g = s.generation;
    let max_prompt = (s.max_length - g.max_new_tokens) as usize;
    let (ids, prompt_mask) = prompt_batch(s.tok, prompts, max_prompt, device)?;
    let eos = s.tok.eos_token_id.map(i64::from);
    let params = SamplingParams {
        max_new_tokens: i64::from(g.max_new_tokens),
        temperature: g.temperature,
        top_k: i64::from(g.top_k),
        top_p: g.top_p,
        eos_token_id: eos,
        pad_token_id: i64::from(s.tok.pad_token_id),
        row_seeds,
    };
    let out = generate(m.actor, &ids, &prompt_mask, &params);
    let prompt_len = ids.size()[1];
    let response = out
        .sequences
        .narrow(1, prompt_len, out.response_mask.size()[1]);
    let rows = Vec::<Vec<i64>>::try_from(response.to_device(Device::Cpu))?;
    let kept = Vec::<Vec<i64>>::try_from(out.response_mask.to_device(Device::Cpu))?;
    let (mut ended, mut lengths, mut texts) = (Vec::new(), Vec::new(), Vec::new());
    for (tokens, keep) in rows.iter().zip(&kept) {
        let real: Vec<i64> = tokens
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k == 1)
            .map(|(t, _)| *t)
            .collect();
        let has_eos = eos.is_some_and(|e| real.last() == Some(&e));
        let text_ids: Vec<u32> = real[..real.len() - usize::from(has_eos)]
            .iter()
            .map(|&t| t as u32)
            .collect();
        ended.push(has_eos);
        lengths.push(real.len() as i64);
        texts.push(s.tok.decode(&text_ids)?);
    }
    Ok(Sampled {
        sequences: out.sequences,
        attention_mask: out.attention_mask,
        mask: out.response_mask.to_kind(Kind::Float),
        prompt_len,
        ended,
        lengths,
        texts,
    })
}

/// Makes this rank's experience for `prompts` (each answered `rl.groupSize` times, adjacent
/// rows), row r seeded by `row_seeds[r]`.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the round
pub fn make_experience(
    m: &Models<'_>,
    prompts: &[PromptRow<'_>],
    row_seeds: Vec<u64>,
    sampling: &Sampling<'_>,
    rl: &ResolvedRl,
    estimator: &Estimator,
    kl_coef: f64,
    device: Device,
    dist: &Dist,
) -> Result<Experience> {
    let group = rl.group_size as usize;
    let rows: Vec<&PromptRow<'_>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p, group))
        .collect();
    let texts: Vec<&str> = rows.iter().map(|r| r.prompt).collect();
    let s = sample(m, &texts, row_seeds, sampling, device)?;
    let t = scoring_temperature(sampling.generation);
    let (seq, attn, mask, prompt_len) = (&s.sequences, &s.attention_mask, &s.mask, s.prompt_len);
    let (logp, ref_logp, values) = tch::no_grad(|| {
        let (logp, _) = continuation_logprobs(m.actor, seq, attn, prompt_len, t);
        let (ref_logp, _) = continuation_logprobs(m.reference, seq, attn, prompt_len, t);
        let values = m
            .critic
            .map(|c| critic_values(c.head, seq, attn, prompt_len));
        (logp, ref_logp, values)
    });
    let responses = Responses {
        sequences: seq,
        attention_mask: attn,
        prompts: &texts,
        responses: &s.texts,
        references: rows.iter().map(|r| r.reference).collect(),
        lengths: &s.lengths,
    };
    let scored = m.rewards.score(&responses)?;
    let totals: Vec<f64> = scored
        .totals
        .iter()
        .zip(&s.ended)
        .map(|(score, ended)| {
            let penalised = if *ended {
                *score
            } else {
                score - rl.missing_eos_penalty
            };
            if rl.reward_clip > 0.0 {
                penalised.clamp(-rl.reward_clip, rl.reward_clip)
            } else {
                penalised
            }
        })
        .collect();
    let scores = Tensor::from_slice(&totals)
        .to_kind(Kind::Float)
        .to_device(device);
    let kl = kl_penalty(&logp, &ref_logp, rl.kl_estimator);
    let in_reward = rl.kl_in_reward.then_some(kl_coef);
    let g = group as i64;
    let (advantages, returns) = tch::no_grad(|| -> Result<(Tensor, Option<Tensor>)> {
        Ok(match estimator {
            Estimator::Gae { gamma, lambda } => {
                let values = values.as_ref().expect("PPO has a critic");
                let rewards = token_rewards(&kl, in_reward.unwrap_or(0.0), &scores, mask, 0.0);
                let (adv, returns) = gae(&rewards, values, mask, *gamma, *lambda);
                (masked_whiten(&adv, mask, |s| dist.sum(s))?, Some(returns))
            }
            Estimator::Group { scale_by_std } => (
                per_token(
                    &group_normalised(&scores, g, *scale_by_std),
                    &kl,
                    mask,
                    in_reward,
                ),
                None,
            ),
            Estimator::LeaveOneOut => (
                per_token(&leave_one_out(&scores, g), &kl, mask, in_reward),
                None,
            ),
            Estimator::Reinforce => {
                let adv = per_token(&group_mean_baseline(&scores, g), &kl, mask, in_reward);
                (masked_whiten(&adv, mask, |s| dist.sum(s))?, None)
            }
        })
    })?;
    let (loss_mask, groups_dropped) = match estimator {
        Estimator::Group { .. } if m.dynamic_sampling => {
            let flat = flat_groups(&scores, g);
            let dropped = flat.sum(Kind::Int64).int64_value(&[]) as usize;
            let keep_rows = flat
                .logical_not()
                .repeat_interleave_self_int(g, 0, None)
                .to_kind(Kind::Float)
                .unsqueeze(1);
            (mask * keep_rows, dropped)
        }
        _ => (mask.shallow_clone(), 0),
    };
    let group_std = if group > 1 {
        totals
            .chunks(group)
            .map(|c| {
                let mean = c.iter().sum::<f64>() / c.len() as f64;
                (c.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (c.len() - 1) as f64).sqrt()
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(Experience {
        sequences: s.sequences.shallow_clone(),
        attention_mask: s.attention_mask.shallow_clone(),
        prompt_len,
        mask: s.mask.shallow_clone(),
        loss_mask,
        logp,
        ref_logp,
        values,
        returns,
        advantages,
        scores,
        sources: scored.by_source,
        kl,
        ended: s.ended,
        lengths: s.lengths,
        group_std,
        groups_dropped,
    })
}

/// Responses sampled per held-out prompt: the evaluation estimates the policy's expected reward.
pub const HELD_OUT_SAMPLES: usize = 4;

/// Seeds the held-out samples from (row r of the evaluation gets `derive(HELD_OUT_SEED, r)`), the
/// same in every evaluation, so before and after training compare the same random draws.
const HELD_OUT_SEED: u64 = 0x4845_4C44;

/// Held-out evaluation of the policy RL optimises: [`HELD_OUT_SAMPLES`] responses per prompt
/// sampled with the stage's generation settings (fixed seeds), their mean total reward, each
/// source's mean, and the mean per-token KL (k1, at the sampling temperature) to the reference,
/// an unbiased estimate since the responses come from the actor. The greedy answer is not used:
/// it is not the distribution being trained, and on the tiny models of the tests its reward
/// moved against the sampled reward RL raised (README: Algorithms and rewards).
pub fn evaluate(
    m: &Models<'_>,
    prompts: &[PromptRow<'_>],
    sampling: &Sampling<'_>,
    device: Device,
) -> Result<Evaluation> {
    let rows: Vec<&PromptRow<'_>> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(p, HELD_OUT_SAMPLES))
        .collect();
    let texts: Vec<&str> = rows.iter().map(|p| p.prompt).collect();
    let seeds = (0..rows.len() as u64)
        .map(|r| SplitMix64::derive(HELD_OUT_SEED, r))
        .collect();
    let s = sample(m, &texts, seeds, sampling, device)?;
    let responses = Responses {
        sequences: &s.sequences,
        attention_mask: &s.attention_mask,
        prompts: &texts,
        responses: &s.texts,
        references: rows.iter().map(|p| p.reference).collect(),
        lengths: &s.lengths,
    };
    let scored = m.rewards.score(&responses)?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let by_source = scored
        .by_source
        .iter()
        .map(|(name, v)| (name.clone(), mean(v)))
        .collect();
    let t = scoring_temperature(sampling.generation);
    let kl = tch::no_grad(|| {
        let (seq, attn, p) = (&s.sequences, &s.attention_mask, s.prompt_len);
        let (logp, _) = continuation_logprobs(m.actor, seq, attn, p, t);
        let (ref_logp, _) = continuation_logprobs(m.reference, seq, attn, p, t);
        masked_mean(
            &kl_penalty(&logp, &ref_logp, KlEstimator::K1),
            &s.mask,
            Some(1),
        )
        .mean(Kind::Float)
        .double_value(&[])
    });
    Ok(Evaluation {
        reward_mean: Some(mean(&scored.totals)),
        kl: Some(kl),
        reward_sources: by_source,
        ..Evaluation::default()
    })
}
