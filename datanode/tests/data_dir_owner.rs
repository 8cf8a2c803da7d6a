//! `dfs-datanode --chown-data-dir UID:GID` (the operator's init container
//! for a hostPath data directory) gives the directory and everything in it
//! to the datanode's user, then exits without serving. Runs as root, as the
//! init container does (this machine's tests run as root).

use std::os::unix::fs::MetadataExt;
use std::process::Command;

#[test]
fn chown_data_dir_hands_the_whole_directory_to_the_user_and_exits() {
    assert_eq!(
        std::fs::metadata("/proc/self").unwrap().uid(),
        0,
        "this test gives files away and needs root (as the init container has)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("chunks/ab")).unwrap();
    std::fs::write(data.join("node_id"), "x\n").unwrap();
    std::fs::write(data.join("chunks/ab/c"), "bytes").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", data.join("link")).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_dfs-datanode"))
            .args(["--data-dir", data.to_str().unwrap()])
            .args(["--chown-data-dir", "65532:65533"])
            .output()
            .expect("run dfs-datanode")
    };
    let out = run();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("6 entries given to 65532:65533"), "{said}");
    for p in ["", "node_id", "chunks", "chunks/ab", "chunks/ab/c", "link"] {
        let m = std::fs::symlink_metadata(data.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65532, 65533), "{p}");
    }
    // The link itself changed, not what it points at.
    assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    // Again: nothing left to change.
    let said = String::from_utf8_lossy(&run().stdout).to_string();
    assert!(said.contains(" 0 entries"), "{said}");
    // A bad owner is refused at parse time.
    let bad = Command::new(env!("CARGO_BIN_EXE_dfs-datanode"))
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--chown-data-dir",
            "nonroot",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("want UID:GID"));
}
