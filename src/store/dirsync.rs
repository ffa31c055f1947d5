//! Durable directory entries. Syncing a file makes its bytes survive a power cut, but its name
//! (after a creation or a rename) only survives once the directory holding it is synced; redb
//! never syncs a directory, and neither does `std::fs::create_dir_all`. Every creation, rename
//! or removal the server relies on is followed by one of these, and a failed directory sync is
//! an error, never ignored. `tests/reliability_powercut.rs` checks this under simulated power
//! cuts.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DirError {
    #[error("cannot create the directory {0}: {1}")]
    Create(PathBuf, io::Error),
    #[error("cannot make the entries of the directory {0} durable (its fsync failed): {1}")]
    Sync(PathBuf, io::Error),
}

/// Syncs the directory `dir`: the names created, renamed or removed in it become durable.
pub fn sync_dir(dir: &Path) -> Result<(), DirError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DirError::Sync(dir.into(), e))
}

/// Syncs the directory holding `path`.
pub fn sync_parent(path: &Path) -> Result<(), DirError> {
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Creates `dir` with its missing ancestors, then syncs the parent of each directory it
/// created, so the whole path survives a power cut. Nothing is synced when `dir` exists.
pub fn create_dir_all(dir: &Path) -> Result<(), DirError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        at = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| DirError::Create(dir.into(), e))?;
    // Outermost first: each new directory's name lands in a directory whose own name is durable.
    for d in missing.iter().rev() {
        sync_parent(d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_and_reports_a_failed_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        let err = sync_dir(&tmp.path().join("absent")).unwrap_err();
        assert!(matches!(err, DirError::Sync(..)), "{err}");
        assert!(err.to_string().contains("absent"), "{err}");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            create_dir_all(&file.join("sub")),
            Err(DirError::Create(..))
        ));
    }
}
