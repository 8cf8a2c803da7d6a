//! Making names durable. A file's fsync makes its bytes durable, not its
//! name: a directory entry (a new file, a new directory) survives a power
//! cut only once its directory has been fsynced. A database file created
//! in a directory nobody fsynced can vanish whole with the power, taking
//! every commit fsynced into it along (found by the power-loss scenarios
//! of the chaos suite, where a coordinator came back with an empty
//! namespace).

use std::io;
use std::path::Path;

/// fsyncs the directory `dir` (its entries become durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, then makes every directory it created durable in its
/// parent, and `dir`'s own entries too (so files created in it before are
/// durable by name).
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    // The first ancestor that exists: everything below it is new.
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.exists() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories_and_syncs_them() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/c");
        create_dir_all(&dir).unwrap();
        assert!(dir.is_dir());
        // Existing: still fine, and a file's name in it can be synced.
        std::fs::write(dir.join("f"), b"x").unwrap();
        create_dir_all(&dir).unwrap();
        sync_dir(&dir).unwrap();
        assert!(sync_dir(&root.path().join("missing")).is_err());
    }
}
