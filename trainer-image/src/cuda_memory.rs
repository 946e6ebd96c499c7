//! Allocated and peak bytes of the CUDA caching allocator per device, through the C shim in
//! csrc/cuda_memory.cpp (tch has no API for them). Without CUDA there are no devices.
#![allow(unsafe_code)] // the crate's only FFI: two C functions taking plain integers

unsafe extern "C" {
    fn rlhf_cuda_device_count() -> i32;
    fn rlhf_cuda_memory(device: i32, allocated: *mut i64, peak: *mut i64) -> i32;
}

/// (device index, allocated bytes, peak allocated bytes) of every CUDA device.
pub fn devices() -> Vec<(i32, f64, f64)> {
    // SAFETY: takes no arguments; c10 answers 0 when no driver or GPU is present.
    let count = unsafe { rlhf_cuda_device_count() };
    (0..count)
        .filter_map(|device| {
            let (mut allocated, mut peak) = (0i64, 0i64);
            // SAFETY: both pointers are to live locals; the shim writes them only on success.
            let status = unsafe { rlhf_cuda_memory(device, &mut allocated, &mut peak) };
            (status == 0).then_some((device, allocated as f64, peak as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_entry_per_device_tch_sees() {
        let devices = super::devices();
        assert_eq!(devices.len() as i64, tch::Cuda::device_count());
        assert!(
            devices
                .iter()
                .all(|&(_, allocated, peak)| allocated >= 0.0 && peak >= allocated)
        );
    }
}
