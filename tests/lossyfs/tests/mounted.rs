//! The lossy filesystem mounted for real, used through the kernel by
//! ordinary file calls.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use dfs_lossyfs::{Fault, Latency, LossyFs, Op};

/// A mounted filesystem in a temp dir. Where FUSE cannot run (not root,
/// no `/dev/fuse`) the test fails with the reason: it never passes
/// without running.
fn mounted() -> (tempfile::TempDir, LossyFs) {
    if let Err(e) = LossyFs::available() {
        panic!("the lossy filesystem's tests need root and /dev/fuse: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    let fs = LossyFs::mount(&dir.path().join("disk"), &dir.path().join("mnt")).unwrap();
    (dir, fs)
}

fn fsync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn a_power_cut_keeps_what_was_synced_and_drops_the_rest() {
    let (_dir, mut fs) = mounted();
    let root = fs.mountpoint().to_path_buf();
    fs::create_dir(root.join("data")).unwrap();
    fsync_dir(&root);

    // Durable: bytes fsynced, name fsynced.
    let mut f = File::create(root.join("data/kept")).unwrap();
    f.write_all(b"acknowledged").unwrap();
    f.sync_all().unwrap();
    // The name is durable, the bytes are not.
    fs::write(root.join("data/empty"), b"never fsynced").unwrap();
    fsync_dir(&root.join("data"));
    // Bytes durable, name not (created after the directory's fsync).
    let mut g = File::create(root.join("data/nameless")).unwrap();
    g.write_all(b"fsynced").unwrap();
    g.sync_data().unwrap();
    // Appended after the fsync.
    f.write_all(b" and more").unwrap();
    drop((f, g));

    assert_eq!(
        fs::read(root.join("data/kept")).unwrap(),
        b"acknowledged and more"
    );
    let loss = fs.power_cut().unwrap();
    assert_eq!(fs::read(root.join("data/kept")).unwrap(), b"acknowledged");
    assert_eq!(fs::read(root.join("data/empty")).unwrap(), b"");
    assert!(!root.join("data/nameless").exists());
    assert_eq!(loss.dirty_bytes, 9 + 13, "the append and the unsynced file");
    assert_eq!(loss.inodes_freed, 1);

    // And it keeps working after the cut.
    fs::write(root.join("data/after"), b"x").unwrap();
    assert_eq!(fs::read(root.join("data/after")).unwrap(), b"x");
}

#[test]
fn the_datanodes_commit_pattern_survives_and_a_missing_directory_fsync_does_not() {
    let (_dir, mut fs) = mounted();
    let root = fs.mountpoint().to_path_buf();
    for d in ["tmp", "chunks"] {
        fs::create_dir(root.join(d)).unwrap();
    }
    fsync_dir(&root);
    // Temp file, fsync, rename into place without replacing, fsync the
    // destination directory: durable.
    let write_tmp = |name: &str, data: &[u8]| {
        let mut t = File::create(root.join("tmp").join(name)).unwrap();
        t.write_all(data).unwrap();
        t.sync_all().unwrap();
    };
    write_tmp("a.tmp", b"chunk a");
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        root.join("tmp/a.tmp"),
        rustix::fs::CWD,
        root.join("chunks/a"),
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .unwrap();
    fsync_dir(&root.join("chunks"));
    // The same without the directory fsync: the rename is lost.
    write_tmp("b.tmp", b"chunk b");
    fs::rename(root.join("tmp/b.tmp"), root.join("chunks/b")).unwrap();
    // NOREPLACE refuses an existing name.
    write_tmp("c.tmp", b"other bytes");
    let err = rustix::fs::renameat_with(
        rustix::fs::CWD,
        root.join("tmp/c.tmp"),
        rustix::fs::CWD,
        root.join("chunks/a"),
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .unwrap_err();
    assert_eq!(err, rustix::io::Errno::EXIST);

    fs.power_cut().unwrap();
    assert_eq!(fs::read(root.join("chunks/a")).unwrap(), b"chunk a");
    assert!(
        !root.join("tmp/a.tmp").exists(),
        "the rename was one change"
    );
    assert!(!root.join("chunks/b").exists());
    assert!(
        !root.join("tmp/b.tmp").exists(),
        "tmp was never fsynced after b.tmp was made"
    );
    let mut listed: Vec<_> = fs::read_dir(root.join("chunks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    listed.sort();
    assert_eq!(listed, ["a"]);
}

#[test]
fn direct_io_and_positioned_writes_pass_through() {
    let (_dir, mut fs) = mounted();
    let root = fs.mountpoint().to_path_buf();
    let path = root.join("direct");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let block = vec![7u8; 1 << 20];
    for i in 0..4u64 {
        f.write_all_at(&block, i << 20).unwrap();
    }
    f.sync_data().unwrap();
    fsync_dir(&root);
    f.write_all_at(&[9u8; 4096], 0).unwrap();
    drop(f);
    fs.power_cut().unwrap();
    let mut back = Vec::new();
    File::open(&path).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 4 << 20);
    assert!(
        back.iter().all(|&b| b == 7),
        "the unsynced 4 KiB overwrite is gone"
    );
}

#[test]
fn injected_errors_hit_the_chosen_operations_and_paths() {
    let (_dir, fs) = mounted();
    let root = fs.mountpoint().to_path_buf();
    fs::create_dir(root.join("chunks")).unwrap();
    fs::write(root.join("chunks/x"), vec![1u8; 100_000]).unwrap();
    fs::write(root.join("other"), b"fine").unwrap();

    // EIO on reads of chunks/ after 64 KiB.
    let id = fs.arm(Fault::eio(Op::Read).path("chunks/").after_bytes(65536));
    let x = File::open(root.join("chunks/x")).unwrap();
    let mut buf = vec![0u8; 32768];
    for i in 0..2 {
        assert_eq!(
            x.read_at(&mut buf, i * 32768).unwrap(),
            32768,
            "before the mark"
        );
    }
    let err = x.read_at(&mut buf, 65536).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert_eq!(fs::read(root.join("other")).unwrap(), b"fine");
    assert!(fs.fired(id) >= 1);
    fs.disarm(id);
    assert_eq!(fs::read(root.join("chunks/x")).unwrap().len(), 100_000);

    // ENOSPC on fsync, twice only.
    let id = fs.arm(Fault::enospc(Op::Fsync).times(2));
    let f = File::create(root.join("chunks/y")).unwrap();
    for _ in 0..2 {
        assert_eq!(f.sync_all().unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    }
    f.sync_all().unwrap();
    assert_eq!(fs.fired(id), 2);

    // A full disk: statfs reports it, writes past it fail.
    fs.clear_faults();
    fs.set_capacity(Some(200_000));
    let st = rustix::fs::statvfs(&root).unwrap();
    assert!(
        st.f_bavail * st.f_frsize < 200_000,
        "statfs shows the small disk"
    );
    let err = fs::write(root.join("big"), vec![0u8; 150_000]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    fs.set_capacity(None);

    // Faults on names.
    fs.arm(Fault::eio(Op::Create).path("nope"));
    assert_eq!(
        File::create(root.join("nope")).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    fs.arm(Fault::eio(Op::Rename));
    assert_eq!(
        fs::rename(root.join("other"), root.join("moved"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EIO)
    );
    fs.arm(Fault::eio(Op::Unlink));
    assert_eq!(
        fs::remove_file(root.join("other"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EIO)
    );
}

#[test]
fn random_faults_repeat_with_their_seed() {
    let (_dir, fs) = mounted();
    let root = fs.mountpoint().to_path_buf();
    fs::write(root.join("f"), vec![3u8; 4096]).unwrap();
    let run = |seed| {
        let id = fs.arm(Fault::eio(Op::Read).random(0.5, seed));
        let out: Vec<bool> = (0..40)
            .map(|_| {
                // A fresh open each time: nothing is served from the cache.
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(root.join("f"))
                    .unwrap();
                let mut b = vec![0u8; 4096];
                f.read_at(&mut b, 0).is_ok()
            })
            .collect();
        fs.disarm(id);
        out
    };
    let first = run(42);
    assert_eq!(first, run(42));
    assert!(
        first.iter().any(|ok| *ok) && first.iter().any(|ok| !*ok),
        "{first:?}"
    );
}

#[test]
fn latency_makes_a_slow_disk_without_stalling_other_paths() {
    let (_dir, fs) = mounted();
    let root = fs.mountpoint().to_path_buf();
    fs::create_dir(root.join("slow")).unwrap();
    fs.add_latency(Latency {
        op: Op::Fsync,
        path: Some("slow/".into()),
        delay: Duration::from_millis(300),
    });
    let f = File::create(root.join("slow/f")).unwrap();
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        f.sync_all().unwrap();
        t.elapsed()
    });
    // While one fsync waits, another path is served.
    std::thread::sleep(Duration::from_millis(50));
    let g = File::create(root.join("fast")).unwrap();
    g.sync_all().unwrap();
    assert!(
        !slow.is_finished(),
        "the fast path was served while the slow fsync waited"
    );
    assert!(slow.join().unwrap() >= Duration::from_millis(300));
}
