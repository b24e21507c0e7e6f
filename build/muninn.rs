//! Build script of the `muninn` binary: the libtorch rpath (as for every crate that links it) and the
//! source commit, which `muninn launch` records with each run.

#[path = "rpath.rs"]
mod rpath;

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    rpath::main();
    let commit = match git(&["rev-parse", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        None => "unknown (not built from a git checkout)".into(),
    };
    println!("cargo:rustc-env=MUNINN_GIT_COMMIT={commit}");
    // A new commit or staged change, or any source change, re-reads the commit.
    for path in [
        ".git/HEAD",
        ".git/index",
        "src",
        "model/src",
        "trainer/src",
        "data/src",
        "launch/src",
        "configs",
        "build",
    ] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let path = format!(".git/{head_ref}");
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
