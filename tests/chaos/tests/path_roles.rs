//! Issue 18: roles on path prefixes (`--access-file`), on real processes
//! with mutual TLS. A client may read, write or administer only what a
//! rule grants it; the built-in admin keeps every right; a changed file
//! takes effect without a restart.

use std::time::Duration;

use dfs_chaos::{Cluster, ClusterOptions, metric_sum, metrics_text, payload, read_all, run};
use dfs_client::{Client, ClientConfig, PutOptions};
use dfs_common::tls::Kind;
use dfs_proto as pb;

/// The call was refused for its caller's rights (directly, or as the
/// reason of a failed put or get).
fn denied<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>, what: &str) {
    match r {
        Err(e)
            if e.to_string().contains(" role on ")
                || e.to_string().contains("may not make this call") => {}
        Err(e) => panic!("{what}: refused for another reason: {e}"),
        Ok(v) => panic!("{what}: expected a refusal, got {v:?}"),
    }
}

#[test]
fn clients_get_only_the_roles_the_access_file_grants() {
    run(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let access = dir.path().join("access");
        std::fs::write(
            &access,
            "client/alice write /home/alice\nclient/* read /pub\nclient/ops admin /\n",
        )
        .unwrap();
        let cluster = Cluster::start(ClusterOptions {
            tls: true,
            coordinator_args: vec!["--access-file".into(), access.display().to_string()],
            ..Default::default()
        })
        .await;
        let pki = cluster.pki().expect("a TLS cluster");
        let admin = cluster.client().await;
        let as_client = |name: &str| {
            let mut config = ClientConfig::new(&cluster.url);
            config.security = pki.security(name, Kind::Client);
            Client::connect(config)
        };
        let alice = as_client("alice").await.unwrap();
        let bob = as_client("bob").await.unwrap();
        let ops = as_client("ops").await.unwrap();
        let opts = PutOptions::default();

        // The built-in admin writes anywhere.
        admin
            .put_bytes(payload(1, 4096), "/pub/readme", &opts)
            .await
            .expect("the admin writes /pub");
        admin
            .put_bytes(payload(2, 4096), "/secret/x", &opts)
            .await
            .expect("the admin writes /secret");

        // alice: write (and read) under /home/alice only, read /pub.
        alice
            .put_bytes(payload(3, 8192), "/home/alice/a", &opts)
            .await
            .expect("alice writes her home");
        assert_eq!(read_all(&alice, "/home/alice/a").await.unwrap().len(), 8192);
        assert_eq!(read_all(&alice, "/pub/readme").await.unwrap().len(), 4096);
        denied(
            alice.put_bytes(payload(4, 10), "/home/alicex", &opts).await,
            "alice writes beside her home",
        );
        denied(
            alice.put_bytes(payload(4, 10), "/pub/x", &opts).await,
            "alice writes /pub",
        );
        denied(alice.stat("/secret/x").await, "alice stats /secret");
        denied(
            alice.delete("/pub/readme", false).await,
            "alice deletes in /pub",
        );
        denied(
            alice.rename("/home/alice/a", "/pub/a").await,
            "alice renames out of her home",
        );

        // bob: read /pub only; no admin call.
        assert_eq!(read_all(&bob, "/pub/readme").await.unwrap().len(), 4096);
        denied(
            read_all(&bob, "/home/alice/a").await,
            "bob reads alice's home",
        );
        denied(
            bob.put_bytes(payload(5, 10), "/pub/y", &opts).await,
            "bob writes /pub",
        );
        denied(bob.set_safe_mode(true).await, "bob enters safe mode");

        // An open upload's id is worth nothing without the write role on
        // its path: bob, holding alice's upload id, can neither finish,
        // abort nor re-plan it; alice can.
        let raw = |name: &str| {
            let security = pki.security(name, Kind::Client);
            let url = cluster.url.clone();
            async move {
                let ep = dfs_common::transport::endpoint(&url, Duration::from_secs(5)).unwrap();
                pb::coordinator_client::CoordinatorClient::new(
                    dfs_common::transport::connect_to(ep, &security, &[Kind::Coordinator])
                        .await
                        .expect("a TLS connection"),
                )
            }
        };
        let (mut alice_raw, mut bob_raw) = (raw("alice").await, raw("bob").await);
        let plan = alice_raw
            .upload_file(pb::UploadFileRequest {
                path: "/home/alice/open".into(),
                size: 4096,
                ..Default::default()
            })
            .await
            .expect("alice plans an upload in her home")
            .into_inner();
        let id = plan.upload_id.clone();
        let refused = |r: Result<(), tonic::Status>, what: &str| match r {
            Err(s)
                if s.code() == tonic::Code::PermissionDenied
                    && s.message().contains(" role on ") => {}
            other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
        };
        refused(
            bob_raw
                .confirm_upload(pb::ConfirmUploadRequest {
                    upload_id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "bob confirms alice's upload",
        );
        refused(
            bob_raw
                .confirm_uploads(pb::ConfirmUploadsRequest {
                    uploads: vec![pb::ConfirmUploadRequest {
                        upload_id: id.clone(),
                        ..Default::default()
                    }],
                })
                .await
                .map(|_| ()),
            "bob confirms alice's upload in a batch",
        );
        refused(
            bob_raw
                .replan_chunk(pb::ReplanChunkRequest {
                    upload_id: id.clone(),
                    index: 0,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "bob re-plans alice's upload",
        );
        refused(
            bob_raw
                .abort_upload(pb::AbortUploadRequest {
                    upload_id: id.clone(),
                })
                .await
                .map(|_| ()),
            "bob aborts alice's upload",
        );
        alice_raw
            .abort_upload(pb::AbortUploadRequest { upload_id: id })
            .await
            .expect("alice aborts her own upload");

        // ops: admin on / grants the admin calls and every path.
        ops.set_safe_mode(true).await.expect("ops enters safe mode");
        ops.set_safe_mode(false)
            .await
            .expect("ops leaves safe mode");
        assert_eq!(read_all(&ops, "/secret/x").await.unwrap().len(), 4096);

        let text = metrics_text(cluster.coordinator.metrics).unwrap();
        assert!(
            metric_sum(
                &text,
                "dfs_coordinator_refused_calls_total",
                "needed=\"paths\""
            ) >= 11.0,
            "path refusals not counted"
        );

        // A changed file takes effect without a restart: bob gets write on
        // /pub.
        dfs_common::token::write_key_file(
            &access,
            "client/alice write /home/alice\nclient/* read /pub\nclient/bob write /pub\n",
        )
        .unwrap();
        dfs_chaos::wait_for("the new rules", Duration::from_secs(20), || async {
            bob.put_bytes(
                payload(6, 10),
                "/pub/y",
                &PutOptions {
                    overwrite: true,
                    ..Default::default()
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
        .await;
        // ... and ops lost its admin rule.
        denied(
            ops.set_safe_mode(true).await,
            "ops after its rule was removed",
        );
    });
}

/// Bearer tokens (`--client-tokens`): one client certificate serving many
/// users, each call naming its user with a token the coordinator verifies.
/// The user's path roles apply, whole puts and gets work through the
/// datanodes (chunk tokens go to the certificate's principal), and a
/// wrong token, a token without a listing, or a token over a datanode's
/// certificate is refused, never ignored.
#[test]
fn bearer_tokens_name_users_over_a_client_certificate() {
    run(Duration::from_secs(240), async {
        let dir = tempfile::tempdir().unwrap();
        let access = dir.path().join("access");
        std::fs::write(
            &access,
            "client/carol write /home/carol\nclient/gateway read /pub\n",
        )
        .unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("{}\n", dfs_common::token::bearer_line("carol", "tok-carol")),
        )
        .unwrap();
        let cluster = Cluster::start(ClusterOptions {
            tls: true,
            coordinator_args: vec![
                "--access-file".into(),
                access.display().to_string(),
                "--client-tokens".into(),
                tokens.display().to_string(),
            ],
            ..Default::default()
        })
        .await;
        let pki = cluster.pki().expect("a TLS cluster");
        let connect = |name: &str, kind: Kind, bearer: Option<&str>| {
            let mut config = ClientConfig::new(&cluster.url);
            config.security = pki.security(name, kind);
            config.bearer_token = bearer.map(str::to_string);
            Client::connect(config)
        };
        let opts = PutOptions::default();
        let carol = connect("gateway", Kind::Client, Some("tok-carol"))
            .await
            .unwrap();
        let gateway = connect("gateway", Kind::Client, None).await.unwrap();

        // carol, through the gateway's certificate: her home, whole puts
        // and gets (the datanodes accept the chunk tokens).
        let big = payload(7, 3 << 20);
        carol
            .put_bytes(big.clone(), "/home/carol/big", &opts)
            .await
            .expect("carol writes her home through the gateway");
        assert!(read_all(&carol, "/home/carol/big").await.unwrap() == big.to_vec());
        denied(
            carol.stat("/pub").await,
            "carol (no rule on /pub) stats /pub",
        );

        // The gateway alone: its own roles, not carol's.
        denied(
            gateway
                .put_bytes(payload(8, 10), "/home/carol/x", &opts)
                .await,
            "the gateway writes carol's home",
        );
        denied(
            read_all(&gateway, "/home/carol/big").await,
            "the gateway reads carol's home",
        );

        // A token not listed: UNAUTHENTICATED, not the certificate's roles.
        let wrong = connect("gateway", Kind::Client, Some("tok-mallory"))
            .await
            .unwrap();
        let e = wrong.stat("/home/carol/big").await.unwrap_err().to_string();
        assert!(e.contains("bearer token not recognised"), "{e}");
        // A token over a datanode's certificate speaks for nobody.
        let dn = connect("dn-bearer", Kind::Datanode, Some("tok-carol"))
            .await
            .unwrap();
        let e = dn.stat("/home/carol/big").await.unwrap_err().to_string();
        assert!(e.contains("may not speak for a user"), "{e}");

        let text = metrics_text(cluster.coordinator.metrics).unwrap();
        assert!(
            metric_sum(
                &text,
                "dfs_coordinator_refused_calls_total",
                "needed=\"bearer\""
            ) >= 2.0,
            "bearer refusals not counted"
        );
    });
}
