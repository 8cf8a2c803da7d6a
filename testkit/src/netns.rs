//! Network namespaces for partition tests: a private network of hosts the
//! test creates (and deletes when dropped), each its own namespace with one
//! address on a bridge that lives in a namespace of its own, so nothing
//! touches the machine's own interfaces. Links are cut with blackhole routes
//! inside the hosts: both directions, or one only.
//!
//! ```text
//!   netns <p>-hub:  br0 ── v1 ── v2 ── … (veth ends)
//!   netns <p>-h1:   eth0 10.77.0.1/24     netns <p>-h2: eth0 10.77.0.2/24 …
//! ```
//!
//! Needs root (`ip netns`); a test that cannot make its network fails, it
//! does not skip. Processes run inside a host with `ip netns exec`
//! ([`Net::command`]); the test's own calls run on a thread moved into a
//! host's namespace ([`Net::run_in`]).

use std::os::fd::AsFd;
use std::process::Command;

/// The private network.
pub struct Net {
    prefix: String,
    hosts: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Makes `hosts` hosts, 10.77.0.1 … 10.77.0.`hosts`, on one bridge.
    pub fn new(hosts: usize) -> Result<Net, String> {
        assert!((1..=200).contains(&hosts));
        use std::sync::atomic::{AtomicUsize, Ordering};
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "dfs{}x{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net { prefix, hosts };
        let hub = net.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 1..=hosts {
            let ns = net.ns(i);
            let v = format!("v{i}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "-n", &hub, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &v, "master", "br0"])?;
            ip(&["-n", &hub, "link", "set", &v, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// The namespace name of host `i` (1-based).
    pub fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// The address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.77.0.{i}")
    }

    /// A command that runs `program` inside host `i`.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i)]).arg(program);
        c
    }

    /// Drops every packet host `from` sends to host `to` (one direction).
    pub fn cut_one_way(&self, from: usize, to: usize) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns(from),
            "route",
            "add",
            "blackhole",
            &self.addr(to),
        ])
    }

    /// Restores what [`Net::cut_one_way`] cut.
    pub fn heal_one_way(&self, from: usize, to: usize) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns(from),
            "route",
            "del",
            "blackhole",
            &self.addr(to),
        ])
    }

    /// Cuts hosts `a` and `b` apart, both directions.
    pub fn cut(&self, a: usize, b: usize) -> Result<(), String> {
        self.cut_one_way(a, b)?;
        self.cut_one_way(b, a)
    }

    /// Restores what [`Net::cut`] cut.
    pub fn heal(&self, a: usize, b: usize) -> Result<(), String> {
        self.heal_one_way(a, b)?;
        self.heal_one_way(b, a)
    }

    /// Runs `f` on a thread of its own, moved into host `i`'s namespace,
    /// with a current-thread Tokio runtime: its sockets are that host's.
    pub fn run_in<T, F, Fut>(&self, i: usize, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let path = format!("/var/run/netns/{}", self.ns(i));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
        .join()
        .expect("a netns thread panicked")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two hosts talk over TCP; a one-way cut stops the connection, and
    /// healing it lets it through again.
    #[test]
    fn hosts_reach_each_other_until_cut() {
        let net = Net::new(2).expect("ip netns (root) is needed for partition tests");
        net.run_in(1, || async {
            let l = tokio::net::TcpListener::bind("10.77.0.1:7777")
                .await
                .unwrap();
            // Kept open: the kernel still accepts on it once the thread ends.
            std::mem::forget(l);
        });
        let connect = |net: &Net| {
            net.run_in(2, || async {
                tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    tokio::net::TcpStream::connect("10.77.0.1:7777"),
                )
                .await
                .is_ok_and(|r| r.is_ok())
            })
        };
        assert!(connect(&net), "hosts on one bridge reach each other");
        net.cut_one_way(2, 1).unwrap();
        assert!(!connect(&net), "a cut link carries nothing");
        net.heal_one_way(2, 1).unwrap();
        assert!(connect(&net));
    }
}
