//! Test support shared by every dfs crate's integration tests and the chaos
//! suite, so that there is one way to start a cluster in a test.
//!
//! ```text
//!   coordinator  a real coordinator in this process on 127.0.0.1:0
//!                ([`coordinator::Server`]) and the calls tests make to it
//!   datanode     a real datanode in this process ([`datanode::TestNode`])
//!                and a raw gRPC client for chunk uploads and downloads
//!   fake         the one fake datanode ([`fake::FakeDatanode`]), with two
//!                optional sides: on the data path a hung peer or an older
//!                release, on demand; on the control plane a member of a
//!                simulated fleet ([`fake::Fleet`]) that registers and
//!                heartbeats to a coordinator and acts on its commands
//!   process      a whole cluster of separate `dfs` processes
//!                ([`process::Cluster`]): kill -9, SIGSTOP, restarts,
//!                clock shifts, on-disk checks
//!   group        a coordinator group of three `dfs-coordinator`
//!                processes ([`group::group`]): its leader, kills, restarts
//!   netns        a private network of hosts in network namespaces
//!                ([`netns::Net`]) with links cut both ways or one way
//!   linearizability  a checker of recorded histories of concurrent calls
//!                ([`linearizability::check`]) and the namespace's model
//! ```
//!
//! Everything binds free ports on 127.0.0.1, keeps its files in temporary
//! directories, and stops (processes are SIGKILLed) on drop, also when a
//! test panics.

pub mod coordinator;
pub mod datanode;
pub mod fake;
pub mod golden;
pub mod group;
pub mod linearizability;
pub mod netns;
pub mod process;
