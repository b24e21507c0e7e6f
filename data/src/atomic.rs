//! Writing a new output directory all at once: fill a temporary sibling, then rename it into place.
//! A reader never sees a half-written directory, a failed write leaves nothing behind, and an
//! existing directory is never touched. Used for datasets and checkpoints alike.

use std::path::Path;

use anyhow::{ensure, Context, Result};

pub fn write_new_dir(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    ensure!(
        !out.exists(),
        "{} already exists; choose a new output directory",
        out.display()
    );
    let parent = match out.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p,
        None => Path::new("."),
    };
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // Removed on drop, so an error in `fill` cleans up after itself.
    let tmp = tempfile::Builder::new()
        .prefix(".muninn-tmp-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    fill(tmp.path())?;
    let tmp = tmp.keep();
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fill_leaves_nothing_and_an_existing_dir_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let err = write_new_dir(&out, |d| {
            std::fs::write(d.join("half"), "x")?;
            anyhow::bail!("boom")
        });
        assert!(err.is_err() && !out.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "temporary directory left behind"
        );
        write_new_dir(&out, |d| Ok(std::fs::write(d.join("a"), "1")?)).unwrap();
        assert!(write_new_dir(&out, |d| Ok(std::fs::write(d.join("a"), "2")?)).is_err());
        assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "1");
    }
}
