// The per-thread cache of LSTM graphs behind gpu::run_maybe_graphed (cuda/runtime.h), shared by
// the CUDA build (cuda/glue.cpp: Exec = cudaGraphExec_t) and the emulation (cuda/emu.cpp: Exec
// = a recording of launches), so the emulated tests exercise the same keys, hits and
// evictions as a GPU.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <list>
#include <utility>
#include <vector>

namespace pylstm {
namespace gpu {

template <class Exec>
class GraphCache {
 public:
  static constexpr std::size_t kMaxGraphs = 8;

  // The call's key plus what every graph also depends on: the device and the TF32 setting.
  static std::vector<std::uint64_t> full_key(const std::vector<std::uint64_t>& key, int dev,
                                             bool tf32) {
    std::vector<std::uint64_t> full = key;
    full.push_back(std::uint64_t(dev));
    full.push_back(tf32 ? 1u : 0u);
    return full;
  }

  // The graph cached under `key`, made the most recent (a replay), or nullptr.
  Exec* find(const std::vector<std::uint64_t>& key) {
    auto it = std::find_if(lru_.begin(), lru_.end(), [&](const Entry& e) { return e.key == key; });
    if (it == lru_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it);
    ++replays_;
    return &lru_.front().exec;
  }

  // Caches a new capture as the most recent; the least recent beyond kMaxGraphs goes to destroy.
  template <class Destroy>
  Exec& add(std::vector<std::uint64_t> key, Exec exec, Destroy&& destroy) {
    lru_.push_front(Entry{std::move(key), std::move(exec)});
    if (lru_.size() > kMaxGraphs) {
      destroy(lru_.back().exec);
      lru_.pop_back();
    }
    ++captures_;
    return lru_.front().exec;
  }

  template <class Destroy>
  void clear(Destroy&& destroy) {
    for (Entry& e : lru_) destroy(e.exec);
    lru_.clear();
    replays_ = captures_ = 0;
  }

  std::pair<std::int64_t, std::int64_t> stats() const { return {replays_, captures_}; }

 private:
  struct Entry {
    std::vector<std::uint64_t> key;
    Exec exec;
  };
  std::list<Entry> lru_;  // most recently used first
  std::int64_t replays_ = 0, captures_ = 0;
};

}  // namespace gpu
}  // namespace pylstm
