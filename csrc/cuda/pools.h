// Per-device resources kept per host thread and handed on when the thread exits, shared by the
// CUDA build (cuda/glue.cpp: cuBLAS handles, graph streams, sync events) and the emulation
// (cuda/emu.cpp: stand-in events), so a thread churn test under emulation exercises the same
// pooling. Pooled resources are never destroyed: destroying them from thread-exit or
// process-exit destructors can run after the CUDA runtime has shut down; the driver reclaims
// them with the process.
#pragma once

#include <cstddef>
#include <mutex>
#include <vector>

namespace pylstm {
namespace gpu {

// What exited threads left, per device, for the next thread that needs one.
template <class Item>
class DevicePool {
 public:
  void give(int dev, const Item& item) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() <= std::size_t(dev)) free_.resize(std::size_t(dev) + 1);
    free_[std::size_t(dev)].push_back(item);
  }
  bool take(int dev, Item& item) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() <= std::size_t(dev) || free_[std::size_t(dev)].empty()) return false;
    item = free_[std::size_t(dev)].back();
    free_[std::size_t(dev)].pop_back();
    return true;
  }

 private:
  std::mutex mutex_;
  std::vector<std::vector<Item>> free_;  // per device
};

// One Item per device for the owning thread (a thread_local): taken from the pool, else made by
// create(dev); given back to the pool when the thread exits.
template <class Item>
class ThreadSlots {
 public:
  explicit ThreadSlots(DevicePool<Item>& pool) : pool_(pool) {}
  ~ThreadSlots() {
    for (std::size_t d = 0; d < items_.size(); ++d) {
      if (have_[d]) pool_.give(int(d), items_[d]);
    }
  }
  ThreadSlots(const ThreadSlots&) = delete;
  ThreadSlots& operator=(const ThreadSlots&) = delete;

  template <class Create>
  Item& get(int dev, Create&& create) {
    if (items_.size() <= std::size_t(dev)) {
      items_.resize(std::size_t(dev) + 1);
      have_.resize(std::size_t(dev) + 1, false);
    }
    if (!have_[std::size_t(dev)]) {
      if (!pool_.take(dev, items_[std::size_t(dev)])) items_[std::size_t(dev)] = create(dev);
      have_[std::size_t(dev)] = true;
    }
    return items_[std::size_t(dev)];
  }

 private:
  DevicePool<Item>& pool_;
  std::vector<Item> items_;
  std::vector<bool> have_;
};

}  // namespace gpu
}  // namespace pylstm
