//! PyTorch's AdamW update on one tensor (a parameter, or a flat shard of parameters), and the
//! global-norm clipping factor.
use tch::Tensor;

/// PyTorch's AdamW defaults (what tch's `nn::AdamW` uses too); epsilon is `adamEpsilon`.
pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.999;

/// The scalars of one AdamW step; `t` is the step number (1-based).
#[derive(Clone, Debug)]
pub struct Hyper {
    pub lr: f64,
    pub weight_decay: f64,
    pub eps: f64,
    pub t: u64,
}

/// One AdamW step of `value` with gradient `grad`; `exp_avg` and `exp_avg_sq` are updated in
/// place. Call under `no_grad`.
pub fn update(
    value: &mut Tensor,
    grad: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    h: &Hyper,
) {
    let (lr, t) = (h.lr, h.t as i32);
    let (bias1, bias2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
    let _ = value.g_mul_scalar_(1.0 - lr * h.weight_decay);
    let _ = exp_avg.lerp_(grad, 1.0 - BETA1);
    let _ = exp_avg_sq.g_mul_scalar_(BETA2);
    let _ = exp_avg_sq.g_add_(&(grad.square() * (1.0 - BETA2)));
    let denom = (exp_avg_sq.sqrt() / bias2.sqrt()) + h.eps;
    let _ = value.g_sub_(&(&*exp_avg / &denom * (lr / bias1)));
}

/// [`update`] of a flat shard mixing parameters that decay and parameters that do not: the
/// decay touches only the elements where `decays` (bool, like `value`) is true.
pub fn update_masked(
    value: &mut Tensor,
    grad: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    h: &Hyper,
    decays: &Tensor,
) {
    if h.weight_decay != 0.0 {
        let decayed = &*value * (1.0 - h.lr * h.weight_decay);
        value.copy_(&decayed.where_self(decays, value));
    }
    let without_decay = Hyper {
        weight_decay: 0.0,
        ..h.clone()
    };
    update(value, grad, exp_avg, exp_avg_sq, &without_decay);
}

/// The factor gradients are scaled by so their global L2 norm (`total_norm`) is at most
/// `max_norm` (as torch's clip_grad_norm_; 1 when clipping is off or not needed).
pub fn clip_coefficient(total_norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 {
        1.0
    } else {
        (max_norm / (total_norm + 1e-6)).min(1.0)
    }
}
