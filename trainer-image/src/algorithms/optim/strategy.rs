//! How an optimizer step is shared among ranks, behind one trait: [`Replicated`] (one process,
//! or `ddp`: every rank keeps all state, gradients are summed bucket by bucket) and [`Sharded`]
//! (`zero1`: gradients summed, each rank keeps and updates only its shard of the AdamW state and
//! weights, then all ranks gather the weights; `zero2`: gradients reduce-scattered, so each rank
//! only ever receives its shard). Every strategy leaves the weights identical on all ranks, and
//! checkpoints hold the full state in one format whatever the strategy or world size.
//!
//! The update always runs in fp32: with bf16 weights (or offload) a strategy keeps fp32 master
//! weights, on the CPU when offloading (`offload: optimizer`), and copies the result back into
//! the model's weights in their own dtype and device.
use std::collections::HashMap;
use std::rc::Rc;

use tch::{Device, Kind, Tensor};

use super::adamw;
use crate::distributed::ProcessGroup;
use crate::error::{Error, Result};

/// The trainable variables, by name, in a fixed order (equal on every rank).
pub type Params = [(String, Tensor)];

/// AdamW's scalars for one variable: `s` without weight decay where the variable is excluded.
fn hyper_for(s: &adamw::Hyper, decays: bool) -> adamw::Hyper {
    adamw::Hyper {
        weight_decay: if decays { s.weight_decay } else { 0.0 },
        ..s.clone()
    }
}

/// AdamW's scalars and the clipping of one step.
pub struct StepSettings {
    pub adam: adamw::Hyper,
    pub max_grad_norm: f64,
    /// The loss was multiplied by this before backward (fp16 loss scaling; 1 otherwise).
    pub loss_scale: f64,
}

/// The factor a step's gradients are multiplied by: undo the loss scale, then clip by the
/// global norm of the unscaled gradients. None when that norm is not finite (an fp16 overflow:
/// the step is skipped).
fn gradient_factor(scaled_norm: f64, s: &StepSettings) -> Option<f64> {
    let norm = scaled_norm / s.loss_scale;
    norm.is_finite()
        .then(|| adamw::clip_coefficient(norm, s.max_grad_norm) / s.loss_scale)
}

pub trait DistributedStep {
    /// One step from this rank's local gradients (already divided so their sum over ranks is
    /// the global mean): combine them, clip by the global norm, apply AdamW, clear them. Returns
    /// false, having only cleared them, when they overflowed (every rank agrees).
    fn step(&mut self, params: &Params, s: &StepSettings) -> Result<bool>;
    /// The full state as `<prefix>.<kind>.<name>` with kinds `weight` (fp32 master weights when
    /// kept, else the model's), `exp_avg`, `exp_avg_sq` (a collective under sharding: every
    /// rank must call it).
    fn export_state(
        &self,
        params: &Params,
        prefix: &str,
        out: &mut Vec<(String, Tensor)>,
    ) -> Result<()>;
    /// Restores what export_state wrote (the model's weights are already restored).
    fn import_state(
        &mut self,
        params: &Params,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<()>;
    /// Bytes of optimizer state this rank holds.
    fn state_bytes(&self) -> i64;
}

/// A variable's gradient, or zeros where autograd left none.
fn grad_or_zeros(value: &Tensor) -> Tensor {
    let g = value.grad();
    if g.defined() { g } else { value.zeros_like() }
}

/// All gradients as one flat fp32 vector of `len` elements (zero-padded).
fn flat_grads(params: &Params, len: i64) -> Tensor {
    let flat = Tensor::cat(
        &params
            .iter()
            .map(|(_, v)| grad_or_zeros(v).flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    );
    pad_to(&flat, len)
}

fn flat_values(params: &Params, len: i64) -> Tensor {
    let flat = Tensor::cat(
        &params
            .iter()
            .map(|(_, v)| v.detach().flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    );
    pad_to(&flat, len)
}

fn pad_to(flat: &Tensor, len: i64) -> Tensor {
    let n = flat.numel() as i64;
    if n == len {
        flat.contiguous()
    } else {
        Tensor::cat(
            &[
                flat.shallow_clone(),
                flat.new_zeros([len - n], (flat.kind(), flat.device())),
            ],
            0,
        )
    }
}

/// Splits a flat vector back into tensors shaped like `params`.
fn unflatten(flat: &Tensor, params: &Params) -> Vec<Tensor> {
    let mut offset = 0;
    params
        .iter()
        .map(|(_, v)| {
            let n = v.numel() as i64;
            let part = flat.narrow(0, offset, n).view_as(v);
            offset += n;
            part
        })
        .collect()
}

fn clear_grads(params: &Params) {
    for (_, v) in params {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

fn total_numel(params: &Params) -> i64 {
    params.iter().map(|(_, v)| v.numel() as i64).sum()
}

fn moment(tensors: &HashMap<String, Tensor>, key: String, like: &Tensor) -> Result<Tensor> {
    let t = tensors
        .get(&key)
        .ok_or_else(|| Error::invalid("<checkpoint>", format!("{key} is missing")))?;
    if t.numel() != like.numel() {
        return Err(Error::invalid(
            "<checkpoint>",
            format!(
                "{key} has shape {:?}, the model has {:?}",
                t.size(),
                like.size()
            ),
        ));
    }
    let mut owned = like.zeros_like(); // a copy: the saved tensors must not alias live state
    tch::no_grad(|| owned.copy_(&t.view_as(like)));
    Ok(owned)
}

/// A CPU copy that shares no storage with `t` (checkpoints must not alias live state).
pub fn cpu_copy(t: &Tensor) -> Tensor {
    let cpu = t.detach().to_device(tch::Device::Cpu);
    if t.device() == tch::Device::Cpu {
        cpu.copy()
    } else {
        cpu
    }
}

/// Elements per all-reduce in `ddp` (about 25 MB of fp32, like PyTorch DDP's buckets).
const BUCKET_ELEMENTS: i64 = 25 * 1024 * 1024 / 4;

/// Where the AdamW state lives: the CPU when offloading, else the weights' device.
fn state_device(params: &Params, offload: bool) -> Device {
    if offload {
        Device::Cpu
    } else {
        params[0].1.device()
    }
}

/// An fp32 copy of `v` on `device` that shares no storage with it.
fn master_copy(v: &Tensor, device: Device) -> Tensor {
    let copy = v.detach().to_device(device).to_kind(Kind::Float);
    if copy.data_ptr() == v.data_ptr() {
        copy.copy()
    } else {
        copy
    }
}

/// Every rank keeps the full state; with a group (`ddp`), gradients are summed first.
pub struct Replicated {
    group: Option<Rc<ProcessGroup>>,
    moments: Vec<(Tensor, Tensor)>,
    /// fp32 master weights, when the model's weights are not fp32 or the state is offloaded.
    master: Option<Vec<Tensor>>,
    /// Per variable: whether weight decay applies to it.
    decays: Vec<bool>,
}

impl Replicated {
    pub fn new(
        params: &Params,
        decays: &[bool],
        group: Option<Rc<ProcessGroup>>,
        offload: bool,
    ) -> Self {
        let device = state_device(params, offload);
        let needs_master = offload || params.iter().any(|(_, v)| v.kind() != Kind::Float);
        let master =
            needs_master.then(|| params.iter().map(|(_, v)| master_copy(v, device)).collect());
        let zeros = |v: &Tensor| Tensor::zeros(v.size(), (Kind::Float, device));
        Self {
            group,
            moments: params.iter().map(|(_, v)| (zeros(v), zeros(v))).collect(),
            master,
            decays: decays.to_vec(),
        }
    }

    /// Sums gradients over ranks in buckets of consecutive variables.
    fn all_reduce_gradients(group: &ProcessGroup, params: &Params) -> Result<()> {
        let mut start = 0;
        while start < params.len() {
            let mut end = start + 1;
            let mut size = params[start].1.numel() as i64;
            while end < params.len() && size + (params[end].1.numel() as i64) <= BUCKET_ELEMENTS {
                size += params[end].1.numel() as i64;
                end += 1;
            }
            let bucket = &params[start..end];
            let flat = flat_grads(bucket, size);
            group.all_reduce_sum(&flat)?;
            tch::no_grad(|| {
                for ((_, v), reduced) in bucket.iter().zip(unflatten(&flat, bucket)) {
                    let mut g = v.grad();
                    if g.defined() {
                        g.copy_(&reduced);
                    }
                }
            });
            start = end;
        }
        Ok(())
    }
}

impl DistributedStep for Replicated {
    fn step(&mut self, params: &Params, s: &StepSettings) -> Result<bool> {
        if let Some(group) = &self.group {
            Self::all_reduce_gradients(group, params)?;
        }
        let grads: Vec<Tensor> = params.iter().map(|(_, v)| v.grad()).collect();
        let norm = grads
            .iter()
            .filter(|g| g.defined())
            .map(|g| g.square().sum(Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt();
        let Some(coef) = gradient_factor(norm, s) else {
            clear_grads(params);
            return Ok(false);
        };
        tch::no_grad(|| {
            for (i, (((_, value), grad), (m, v))) in
                params.iter().zip(&grads).zip(&mut self.moments).enumerate()
            {
                if !grad.defined() {
                    continue;
                }
                let h = hyper_for(&s.adam, self.decays[i]);
                match &mut self.master {
                    Some(master) => {
                        let g = grad.to_device(m.device()).to_kind(Kind::Float) * coef;
                        adamw::update(&mut master[i], &g, m, v, &h);
                        value.shallow_clone().copy_(&master[i]);
                    }
                    None => adamw::update(&mut value.shallow_clone(), &(grad * coef), m, v, &h),
                }
            }
        });
        clear_grads(params);
        Ok(true)
    }

    fn export_state(
        &self,
        params: &Params,
        prefix: &str,
        out: &mut Vec<(String, Tensor)>,
    ) -> Result<()> {
        for (i, ((name, value), (m, v))) in params.iter().zip(&self.moments).enumerate() {
            let weight = self.master.as_ref().map_or(value, |master| &master[i]);
            for (kind, t) in [("weight", weight), ("exp_avg", m), ("exp_avg_sq", v)] {
                out.push((format!("{prefix}.{kind}.{name}"), cpu_copy(t)));
            }
        }
        Ok(())
    }

    fn import_state(
        &mut self,
        params: &Params,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<()> {
        for (i, ((name, _), (m, v))) in params.iter().zip(&mut self.moments).enumerate() {
            *m = moment(tensors, format!("{prefix}.exp_avg.{name}"), m)?;
            *v = moment(tensors, format!("{prefix}.exp_avg_sq.{name}"), v)?;
            if let Some(master) = &mut self.master {
                master[i] = moment(tensors, format!("{prefix}.weight.{name}"), &master[i])?;
            }
        }
        Ok(())
    }

    fn state_bytes(&self) -> i64 {
        let master: usize = self.master.iter().flatten().map(Tensor::numel).sum();
        self.moments
            .iter()
            .map(|(m, v)| ((m.numel() + v.numel()) * 4) as i64)
            .sum::<i64>()
            + (master * 4) as i64
    }
}

/// ZeRO: rank r owns elements [r * shard, (r + 1) * shard) of the flattened variables.
pub struct Sharded {
    group: Rc<ProcessGroup>,
    /// zero2: reduce-scatter the gradients instead of summing them everywhere.
    reduce_scatter: bool,
    shard: i64,
    /// This rank's fp32 master weights, when the model's are not fp32 or the state is offloaded
    /// (otherwise the shard is read from the weights at each step).
    master: Option<Tensor>,
    /// This rank's moments (on the CPU when offloading).
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Per element of this rank's shard: whether weight decay applies (None: everywhere).
    decays: Option<Tensor>,
}

/// Whether decay applies, per element of the flattened variables padded to `len` (bool).
fn flat_decay_mask(params: &Params, decays: &[bool], len: i64) -> Tensor {
    let parts: Vec<Tensor> = params
        .iter()
        .zip(decays)
        .map(|((_, v), &d)| {
            Tensor::full([v.numel() as i64], i64::from(d), (Kind::Bool, v.device()))
        })
        .collect();
    pad_to(&Tensor::cat(&parts, 0), len)
}

impl Sharded {
    pub fn new(
        params: &Params,
        decays: &[bool],
        group: Rc<ProcessGroup>,
        reduce_scatter: bool,
        offload: bool,
    ) -> Self {
        let world = group.world() as i64;
        let shard = (total_numel(params) + world - 1) / world;
        let device = state_device(params, offload);
        let zeros = || Tensor::zeros([shard], (Kind::Float, device));
        let needs_master = offload || params.iter().any(|(_, v)| v.kind() != Kind::Float);
        let mut me = Self {
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            master: None,
            decays: None,
            group,
            reduce_scatter,
            shard,
        };
        if needs_master {
            me.master = Some(me.weights_shard(params).to_device(device));
        }
        if decays.contains(&false) {
            let mask = flat_decay_mask(params, decays, me.padded());
            me.decays = Some(me.mine(&mask).to_device(device));
        }
        me
    }

    /// This rank's shard of the model's current weights, in fp32.
    fn weights_shard(&self, params: &Params) -> Tensor {
        self.mine(&flat_values(params, self.padded()).to_kind(Kind::Float))
    }

    fn padded(&self) -> i64 {
        self.shard * self.group.world() as i64
    }

    fn mine(&self, flat: &Tensor) -> Tensor {
        flat.narrow(0, self.group.rank() as i64 * self.shard, self.shard)
            .contiguous()
    }

    /// The full flat vector gathered from every rank's shard.
    fn gather(&self, shard: &Tensor) -> Result<Tensor> {
        let full = Tensor::zeros([self.padded()], (shard.kind(), shard.device()));
        self.group.all_gather(&full, shard)?;
        Ok(full)
    }
}

impl DistributedStep for Sharded {
    fn step(&mut self, params: &Params, s: &StepSettings) -> Result<bool> {
        let flat = flat_grads(params, self.padded()).to_kind(Kind::Float); // reduce in fp32
        let grad = if self.reduce_scatter {
            let out = Tensor::zeros([self.shard], (flat.kind(), flat.device()));
            self.group.reduce_scatter_sum(&out, &flat)?;
            out
        } else {
            self.group.all_reduce_sum(&flat)?;
            self.mine(&flat)
        };
        let grad = grad.to_device(self.exp_avg.device());
        let norm_sq = grad.square().sum(Kind::Float).reshape([1]);
        self.group.all_reduce_sum(&norm_sq)?;
        let Some(coef) = gradient_factor(norm_sq.double_value(&[0]).sqrt(), s) else {
            clear_grads(params);
            return Ok(false);
        };
        let mut value = match &self.master {
            Some(master) => master.shallow_clone(),
            None => self.weights_shard(params),
        };
        let (m, v) = (&mut self.exp_avg, &mut self.exp_avg_sq);
        tch::no_grad(|| match &self.decays {
            Some(mask) => adamw::update_masked(&mut value, &(grad * coef), m, v, &s.adam, mask),
            None => adamw::update(&mut value, &(grad * coef), m, v, &s.adam),
        });
        let full = self.gather(&value)?;
        tch::no_grad(|| {
            for ((_, v), updated) in params.iter().zip(unflatten(&full, params)) {
                v.shallow_clone().copy_(&updated);
            }
        });
        clear_grads(params);
        Ok(true)
    }

    fn export_state(
        &self,
        params: &Params,
        prefix: &str,
        out: &mut Vec<(String, Tensor)>,
    ) -> Result<()> {
        let weights = match &self.master {
            Some(master) => master.shallow_clone(),
            None => self.weights_shard(params),
        };
        for (kind, shard) in [
            ("weight", &weights),
            ("exp_avg", &self.exp_avg),
            ("exp_avg_sq", &self.exp_avg_sq),
        ] {
            let full = self.gather(shard)?;
            for ((name, _), t) in params.iter().zip(unflatten(&full, params)) {
                out.push((format!("{prefix}.{kind}.{name}"), cpu_copy(&t)));
            }
        }
        Ok(())
    }

    fn import_state(
        &mut self,
        params: &Params,
        prefix: &str,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<()> {
        let (rank, shard, padded) = (self.group.rank() as i64, self.shard, self.padded());
        let mine = |kind: &str, device: Device| -> Result<Tensor> {
            let parts = params
                .iter()
                .map(|(name, v)| {
                    Ok(moment(
                        tensors,
                        format!("{prefix}.{kind}.{name}"),
                        &v.to_kind(Kind::Float),
                    )?
                    .flatten(0, -1))
                })
                .collect::<Result<Vec<_>>>()?;
            let flat = pad_to(&Tensor::cat(&parts, 0), padded);
            Ok(flat
                .narrow(0, rank * shard, shard)
                .to_device(device)
                .contiguous())
        };
        let device = self.exp_avg.device();
        self.exp_avg = mine("exp_avg", device)?;
        self.exp_avg_sq = mine("exp_avg_sq", device)?;
        if self.master.is_some() {
            self.master = Some(mine("weight", device)?);
        }
        Ok(())
    }

    fn state_bytes(&self) -> i64 {
        let master = self.master.as_ref().map_or(0, Tensor::numel);
        ((self.exp_avg.numel() + self.exp_avg_sq.numel() + master) * 4) as i64
    }
}
