//! Namespace RPCs: mkdir, list (paged), stat, delete, rename, bad paths.

use dfs_proto::*;
use dfs_testkit::coordinator::*;
use dfs_testkit::fake::Fleet;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_operations() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(test_config(dir.path())).await;
    let fleet = Fleet::default();
    for n in ["n1", "n2", "n3"] {
        fleet.spawn(&server, n, "", "").await;
    }
    let mut c = server.client().await;
    wait_healthy(&mut c, &["n1", "n2", "n3"]).await;

    let root = c
        .stat(StatRequest { path: "/".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(root.file_type, FileType::Directory as i32);

    let err = c
        .mkdir(MkdirRequest {
            path: "/a/b".into(),
            parents: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let d = c
        .mkdir(MkdirRequest {
            path: "/a/b".into(),
            parents: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.path.as_str(), d.name.as_str()), ("/a/b", "b"));
    c.mkdir(MkdirRequest {
        path: "/a/b/".into(),
        parents: true,
    })
    .await
    .unwrap();
    assert_eq!(
        c.mkdir(MkdirRequest {
            path: "/a/b".into(),
            parents: false
        })
        .await
        .unwrap_err()
        .code(),
        Code::AlreadyExists
    );

    for i in 0..25 {
        fleet.put(&mut c, &format!("/a/b/f{i:02}"), 10, false).await;
    }
    // Paged listing.
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_directory(ListDirectoryRequest {
                path: "/a/b".into(),
                page_token: token.clone(),
                page_size: 10,
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.entries.iter().map(|e| e.name.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let want: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
    assert_eq!(names, want);
    let all = c
        .list_directory(ListDirectoryRequest {
            path: "/a/b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.entries.len(), all.next_page_token.as_str()), (25, ""));
    assert_eq!(all.entries[0].size, 10);
    let err = c
        .list_directory(ListDirectoryRequest {
            path: "/a/b/f00".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Rename.
    let r = c
        .rename(RenameRequest {
            source: "/a/b".into(),
            destination: "/c".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.path, "/c");
    assert_eq!(
        c.stat(StatRequest {
            path: "/c/f03".into()
        })
        .await
        .unwrap()
        .into_inner()
        .size,
        10
    );
    assert_eq!(
        c.stat(StatRequest {
            path: "/a/b".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    let err = c
        .rename(RenameRequest {
            source: "/c".into(),
            destination: "/c/d".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .rename(RenameRequest {
            source: "/c/f00".into(),
            destination: "/c/f01".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = c
        .rename(RenameRequest {
            source: "/c/f00".into(),
            destination: "/zz/f".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    c.rename(RenameRequest {
        source: "/c/f00".into(),
        destination: "/a/moved".into(),
    })
    .await
    .unwrap();
    assert_eq!(download(&mut c, "/a/moved").await.chunks.len(), 1);

    // Delete.
    let err = c
        .delete(DeleteRequest {
            path: "/c".into(),
            recursive: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c
        .delete(DeleteRequest {
            path: "/".into(),
            recursive: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let d = c
        .delete(DeleteRequest {
            path: "/c".into(),
            recursive: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.files_deleted, d.chunks_released), (24, 24));
    let d = c
        .delete(DeleteRequest {
            path: "/a/moved".into(),
            recursive: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.files_deleted, 1);
    assert_eq!(
        c.delete(DeleteRequest {
            path: "/a/moved".into(),
            recursive: false
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    let st = status(&mut c).await;
    assert_eq!((st.files, st.directories, st.chunks), (0, 2, 0));

    // Bad paths are INVALID_ARGUMENT everywhere.
    for bad in ["", "relative", "/a//b", "/a/../b", "/./x", "/a\0b"] {
        let code = c
            .stat(StatRequest { path: bad.into() })
            .await
            .unwrap_err()
            .code();
        assert_eq!(code, Code::InvalidArgument, "{bad:?}");
        let code = c
            .mkdir(MkdirRequest {
                path: bad.into(),
                parents: true,
            })
            .await
            .unwrap_err()
            .code();
        assert_eq!(code, Code::InvalidArgument, "{bad:?}");
        let code = c
            .upload_file(UploadFileRequest {
                path: bad.into(),
                size: 1,
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code();
        assert_eq!(code, Code::InvalidArgument, "{bad:?}");
    }
    let deep = "/d".repeat(100);
    assert_eq!(
        c.mkdir(MkdirRequest {
            path: deep,
            parents: true
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    server.stop().await;
}
