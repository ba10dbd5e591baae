//! Durable file writes: the one recipe the node uses for a file that must survive a crash
//! or a power cut whole or not at all (calibration, thresholds, thumbnails, comparison
//! images, TLS keys), the directory fsync that makes a rename or a new entry durable, and
//! the free space of a file system (retention, doctor, status page).
//! Bottom layer: it knows nothing of scans, verdicts or the store, and never deletes
//! anything but its own temp file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Space on a file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Free for an unprivileged writer (the node's user): what the node can still use.
    pub free: u64,
    pub total: u64,
}

/// The space of the file system holding `path` (statvfs).
pub fn space(path: &Path) -> std::io::Result<Space> {
    let s = rustix::fs::statvfs(path)?;
    Ok(Space {
        free: s.f_bavail.saturating_mul(s.f_frsize),
        total: s.f_blocks.saturating_mul(s.f_frsize),
    })
}

/// Writes `bytes` to `dir/name`: a dot-named temp file in the same folder (watchers and
/// listings skip it), fsync, rename over `name`, fsync the folder. After a crash the file
/// is the old one or the new one, never a mix. `mode`: the new file's permission bits
/// (e.g. `0o600` for a private key), else the process default. Creates `dir` if needed.
pub fn write_file(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: Option<u32>,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let r = (|| {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        if let Some(m) = mode {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(m);
        }
        let mut f = o.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| path)
}

/// fsync of a directory, so that a rename or a new entry in it survives a power cut.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_is_read_and_a_missing_path_is_an_error_that_says_so() {
        let d = tempfile::tempdir().unwrap();
        let s = space(d.path()).unwrap();
        assert!(s.total > 0 && s.free <= s.total, "{s:?}");
        let e = space(&d.path().join("no-such-dir")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }

    #[test]
    fn writes_whole_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("sub");
        let p = write_file(&dir, "a.json", b"one", None).unwrap();
        assert_eq!(p, dir.join("a.json"));
        write_file(&dir, "a.json", b"two", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
        // Into a folder that cannot be made: an error, nothing left behind.
        std::fs::write(d.path().join("file"), b"x").unwrap();
        assert!(write_file(&d.path().join("file"), "b", b"x", None).is_err());
    }

    #[test]
    fn a_private_file_gets_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = write_file(d.path(), "key.pem", b"secret", Some(0o600)).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
