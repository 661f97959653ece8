// The per-thread cache of LSTM graphs behind gpu::run_maybe_graphed (cuda/runtime.h), shared by
// the CUDA build (cuda/glue.cpp: Exec = cudaGraphExec_t) and the emulation (cuda/emu.cpp: Exec
// = a recording of launches), so the emulated tests exercise the same keys, hits, updates and
// evictions as a GPU. A graph is found by its shape (what its topology depends on) and then by
// its addresses: a call on new addresses of a cached shape updates an executable in place
// rather than instantiating one.
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
  using Key = std::vector<std::uint64_t>;
  static constexpr std::size_t kMaxGraphs = 32;  // executables kept per host thread
  // Address sets kept per shape: a training loop's allocator hands out a few address sets in
  // turn (fresh outputs every call, layers of one shape); past this many, a call with new
  // addresses updates the least recently used graph of its shape instead of instantiating.
  static constexpr std::size_t kPerShape = 4;

  enum class Found { kNone, kReplay, kUpdate };

  // The shape part of a call's key plus what every graph also depends on: the device and the
  // TF32 setting.
  static Key full_key(const Key& shape, int dev, bool tf32) {
    Key full = shape;
    full.push_back(std::uint64_t(dev));
    full.push_back(tf32 ? 1u : 0u);
    return full;
  }

  // kReplay: the graph of this shape and these addresses. kUpdate: kPerShape graphs of this
  // shape are cached, none with these addresses: the least recently used of them, to be
  // updated to them (then `updated` or `replace`). kNone: capture a new graph (`add`). The
  // graph returned is made the most recent.
  std::pair<Exec*, Found> find(const Key& shape, const Key& addrs) {
    auto oldest_same = lru_.end();
    std::size_t same = 0;
    for (auto it = lru_.begin(); it != lru_.end(); ++it) {
      if (it->shape != shape) continue;
      if (it->addrs == addrs) {
        lru_.splice(lru_.begin(), lru_, it);
        ++replays_;
        return {&lru_.front().exec, Found::kReplay};
      }
      ++same;
      oldest_same = it;
    }
    if (same < kPerShape) return {nullptr, Found::kNone};
    lru_.splice(lru_.begin(), lru_, oldest_same);
    return {&lru_.front().exec, Found::kUpdate};
  }

  // The most recent graph (kUpdate's) now runs on `addrs`.
  void updated(Key addrs) {
    lru_.front().addrs = std::move(addrs);
    ++updates_;
  }

  // The most recent graph (kUpdate's, whose update failed) replaced by a new capture.
  template <class Destroy>
  Exec& replace(Key addrs, Exec exec, Destroy&& destroy) {
    destroy(lru_.front().exec);
    lru_.front().exec = std::move(exec);
    lru_.front().addrs = std::move(addrs);
    ++captures_;
    return lru_.front().exec;
  }

  // Caches a new capture as the most recent; the least recent beyond kMaxGraphs goes to destroy.
  template <class Destroy>
  Exec& add(Key shape, Key addrs, Exec exec, Destroy&& destroy) {
    lru_.push_front(Entry{std::move(shape), std::move(addrs), std::move(exec)});
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
    replays_ = captures_ = updates_ = 0;
  }

  // (replays of a cached graph as it was, captures of a new executable, updates of a cached
  // executable to new addresses)
  std::vector<std::int64_t> stats() const { return {replays_, captures_, updates_}; }

 private:
  struct Entry {
    Key shape, addrs;
    Exec exec;
  };
  std::list<Entry> lru_;  // most recently used first
  std::int64_t replays_ = 0, captures_ = 0, updates_ = 0;
};

}  // namespace gpu
}  // namespace pylstm
