// Stands in for process_group_nccl.cpp in builds without NCCL's and CUDA's headers.
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <stdexcept>

c10::intrusive_ptr<c10d::Backend> rlhf_make_nccl(const c10::intrusive_ptr<c10d::Store>&, int, int, int64_t) {
  throw std::runtime_error("this rlhf-trainer was built without NCCL (no nccl.h or CUDA headers next to libtorch)");
}
