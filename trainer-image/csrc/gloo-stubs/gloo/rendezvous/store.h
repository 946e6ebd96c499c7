// Stand-in for Gloo's header, which the torch wheel does not ship (Gloo itself is inside
// libtorch_cpu.so). c10d's ProcessGroupGloo.hpp derives GlooStore from this interface; the shim
// never constructs one, so the declarations only have to match in name and signature.
#pragma once
#include <chrono>
#include <string>
#include <vector>

namespace gloo::rendezvous {
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
};
}  // namespace gloo::rendezvous
