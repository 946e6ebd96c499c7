//! The dtype a stage computes in: `parallelism.precision` on the stage's device.
use rlhf_spec::Precision;
use tch::{Device, Kind};

/// bf16 on GPUs and fp32 on CPUs for `auto`; fp16 trains with dynamic loss scaling
/// (optim/loss_scale.rs).
pub fn compute_kind(precision: Precision, device: Device) -> Kind {
    match precision {
        Precision::Auto if device.is_cuda() => Kind::BFloat16,
        Precision::Auto | Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Fp16 => Kind::Half,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_bf16_on_gpus_and_fp32_on_cpus() {
        assert_eq!(compute_kind(Precision::Auto, Device::Cpu), Kind::Float);
        assert_eq!(
            compute_kind(Precision::Auto, Device::Cuda(0)),
            Kind::BFloat16
        );
        assert_eq!(compute_kind(Precision::Bf16, Device::Cpu), Kind::BFloat16);
        assert_eq!(compute_kind(Precision::Fp16, Device::Cpu), Kind::Half);
    }
}
