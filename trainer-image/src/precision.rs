//! The dtype a stage computes in: `parallelism.precision` on the stage's device.
use rlhf_spec::Precision;
use tch::{Device, Kind};

use crate::error::{Error, Result};

/// bf16 on GPUs and fp32 on CPUs for `auto`; fp16 (which needs loss scaling) is refused.
pub fn compute_kind(precision: Precision, device: Device) -> Result<Kind> {
    match precision {
        Precision::Auto if device.is_cuda() => Ok(Kind::BFloat16),
        Precision::Auto | Precision::Fp32 => Ok(Kind::Float),
        Precision::Bf16 => Ok(Kind::BFloat16),
        Precision::Fp16 => Err(Error::invalid("<parallelism.precision>", "fp16 (with loss scaling) is not available yet; use bf16 or fp32")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_bf16_on_gpus_and_fp32_on_cpus() {
        assert_eq!(compute_kind(Precision::Auto, Device::Cpu).unwrap(), Kind::Float);
        assert_eq!(compute_kind(Precision::Auto, Device::Cuda(0)).unwrap(), Kind::BFloat16);
        assert_eq!(compute_kind(Precision::Bf16, Device::Cpu).unwrap(), Kind::BFloat16);
        assert!(compute_kind(Precision::Fp16, Device::Cpu).unwrap_err().to_string().contains("fp16"));
    }
}
