//! Golden files: the bytes a format must keep, committed under a crate's
//! `tests/golden/`, compared with what the current code writes. Setting
//! `DFS_UPDATE_GOLDEN=1` rewrites them instead (a deliberate format change);
//! a mismatch otherwise says where the bytes differ.

use std::fs;
use std::path::{Path, PathBuf};

/// The variable that turns comparisons into rewrites.
pub const UPDATE_ENV: &str = "DFS_UPDATE_GOLDEN";

/// True when golden files are being rewritten.
pub fn updating() -> bool {
    std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1")
}

/// How a difference is shown.
#[derive(Clone, Copy, Debug)]
pub enum Diff {
    /// Text (JSON rows): the line and the text around the first difference.
    Text,
    /// Binary formats: the bytes around the first difference, in hex.
    Binary,
}

/// The golden files of one crate.
#[derive(Debug, Clone)]
pub struct Golden {
    dir: PathBuf,
    regenerate: &'static str,
}

impl Golden {
    /// The golden files under `<manifest_dir>/tests/golden`; `regenerate`
    /// is the command that rewrites them (quoted in messages).
    pub fn new(manifest_dir: &str, regenerate: &'static str) -> Self {
        Golden {
            dir: Path::new(manifest_dir).join("tests/golden"),
            regenerate,
        }
    }

    /// Where golden file `name` lives.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The bytes of golden file `name` (`what` names the format in the
    /// message when it is missing).
    pub fn read(&self, what: &str, name: &str) -> Vec<u8> {
        let path = self.path(name);
        fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "the {what} golden file {} cannot be read ({e}); create it with {}",
                path.display(),
                self.regenerate
            )
        })
    }

    /// Compares `actual` with golden file `name`, or rewrites it when
    /// [`updating`]. `Err` describes the first difference.
    pub fn compare(&self, what: &str, name: &str, actual: &[u8], diff: Diff) -> Result<(), String> {
        let path = self.path(name);
        if updating() {
            fs::create_dir_all(path.parent().expect("golden dir")).unwrap();
            fs::write(&path, actual).unwrap();
            eprintln!("{UPDATE_ENV}=1: rewrote {}", path.display());
            return Ok(());
        }
        let golden = self.read(what, name);
        if golden == actual {
            Ok(())
        } else {
            Err(describe(&golden, actual, diff))
        }
    }
}

/// Where two byte strings differ, for a failure message.
pub fn describe(golden: &[u8], actual: &[u8], diff: Diff) -> String {
    let at = golden
        .iter()
        .zip(actual)
        .position(|(a, b)| a != b)
        .unwrap_or(golden.len().min(actual.len()));
    match diff {
        Diff::Text => {
            let line = golden[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            let around = |b: &[u8]| {
                let from = at.saturating_sub(60).min(b.len());
                let to = (at + 60).min(b.len());
                String::from_utf8_lossy(&b[from..to]).into_owned()
            };
            format!(
                "golden {} bytes, now {} bytes; first difference at byte {at} (line {line}):\n  \
                 golden: …{}…\n  now:    …{}…",
                golden.len(),
                actual.len(),
                around(golden),
                around(actual)
            )
        }
        Diff::Binary => {
            let around = |b: &[u8]| {
                let from = at.saturating_sub(8);
                let to = (at + 8).min(b.len());
                b.get(from..to).map_or(String::new(), |s| {
                    s.iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            };
            format!(
                "golden {} bytes, now {} bytes; first difference at byte {at} (0x{at:x}); \
                 bytes from 0x{:x}: golden [{}], now [{}]",
                golden.len(),
                actual.len(),
                at.saturating_sub(8),
                around(golden),
                around(actual)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_located() {
        let d = describe(b"ab\ncd", b"ab\nxd", Diff::Text);
        assert!(d.contains("byte 3 (line 2)"), "{d}");
        let d = describe(&[1, 2, 3], &[1, 2, 4], Diff::Binary);
        assert!(
            d.contains("byte 2 (0x2)") && d.contains("golden [01 02 03]"),
            "{d}"
        );
    }
}
