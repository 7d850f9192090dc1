// The CUDA caching allocator's `emptyCache` and its statistics, which tch does
// not bind (they are inline in libtorch's headers). Compiled by build.rs
// against the headers of the libtorch in use; the Rust side is device_memory.rs.
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <cstring>
#include <exception>

static void copy_error(const std::exception& e, char* error, size_t len) {
  if (len == 0) return;
  std::strncpy(error, e.what(), len - 1);
  error[len - 1] = '\0';
}

extern "C" int rw_empty_device_cache(char* error, size_t len) {
  try {
    c10::getDeviceAllocator(c10::DeviceType::CUDA)->emptyCache();
    return 0;
  } catch (const std::exception& e) {
    copy_error(e, error, len);
    return 1;
  }
}

extern "C" int rw_device_memory(int device, uint64_t* allocated, uint64_t* reserved, char* error, size_t len) {
  try {
    auto stats = c10::getDeviceAllocator(c10::DeviceType::CUDA)->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *allocated = static_cast<uint64_t>(stats.allocated_bytes[0].current);
    *reserved = static_cast<uint64_t>(stats.reserved_bytes[0].current);
    return 0;
  } catch (const std::exception& e) {
    copy_error(e, error, len);
    return 1;
  }
}
