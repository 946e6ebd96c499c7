//! Each function against values worked out by hand, then against reference values computed once
//! with PyTorch 2.11 (fp32, CPU) from the same inputs; the comments give the Python. `trl.*` and
//! `openrlhf.*` name those projects' formulas, re-typed in the reference script.
#![allow(clippy::excessive_precision)] // reference values exactly as PyTorch printed them
use super::*;
use rlhf_spec::KlEstimator::{K1, K3};
use tch::Device;

fn rows(values: &[f32], cols: i64) -> Tensor {
    Tensor::from_slice(values).view([-1, cols])
}

fn vector(values: &[f32]) -> Tensor {
    Tensor::from_slice(values)
}

/// |actual - expected| <= 1e-6 (1 + |expected|) everywhere: 1e-6 in fp32, relative above 1.
#[track_caller]
fn assert_close(actual: &Tensor, expected: &[f32]) {
    let got = Vec::<f32>::try_from(&actual.to_kind(Kind::Float).flatten(0, -1)).unwrap();
    assert_eq!(got.len(), expected.len(), "got {got:?}");
    for (g, e) in got.iter().zip(expected) {
        assert!(
            (g - e).abs() <= 1e-6 * (1.0 + e.abs()),
            "got {got:?}, expected {expected:?}"
        );
    }
}

/// (2, 3, 5) logits: torch.sin(torch.arange(30.) * 0.7).mul(3).view(2, 3, 5).
fn wave_logits() -> Tensor {
    ((Tensor::arange(30, (Kind::Float, Device::Cpu)) * 0.7).sin() * 3.0).view([2, 3, 5])
}

#[test]
fn masked_mean_ignores_padding() {
    // Padding holds inf and NaN; the all-padding column gives 0.
    let x = rows(&[1.0, 2.0, f32::INFINITY, 4.0, f32::NAN, 6.0], 3);
    let mask = rows(&[1.0, 1.0, 0.0, 1.0, 0.0, 0.0], 3);
    assert_close(&masked_mean(&x, &mask, None), &[7.0 / 3.0]);
    assert_close(&masked_mean(&x, &mask, Some(1)), &[1.5, 4.0]);
    assert_close(&masked_mean(&x, &mask, Some(0)), &[2.5, 2.0, 0.0]);
    // trl.core.masked_mean(x, m) and masked_mean(x, m, axis=1), bool mask here.
    let x = rows(&[0.5, -1.2, 2.0, 9.0, 1.5, 0.3, 7.0, -8.0], 4);
    let mask = rows(&[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], 4).to_kind(Kind::Bool);
    assert_close(&masked_mean(&x, &mask, None), &[0.620000005]);
    assert_close(
        &masked_mean(&x, &mask, Some(1)),
        &[0.433333308, 0.899999976],
    );
}

/// One batch's moments: what a single rank's `Dist::sum` returns.
fn this_batch(sums: &[f64]) -> crate::error::Result<Vec<f64>> {
    Ok(sums.to_vec())
}

#[test]
fn masked_whiten_uses_real_tokens_only() {
    let whiten = |x: &Tensor, mask: &Tensor| masked_whiten(x, mask, this_batch).unwrap();
    // Real [1, 3]: mean 2, unbiased variance 2; the padded 100 changes nothing.
    let (x, mask) = (vector(&[1.0, 3.0, 100.0]), vector(&[1.0, 1.0, 0.0]));
    let s = 1.0 / (2.0f32 + 1e-8).sqrt();
    assert_close(&whiten(&x, &mask), &[-s, s, 0.0]);
    // One real token: 0, not NaN.
    assert_close(
        &whiten(&vector(&[5.0, 1.0]), &vector(&[1.0, 0.0])),
        &[0.0, 0.0],
    );
    // trl.core.masked_whiten(x, m, shift_mean=True) * m.
    let x = rows(&[0.5, -1.2, 2.0, 9.0, 1.5, 0.3, 7.0, -8.0], 4);
    let mask = rows(&[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0], 4);
    let shifted = [
        -0.0971095115,
        -1.47282755,
        1.1167593,
        0.0,
        0.712136388,
        -0.258958668,
        0.0,
        0.0,
    ];
    assert_close(&whiten(&x, &mask), &shifted);
    // Moments summed over "ranks" (here: the batch twice) leave mean and variance unchanged
    // up to the n - 1 divisor: 2n - 1 instead of n - 1.
    let twice = |s: &[f64]| Ok(s.iter().map(|v| 2.0 * v).collect());
    let n = 5.0f64;
    let scale = ((2.0 * n - 1.0) / (2.0 * (n - 1.0))).sqrt() as f32;
    let expected: Vec<f32> = shifted.iter().map(|v| v * scale).collect();
    assert_close(&masked_whiten(&x, &mask, twice).unwrap(), &expected);
}

#[test]
fn token_logprobs_and_entropy() {
    // softmax([0, ln 3]) = [1/4, 3/4]; bf16 logits still give fp32 results.
    let logits = Tensor::from_slice(&[0.0, 3.0f32.ln()]).view([1, 1, 2]);
    let logp = token_logprobs(
        &logits.to_kind(Kind::BFloat16),
        &Tensor::from_slice(&[1i64]).view([1, 1]),
    );
    assert_eq!(logp.kind(), Kind::Float);
    assert!(
        (logp.double_value(&[0, 0]) - 0.75f64.ln()).abs() < 1e-2,
        "bf16 rounds ln 3"
    );
    assert_close(
        &token_logprobs(&logits, &Tensor::from_slice(&[0i64]).view([1, 1])),
        &[0.25f32.ln()],
    );
    let h = -(0.25 * 0.25f32.ln() + 0.75 * 0.75f32.ln());
    assert_close(&entropy_from_logits(&logits), &[h]);
    assert_close(
        &entropy_from_logits(&Tensor::zeros([1, 1, 4], (Kind::Float, Device::Cpu))),
        &[4f32.ln()],
    );
    // torch.log_softmax(logits, -1).gather(-1, tokens[..., None]); Categorical(logits=logits).entropy().
    let tokens = Tensor::from_slice(&[0i64, 4, 2, 3, 1, 1]).view([2, 3]);
    let expected = [
        -3.76565742,
        -0.466575116,
        -1.18536294,
        -2.07850885,
        -1.01932156,
        -5.173841,
    ];
    assert_close(&token_logprobs(&wave_logits(), &tokens), &expected);
    let expected = [
        1.27803171,
        1.08075237,
        1.22989142,
        0.544974983,
        0.936245263,
        0.784201384,
    ];
    assert_close(&entropy_from_logits(&wave_logits()), &expected);
}

#[test]
fn sft_loss_shifts_and_masks() {
    // Only logits[0] -> labels[1] counts: -ln(3/4). The last logits and the -100 label are never read.
    let logits = Tensor::from_slice(&[0.0, 3.0f32.ln(), 5.0, f32::NAN]).view([1, 2, 2]);
    let labels = Tensor::from_slice(&[-100i64, 1]).view([1, 2]);
    assert_close(
        &sft_loss(&logits, &labels, &rows(&[0.0, 1.0], 2)),
        &[-(0.75f32.ln())],
    );
    // F.cross_entropy(logits[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1), ignore_index=-100)
    // with labels [[-100, 4, 2], [3, 1, -100]] (-100 where the mask is 0).
    let labels = Tensor::from_slice(&[-100i64, 4, 2, 3, 1, -100]).view([2, 3]);
    let mask = rows(&[0.0, 1.0, 1.0, 1.0, 1.0, 0.0], 3);
    assert_close(&sft_loss(&wave_logits(), &labels, &mask), &[3.78065872]);
}

#[test]
fn pairwise_rm_loss_and_accuracy() {
    // Margins 1 and 0 (a tie counts as wrong): (ln(1 + e^-1) + ln 2) / 2.
    let (loss, accuracy) = pairwise_rm_loss(&vector(&[1.0, 0.0]), &vector(&[0.0, 0.0]));
    assert_close(&loss, &[((1.0 + (-1f32).exp()).ln() + 2f32.ln()) / 2.0]);
    assert_close(&accuracy, &[0.5]);
    // -F.logsigmoid(rc - rr).mean(), (rc > rr).float().mean(); margins up to +-100 stay finite.
    let chosen = vector(&[0.3, -1.2, 2.5, 40.0, -50.0]);
    let (loss, accuracy) = pairwise_rm_loss(&chosen, &vector(&[0.1, 0.4, 2.5, -60.0, 50.0]));
    assert_close(&loss, &[20.615036]);
    assert_close(&accuracy, &[0.4]);
}

#[test]
fn kl_penalty_estimators() {
    // p = 1/2, q = 1/4: K1 = ln 2; K3 = (1/2 - 1) - ln(1/2).
    let (logp, ref_logp) = (vector(&[0.5f32.ln()]), vector(&[0.25f32.ln()]));
    assert_close(&kl_penalty(&logp, &ref_logp, K1), &[2f32.ln()]);
    assert_close(&kl_penalty(&logp, &ref_logp, K3), &[2f32.ln() - 0.5]);
    // k1 = logp - ref; ratio = torch.exp(ref - logp); k3 = (ratio - 1) - torch.log(ratio).
    let logp = rows(&[-0.5, -2.0, -0.1, -3.0, -1.0, -0.7], 3);
    let ref_logp = rows(&[-0.7, -1.5, -0.1, -1.0, -2.5, -0.2], 3);
    assert_close(
        &kl_penalty(&logp, &ref_logp, K1),
        &[0.2, -0.5, 0.0, -2.0, 1.5, -0.5],
    );
    let expected = [
        0.0187307447,
        0.148721248,
        0.0,
        4.38905621,
        0.723130167,
        0.148721248,
    ];
    assert_close(&kl_penalty(&logp, &ref_logp, K3), &expected);
}

#[test]
fn token_rewards_put_the_score_on_the_last_real_token() {
    // A right-padded row, a row behind its prompt, a row without real tokens.
    let (kl, scores) = (
        Tensor::ones([3, 4], (Kind::Float, Device::Cpu)),
        vector(&[5.0, -20.0, 3.0]),
    );
    let mask = rows(
        &[1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        4,
    );
    let clipped = [
        -0.1, -0.1, 4.9, 0.0, 0.0, -0.1, -10.1, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_close(&token_rewards(&kl, 0.1, &scores, &mask, 10.0), &clipped);
    let unclipped = [
        -0.1, -0.1, 4.9, 0.0, 0.0, -0.1, -20.1, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];
    assert_close(&token_rewards(&kl, 0.1, &scores, &mask, 0.0), &unclipped);
    // openrlhf.models.utils.compute_reward(r=[12, -0.4], kl_coef=0.05, kl=k3 of kl_penalty_estimators,
    // action_mask=[[1, 1, 0], [1, 1, 1]], reward_clip_range=(-10, 10)) * action_mask.
    let kl = rows(
        &[
            0.0187307447,
            0.148721248,
            0.0,
            4.38905621,
            0.723130167,
            0.148721248,
        ],
        3,
    );
    let mask = rows(&[1.0, 1.0, 0.0, 1.0, 1.0, 1.0], 3);
    let expected = [
        -0.000936537224,
        9.9925642,
        0.0,
        -0.219452813,
        -0.0361565091,
        -0.407436073,
    ];
    assert_close(
        &token_rewards(&kl, 0.05, &vector(&[12.0, -0.4]), &mask, 10.0),
        &expected,
    );
}

#[test]
fn gae_respects_rows_of_different_lengths() {
    // gamma = lambda = 1: A_1 = 1 - 0.25, A_0 = 0 + 0.25 - 0.5 + 0.75; returns = A + V. Row 2 has
    // padding between its tokens, holding garbage: skipped, same result.
    let rewards = rows(&[0.0, 1.0, 50.0, 0.0, 50.0, 1.0], 3);
    let values = rows(&[0.5, 0.25, 9.0, 0.5, 9.0, 0.25], 3);
    let mask = rows(&[1.0, 1.0, 0.0, 1.0, 0.0, 1.0], 3);
    let (advantages, returns) = gae(&rewards, &values, &mask, 1.0, 1.0);
    assert_close(&advantages, &[0.5, 0.75, 0.0, 0.5, 0.0, 0.75]);
    assert_close(&returns, &[1.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    // TRL's GAE loop (PPOTrainer.compute_advantages) on each row cut to its length (5 and 3),
    // gamma 0.99, lambda 0.95, zeros after; returns = (advantages + values) * mask.
    let rewards = rows(&[0.1, -0.2, 0.0, 0.3, 1.0, 0.5, 0.0, -1.0, 7.0, 7.0], 5);
    let values = rows(&[0.2, 0.4, -0.1, 0.6, 0.3, 1.0, -0.5, 0.25, 9.0, 9.0], 5);
    let mask = rows(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0], 5);
    let (advantages, returns) = gae(&rewards, &values, &mask, 0.99, 0.95);
    let expected = [
        0.797653794,
        0.533390522,
        1.31035674,
        0.65534997,
        0.7,
        -1.39765167,
        -0.428125083,
        -1.25,
        0.0,
        0.0,
    ];
    assert_close(&advantages, &expected);
    let expected = [
        0.997653782,
        0.933390498,
        1.21035671,
        1.25534999,
        1.0,
        -0.397651672,
        -0.928125083,
        -1.0,
        0.0,
        0.0,
    ];
    assert_close(&returns, &expected);
}

/// The token-mean loss, the total clip fraction and approx_kl of a symmetric clip.
fn policy_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> (Tensor, Tensor, Tensor) {
    let s = clipped_surrogate(logp, old_logp, advantages, mask, (clip, clip));
    (
        masked_mean(&s.loss, mask, None),
        s.clipped_low + s.clipped_high,
        s.approx_kl,
    )
}

#[test]
fn policy_loss_clips_the_ratio() {
    // Ratio 1: loss = -mean A over real tokens; the padded 100 is ignored.
    let (zeros, mask) = (
        Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
        rows(&[1.0, 1.0, 1.0, 0.0], 2),
    );
    let (loss, clip_fraction, approx_kl) = policy_loss(
        &zeros,
        &zeros,
        &rows(&[1.0, 2.0, 3.0, 100.0], 2),
        &mask,
        0.2,
    );
    assert_close(&loss, &[-2.0]);
    assert_close(&clip_fraction, &[0.0]);
    assert_close(&approx_kl, &[0.0]);
    // Ratio e^0.5 with A = 1: max(-1.6487, -1.2) = -1.2, clipped; approx_kl = 0.5 * 0.25.
    let one = vector(&[1.0]);
    let (loss, clip_fraction, approx_kl) =
        policy_loss(&vector(&[0.5]), &vector(&[0.0]), &one, &one, 0.2);
    assert_close(&loss, &[-1.2]);
    assert_close(&clip_fraction, &[1.0]);
    assert_close(&approx_kl, &[0.125]);
    // TRL's PPOTrainer.loss: masked_mean(max(-A r, -A clamp(r, 0.8, 1.2))), clipfrac, 0.5 masked_mean(log r^2).
    let logp = rows(&[-1.0, -0.55, -2.0, -0.9, -1.2, 3.0], 3);
    let old_logp = rows(&[-1.3, -0.5, -2.0, -0.5, -1.3, -2.0], 3);
    let advantages = rows(&[1.0, -2.0, 0.5, -1.5, 0.7, 4.0], 3);
    let mask = rows(&[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], 3);
    let (loss, clip_fraction, approx_kl) = policy_loss(&logp, &old_logp, &advantages, &mask, 0.2);
    assert_close(&loss, &[0.125767827]);
    assert_close(&clip_fraction, &[0.4]);
    assert_close(&approx_kl, &[0.0262499936]);
}

#[test]
fn clip_higher_widens_only_the_upper_bound_and_sides_are_counted_apart() {
    // r = e^0.2 = 1.221 with A = 1: clipped at 1.2 symmetric, not at clip_high 0.28.
    let (one, mask) = (vector(&[1.0]), vector(&[1.0]));
    let s = clipped_surrogate(&vector(&[0.2]), &vector(&[0.0]), &one, &mask, (0.2, 0.2));
    assert_close(&s.loss, &[-1.2]);
    assert_close(&s.clipped_high, &[1.0]);
    let s = clipped_surrogate(&vector(&[0.2]), &vector(&[0.0]), &one, &mask, (0.2, 0.28));
    assert_close(&s.loss, &[-(0.2f32.exp())]);
    assert_close(&s.clipped_high, &[0.0]);
    // r = e^-0.5 = 0.607 with A = -1: clipped at 0.8 below, counted low.
    let s = clipped_surrogate(
        &vector(&[-0.5]),
        &vector(&[0.0]),
        &vector(&[-1.0]),
        &mask,
        (0.2, 0.28),
    );
    assert_close(&s.loss, &[0.8]);
    assert_close(&s.clipped_low, &[1.0]);
    assert_close(&s.clipped_high, &[0.0]);
}

#[test]
fn value_loss_takes_the_worse_of_clipped_and_unclipped() {
    // Unclipped: 0.5 * (1 + 4) / 2. Clipped: V = 1 from V_old = 0 clips to 0.2; (0.2 - 2)^2 > (1 - 2)^2.
    let (v, r, m) = (
        vector(&[1.0, 2.0]),
        vector(&[0.0, 0.0]),
        vector(&[1.0, 1.0]),
    );
    assert_close(
        &masked_mean(&value_loss(&v, &v, &r, &m, 0.2), &m, None),
        &[1.25],
    );
    assert_close(
        &value_loss(
            &vector(&[1.0]),
            &vector(&[0.0]),
            &vector(&[2.0]),
            &vector(&[1.0]),
            0.2,
        )
        .mean(Kind::Float),
        &[1.62],
    );
    // TRL's PPOTrainer.loss: 0.5 * masked_mean(max((v - R)^2, (clamp(v, ov - 0.2, ov + 0.2) - R)^2)).
    let values = rows(&[0.5, 1.4, -0.2, 2.0, 0.0, 50.0], 3);
    let old_values = rows(&[0.4, 1.0, -0.3, 2.5, 0.1, 0.0], 3);
    let returns = rows(&[1.0, 0.0, -0.25, 1.0, 0.3, 0.0], 3);
    let mask = rows(&[1.0, 1.0, 1.0, 1.0, 1.0, 0.0], 3);
    assert_close(
        &masked_mean(
            &value_loss(&values, &old_values, &returns, &mask, 0.2),
            &mask,
            None,
        ),
        &[0.399249971],
    );
}

#[test]
fn kl_controllers() {
    let mut fixed = KlController::new(0.1, None, 10_000);
    fixed.update(100.0, 1000);
    assert_eq!(fixed, KlController::Fixed(0.1));
    // Errors 12 / 6 - 1 and 0 / 6 - 1 clip to +-0.2: 0.1 * (1 + 0.2 * 100 / 10000) * (1 - 0.002).
    let mut adaptive = KlController::new(0.1, Some(6.0), 10_000);
    adaptive.update(12.0, 100);
    assert!((adaptive.value() - 0.1002).abs() < 1e-15);
    adaptive.update(0.0, 100);
    assert!((adaptive.value() - 0.1002 * 0.998).abs() < 1e-15);
    // trl AdaptiveKLController(0.05, target=6, horizon=10000), updated with (7, 256), (30, 256), (1, 512).
    let mut trl = KlController::new(0.05, Some(6.0), 10_000);
    let expected = [0.05021333333333333, 0.0504704256, 0.049953608441856];
    for ((kl, n), expected) in [(7.0, 256), (30.0, 256), (1.0, 512)]
        .into_iter()
        .zip(expected)
    {
        trl.update(kl, n);
        assert!(
            (trl.value() - expected).abs() < 1e-15,
            "{} vs {expected}",
            trl.value()
        );
    }
}

#[test]
fn dpo_loss_with_label_smoothing() {
    // Policy equals reference: h = 0, loss ln 2 for any smoothing, rewards 0.
    let same = vector(&[-3.0, -7.0]);
    for ls in [0.0, 0.3] {
        let (loss, chosen, rejected) = dpo_loss(&same, &same, &same, &same, 0.1, ls);
        assert_close(&loss, &[2f32.ln()]);
        assert_close(&chosen, &[0.0, 0.0]);
        assert_close(&rejected, &[0.0, 0.0]);
    }
    // TRL's DPOTrainer.dpo_loss, loss_type "sigmoid", beta 0.1, label_smoothing 0.1; rewards beta (pi - ref).
    let (pc, pr) = (vector(&[-10.0, -22.5, -5.0]), vector(&[-12.0, -20.0, -5.5]));
    let (rc, rr) = (vector(&[-11.0, -21.0, -5.2]), vector(&[-11.5, -21.5, -5.3]));
    let (loss, chosen, rejected) = dpo_loss(&pc, &pr, &rc, &rr, 0.1, 0.1);
    assert_close(&loss, &[0.712553203]);
    assert_close(&chosen, &[0.100000001, -0.150000006, 0.0199999809]);
    assert_close(&rejected, &[-0.0500000007, 0.150000006, -0.0199999809]);
}
