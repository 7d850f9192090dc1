//! Points the binaries (and test binaries) at libtorch's shared libraries with an
//! rpath, so `reward-worker` runs without LD_LIBRARY_PATH.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH") else {
        return;
    };
    let lib = PathBuf::from(libtorch).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
