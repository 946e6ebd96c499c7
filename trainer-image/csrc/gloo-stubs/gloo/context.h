// Stand-in for Gloo's header (see rendezvous/store.h). c10d's inline setTimeout calls this
// member; it is declared only, since that inline body is emitted inside libtorch, not here.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
namespace transport {
class Device;
class UnboundBuffer;
}  // namespace transport
}  // namespace gloo
