//! Points the binaries (and test binaries) at libtorch's shared libraries with an
//! rpath, so `reward-worker` runs without LD_LIBRARY_PATH; and compiles the small
//! C++ file that reaches libtorch's CUDA allocator (`src/engine/device_memory.cpp`).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=src/engine/device_memory.cpp");
    println!("cargo::rustc-check-cfg=cfg(torch_shim)");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(&libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let include = PathBuf::from(&libtorch).join("include");
    if include.join("c10/core/CachingDeviceAllocator.h").exists() {
        cc::Build::new()
            .cpp(true)
            .file("src/engine/device_memory.cpp")
            .include(&include)
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .warnings(false)
            .compile("rw_device_memory");
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-lib=dylib=c10");
        println!("cargo:rustc-cfg=torch_shim");
    }
}
