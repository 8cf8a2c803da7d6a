//! Path validation and normalisation (pure).
//!
//! A valid path is absolute, valid UTF-8 (guaranteed by `&str`), at most
//! [`MAX_PATH_BYTES`] long and [`MAX_DEPTH`] components deep, with no empty,
//! `.` or `..` components and no NUL or control characters. A trailing `/` is
//! tolerated and dropped. The root is `/`.

/// Longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Deepest accepted path, in components.
pub const MAX_DEPTH: usize = 64;
/// Longest accepted component, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a path was rejected. Serialisable: it travels in a replicated
/// command's result (the Raft state machine's response).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum PathError {
    /// Empty or not starting with `/`.
    #[error("invalid path {path:?}: must be absolute (start with '/')")]
    NotAbsolute { path: String },
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("invalid path: longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// Deeper than [`MAX_DEPTH`].
    #[error("invalid path: deeper than {MAX_DEPTH} components")]
    TooDeep,
    /// A bad component.
    #[error("invalid path {path:?}: {reason}")]
    BadComponent { path: String, reason: String },
}

/// A validated, normalised absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsPath {
    components: Vec<String>,
}

impl NsPath {
    /// The root directory.
    pub fn root() -> Self {
        NsPath {
            components: Vec::new(),
        }
    }

    /// Validates and normalises `raw`.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        if !raw.starts_with('/') {
            return Err(PathError::NotAbsolute {
                path: raw.to_string(),
            });
        }
        let trimmed = if raw.len() > 1 {
            raw.strip_suffix('/').unwrap_or(raw)
        } else {
            raw
        };
        let mut components = Vec::new();
        if trimmed != "/" || raw.len() > 1 {
            for c in trimmed[1..].split('/') {
                let bad = |reason: &str| PathError::BadComponent {
                    path: raw.to_string(),
                    reason: reason.to_string(),
                };
                if c.is_empty() {
                    return Err(bad("empty component"));
                }
                if c == "." || c == ".." {
                    return Err(bad("'.' and '..' are not allowed"));
                }
                if c.len() > MAX_NAME_BYTES {
                    return Err(bad("component longer than 255 bytes"));
                }
                if c.chars().any(char::is_control) {
                    return Err(bad("control characters are not allowed"));
                }
                components.push(c.to_string());
            }
        }
        if components.len() > MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        Ok(NsPath { components })
    }

    /// Components from the root down.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// True for `/`.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// Last component ("" for the root).
    pub fn name(&self) -> &str {
        self.components.last().map(String::as_str).unwrap_or("")
    }

    /// The parent directory (the root is its own parent).
    pub fn parent(&self) -> NsPath {
        let mut components = self.components.clone();
        components.pop();
        NsPath { components }
    }

    /// `self/name`.
    pub fn join(&self, name: &str) -> NsPath {
        let mut components = self.components.clone();
        components.push(name.to_string());
        NsPath { components }
    }

    /// True when `self` is `other` or below it.
    pub fn starts_with(&self, other: &NsPath) -> bool {
        self.components.starts_with(&other.components)
    }
}

impl std::fmt::Display for NsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.components.is_empty() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_good_paths() {
        for (raw, want) in [
            ("/", "/"),
            ("/a", "/a"),
            ("/a/b/c", "/a/b/c"),
            ("/a/b/", "/a/b"),
            ("/ü/ñ file", "/ü/ñ file"),
        ] {
            assert_eq!(NsPath::parse(raw).unwrap().to_string(), want, "{raw}");
        }
        assert!(NsPath::parse("/").unwrap().is_root());
        assert_eq!(NsPath::parse("/a/b").unwrap().name(), "b");
        assert_eq!(NsPath::parse("/a/b").unwrap().parent().to_string(), "/a");
    }

    #[test]
    fn rejects_bad_paths() {
        let deep = "/x".repeat(MAX_DEPTH + 1);
        let long = format!("/{}", "y".repeat(MAX_PATH_BYTES));
        let long_name = format!("/{}", "z".repeat(MAX_NAME_BYTES + 1));
        for raw in [
            "",
            "a/b",
            "//",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/..",
            "/a\0b",
            "/a\nb",
            deep.as_str(),
            long.as_str(),
            long_name.as_str(),
        ] {
            assert!(NsPath::parse(raw).is_err(), "{raw:?} should be rejected");
        }
    }
}
