use std::collections::HashMap;

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::*;
use crate::distributed::Dist;

fn config(max_grad_norm: f64, warmup_steps: u32) -> ResolvedTraining {
    ResolvedTraining {
        learning_rate: 0.01,
        batch_size: 4,
        micro_batch_size: 2,
        gradient_accumulation: 2,
        epochs: 1,
        max_steps: None,
        max_length: 16,
        warmup_steps,
        weight_decay: 0.1,
        adam_epsilon: 1e-8,
        weight_decay_embeddings: false,
        max_grad_norm,
        seed: 0,
        checkpoint_every: 50,
    }
}

fn linear(vs: &nn::VarStore) -> nn::Linear {
    nn::linear(vs.root() / "layer", 3, 2, Default::default())
}

fn loss(model: &nn::Linear, step: i64) -> Tensor {
    let x = Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]) / 5.0 + step as f64;
    model.forward(&x).square().sum(Kind::Float)
}

fn weights(vs: &nn::VarStore) -> Tensor {
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::cat(
        &vars
            .iter()
            .map(|(_, t)| t.flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    )
}

/// A linear layer without bias: libtorch's AdamW decays every variable, ours not biases.
fn weight_only(vs: &nn::VarStore) -> nn::Linear {
    let no_bias = nn::LinearConfig {
        bias: false,
        ..Default::default()
    };
    nn::linear(vs.root() / "layer", 3, 2, no_bias)
}

/// Max weight difference to libtorch's AdamW with epsilon `eps` after 5 steps.
fn difference_to_libtorch(eps: f64) -> f64 {
    tch::manual_seed(1);
    let ours_vs = nn::VarStore::new(Device::Cpu);
    let ours_model = weight_only(&ours_vs);
    let mut theirs_vs = nn::VarStore::new(Device::Cpu);
    let theirs_model = weight_only(&theirs_vs);
    theirs_vs.copy(&ours_vs).unwrap();
    let cfg = ResolvedTraining {
        adam_epsilon: eps,
        ..config(0.0, 0)
    };
    let mut ours = Optimizer::new(&ours_vs, &cfg, &Dist::single()).unwrap();
    let mut theirs = nn::AdamW {
        wd: 0.1,
        eps,
        ..Default::default()
    }
    .build(&theirs_vs, 0.01)
    .unwrap();
    for step in 0..5 {
        loss(&ours_model, step).backward();
        ours.step().unwrap();
        theirs.zero_grad();
        loss(&theirs_model, step).backward();
        theirs.step();
    }
    assert_eq!(ours.steps(), 5);
    (weights(&ours_vs) - weights(&theirs_vs))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn matches_libtorchs_adamw_step_for_step() {
    let diff = difference_to_libtorch(1e-8);
    assert!(diff < 1e-6, "max weight difference after 5 steps: {diff}");
}

#[test]
fn adam_epsilon_is_the_configured_one() {
    // A large epsilon changes every update; libtorch's AdamW with the same one agrees.
    let diff = difference_to_libtorch(1e-2);
    assert!(
        diff < 1e-6,
        "max weight difference after 5 steps (eps 1e-2): {diff}"
    );
}

#[test]
fn clipping_bounds_the_global_gradient_norm() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = linear(&vs);
    let mut opt = Optimizer::new(&vs, &config(0.5, 0), &Dist::single()).unwrap();
    // With clipping at 0.5 and a huge gradient, the first AdamW step moves each weight by lr
    // (the update is sign-like); the clipped gradient's norm is what the first moment saw.
    (loss(&model, 3) * 100.0).backward();
    let norm = vs
        .trainable_variables()
        .iter()
        .map(|v| v.grad().square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    assert!(norm > 0.5);
    let coef = adamw::clip_coefficient(norm, 0.5);
    assert!(
        (coef * norm - 0.5).abs() < 1e-4,
        "clipped norm {}",
        coef * norm
    );
    assert_eq!(
        adamw::clip_coefficient(0.1, 0.5),
        1.0,
        "small gradients are left alone"
    );
    assert_eq!(
        adamw::clip_coefficient(10.0, 0.0),
        1.0,
        "0 turns clipping off"
    );
    opt.step().unwrap();
}

#[test]
fn warmup_ramps_the_learning_rate_linearly() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = linear(&vs);
    let opt = Optimizer::new(&vs, &config(0.0, 4), &Dist::single()).unwrap();
    let rates: Vec<f64> = (1..=6).map(|s| opt.lr_at(s)).collect();
    assert_eq!(rates, vec![0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01]);
}

#[test]
fn export_then_import_restores_weights_moments_and_step() {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = linear(&vs);
    let mut opt = Optimizer::new(&vs, &config(1.0, 0), &Dist::single()).unwrap();
    for step in 0..3 {
        loss(&model, step).backward();
        opt.step().unwrap();
    }
    let mut saved = Vec::new();
    opt.export("actor", &mut saved).unwrap();
    assert_eq!(saved.len(), 6, "weight, exp_avg, exp_avg_sq of 2 variables");
    let saved: HashMap<String, Tensor> = saved.into_iter().collect();
    // A fresh model continuing from the export takes the same next step as the original.
    let other_vs = nn::VarStore::new(Device::Cpu);
    let other = linear(&other_vs);
    let mut other_opt = Optimizer::new(&other_vs, &config(1.0, 0), &Dist::single()).unwrap();
    other_opt.import("actor", &saved, opt.steps()).unwrap();
    loss(&model, 3).backward();
    opt.step().unwrap();
    loss(&other, 3).backward();
    other_opt.step().unwrap();
    assert_eq!(weights(&vs), weights(&other_vs));
    assert_eq!(other_opt.steps(), 4);
    let err = other_opt
        .import("critic", &saved, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("critic.weight.layer.") && err.contains("is missing"),
        "{err}"
    );
}

/// Each variable after one step with weight decay `wd` from fixed weights and gradients: a
/// linear layer, a norm weight and a token embedding table.
fn one_step(wd: f64, embeddings: bool) -> HashMap<String, Tensor> {
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let init = nn::Init::Const(0.5);
    for (name, shape) in [
        ("layer.weight", vec![2, 3]),
        ("layer.bias", vec![2]),
        ("ln_f.weight", vec![3]),
        ("transformer.wte.weight", vec![4, 3]),
    ] {
        let (path, leaf) = name.rsplit_once('.').unwrap();
        let var = path
            .split('.')
            .fold(root.clone(), |p, s| p / s)
            .var(leaf, &shape, init);
        (var.sum(Kind::Float) * 0.3).backward();
    }
    let cfg = ResolvedTraining {
        weight_decay: wd,
        weight_decay_embeddings: embeddings,
        ..config(0.0, 0)
    };
    Optimizer::new(&vs, &cfg, &Dist::single())
        .unwrap()
        .step()
        .unwrap();
    vs.variables()
}

#[test]
fn weight_decay_skips_biases_norms_and_embeddings() {
    let plain = one_step(0.0, false);
    let decayed = one_step(0.1, false);
    for name in ["layer.bias", "ln_f.weight", "transformer.wte.weight"] {
        assert_eq!(plain[name], decayed[name], "{name} must not decay");
    }
    // AdamW's decoupled decay: w * (1 - lr * wd) before the same Adam update.
    let taken = (&plain["layer.weight"] - &decayed["layer.weight"]).mean(Kind::Float);
    assert!(
        (taken.double_value(&[]) - 0.5 * 0.01 * 0.1).abs() < 1e-7,
        "{taken}"
    );
    let with_embeddings = one_step(0.1, true);
    assert_ne!(
        plain["transformer.wte.weight"],
        with_embeddings["transformer.wte.weight"]
    );
    assert_eq!(plain["ln_f.weight"], with_embeddings["ln_f.weight"]);
}
