// The NCCL process group (for CUDA tensors), compiled when the build finds NCCL's and CUDA's
// headers (build.rs); otherwise process_group_no_nccl.cpp stands in.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

c10::intrusive_ptr<c10d::Backend> rlhf_make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world, int64_t timeout_ms) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = std::chrono::milliseconds(timeout_ms);
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
}
