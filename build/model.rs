//! Build script of the model crate: the rpath (as every libtorch crate) and the small C++ shim
//! (`model/csrc/shim.cpp`: the libtorch calls tch does not expose; `kernels.cpp`: fused CPU kernels), compiled against the same
//! libtorch headers and C++ ABI that tch uses.

#[path = "rpath.rs"]
mod rpath;

use std::path::PathBuf;

fn main() {
    rpath::main();
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-changed=csrc/kernels.cpp");
    println!("cargo:rerun-if-changed=csrc/error.h");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    // torch-sys exports libtorch's lib directory; the headers sit beside it (PyPI wheel, the
    // libtorch zip and a site's ROCm/CUDA build all lay it out so).
    let lib = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB"),
    );
    let root = lib.parent().expect("libtorch's lib directory has a parent");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/shim.cpp")
        .file("csrc/kernels.cpp")
        // The fused kernels run in debug builds (the tests) too: optimise them always.
        .opt_level(3)
        // `#pragma omp simd` reductions vectorise (no OpenMP runtime is linked for it).
        .flag_if_supported("-fopenmp-simd")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false)
        .compile("muninn_shim");
}
