// The CUDA caching allocator's counters, which tch does not expose: C entry points over c10's
// device-generic interfaces (no CUDA headers needed; libc10_cuda registers CUDA's
// implementations when it loads, which linking libtorch_cuda guarantees).
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <cstdint>

extern "C" {

// Number of CUDA devices this process sees (0 without CUDA, a driver or a GPU).
int32_t rlhf_cuda_device_count() {
  if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) {
    return 0;
  }
  return static_cast<int32_t>(c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount());
}

// Bytes currently allocated by tensors on `device` and the peak since start. Returns 0 on
// success, 1 for a device that does not exist, 2 when the allocator throws.
int32_t rlhf_cuda_memory(int32_t device, int64_t* allocated, int64_t* peak) {
  if (device < 0 || device >= rlhf_cuda_device_count()) {
    return 1;
  }
  try {
    const auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].current;
    *peak = stats.allocated_bytes[all].peak;
    return 0;
  } catch (...) {
    return 2;
  }
}
}
