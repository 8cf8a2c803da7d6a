//! A configuration file read again while the process runs: a mounted
//! Secret or ConfigMap that changes under it. A change that parses replaces
//! the value in use; one that does not is logged and the value kept, so a
//! half-written file never takes effect.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often a watched file is read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A file's parsed value, kept current.
pub struct Watched<T, E> {
    path: Arc<PathBuf>,
    what: &'static str,
    parse: fn(&Path, &str) -> Result<T, E>,
    current: Arc<RwLock<(Arc<T>, String)>>,
}

impl<T, E> Clone for Watched<T, E> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            what: self.what,
            parse: self.parse,
            current: self.current.clone(),
        }
    }
}

impl<T: Send + Sync + 'static, E: std::fmt::Display + 'static> Watched<T, E> {
    /// Reads and parses `path` (`what` names it in logs); `read_error`
    /// makes the error of an unreadable file.
    pub fn open(
        path: &Path,
        what: &'static str,
        parse: fn(&Path, &str) -> Result<T, E>,
        read_error: fn(PathBuf, std::io::Error) -> E,
    ) -> Result<Self, E> {
        let text = std::fs::read_to_string(path).map_err(|e| read_error(path.to_path_buf(), e))?;
        let value = parse(path, &text)?;
        Ok(Self {
            path: Arc::new(path.to_path_buf()),
            what,
            parse,
            current: Arc::new(RwLock::new((Arc::new(value), text))),
        })
    }

    /// The value in use.
    pub fn get(&self) -> Arc<T> {
        self.current.read().expect("watched file lock").0.clone()
    }

    /// Reads the file again; true when the value changed.
    pub fn reload(&self) -> bool {
        let text = match std::fs::read_to_string(&*self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "cannot read the {}, keeping the one in use: {e}", self.what);
                return false;
            }
        };
        if self.current.read().expect("watched file lock").1 == text {
            return false;
        }
        match (self.parse)(&self.path, &text) {
            Ok(value) => {
                tracing::info!(path = %self.path.display(), "{} reloaded", self.what);
                *self.current.write().expect("watched file lock") = (Arc::new(value), text);
                true
            }
            Err(e) => {
                tracing::warn!("{} refused, keeping the one in use: {e}", self.what);
                false
            }
        }
    }

    /// Reloads every [`RELOAD_INTERVAL`] until the runtime stops.
    pub fn spawn_reloader(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.reload()).await;
            }
        });
    }
}
