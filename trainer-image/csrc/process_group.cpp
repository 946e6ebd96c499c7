// A C interface to libtorch's c10d for the trainer: rendezvous through a TCPStore, a Gloo
// process group, and the collectives the parallel strategies need. Every function catches C++
// exceptions and reports them as a message in `err` (and a non-zero return or null).
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdint>
#include <cstdio>
#include <string>

struct RlhfGroup {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
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

// Rendezvous at host:port (rank 0 serves the store) and a Gloo group of `world` ranks. Null on
// failure, e.g. when a peer does not arrive within `timeout_ms`.
RlhfGroup* rlhf_group_new(const char* host, uint16_t port, int32_t rank, int32_t world, int64_t timeout_ms, char* err, size_t err_len) {
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
    group = new RlhfGroup{c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options)};
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
    g->pg->allreduce(tensors)->wait();
  });
}

int32_t rlhf_broadcast(RlhfGroup* g, const at::Tensor* t, int32_t root, char* err, size_t len) {
  return guarded(err, len, [&] {
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    g->pg->broadcast(tensors, options)->wait();
  });
}

// `out` (world x numel of `in`, contiguous) receives every rank's `in`, in rank order.
int32_t rlhf_all_gather(RlhfGroup* g, const at::Tensor* out, const at::Tensor* in, char* err, size_t len) {
  return guarded(err, len, [&] {
    at::Tensor o = *out;
    at::Tensor i = *in;
    g->pg->_allgather_base(o, i)->wait();
  });
}

// `out` receives this rank's chunk of the sum over ranks of `in` (world chunks of out's size).
int32_t rlhf_reduce_scatter_sum(RlhfGroup* g, const at::Tensor* out, const at::Tensor* in, char* err, size_t len) {
  return guarded(err, len, [&] {
    at::Tensor o = *out;
    at::Tensor i = *in;
    g->pg->_reduce_scatter_base(o, i)->wait();
  });
}

int32_t rlhf_barrier(RlhfGroup* g, char* err, size_t len) {
  return guarded(err, len, [&] { g->pg->barrier()->wait(); });
}
}
