//! Build script shared by every crate whose binaries or tests link libtorch.
//!
//! tch's build script finds libtorch (LIBTORCH, LIBTORCH_USE_PYTORCH, or the project's .venv through
//! .cargo/config.toml) but does not put it on the run-time search path. Embedding it as an rpath lets
//! `cargo test`, `cargo run` and `target/release/muninn` start without a hand-set LD_LIBRARY_PATH.
pub fn main() {
    // Exported by torch-sys (`links = "tch"`) to crates that depend on it directly.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("windows") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
