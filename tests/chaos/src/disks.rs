//! Disks that lose power and fail: one [`LossyFs`] mount per service, for
//! the scenarios a process kill cannot show (issue 19).

use std::path::PathBuf;

pub use dfs_lossyfs::{Fault, FaultId, Latency, Loss, LossyFs, Op};

/// One lossy disk per named service (`datanode-0`, `coordinator`, …), each
/// with a provisioned, durable `data` directory for the service's
/// `--data-dir`. Keep it alive longer than the cluster that uses it (declare
/// it first): the mounts go away when it is dropped.
#[derive(Debug)]
pub struct Disks {
    disks: Vec<(String, LossyFs)>,
    _root: tempfile::TempDir,
}

impl Disks {
    /// Mounts one disk per name. Where FUSE cannot run (not root, no
    /// `/dev/fuse`) the scenario fails with the reason, as the
    /// network-namespace scenarios do: it never passes without running.
    pub fn mount(names: &[&str]) -> Disks {
        if let Err(e) = LossyFs::available() {
            panic!("the lossy-disk scenarios need root and /dev/fuse: {e}");
        }
        let root = tempfile::Builder::new()
            .prefix("dfs-disks-")
            .tempdir()
            .expect("temp dir");
        let disks = names
            .iter()
            .map(|name| {
                let fs = LossyFs::mount(
                    &root.path().join(name).join("disk"),
                    &root.path().join(name).join("mnt"),
                )
                .unwrap_or_else(|e| panic!("mount a lossy disk for {name}: {e}"));
                // The service's directory exists before it starts, durably,
                // as on a provisioned volume.
                let data = fs.mountpoint().join("data");
                std::fs::create_dir(&data).expect("data dir");
                std::fs::File::open(fs.mountpoint())
                    .and_then(|d| d.sync_all())
                    .expect("fsync the disk's root");
                (name.to_string(), fs)
            })
            .collect();
        Disks { disks, _root: root }
    }

    /// `(service name, data dir)` for [`crate::ClusterOptions::data_dirs`].
    pub fn data_dirs(&self) -> Vec<(String, PathBuf)> {
        self.disks
            .iter()
            .map(|(n, fs)| (n.clone(), fs.mountpoint().join("data")))
            .collect()
    }

    /// The disk of `name`.
    pub fn disk(&mut self, name: &str) -> &mut LossyFs {
        self.disks
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, fs)| fs)
            .unwrap_or_else(|| panic!("no disk named {name}"))
    }
}
