//! Advantage estimators: the one place the RL kinds differ (besides PPO's critic). Each takes
//! the round's rewards and gives per-token advantages (B, N), 0 on padding. Rows of one prompt's
//! group are adjacent: rows g*k .. g*k + g - 1 answer prompt k. Pure tensor functions.
use tch::{Kind, Tensor};

use super::super::losses::token_rewards;

/// Added to a group's standard deviation before dividing (TRL's GRPO uses 1e-4 too), so a group
/// of equal rewards gives 0 rather than 0/0.
const GROUP_STD_EPS: f64 = 1e-4;

/// Scores (B) as (B / g, g) groups.
fn groups(scores: &Tensor, group: i64) -> Tensor {
    scores.to_kind(Kind::Float).view([-1, group])
}

/// GRPO (Shao et al. 2024, arXiv:2402.03300): each score minus its group's mean, divided by the
/// group's (unbiased) standard deviation unless `scale_by_std` is false (Dr. GRPO). (B) -> (B).
pub fn group_normalised(scores: &Tensor, group: i64, scale_by_std: bool) -> Tensor {
    let g = groups(scores, group);
    let centred = &g - g.mean_dim(1, true, Kind::Float);
    let out = if scale_by_std {
        centred / (g.std_dim(1, true, true) + GROUP_STD_EPS)
    } else {
        centred
    };
    out.view([-1])
}

/// RLOO (Ahmadian et al. 2024, arXiv:2402.14740): each score minus the mean of the other scores
/// of its group. (B) -> (B); needs g >= 2.
pub fn leave_one_out(scores: &Tensor, group: i64) -> Tensor {
    let g = groups(scores, group);
    let others = (g.sum_dim_intlist(1, true, Kind::Float) - &g) / (group - 1) as f64;
    (g - others).view([-1])
}

/// REINFORCE++-baseline (Hu 2025, arXiv:2501.03262): each score minus its group's mean; with
/// groups of one the score is kept (the global whitening that follows is then the baseline).
pub fn group_mean_baseline(scores: &Tensor, group: i64) -> Tensor {
    if group == 1 {
        return scores.to_kind(Kind::Float);
    }
    let g = groups(scores, group);
    (&g - g.mean_dim(1, true, Kind::Float)).view([-1])
}

/// Per-token advantages of a critic-free kind from row scores (B): when `kl_coef` is Some the KL
/// to the reference is a per-token reward and each token's advantage is the undiscounted sum of
/// the rewards from it to the end (score included); otherwise every response token gets its
/// row's score. (B, N), 0 on padding.
pub fn per_token(row_scores: &Tensor, kl: &Tensor, mask: &Tensor, kl_coef: Option<f64>) -> Tensor {
    let real = mask.to_kind(Kind::Bool);
    match kl_coef {
        Some(coef) => {
            let rewards = token_rewards(kl, coef, row_scores, mask, 0.0);
            // Reward-to-go: reversed cumulative sum along the response.
            rewards
                .flip([1])
                .cumsum(1, Kind::Float)
                .flip([1])
                .masked_fill(&real.logical_not(), 0.0)
        }
        None => (row_scores.to_kind(Kind::Float).unsqueeze(1) * mask.to_kind(Kind::Float))
            .masked_fill(&real.logical_not(), 0.0),
    }
}

/// Whether each group's scores (B) are all equal: (B / g) bool. Such groups carry no learning
/// signal for group-relative advantages (DAPO's dynamic sampling drops them).
pub fn flat_groups(scores: &Tensor, group: i64) -> Tensor {
    let g = groups(scores, group);
    let spread = g.amax(1, false) - g.amin(1, false);
    spread.le(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).view([-1])).unwrap()
    }

    fn close(t: &Tensor, expected: &[f64]) {
        let got = values(t);
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-4, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn group_normalised_centres_and_scales_each_group() {
        let s = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 5.0, 5.0, 5.0, 5.0]);
        // Group 1: mean 0.5, unbiased std 0.57735.
        let z = 0.5 / (0.577_350_3 + GROUP_STD_EPS);
        close(
            &group_normalised(&s, 4, true),
            &[z, -z, -z, z, 0.0, 0.0, 0.0, 0.0],
        );
        close(
            &group_normalised(&s, 4, false),
            &[0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
        );
    }

    #[test]
    fn leave_one_out_subtracts_the_others_mean() {
        let s = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 2.0, 4.0, 0.0]);
        // Group 1: 3 - 0, 0 - 1.5, 0 - 1.5; group 2: 2 - 2, 4 - 1, 0 - 3.
        close(&leave_one_out(&s, 3), &[3.0, -1.5, -1.5, 0.0, 3.0, -3.0]);
    }

    #[test]
    fn reinforce_baseline_is_the_group_mean_and_groups_of_one_keep_the_score() {
        let s = Tensor::from_slice(&[1.0f32, 3.0, 10.0, 20.0]);
        close(&group_mean_baseline(&s, 2), &[-1.0, 1.0, -5.0, 5.0]);
        close(&group_mean_baseline(&s, 1), &[1.0, 3.0, 10.0, 20.0]);
    }

    #[test]
    fn per_token_spreads_the_row_score_or_sums_kl_rewards_to_go() {
        let scores = Tensor::from_slice(&[2.0f32, -1.0]);
        let kl = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 1.0, 9.0]).view([2, 3]);
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0]).view([2, 3]);
        close(
            &per_token(&scores, &kl, &mask, None),
            &[2.0, 2.0, 2.0, -1.0, -1.0, 0.0],
        );
        // Row 1 rewards: -0.1, -0.1, 2 - 0.1 -> to go: 1.7, 1.8, 1.9. Row 2: -0.1, -1.1, pad.
        close(
            &per_token(&scores, &kl, &mask, Some(0.1)),
            &[1.7, 1.8, 1.9, -1.2, -1.1, 0.0],
        );
    }

    #[test]
    fn flat_groups_are_those_with_one_value() {
        let s = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 1.0, 0.5, 0.5]);
        let flat = Vec::<bool>::try_from(flat_groups(&s, 2)).unwrap();
        assert_eq!(flat, [true, false, true]);
    }
}
