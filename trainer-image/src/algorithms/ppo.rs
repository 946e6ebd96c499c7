//! PPO (InstructGPT recipe): make experience with the actor, score it with the reward model,
//! penalise per-token KL to the reference, estimate advantages with token-level GAE against the
//! critic, then several clipped policy and value updates on that experience.
//! Behaviour log-probs come from the actor's full distribution, recomputed after sampling: the
//! top-k/top-p filtered sampling distribution is not the policy being optimised.
use tch::{Device, Kind, Tensor, nn};

use super::losses::{
    KlController, entropy_from_logits, gae, kl_penalty, masked_mean, masked_whiten, policy_loss,
    token_rewards, value_loss,
};
use super::continuation_logprobs;
use super::optim::Optimizer;
use crate::data::Example;
use crate::error::{Error, Result};
use crate::generation::{SamplingParams, generate};
use crate::models::CausalLm;
use crate::models::heads::ScalarHead;
use crate::rng::SplitMix64;
use crate::tokenizer::Tokenizer;
use rlhf_spec::{ResolvedPpo, ResolvedTraining};

/// The four models of PPO. Actor and critic train; reference and reward model are frozen.
pub struct Models<'a> {
    pub actor: &'a dyn CausalLm,
    pub actor_vs: &'a nn::VarStore,
    pub critic: &'a ScalarHead,
    pub critic_vs: &'a nn::VarStore,
    pub reference: &'a dyn CausalLm,
    pub reward: &'a ScalarHead,
}

/// One round's experience, all response-aligned (B, N) unless said otherwise.
struct Experience {
    /// (B, P + N) prompt and response, and its attention mask.
    sequences: Tensor,
    attention_mask: Tensor,
    prompt_len: i64,
    mask: Tensor,
    logp: Tensor,
    values: Tensor,
    advantages: Tensor,
    returns: Tensor,
    /// (B) reward-model scores.
    scores: Tensor,
    kl: Tensor,
}

/// What a round reports (the metrics of ARCHITECTURE.md).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoundStats {
    pub round: u64,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub kl: f64,
    pub kl_coef: f64,
    pub entropy: f64,
    pub policy_loss: f64,
    pub value_loss: f64,
    pub clip_fraction: f64,
}

/// Left-padded prompt batch (B, P) and mask, each prompt keeping its last `max_prompt` tokens.
pub fn prompt_batch(tok: &Tokenizer, prompts: &[&str], max_prompt: usize, device: Device) -> Result<(Tensor, Tensor)> {
    let rows: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| {
            let ids = tok.encode(p)?;
            Ok(ids[ids.len().saturating_sub(max_prompt)..].iter().map(|&i| i64::from(i)).collect())
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
    Ok((Tensor::from_slice(&ids).view(shape).to_device(device), Tensor::from_slice(&mask).view(shape).to_device(device)))
}

fn critic_values(critic: &ScalarHead, seq: &Tensor, attn: &Tensor, prompt_len: i64) -> Tensor {
    let n = seq.size()[1] - prompt_len;
    critic.per_token(seq, attn).narrow(1, prompt_len - 1, n) // the value of the state each token is chosen in
}

fn make_experience(m: &Models<'_>, tok: &Tokenizer, prompts: &[&str], cfg: &ResolvedTraining, ppo: &ResolvedPpo, kl_coef: f64, seed: i64, device: Device) -> Result<Experience> {
    let max_prompt = (cfg.max_length - ppo.generation.max_new_tokens) as usize;
    let (ids, prompt_mask) = prompt_batch(tok, prompts, max_prompt, device)?;
    let g = &ppo.generation;
    let sampling = SamplingParams {
        max_new_tokens: i64::from(g.max_new_tokens),
        temperature: g.temperature,
        top_k: i64::from(g.top_k),
        top_p: g.top_p,
        eos_token_id: tok.eos_token_id.map(i64::from),
        pad_token_id: i64::from(tok.pad_token_id),
        seed,
    };
    let out = generate(m.actor, &ids, &prompt_mask, &sampling);
    let prompt_len = ids.size()[1];
    tch::no_grad(|| {
        let (seq, attn) = (&out.sequences, &out.attention_mask);
        let mask = out.response_mask.to_kind(Kind::Float);
        let (logp, _) = continuation_logprobs(m.actor, seq, attn, prompt_len);
        let (ref_logp, _) = continuation_logprobs(m.reference, seq, attn, prompt_len);
        let values = critic_values(m.critic, seq, attn, prompt_len);
        let scores = m.reward.last_token(seq, attn);
        let kl = kl_penalty(&logp, &ref_logp, ppo.kl_estimator);
        let rewards = token_rewards(&kl, kl_coef, &scores, &mask, ppo.reward_clip);
        let (advantages, returns) = gae(&rewards, &values, &mask, ppo.gamma, ppo.lambda);
        let advantages = masked_whiten(&advantages, &mask, true);
        Ok(Experience { sequences: seq.shallow_clone(), attention_mask: attn.shallow_clone(), prompt_len, mask, logp, values, advantages, returns, scores, kl })
    })
}

/// Rows `idx` of a (B, ...) tensor.
fn rows(t: &Tensor, idx: &Tensor) -> Tensor {
    t.index_select(0, idx)
}

/// Clipped policy and value updates over the experience, in micro-batches of `micro`; returns
/// mean (policy loss, value loss, clip fraction, entropy).
fn learn(m: &Models<'_>, exp: &Experience, actor_opt: &mut Optimizer, critic_opt: &mut Optimizer, ppo: &ResolvedPpo, micro: i64) -> (f64, f64, f64, f64) {
    let b = exp.sequences.size()[0];
    let mut sums = [0.0; 4];
    let mut count = 0.0f64;
    for _ in 0..ppo.ppo_epochs {
        for start in (0..b).step_by(micro as usize) {
            let idx = Tensor::arange_start(start, (start + micro).min(b), (Kind::Int64, exp.sequences.device()));
            let (seq, attn, mask) = (rows(&exp.sequences, &idx), rows(&exp.attention_mask, &idx), rows(&exp.mask, &idx));
            let (logp, logits) = continuation_logprobs(m.actor, &seq, &attn, exp.prompt_len);
            let (pl, clip, _) = policy_loss(&logp, &rows(&exp.logp, &idx), &rows(&exp.advantages, &idx), &mask, ppo.clip_range);
            let entropy = masked_mean(&entropy_from_logits(&logits), &mask, None);
            (&pl - &entropy * ppo.entropy_coef).backward();
            actor_opt.step();
            let values = critic_values(m.critic, &seq, &attn, exp.prompt_len);
            let vl = value_loss(&values, &rows(&exp.values, &idx), &rows(&exp.returns, &idx), &mask, ppo.value_clip_range);
            vl.backward();
            critic_opt.step();
            for (s, v) in sums.iter_mut().zip([&pl, &vl, &clip, &entropy]) {
                *s += v.double_value(&[]);
            }
            count += 1.0;
        }
    }
    let [pl, vl, clip, ent] = sums.map(|s| s / count.max(1.0));
    (pl, vl, clip, ent)
}

/// Runs PPO over `examples` (prompts): each round samples `rolloutBatchSize` prompts; rounds
/// continue for `epochs` passes over the prompts or until `maxSteps` rounds. `on_round` sees
/// every round's statistics.
pub fn train(m: &Models<'_>, tok: &Tokenizer, examples: &[Example], cfg: &ResolvedTraining, ppo: &ResolvedPpo, device: Device, mut on_round: impl FnMut(&RoundStats)) -> Result<Vec<RoundStats>> {
    if ppo.ptx_coef > 0.0 {
        return Err(Error::invalid("<ppo.ptxCoef>", "the pretraining (ptx) loss is not implemented yet; set ptxCoef to 0"));
    }
    let prompts: Vec<&str> = examples
        .iter()
        .map(|e| match e {
            Example::Prompt { prompt, .. } => Ok(prompt.as_str()),
            other => Err(Error::invalid("<dataset>", format!("a ppo stage needs prompt examples, got {other:?}"))),
        })
        .collect::<Result<_>>()?;
    let mut actor_opt = Optimizer::new(m.actor_vs, cfg)?;
    let critic_cfg = ResolvedTraining { learning_rate: ppo.critic_learning_rate, ..cfg.clone() };
    let mut critic_opt = Optimizer::new(m.critic_vs, &critic_cfg)?;
    let rollout = ppo.rollout_batch_size as usize;
    let rounds_per_epoch = (prompts.len() / rollout).max(1) as u64;
    let total = cfg.max_steps.unwrap_or(u64::MAX).min(rounds_per_epoch * u64::from(cfg.epochs));
    let mut kl_ctl = KlController::new(ppo.kl_coef, ppo.target_kl, 10_000);
    let mut rng = SplitMix64(cfg.seed);
    let mut stats = Vec::new();
    for round in 1..=total {
        let picked: Vec<&str> = (0..rollout).map(|_| prompts[rng.below(prompts.len() as u64) as usize]).collect();
        let exp = make_experience(m, tok, &picked, cfg, ppo, kl_ctl.value(), (cfg.seed as i64).wrapping_add(round as i64), device)?;
        let (policy_loss, value_loss, clip_fraction, entropy) = learn(m, &exp, &mut actor_opt, &mut critic_opt, ppo, i64::from(cfg.micro_batch_size));
        let kl = masked_mean(&exp.kl, &exp.mask, Some(1)).mean(Kind::Float).double_value(&[]);
        let s = RoundStats {
            round,
            reward_mean: exp.scores.mean(Kind::Float).double_value(&[]),
            reward_std: exp.scores.std(true).double_value(&[]),
            kl,
            kl_coef: kl_ctl.value(),
            entropy,
            policy_loss,
            value_loss,
            clip_fraction,
        };
        kl_ctl.update(kl, rollout as u64);
        on_round(&s);
        stats.push(s);
    }
    Ok(stats)
}

/// Mean reward-model score of the actor's greedy answers to `prompts` (an evaluation).
pub fn mean_reward(actor: &dyn CausalLm, reward: &ScalarHead, tok: &Tokenizer, prompts: &[&str], max_prompt: usize, max_new_tokens: i64, device: Device) -> Result<f64> {
    let (ids, mask) = prompt_batch(tok, prompts, max_prompt, device)?;
    let params = SamplingParams {
        max_new_tokens,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        eos_token_id: tok.eos_token_id.map(i64::from),
        pad_token_id: i64::from(tok.pad_token_id),
        seed: 0,
    };
    let out = generate(actor, &ids, &mask, &params);
    Ok(tch::no_grad(|| reward.last_token(&out.sequences, &out.attention_mask)).mean(Kind::Float).double_value(&[]))
}
