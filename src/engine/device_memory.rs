//! The GPU's cached memory: libtorch's CUDA caching allocator keeps freed
//! blocks for reuse, so memory a sleeping model gave up is only free for a
//! co-located rollout engine once the cache is emptied (`torch.cuda.empty_cache()`).
//! tch binds neither that nor the allocator's statistics; a small C++ file
//! (`device_memory.cpp`, compiled by `build.rs` against libtorch's headers)
//! does. A build without those headers says so when it is asked.

#[cfg(torch_shim)]
mod shim {
    use std::os::raw::{c_char, c_int};
    extern "C" {
        pub fn rw_empty_device_cache(error: *mut c_char, len: usize) -> c_int;
        pub fn rw_device_memory(
            device: c_int,
            allocated: *mut u64,
            reserved: *mut u64,
            error: *mut c_char,
            len: usize,
        ) -> c_int;
    }

    pub fn message(buffer: &[u8]) -> String {
        let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
        String::from_utf8_lossy(&buffer[..end]).into_owned()
    }
}

/// Bytes the CUDA allocator has in tensors, and holds from the device (what
/// `nvidia-smi` sees of this process, less the CUDA context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub allocated: u64,
    pub reserved: u64,
}

/// `torch.cuda.empty_cache()`: give the allocator's free blocks back to the device.
pub fn empty_device_cache() -> Result<(), String> {
    #[cfg(torch_shim)]
    {
        let mut error = [0u8; 512];
        // SAFETY: the buffer outlives the call and its length is passed.
        let rc = unsafe { shim::rw_empty_device_cache(error.as_mut_ptr().cast(), error.len()) };
        if rc == 0 {
            return Ok(());
        }
        Err(format!("emptying the CUDA cache: {}", shim::message(&error)))
    }
    #[cfg(not(torch_shim))]
    Err(NO_SHIM.into())
}

/// The CUDA allocator's memory on `cuda:device`.
pub fn device_memory(device: usize) -> Result<DeviceMemory, String> {
    #[cfg(torch_shim)]
    {
        let (mut allocated, mut reserved, mut error) = (0u64, 0u64, [0u8; 512]);
        // SAFETY: valid out-pointers and a buffer with its length.
        let rc = unsafe {
            shim::rw_device_memory(device as _, &mut allocated, &mut reserved, error.as_mut_ptr().cast(), error.len())
        };
        if rc == 0 {
            return Ok(DeviceMemory { allocated, reserved });
        }
        Err(format!("reading cuda:{device}'s memory: {}", shim::message(&error)))
    }
    #[cfg(not(torch_shim))]
    {
        let _ = device;
        Err(NO_SHIM.into())
    }
}

#[cfg(not(torch_shim))]
const NO_SHIM: &str = "this build has no CUDA allocator access (libtorch's headers were not found at build time)";
