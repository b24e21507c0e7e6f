//! Writing outputs all at once: fill a temporary sibling, then rename it into place. A reader never
//! sees a half-written directory or file, and a failed write leaves nothing behind. Used for
//! datasets, checkpoints, evaluation results and plots alike.

use std::path::Path;

use anyhow::{ensure, Context, Result};

/// The name prefix of [`write_new_dir`]'s temporary directories: `.muninn-tmp-HOST-PID-XXXXXX`.
pub const TMP_PREFIX: &str = ".muninn-tmp-";

/// This machine's host name (`-` and dots kept; empty when unknown).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace('/', "_"))
        .unwrap_or_default()
}

/// Who wrote a temporary directory of [`write_new_dir`]: (host, pid), or None for a name of
/// another form (e.g. an older Muninn's `.muninn-tmp-XXXXXX`).
pub fn tmp_owner(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix(TMP_PREFIX)?;
    // HOST-PID-RANDOM; the host may itself contain dashes.
    let mut parts = rest.rsplitn(3, '-');
    let (_random, pid, host) = (parts.next()?, parts.next()?, parts.next()?);
    Some((host.to_string(), pid.parse().ok()?))
}

/// Writes the new directory `out` through `fill(tmp)` on a temporary sibling, renamed into place
/// once complete; an existing `out` is refused.
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
    // Removed on drop, so an error in `fill` cleans up after itself. The name says who writes it
    // (host and process), so that a later run can tell a dead writer's leftovers from a live one's.
    let prefix = format!("{TMP_PREFIX}{}-{}-", host_name(), std::process::id());
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    fill(tmp.path())?;
    let tmp = tmp.keep();
    std::fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))
}

/// Writes the file `path` through `write(tmp)` on a temporary sibling (same extension, so writers
/// that go by it still do), renamed over `path` once complete.
pub fn write_file_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tmp = path.with_extension(format!("muninn-tmp.{ext}"));
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` through a temporary sibling.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_with(path, |tmp| {
        std::fs::write(tmp, bytes).with_context(|| format!("writing {}", tmp.display()))
    })
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

    #[test]
    fn a_file_is_replaced_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("eval.json");
        write_file(&out, b"one").unwrap();
        let err = write_file_with(&out, |tmp| {
            std::fs::write(tmp, "half")?;
            anyhow::bail!("boom")
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "one");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file left behind"
        );
        write_file(&out, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "two");
    }
}
