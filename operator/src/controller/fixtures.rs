//! Controller scenarios against a mocked API server: kube's `Client` over
//! `tower_test::mock::pair`. Each [`Scenario`] lists the calls one reconcile
//! must make, in order (method, path, body check, response); the coordinator
//! is a [`FakeCoordinator`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::build::{self, Observed};
use super::{Context, reconcile};
use crate::coordinator::{ClusterFacts, Coordinator, CoordinatorError, DatanodeFact, NodeState};
use crate::crd::{DfsCluster, FINALIZER};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Check = Box<dyn Fn(&Value) + Send>;
type Respond = Box<dyn Fn(&Value) -> Value + Send>;

/// One expected API call.
pub struct Call {
    method: &'static str,
    path: String,
    query: Vec<&'static str>,
    check: Check,
    respond: Respond,
    status: u16,
}

impl Call {
    fn new(method: &'static str, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            check: Box::new(|_| {}),
            respond: Box::new(|body| body.clone()),
            status: 200,
        }
    }
    fn fail(mut self, code: u16) -> Self {
        self.status = code;
        self.reply(json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": code, "reason": "InternalError", "message": "etcd is sad",
        }))
    }
    fn not_found(mut self) -> Self {
        self.status = 404;
        self.reply(json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "code": 404, "reason": "NotFound", "message": "not found",
        }))
    }
    fn query(mut self, q: &'static str) -> Self {
        self.query.push(q);
        self
    }
    fn check(mut self, f: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Box::new(f);
        self
    }
    fn respond(mut self, f: impl Fn(&Value) -> Value + Send + 'static) -> Self {
        self.respond = Box::new(f);
        self
    }
    fn reply(self, v: Value) -> Self {
        self.respond(move |_| v.clone())
    }
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Answers the expected calls in order, asserting each; then fails on any
/// further call that arrives within a short grace period.
async fn serve(mut handle: Handle, calls: Vec<Call>) {
    let total = calls.len();
    for (i, call) in calls.into_iter().enumerate() {
        let Some((req, send)) = handle.next_request().await else {
            panic!("call {i}/{total} ({}) never came", call.describe());
        };
        let got = format!("{} {}", req.method(), req.uri().path());
        assert_eq!(got, call.describe(), "call {i}/{total}");
        let query = req.uri().query().unwrap_or("").to_string();
        for q in &call.query {
            assert!(
                query.contains(q),
                "call {i} ({got}): query {query:?} lacks {q:?}"
            );
        }
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        (call.check)(&body);
        let out = (call.respond)(&body);
        send.send_response(
            Response::builder()
                .status(call.status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&out).expect("json")))
                .expect("response"),
        );
    }
    if let Ok(Some((req, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!("unexpected extra call {} {}", req.method(), req.uri());
    }
}

/// The coordinator, faked: answers with the facts set by the test and
/// records maintenance calls (and applies them to its facts).
#[derive(Default)]
pub struct FakeCoordinator {
    facts: Mutex<Option<ClusterFacts>>,
    calls: Mutex<Vec<String>>,
    /// The principal of the last identity the operator set.
    identity: Mutex<Option<dfs_common::tls::Principal>>,
}

impl FakeCoordinator {
    fn set(&self, facts: Option<ClusterFacts>) {
        *self.facts.lock().unwrap() = facts;
    }
    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

impl Coordinator for FakeCoordinator {
    fn cluster_status<'a>(
        &'a self,
        url: &'a str,
    ) -> BoxFuture<'a, Result<ClusterFacts, CoordinatorError>> {
        assert!(
            url == "http://test-coordinator.default.svc:7000"
                || url == "https://test-coordinator.default.svc:7000",
            "{url}"
        );
        let facts = self.facts.lock().unwrap().clone();
        Box::pin(async move {
            facts.ok_or_else(|| CoordinatorError::Call {
                method: "GetClusterStatus",
                url: url.to_string(),
                source: dfs_client::ClientError::CoordinatorUnreachable {
                    address: url.to_string(),
                    reason: "connection refused".into(),
                },
            })
        })
    }

    fn set_maintenance<'a>(
        &'a self,
        _url: &'a str,
        node_id: &'a str,
        enabled: bool,
        _duration: Duration,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        self.calls.lock().unwrap().push(format!(
            "maintenance {node_id} {}",
            if enabled { "on" } else { "off" }
        ));
        if let Some(f) = self.facts.lock().unwrap().as_mut() {
            for n in f.nodes.iter_mut().filter(|n| n.node_id == node_id) {
                n.state = Some(if enabled {
                    NodeState::Maintenance
                } else {
                    NodeState::Healthy
                });
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn add_coordinator<'a>(
        &'a self,
        _url: &'a str,
        id: u64,
        address: &'a str,
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("add coordinator {id} {address}"));
        Box::pin(async { Ok(()) })
    }

    fn set_coordinator_voters<'a>(
        &'a self,
        _url: &'a str,
        voter_ids: &'a [u64],
    ) -> BoxFuture<'a, Result<(), CoordinatorError>> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("voters {voter_ids:?}"));
        Box::pin(async { Ok(()) })
    }

    fn use_identity(&self, _url: &str, tls: Option<Arc<dfs_common::tls::Tls>>) {
        *self.identity.lock().unwrap() = tls.map(|t| t.principal());
    }
}

/// A DfsCluster named `test`; plain text without a NetworkPolicy unless
/// `spec` says `security` (the TLS scenarios say so).
fn cluster(mut spec: Value) -> DfsCluster {
    if spec.get("security").is_none() {
        spec["security"] = json!({"tls": false, "networkPolicy": false});
    }
    serde_json::from_value(json!({
        "apiVersion": "dfs.io/v1alpha1",
        "kind": "DfsCluster",
        "metadata": {"name": "test", "namespace": "default", "uid": "uid-1", "generation": 1, "resourceVersion": "7"},
        "spec": spec,
    }))
    .unwrap()
}

fn with_finalizer(mut c: DfsCluster) -> DfsCluster {
    c.metadata.finalizers = Some(vec![FINALIZER.into()]);
    c
}

fn facts(nodes: &[(&str, NodeState)], under: u64) -> ClusterFacts {
    ClusterFacts {
        nodes: nodes
            .iter()
            .map(|(h, s)| DatanodeFact {
                node_id: format!("id-{h}"),
                host: (*h).into(),
                state: Some(*s),
            })
            .collect(),
        under_replicated_chunks: under,
        missing_chunks: 0,
        capacity_total_bytes: 100 << 30,
        capacity_used_bytes: 25 << 30,
        // A group of one, as `replicas: 1` wants it.
        coordinators: vec![crate::coordinator::CoordinatorFact {
            id: 1,
            role: "leader".into(),
            lag: 0,
            voter: true,
            on_new_volume: false,
        }],
    }
}

/// Desired template hashes of `c`.
fn hashes(c: &DfsCluster, zones: bool) -> (String, String) {
    let v = super::validate::validate(c).unwrap();
    let observed = Observed {
        zones: if zones {
            node_zones()
        } else {
            Default::default()
        },
        service_monitor_crd: false,
        datanode_pods: 0,
        coordinator_pods: 1,
        group_formed: false,
    };
    let d = build::desired(c, &v, &observed);
    (d.coordinator_hash, d.datanode_hash)
}

fn node_zones() -> std::collections::BTreeMap<String, String> {
    [("node-a", "zone-1"), ("node-b", "zone-2")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn node(name: &str, zone: &str, label: Option<&str>) -> Value {
    let mut labels = json!({"topology.kubernetes.io/zone": zone});
    if let Some(l) = label {
        labels["dfs.io/datanode"] = json!(l);
    }
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items})
}

/// A pod of component `component` on `node` with template `hash`.
fn pod(name: &str, component: &str, node: &str, hash: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "default",
            "labels": {"app.kubernetes.io/name": "dfs", "app.kubernetes.io/instance": "test", "app.kubernetes.io/component": component},
            "annotations": {"dfs.io/template-hash": hash},
        },
        "spec": {"nodeName": node, "containers": [{"name": component}]},
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

const NS: &str = "/api/v1/namespaces/default";
const APPS: &str = "/apis/apps/v1/namespaces/default";
const POLICY: &str = "/apis/policy/v1/namespaces/default";
const DFS: &str = "/apis/dfs.io/v1alpha1/namespaces/default/dfsclusters/test";
const NETWORKING: &str = "/apis/networking.k8s.io/v1/namespaces/default";

fn ssa(path: String) -> Call {
    Call::new("PATCH", path)
        .query("fieldManager=dfs-operator")
        .query("force=true")
        .check(|b| {
            let owner = &b["metadata"]["ownerReferences"][0];
            assert_eq!(owner["kind"], "DfsCluster", "{b}");
            assert_eq!(owner["uid"], "uid-1");
            assert_eq!(
                b["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "dfs-operator"
            );
        })
}

/// Workload readiness the SSA responses report.
#[derive(Clone, Copy)]
struct Ready {
    coordinator: i32,
    datanodes: i32,
    datanodes_desired: i32,
}

const NOT_READY: Ready = Ready {
    coordinator: 0,
    datanodes: 0,
    datanodes_desired: 0,
};

/// Reads, applies and prunes: the calls of every reconcile of a valid
/// plain-text spec.
fn pipeline(node_items: Vec<Value>, pods: Vec<Value>, ready: Ready) -> Vec<Call> {
    pipeline_with(node_items, pods, ready, Vec::new())
}

/// [`pipeline`] for a TLS cluster: `secrets` are the calls that keep its
/// Secrets (between the reads and the applies), and the NetworkPolicy is
/// applied.
fn pipeline_with(
    node_items: Vec<Value>,
    pods: Vec<Value>,
    ready: Ready,
    secrets: Vec<Call>,
) -> Vec<Call> {
    let tls = !secrets.is_empty();
    let scheme = if tls { "https" } else { "http" };
    let datanode_pods = pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/component"] == "datanode")
        .count() as i64;
    let mut calls = vec![
        Call::new("GET", "/api/v1/nodes").reply(list("Node", node_items)),
        Call::new("GET", format!("{NS}/pods"))
            .query("labelSelector=app.kubernetes.io%2Finstance%3Dtest")
            .reply(list("Pod", pods)),
    ];
    calls.extend(secrets);
    calls.extend([
        Call::new("GET", format!("{NS}/configmaps/test-coordinator-group")).reply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "test-coordinator-group", "namespace": "default"},
            "data": {"initialClusterState": "new"},
        })),
        ssa(format!("{NS}/configmaps/test-config")).check(move |b| {
            assert_eq!(b["data"]["replication"], "3");
            assert_eq!(b["data"]["coordinator"], format!("{scheme}://test-coordinator.default.svc:7000"));
        }),
        ssa(format!("{NS}/configmaps/test-topology")).check(|b| {
            assert_eq!(b["data"], json!({"node-a": "zone-1", "node-b": "zone-2"}));
        }),
        ssa(format!("{NS}/configmaps/test-coordinator-group")),
        ssa(format!("{NS}/services/test-coordinator-headless")).check(|b| assert_eq!(b["spec"]["clusterIP"], "None")),
        ssa(format!("{NS}/services/test-coordinator")),
        ssa(format!("{NS}/services/test-coordinator-metrics")),
        ssa(format!("{NS}/services/test-datanode-metrics")),
        ssa(format!("{POLICY}/poddisruptionbudgets/test-coordinator")).check(|b| assert_eq!(b["spec"]["maxUnavailable"], 1)),
        ssa(format!("{POLICY}/poddisruptionbudgets/test-datanode")).check(move |b| {
            assert_eq!(b["spec"]["minAvailable"], (datanode_pods - 1).max(0), "{b}");
        }),
        ssa(format!("{APPS}/statefulsets/test-coordinator"))
            .check(|b| {
                assert_eq!(b["spec"]["updateStrategy"]["type"], "OnDelete");
                assert_eq!(b["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "10Gi");
            })
            .respond(move |b| {
                let mut b = b.clone();
                b["status"] = json!({"replicas": ready.coordinator, "readyReplicas": ready.coordinator});
                b
            }),
        ssa(format!("{APPS}/daemonsets/test-datanode"))
            .check(|b| {
                assert_eq!(b["spec"]["updateStrategy"]["type"], "OnDelete");
                assert_eq!(b["spec"]["template"]["spec"]["volumes"][0]["hostPath"]["path"], "/var/lib/dfs-data");
            })
            .respond(move |b| {
                let mut b = b.clone();
                b["status"] = json!({
                    "currentNumberScheduled": ready.datanodes_desired, "desiredNumberScheduled": ready.datanodes_desired,
                    "numberMisscheduled": 0, "numberReady": ready.datanodes,
                });
                b
            }),
        if tls {
            ssa(format!("{NETWORKING}/networkpolicies/test-dfs"))
                .check(|b| assert_eq!(b["spec"]["policyTypes"], json!(["Ingress"])))
        } else {
            Call::new("DELETE", format!("{NETWORKING}/networkpolicies/test-dfs")).not_found()
        },
        Call::new("GET", format!("{NS}/services"))
            .query("labelSelector=app.kubernetes.io%2Finstance%3Dtest%2Capp.kubernetes.io%2Fmanaged-by%3Ddfs-operator")
            .reply(list(
                "Service",
                ["test-coordinator-headless", "test-coordinator", "test-coordinator-metrics", "test-datanode-metrics"]
                    .iter()
                    .map(|n| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": n, "namespace": "default"}}))
                    .collect(),
            )),
    ]);
    calls
}

fn two_nodes() -> Vec<Value> {
    vec![
        node("node-a", "zone-1", None),
        node("node-b", "zone-2", None),
    ]
}

/// A status write, checked by `f`; answers with the object carrying it.
fn status_write(obj: &DfsCluster, f: impl Fn(&Value) + Send + 'static) -> Call {
    let obj = serde_json::to_value(obj).unwrap();
    Call::new("PATCH", format!("{DFS}/status"))
        .query("fieldManager=dfs-operator")
        .check(move |b| {
            assert_eq!(b["apiVersion"], "dfs.io/v1alpha1");
            assert_eq!(b["kind"], "DfsCluster");
            f(b)
        })
        .respond(move |b| {
            let mut o = obj.clone();
            o["status"] = b["status"].clone();
            o
        })
}

/// What a scenario needs and expects.
pub enum Scenario {
    /// A new DfsCluster: finalizer, every object, first status.
    FirstCreate,
    /// A valid cluster whose status is current: applies (idempotent), no writes.
    NoOp(DfsCluster),
    /// Workloads became ready and the coordinator reports facts: status and
    /// Node labels follow.
    StatusUpdate,
    /// A bad spec: one Warning event and a status, then nothing.
    InvalidSpec,
    /// An invalid spec already reported for this generation: no call at all.
    InvalidSpecReported(DfsCluster),
    /// Deletion with deletionPolicy Delete: volumes go, labels go, finalizer goes.
    Finalize,
}

/// Runs `calls` against `reconcile(obj)`.
async fn run(obj: DfsCluster, calls: Vec<Call>, coordinator: Arc<FakeCoordinator>) -> Action {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Arc::new(Context::new(client, coordinator, false));
    let server = tokio::spawn(serve(handle, calls));
    let action = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(Arc::new(obj), ctx.clone()),
    )
    .await
    .expect("reconcile finished")
    .expect("reconcile succeeded");
    server.await.expect("every expected call, and no other");
    assert_eq!(ctx.metrics.reconciles.get(), 1);
    action
}

impl Scenario {
    fn object(&self) -> DfsCluster {
        match self {
            Scenario::FirstCreate => cluster(json!({})),
            Scenario::NoOp(c) | Scenario::InvalidSpecReported(c) => c.clone(),
            Scenario::StatusUpdate => with_finalizer(cluster(json!({}))),
            Scenario::InvalidSpec => with_finalizer(cluster(json!({"replication": 0}))),
            Scenario::Finalize => {
                let mut c = with_finalizer(cluster(json!({"deletionPolicy": "Delete"})));
                c.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ));
                c
            }
        }
    }

    fn calls(&self, obj: &DfsCluster) -> Vec<Call> {
        match self {
            Scenario::FirstCreate => {
                let with = with_finalizer(obj.clone());
                let echo = serde_json::to_value(&with).unwrap();
                let mut calls = vec![
                    Call::new("PATCH", DFS)
                        .check(|b| {
                            assert_eq!(b["metadata"]["finalizers"], json!([FINALIZER]));
                            assert_eq!(
                                b["metadata"]["resourceVersion"], "7",
                                "optimistic concurrency"
                            );
                        })
                        .reply(echo),
                ];
                calls.extend(pipeline(two_nodes(), vec![], NOT_READY));
                calls.push(status_write(obj, |b| {
                    let s = &b["status"];
                    assert_eq!(s["observedGeneration"], 1);
                    assert_eq!(s["phase"], "Pending");
                    assert_eq!(s["coordinator"]["summary"], "0/1");
                    assert_eq!(s["conditions"][0]["type"], "Available");
                    assert_eq!(s["conditions"][0]["status"], "False");
                    assert_eq!(s["conditions"][2]["reason"], "CoordinatorUnreachable");
                }));
                calls
            }
            Scenario::NoOp(_) => pipeline(two_nodes(), vec![], NOT_READY),
            Scenario::StatusUpdate => {
                let (ch, dh) = hashes(obj, true);
                let pods = vec![
                    pod("test-coordinator-0", "coordinator", "node-a", &ch, true),
                    pod("test-datanode-a", "datanode", "node-a", &dh, true),
                    pod("test-datanode-b", "datanode", "node-b", &dh, true),
                ];
                let ready = Ready {
                    coordinator: 1,
                    datanodes: 2,
                    datanodes_desired: 2,
                };
                let mut calls = pipeline(two_nodes(), pods, ready);
                calls.push(
                    Call::new("PATCH", "/api/v1/nodes/node-a")
                        .check(|b| {
                            assert_eq!(
                                b,
                                &json!({"metadata": {"labels": {"dfs.io/datanode": "ready"}}})
                            )
                        })
                        .reply(node("node-a", "zone-1", Some("ready"))),
                );
                calls.push(
                    Call::new("PATCH", "/api/v1/nodes/node-b")
                        .check(|b| {
                            assert_eq!(
                                b,
                                &json!({"metadata": {"labels": {"dfs.io/datanode": "full"}}})
                            )
                        })
                        .reply(node("node-b", "zone-2", Some("full"))),
                );
                calls.push(status_write(obj, |b| {
                    let s = &b["status"];
                    assert_eq!(s["phase"], "Running", "{s}");
                    assert_eq!(s["datanodes"]["summary"], "2/2");
                    assert_eq!(s["capacity"], "25.0 GiB/100.0 GiB");
                    assert_eq!(s["capacityUsedBytes"], 25u64 << 30);
                    assert_eq!(s["underReplicatedChunks"], 0);
                    assert_eq!(
                        s["nodes"][1],
                        json!({"nodeId": "id-node-b", "host": "node-b", "state": "FULL"})
                    );
                    assert_eq!(s["conditions"][0]["status"], "True");
                    assert_eq!(s["conditions"][1]["status"], "False");
                    assert_eq!(s["conditions"][2]["status"], "False");
                }));
                calls
            }
            Scenario::InvalidSpec => vec![
                Call::new("POST", "/apis/events.k8s.io/v1/namespaces/default/events").check(|b| {
                    assert_eq!(b["type"], "Warning");
                    assert_eq!(b["reason"], "InvalidSpec");
                    assert!(
                        b["note"]
                            .as_str()
                            .unwrap()
                            .contains("replication must be between 1 and 16")
                    );
                    assert_eq!(b["regarding"]["name"], "test");
                }),
                status_write(obj, |b| {
                    assert_eq!(b["status"]["phase"], "Invalid");
                    assert_eq!(b["status"]["observedGeneration"], 1);
                    assert_eq!(b["status"]["conditions"][0]["reason"], "InvalidSpec");
                }),
            ],
            Scenario::InvalidSpecReported(_) => vec![],
            Scenario::Finalize => {
                let mut done = serde_json::to_value(obj).unwrap();
                done["metadata"]["finalizers"] = json!([]);
                vec![
                    Call::new("DELETE", format!("{NS}/persistentvolumeclaims"))
                        .query("labelSelector=app.kubernetes.io%2Finstance%3Dtest%2Capp.kubernetes.io%2Fcomponent%3Dcoordinator")
                        .reply(list("PersistentVolumeClaim", vec![])),
                    Call::new("GET", format!("{NS}/pods"))
                        .reply(list("Pod", vec![pod("test-datanode-a", "datanode", "node-a", "h", true)])),
                    Call::new("PATCH", "/api/v1/nodes/node-a")
                        .check(|b| assert_eq!(b, &json!({"metadata": {"labels": {"dfs.io/datanode": null}}})))
                        .reply(node("node-a", "zone-1", None)),
                    Call::new("PATCH", DFS)
                        .check(|b| assert_eq!(b["metadata"]["finalizers"], json!([])))
                        .reply(done),
                ]
            }
        }
    }

    /// Runs the scenario with the given coordinator facts.
    async fn run(self, facts: Option<ClusterFacts>) -> Action {
        let obj = self.object();
        let calls = self.calls(&obj);
        let fake = Arc::new(FakeCoordinator::default());
        fake.set(facts);
        let action = run(obj, calls, fake.clone()).await;
        assert!(fake.take_calls().is_empty(), "no maintenance call expected");
        action
    }
}

#[tokio::test]
async fn first_create() {
    let action = Scenario::FirstCreate.run(None).await;
    assert_eq!(action, Action::requeue(super::REQUEUE_BUSY));
}

/// Captures the status the first reconcile writes, then reconciles the object
/// carrying it: only reads and (idempotent) applies, no write.
#[tokio::test]
async fn no_op_re_reconcile() {
    let obj = with_finalizer(cluster(json!({})));
    let captured = Arc::new(Mutex::new(Value::Null));
    let mut calls = pipeline(two_nodes(), vec![], NOT_READY);
    let sink = captured.clone();
    calls.push(status_write(&obj, move |b| {
        *sink.lock().unwrap() = b["status"].clone()
    }));
    run(obj.clone(), calls, Arc::new(FakeCoordinator::default())).await;
    let mut again = obj;
    again.status = Some(serde_json::from_value(captured.lock().unwrap().clone()).unwrap());
    Scenario::NoOp(again).run(None).await;
}

#[tokio::test]
async fn status_update_and_node_labels() {
    let f = facts(
        &[("node-a", NodeState::Healthy), ("node-b", NodeState::Full)],
        0,
    );
    let action = Scenario::StatusUpdate.run(Some(f)).await;
    assert_eq!(action, Action::requeue(super::REQUEUE_IDLE));
}

#[tokio::test]
async fn invalid_spec_warns_once_and_waits() {
    let action = Scenario::InvalidSpec.run(None).await;
    assert_eq!(action, Action::await_change());
    let mut reported = Scenario::InvalidSpec.object();
    reported.status = Some(super::status::invalid(
        Some(1),
        "bad",
        None,
        "2026-01-01T00:00:00Z",
    ));
    let action = Scenario::InvalidSpecReported(reported).run(None).await;
    assert_eq!(action, Action::await_change());
}

/// An even coordinator group is refused before anything is applied: a
/// Warning event with the reason, an Invalid status, no StatefulSet (no
/// other call), then a wait for a spec change instead of a retry loop.
#[tokio::test]
async fn an_even_coordinator_group_warns_and_waits() {
    let obj = with_finalizer(cluster(json!({"coordinator": {"replicas": 2}})));
    let expected = "coordinator.replicas must be 1, 3 or 5 (got 2)";
    let calls = vec![
        Call::new("POST", "/apis/events.k8s.io/v1/namespaces/default/events").check(move |b| {
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["reason"], "InvalidSpec");
            let note = b["note"].as_str().unwrap();
            assert!(note.contains(expected), "{note}");
            assert!(note.contains("majority"), "{note}");
        }),
        status_write(&obj, move |b| {
            assert_eq!(b["status"]["phase"], "Invalid");
            let degraded = &b["status"]["conditions"][0];
            assert_eq!(degraded["reason"], "InvalidSpec");
            assert!(
                degraded["message"].as_str().unwrap().contains(expected),
                "{degraded}"
            );
        }),
    ];
    let action = run(obj, calls, Arc::new(FakeCoordinator::default())).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn finalizer_deletes_data_and_releases() {
    let action = Scenario::Finalize.run(None).await;
    assert_eq!(action, Action::await_change());
}

/// The datanode roll, one reconcile at a time: maintenance first, then one
/// pod deleted, nothing while it restarts, maintenance released, next node.
#[tokio::test]
async fn datanode_roll_is_one_at_a_time_and_gated() {
    let obj = {
        let mut c = with_finalizer(cluster(json!({})));
        c.status = Some(Default::default());
        c
    };
    let (ch, dh) = hashes(&obj, true);
    let fake = Arc::new(FakeCoordinator::default());
    let labelled = || {
        vec![
            node("node-a", "zone-1", Some("ready")),
            node("node-b", "zone-2", Some("ready")),
        ]
    };
    let ready = Ready {
        coordinator: 1,
        datanodes: 2,
        datanodes_desired: 2,
    };
    let coordinator_pod = || pod("test-coordinator-0", "coordinator", "node-a", &ch, true);
    let status_any = || status_write(&obj, |_| {});
    let pass = |pods: Vec<Value>, extra: Vec<Call>, f: ClusterFacts| {
        let fake = fake.clone();
        let obj = obj.clone();
        let mut calls = pipeline(labelled(), pods, ready);
        calls.extend(extra);
        fake.set(Some(f));
        async move {
            run(obj, calls, fake.clone()).await;
            fake.take_calls()
        }
    };
    let healthy = |under| {
        facts(
            &[
                ("node-a", NodeState::Healthy),
                ("node-b", NodeState::Healthy),
            ],
            under,
        )
    };

    let unhealthy_a = || {
        Call::new("PATCH", "/api/v1/nodes/node-a")
            .check(|b| assert_eq!(b["metadata"]["labels"]["dfs.io/datanode"], "unhealthy"))
            .reply(node("node-a", "zone-1", Some("unhealthy")))
    };

    // 1. Both datanodes outdated, replication healthy: maintenance for node-a only.
    let pods = vec![
        coordinator_pod(),
        pod("dn-a", "datanode", "node-a", "old", true),
        pod("dn-b", "datanode", "node-b", "old", true),
    ];
    let calls = pass(pods.clone(), vec![status_any()], healthy(0)).await;
    assert_eq!(calls, ["maintenance id-node-a on"]);

    // 2. node-a in maintenance, nothing under-replicated: its pod (only) is deleted.
    let mut f = healthy(0);
    f.nodes[0].state = Some(NodeState::Maintenance);
    let delete = Call::new("DELETE", format!("{NS}/pods/dn-a")).reply(pods[1].clone());
    let calls = pass(pods, vec![delete, unhealthy_a(), status_any()], f.clone()).await;
    assert!(calls.is_empty(), "{calls:?}");

    // 3. The new pod is starting: no delete, no maintenance call.
    let starting = vec![
        coordinator_pod(),
        pod("dn-a2", "datanode", "node-a", &dh, false),
        pod("dn-b", "datanode", "node-b", "old", true),
    ];
    let calls = pass(starting, vec![unhealthy_a(), status_any()], f.clone()).await;
    assert!(calls.is_empty(), "{calls:?}");

    // 4. New pod ready, but chunks are under-replicated: maintenance ends, node-b waits.
    f.under_replicated_chunks = 2;
    let ready_pods = vec![
        coordinator_pod(),
        pod("dn-a2", "datanode", "node-a", &dh, true),
        pod("dn-b", "datanode", "node-b", "old", true),
    ];
    let calls = pass(ready_pods.clone(), vec![unhealthy_a(), status_any()], f).await;
    assert_eq!(calls, ["maintenance id-node-a off"]);

    // 5. Replication restored: node-b enters maintenance.
    let calls = pass(ready_pods, vec![status_any()], healthy(0)).await;
    assert_eq!(calls, ["maintenance id-node-b on"]);
}

/// A coordinator change rolls the coordinator pod only behind the same gate:
/// nothing while chunks are under-replicated, then the pod is deleted.
#[tokio::test]
async fn coordinator_roll_is_gated() {
    let obj = {
        let mut c = with_finalizer(cluster(json!({})));
        c.status = Some(Default::default());
        c
    };
    let (_, dh) = hashes(&obj, true);
    let pods = vec![
        pod("test-coordinator-0", "coordinator", "node-a", "old", true),
        pod("dn-a", "datanode", "node-a", &dh, true),
    ];
    let ready = Ready {
        coordinator: 1,
        datanodes: 1,
        datanodes_desired: 1,
    };
    let labelled = || {
        vec![
            node("node-a", "zone-1", Some("ready")),
            node("node-b", "zone-2", None),
        ]
    };
    let fake = Arc::new(FakeCoordinator::default());

    fake.set(Some(facts(&[("node-a", NodeState::Healthy)], 5)));
    let mut calls = pipeline(labelled(), pods.clone(), ready);
    calls.push(status_write(&obj, |b| {
        assert_eq!(b["status"]["phase"], "Rolling");
        let progressing = &b["status"]["conditions"][1]["message"];
        assert!(
            progressing.as_str().unwrap().contains("5 under-replicated"),
            "{progressing}"
        );
    }));
    run(obj.clone(), calls, fake.clone()).await;

    fake.set(Some(facts(&[("node-a", NodeState::Healthy)], 0)));
    let mut calls = pipeline(labelled(), pods.clone(), ready);
    calls.push(Call::new("DELETE", format!("{NS}/pods/test-coordinator-0")).reply(pods[0].clone()));
    calls.push(status_write(&obj, |_| {}));
    run(obj, calls, fake.clone()).await;
    assert!(
        fake.take_calls().is_empty(),
        "no datanode maintenance for a coordinator roll"
    );
}

/// A transient API error fails the reconcile; the error policy requeues
/// with a growing backoff and counts the failure by kind.
#[tokio::test]
async fn transient_errors_back_off() {
    let obj = Arc::new(with_finalizer(cluster(json!({}))));
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(
        Client::new(service, "default"),
        Arc::new(FakeCoordinator::default()),
        false,
    ));
    let calls = vec![
        Call::new("GET", "/api/v1/nodes").fail(500),
        Call::new("GET", "/api/v1/nodes").fail(500),
    ];
    let server = tokio::spawn(serve(handle, calls));
    let mut delays = Vec::new();
    for _ in 0..2 {
        let err = reconcile(obj.clone(), ctx.clone()).await.unwrap_err();
        assert!(matches!(err, super::Error::List { .. }), "{err}");
        delays.push(super::error_policy(obj.clone(), &err, ctx.clone()));
    }
    server.await.expect("every expected call, and no other");
    assert_eq!(
        delays,
        [
            Action::requeue(Duration::from_secs(5)),
            Action::requeue(Duration::from_secs(10))
        ]
    );
    assert_eq!(ctx.metrics.failures.with_label_values(&["list"]).get(), 2);
}

/// A managed Service the spec no longer wants is deleted after the applies.
#[tokio::test]
async fn prune_deletes_unwanted_services() {
    let obj = with_finalizer(cluster(json!({})));
    let mut calls = pipeline(two_nodes(), vec![], NOT_READY);
    calls.pop(); // the Service list, answered below with a stale entry
    let svc = |n: &str| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": n, "namespace": "default"}});
    let names = [
        "test-coordinator-headless",
        "test-coordinator",
        "test-coordinator-metrics",
        "test-datanode-metrics",
        "test-stale",
    ];
    calls.push(
        Call::new("GET", format!("{NS}/services"))
            .reply(list("Service", names.iter().map(|n| svc(n)).collect())),
    );
    calls.push(Call::new("DELETE", format!("{NS}/services/test-stale")).reply(svc("test-stale")));
    calls.push(status_write(&obj, |_| {}));
    run(obj, calls, Arc::new(FakeCoordinator::default())).await;
}

/// A paused cluster only reports Paused and waits.
#[tokio::test]
async fn paused_cluster_is_left_alone() {
    let obj = with_finalizer(cluster(
        json!({"clusterOperation": {"reconciliationPaused": true}}),
    ));
    let calls = vec![status_write(&obj, |b| {
        assert_eq!(b["status"]["phase"], "Paused")
    })];
    let action = run(obj, calls, Arc::new(FakeCoordinator::default())).await;
    assert_eq!(action, Action::await_change());
}

#[test]
fn backoff_grows_and_caps() {
    assert_eq!(super::backoff(1), Duration::from_secs(5));
    assert_eq!(super::backoff(3), Duration::from_secs(20));
    assert_eq!(super::backoff(30), super::BACKOFF_MAX);
}

/// A TLS cluster's first reconcile creates its CA and token keys (once,
/// with POST: never overwritten) and issues every identity: the
/// coordinators' for their Service names, one per Kubernetes node for the
/// datanodes (the node id the coordinator knows for that host), the admin
/// client's; the operator calls the coordinator with an identity of its
/// own. A second reconcile over the stored Secrets rewrites none of them.
#[tokio::test]
async fn a_tls_cluster_gets_its_ca_token_keys_and_identities_once() {
    use dfs_common::tls::{Kind, Principal};
    use std::collections::BTreeMap;
    let obj = with_finalizer(cluster(json!({"security": {}})));
    let stored: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let keep = |name: &'static str, stored: &Arc<Mutex<BTreeMap<String, Value>>>| {
        let stored = stored.clone();
        move |b: &Value| {
            stored.lock().unwrap().insert(name.to_string(), b.clone());
        }
    };
    let text = |b: &Value, key: &str| -> String {
        use k8s_openapi::ByteString;
        let v: ByteString = serde_json::from_value(b["data"][key].clone()).unwrap();
        String::from_utf8(v.0).unwrap()
    };
    let principal = move |b: &Value, key: &str| dfs_common::pki::describe(&text(b, key)).unwrap().0;
    let secrets = |stored: &Arc<Mutex<BTreeMap<String, Value>>>| {
        vec![
            Call::new("GET", format!("{NS}/secrets/test-ca")).not_found(),
            Call::new("GET", format!("{NS}/secrets/test-ca")).not_found(),
            Call::new("POST", format!("{NS}/secrets")).check({
                let keep = keep("test-ca", stored);
                move |b| {
                    assert_eq!(b["metadata"]["name"], "test-ca");
                    assert!(text(b, "ca.key").contains("PRIVATE KEY"));
                    keep(b)
                }
            }),
            Call::new("GET", format!("{NS}/secrets/test-token-keys")).not_found(),
            Call::new("POST", format!("{NS}/secrets")).check({
                let keep = keep("test-token-keys", stored);
                move |b| {
                    assert_eq!(b["metadata"]["name"], "test-token-keys");
                    assert!(text(b, "token-keys").lines().any(|l| l.starts_with("1 ")));
                    keep(b)
                }
            }),
            Call::new("GET", format!("{NS}/secrets/test-coordinator-tls")).not_found(),
            ssa(format!("{NS}/secrets/test-coordinator-tls")).check({
                let keep = keep("test-coordinator-tls", stored);
                move |b| {
                    assert_eq!(
                        principal(b, "tls.crt"),
                        Principal::new(Kind::Coordinator, "test")
                    );
                    assert!(
                        b["metadata"]["annotations"]["dfs.io/issued-for"]
                            .as_str()
                            .unwrap()
                            .contains("*.test-coordinator-headless.default.svc")
                    );
                    keep(b)
                }
            }),
            Call::new("GET", format!("{NS}/secrets/test-admin-tls")).not_found(),
            ssa(format!("{NS}/secrets/test-admin-tls")).check({
                let keep = keep("test-admin-tls", stored);
                move |b| {
                    assert_eq!(
                        principal(b, "tls.crt"),
                        Principal::new(Kind::Client, "admin")
                    );
                    keep(b)
                }
            }),
            Call::new("GET", format!("{NS}/secrets/test-datanode-tls")).not_found(),
            ssa(format!("{NS}/secrets/test-datanode-tls")).check({
                let keep = keep("test-datanode-tls", stored);
                move |b| {
                    assert_eq!(
                        principal(b, "node-a.crt"),
                        Principal::new(Kind::Datanode, "ab".repeat(16))
                    );
                    assert_eq!(principal(b, "node-b.crt").kind, Kind::Datanode);
                    assert!(text(b, "node-b.key").contains("PRIVATE KEY"));
                    keep(b)
                }
            }),
        ]
    };
    let mut f = facts(&[("node-a", NodeState::Healthy)], 0);
    f.nodes[0].node_id = "ab".repeat(16);
    let fake = Arc::new(FakeCoordinator::default());
    fake.set(Some(f.clone()));
    let mut calls = pipeline_with(two_nodes(), vec![], NOT_READY, secrets(&stored));
    calls.push(status_write(&obj, |_| {}));
    run(obj.clone(), calls, fake.clone()).await;
    let who = fake.identity.lock().unwrap().clone().expect("an identity");
    assert_eq!(who, Principal::new(Kind::Operator, "dfs-operator"));

    // Again, over what was stored: reads only, nothing issued or created.
    let stored = stored.lock().unwrap().clone();
    let get = |name: &str| {
        let mut b = stored[name].clone();
        b["apiVersion"] = json!("v1");
        b["kind"] = json!("Secret");
        Call::new("GET", format!("{NS}/secrets/{name}")).reply(b)
    };
    let secrets = vec![
        get("test-ca"),
        get("test-token-keys"),
        get("test-coordinator-tls"),
        get("test-admin-tls"),
        get("test-datanode-tls"),
    ];
    let mut calls = pipeline_with(two_nodes(), vec![], NOT_READY, secrets);
    calls.push(status_write(&obj, |_| {}));
    run(obj, calls, fake).await;
}
