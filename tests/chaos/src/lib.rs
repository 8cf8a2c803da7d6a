//! The dfs fault-tolerance (chaos) suite's support: the process cluster of
//! [`dfs_testkit::process`] (re-exported here, so every scenario starts its
//! cluster the same way as every other test) and [`docker`], which drives
//! the container scenario (network partitions), and [`disks`]: disks that
//! lose power and fail, for the scenarios a process kill cannot show.

pub use dfs_testkit::process::*;

pub mod disks;
pub mod docker;
