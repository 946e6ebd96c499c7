//! A stage's reward sources (`rewards:`), built once, scoring each round's responses: reward
//! models on the token sequences, built-in functions and remote services on the text. The
//! total is the weighted sum; each source's raw scores are kept for the metrics.
use tch::{Device, Kind, Tensor, nn};

use crate::error::{Error, Result};
use crate::models::heads::ScalarHead;
use crate::rewards::{FormatReward, HttpReward, RewardBatch, exact_answer, length_penalty};

/// How one source scores.
pub enum Scorer {
    Model { head: ScalarHead, vs: nn::VarStore },
    ExactAnswer,
    Format(FormatReward),
    Length { target_tokens: u32 },
    Http(HttpReward),
}

/// One weighted source, named for its metrics.
pub struct Source {
    pub name: String,
    pub weight: f64,
    pub scorer: Scorer,
}

/// A batch of responses to score.
pub struct Responses<'a> {
    pub sequences: &'a Tensor,
    pub attention_mask: &'a Tensor,
    pub prompts: &'a [&'a str],
    pub responses: &'a [String],
    pub references: Vec<Option<&'a str>>,
    pub lengths: &'a [i64],
}

/// Scores of a batch.
pub struct Scored {
    /// Per row: the weighted sum.
    pub totals: Vec<f64>,
    /// Each source's raw scores, by name.
    pub by_source: Vec<(String, Vec<f64>)>,
}

pub struct RewardSources {
    pub sources: Vec<Source>,
    /// The stage's generation limit (the length penalty's scale).
    pub max_new_tokens: u32,
}

impl RewardSources {
    /// The reward models' weights (to park them on the CPU between rounds).
    pub fn model_weights(&self) -> Vec<&nn::VarStore> {
        self.sources
            .iter()
            .filter_map(|s| match &s.scorer {
                Scorer::Model { vs, .. } => Some(vs),
                _ => None,
            })
            .collect()
    }

    /// Whether some source compares with the dataset's `reference`.
    pub fn needs_references(&self) -> bool {
        self.sources
            .iter()
            .any(|s| matches!(s.scorer, Scorer::ExactAnswer))
    }

    pub fn score(&self, r: &Responses<'_>) -> Result<Scored> {
        let mut totals = vec![0.0; r.responses.len()];
        let mut by_source = Vec::new();
        for s in &self.sources {
            let scores = self.score_one(&s.scorer, r)?;
            for (total, score) in totals.iter_mut().zip(&scores) {
                *total += s.weight * score;
            }
            by_source.push((s.name.clone(), scores));
        }
        Ok(Scored { totals, by_source })
    }

    fn score_one(&self, scorer: &Scorer, r: &Responses<'_>) -> Result<Vec<f64>> {
        let texts = r.responses.iter();
        Ok(match scorer {
            Scorer::Model { head, .. } => {
                let scores = tch::no_grad(|| head.last_token(r.sequences, r.attention_mask));
                Vec::<f64>::try_from(scores.to_kind(Kind::Double).to_device(Device::Cpu))?
            }
            Scorer::ExactAnswer => texts
                .zip(&r.references)
                .map(|(text, reference)| {
                    let reference = reference.ok_or_else(|| {
                        Error::invalid("<dataset>", "exactAnswer needs a reference on every row")
                    })?;
                    Ok(exact_answer(text, reference))
                })
                .collect::<Result<_>>()?,
            Scorer::Format(format) => texts.map(|t| format.score(t)).collect(),
            Scorer::Length { target_tokens } => r
                .lengths
                .iter()
                .map(|&n| length_penalty(n as usize, *target_tokens, self.max_new_tokens))
                .collect(),
            Scorer::Http(service) => service.score(&RewardBatch {
                prompts: r.prompts,
                responses: r.responses,
                references: &r.references,
            })?,
        })
    }
}
