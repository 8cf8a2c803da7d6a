//! A test-only FUSE filesystem that loses what a power cut would lose.
//!
//! A killed process leaves its page cache behind, so a process kill can
//! never show whether a program made its writes durable before saying so.
//! This filesystem keeps apart what processes see (live) and what a disk
//! would hold after the power goes (durable: what fsync and directory fsync
//! made durable, see [`model`] for the exact rules), and on
//! [`LossyFs::power_cut`] it throws the difference away and serves exactly
//! the durable state, like a machine coming back up.
//!
//! It also injects faults ([`Fault`]: EIO, ENOSPC or any errno on chosen
//! operations and paths, after N bytes or at random with a seed) and
//! latency ([`Latency`]: a slow disk), and can pretend to be small
//! ([`LossyFs::set_capacity`]: writes past it get ENOSPC, `statfs` says so).
//!
//! It runs in the test's own process (a background FUSE session) with its
//! bytes in a backing directory; the programs under test are separate
//! processes given a directory under [`LossyFs::mountpoint`]. It needs root
//! and `/dev/fuse` ([`LossyFs::available`]).
//!
//! ```no_run
//! use dfs_lossyfs::{Fault, LossyFs, Op};
//! let dir = tempfile::tempdir().unwrap();
//! let mut fs = LossyFs::mount(&dir.path().join("disk"), &dir.path().join("mnt")).unwrap();
//! std::fs::write(fs.mountpoint().join("f"), b"not fsynced").unwrap();
//! fs.arm(Fault::eio(Op::Read).path("chunks/"));
//! let loss = fs.power_cut().unwrap();
//! assert!(!fs.mountpoint().join("f").exists());
//! assert_eq!(loss.dirs_reverted, 1);
//! ```

pub mod fault;
mod fuse;
pub mod model;
mod ranges;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use fault::{Fault, FaultId, Latency, Op};
pub use model::{Counts, Loss};

use fuse::{Adapter, Shared};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("FUSE is not usable here: {0}")]
    Unavailable(String),
    #[error("mounting {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unmounting {path}: {reason}")]
    Unmount { path: PathBuf, reason: String },
    #[error("losing the volatile state: errno {0}")]
    PowerCut(i32),
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A mounted lossy filesystem. Unmounted on drop.
#[derive(Debug)]
pub struct LossyFs {
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
}

/// Worker threads serving the mount: a slow operation (injected latency)
/// holds one, the others keep serving.
const THREADS: usize = 4;

impl LossyFs {
    /// Why FUSE cannot be used here, if it cannot: it needs `/dev/fuse` and
    /// root (it mounts and unmounts by itself; a test process killed by
    /// SIGKILL leaves its mount behind, which [`LossyFs::mount`] clears
    /// when it is given the same mount point again).
    pub fn available() -> Result<(), Error> {
        if !Path::new("/dev/fuse").exists() {
            return Err(Error::Unavailable("/dev/fuse does not exist".into()));
        }
        if !rustix::process::geteuid().is_root() {
            return Err(Error::Unavailable("not running as root".into()));
        }
        Ok(())
    }

    /// Mounts an empty filesystem at `mountpoint` (created if missing),
    /// keeping its bytes under `store` (created; must not be below the
    /// mount point).
    pub fn mount(store: &Path, mountpoint: &Path) -> Result<LossyFs, Error> {
        Self::available()?;
        if is_mounted(mountpoint) {
            // Left by a test process that was killed: detach it.
            let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
        for dir in [store, mountpoint] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mountpoint = mountpoint.canonicalize().map_err(|source| Error::Io {
            path: mountpoint.to_path_buf(),
            source,
        })?;
        let model = model::Model::new(store).map_err(|source| Error::Io {
            path: store.to_path_buf(),
            source,
        })?;
        let mut fs = LossyFs {
            shared: Arc::new(Shared::new(model)),
            session: None,
            mountpoint,
        };
        fs.start()?;
        Ok(fs)
    }

    fn start(&mut self) -> Result<(), Error> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("dfs-lossyfs".into()),
            fuser::MountOption::NoAtime,
        ];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(THREADS);
        let session = fuser::spawn_mount(Adapter(self.shared.clone()), &self.mountpoint, &config)
            .map_err(|source| Error::Mount {
            path: self.mountpoint.clone(),
            source,
        })?;
        self.session = Some(session);
        Ok(())
    }

    fn stop(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let unmount_err = |reason: String| Error::Unmount {
            path: self.mountpoint.clone(),
            reason,
        };
        session
            .umount_and_join()
            .map_err(|e| unmount_err(e.to_string()))?;
        // Never remount on top of a mount still there.
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_mounted(&self.mountpoint) {
            if Instant::now() > deadline {
                return Err(unmount_err(
                    "still mounted after 10 s (a process still uses it?)".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The power goes and comes back: the filesystem is unmounted, loses
    /// everything that was not durable, and is mounted again serving
    /// exactly what a disk would hold. Every process using it must have
    /// been killed first (a machine losing power loses its processes too);
    /// the unmount fails while one still holds a file.
    pub fn power_cut(&mut self) -> Result<Loss, Error> {
        self.stop()?;
        self.shared.forget_handles();
        let loss = self.shared.model().power_cut().map_err(Error::PowerCut)?;
        self.start()?;
        Ok(loss)
    }

    /// [`LossyFs::power_cut`], except that unsynced overwrites inside a
    /// file are torn: each 4 KiB page of them reached the disk or not, by a
    /// coin seeded with `seed` (see [`model::Model::power_cut_torn`]).
    pub fn power_cut_torn(&mut self, seed: u64) -> Result<Loss, Error> {
        self.stop()?;
        self.shared.forget_handles();
        let loss = self
            .shared
            .model()
            .power_cut_torn(seed)
            .map_err(Error::PowerCut)?;
        self.start()?;
        Ok(loss)
    }

    /// Arms a fault; it applies to operations from now on.
    pub fn arm(&self, fault: Fault) -> FaultId {
        self.shared.faults().arm(fault)
    }

    pub fn disarm(&self, id: FaultId) {
        self.shared.faults().disarm(id)
    }

    /// How many operations the fault failed.
    pub fn fired(&self, id: FaultId) -> u64 {
        self.shared.faults().fired(id)
    }

    /// Adds latency to matching operations (a slow disk).
    pub fn add_latency(&self, rule: Latency) {
        self.shared.faults().add_latency(rule)
    }

    /// Disarms every fault and latency rule.
    pub fn clear_faults(&self) {
        self.shared.faults().clear()
    }

    /// Makes the filesystem this small (`None`: as large as its backing
    /// filesystem): writes past it fail with ENOSPC.
    pub fn set_capacity(&self, capacity: Option<u64>) {
        self.shared.model().set_capacity(capacity)
    }

    /// Operations served so far.
    pub fn counts(&self) -> Counts {
        self.shared.model().counts.clone()
    }

    /// The durable tree (`path` → bytes for files, `path/` → `None` for
    /// directories): what the disk would hold if the power went now.
    pub fn durable_snapshot(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Option<Vec<u8>>>, Error> {
        self.shared
            .model()
            .durable_snapshot()
            .map_err(Error::PowerCut)
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("lossyfs: {e}");
        }
    }
}

/// True when `path` is a mount point in this process's mount namespace.
fn is_mounted(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m.replace("\\040", " ") == want)
}
