// A C interface to libtorch's c10d for the trainer: rendezvous through a TCPStore, a Gloo group
// for CPU tensors and, when asked for, an NCCL group for CUDA tensors (process_group_nccl.cpp),
// and the collectives the parallel strategies need, each sent to the group of its tensors'
// device. Every function catches C++ exceptions and reports them as a message in `err` (and a
// non-zero return or null).
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdint>
#include <cstdio>
#include <string>

// process_group_nccl.cpp: the NCCL group, or an error in builds without NCCL's headers.
c10::intrusive_ptr<c10d::Backend> rlhf_make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world, int64_t timeout_ms);

struct RlhfGroup {
  c10::intrusive_ptr<c10d::Backend> gloo;
  c10::intrusive_ptr<c10d::Backend> nccl;  // null unless CUDA tensors are trained

  c10d::Backend& for_tensor(const at::Tensor& t) {
    return t.is_cuda() && nccl ? *nccl : *gloo;
  }
};

namespace {

void report(char* err, size_t len, const char* what) {
  if (err != nullptr && len > 0) {
    std::snprintf(err, len, "%s", what);
  }
}

// Runs `f`, turning an exception into its message and return code 1.
template <typename F>
int32_t guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    report(err, len, e.what());
  } catch (...) {
    report(err, len, "unknown C++ exception");
  }
  return 1;
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0;
}

}  // namespace

extern "C" {

// Rendezvous at host:port (rank 0 serves the store) and a Gloo group of `world` ranks, plus an
// NCCL group when `nccl` is non-zero. Null on failure, e.g. when a peer does not arrive within
// `timeout_ms`.
RlhfGroup* rlhf_group_new(const char* host, uint16_t port, int32_t rank, int32_t world, int64_t timeout_ms, int32_t nccl, char* err, size_t err_len) {
  RlhfGroup* group = nullptr;
  guarded(err, err_len, [&] {
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions store_options;
    store_options.port = port;
    store_options.isServer = rank == 0;
    store_options.numWorkers = static_cast<size_t>(world);
    store_options.waitWorkers = true;
    store_options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), store_options);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    // On one machine talk over loopback; across machines through the interface of our hostname.
    options->devices.push_back(is_loopback(host) ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                                 : c10d::ProcessGroupGloo::createDefaultDevice());
    auto gloo_store = c10::make_intrusive<c10d::PrefixStore>("gloo", store);
    auto g = new RlhfGroup{c10::make_intrusive<c10d::ProcessGroupGloo>(gloo_store, rank, world, options), {}};
    if (nccl != 0) {
      try {
        g->nccl = rlhf_make_nccl(c10::make_intrusive<c10d::PrefixStore>("nccl", store), rank, world, timeout_ms);
      } catch (...) {
        delete g;
        throw;
      }
    }
    group = g;
  });
  return group;
}

void rlhf_group_free(RlhfGroup* group) {
  delete group;
}

// In-place sum over ranks.
int32_t rlhf_all_reduce_sum(RlhfGroup* g, const at::Tensor* t, char* err, size_t len) {
  return guarded(err, len, [&] {
    std::vector<at::Tensor> tensors{*t};
    g->for_tensor(*t).allreduce(tensors)->wait();
  });
}

int32_t rlhf_broadcast(RlhfGroup* g, const at::Tensor* t, int32_t root, char* err, size_t len) {
  return guarded(err, len, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    g->for_tensor(*t).broadcast(tensors, options)->wait();
  });
}

// `out` (world x numel of `in`, contiguous) receives every rank's `in`, in rank order.
int32_t rlhf_all_gather(RlhfGroup* g, const at::Tensor* out, const at::Tensor* in, char* err, size_t len) {
  return guarded(err, len, [&] {
    at::Tensor o = *out;
    at::Tensor i = *in;
    g->for_tensor(i)._allgather_base(o, i)->wait();
  });
}

// `out` receives this rank's chunk of the sum over ranks of `in` (world chunks of out's size).
int32_t rlhf_reduce_scatter_sum(RlhfGroup* g, const at::Tensor* out, const at::Tensor* in, char* err, size_t len) {
  return guarded(err, len, [&] {
    at::Tensor o = *out;
    at::Tensor i = *in;
    g->for_tensor(i)._reduce_scatter_base(o, i)->wait();
  });
}

int32_t rlhf_barrier(RlhfGroup* g, char* err, size_t len) {
  return guarded(err, len, [&] { g->gloo->barrier()->wait(); });
}
}
