//! The operator's Prometheus metrics, in their own [`Registry`] so tests can
//! read them. `reconcile_failures_total` has a series at 0 for every error
//! kind from the start, so `rate()` and `increase()` see the first failure.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

/// `error` of `reconcile_failures_total`: every
/// [`crate::controller::Error::metric_label`].
pub const RECONCILE_ERRORS: [&str; 11] = [
    "apply",
    "list",
    "delete",
    "finalizer",
    "label_node",
    "write_status",
    "publish_event",
    "set_maintenance",
    "membership",
    "secret",
    "pki",
];

/// Reconcile metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Registry holding every metric below.
    pub registry: Registry,
    /// Reconciles run.
    pub reconciles: IntCounter,
    /// Failed reconciles, by error kind.
    pub failures: IntCounterVec,
    /// Reconcile duration.
    pub duration: Histogram,
    /// Datanode pods deleted for a roll.
    pub pods_rolled: IntCounter,
    /// PodCertificateRequests for the datanode signer handled, by outcome
    /// (`issued`, `denied`, `failed`).
    pub pod_certificate_requests: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounter::new("dfs_operator_reconciles_total", "Reconciles run.")
            .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "dfs_operator_reconcile_failures_total",
                "Failed reconciles, by error kind.",
            ),
            &["error"],
        )
        .expect("valid metric");
        for error in RECONCILE_ERRORS {
            failures.with_label_values(&[error]);
        }
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "dfs_operator_reconcile_duration_seconds",
                "Duration of a reconcile.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        let pods_rolled = IntCounter::new(
            "dfs_operator_pods_rolled_total",
            "Pods deleted by the operator to roll them to a new template.",
        )
        .expect("valid metric");
        let pod_certificate_requests = IntCounterVec::new(
            Opts::new(
                "dfs_operator_pod_certificate_requests_total",
                "PodCertificateRequests for the datanode signer handled, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        for outcome in PodCertificateOutcome::ALL {
            pod_certificate_requests.with_label_values(&[outcome.label()]);
        }
        let m = Self {
            registry,
            reconciles,
            failures,
            duration,
            pods_rolled,
            pod_certificate_requests,
        };
        for c in m.collectors() {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }
}

impl Metrics {
    /// Every metric, as registered.
    fn collectors(&self) -> [Box<dyn Collector>; 5] {
        [
            Box::new(self.reconciles.clone()),
            Box::new(self.failures.clone()),
            Box::new(self.duration.clone()),
            Box::new(self.pods_rolled.clone()),
            Box::new(self.pod_certificate_requests.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Error;

    /// Every family is exported right after start-up (none is open-ended):
    /// a labelled metric added without creating its series fails here.
    #[test]
    fn every_family_is_exported_at_zero_from_the_start() {
        let m = Metrics::default();
        let families = m.registry.gather();
        for c in m.collectors() {
            for d in c.desc() {
                assert!(
                    families
                        .iter()
                        .any(|f| f.name() == d.fq_name && !f.get_metric().is_empty()),
                    "{} has no series until its first event: create them in \
                     Metrics::default()",
                    d.fq_name
                );
            }
        }
        let failures = families
            .iter()
            .find(|f| f.name() == "dfs_operator_reconcile_failures_total")
            .unwrap();
        let mut got: Vec<(&str, f64)> = failures
            .get_metric()
            .iter()
            .map(|s| (s.get_label()[0].value(), s.get_counter().get_value()))
            .collect();
        got.sort_by(|a, b| a.0.cmp(b.0));
        let mut want: Vec<(&str, f64)> = RECONCILE_ERRORS.iter().map(|e| (*e, 0.0)).collect();
        want.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(got, want);
    }

    /// Every error kind a reconcile can fail with is in [`RECONCILE_ERRORS`].
    #[test]
    fn reconcile_errors_match_the_error_labels() {
        let kube = || kube::Error::TlsRequired;
        let all = [
            Error::Apply {
                kind: "Service".into(),
                name: "n".into(),
                source: kube(),
            },
            Error::List {
                kind: "Pod".into(),
                source: kube(),
            },
            Error::Delete {
                kind: "Pod".into(),
                name: "n".into(),
                source: kube(),
            },
            Error::Finalizer {
                name: "n".into(),
                source: kube(),
            },
            Error::LabelNode {
                node: "n".into(),
                source: kube(),
            },
            Error::WriteStatus {
                name: "n".into(),
                source: kube(),
            },
            Error::PublishEvent(kube()),
            Error::SetMaintenance {
                node_id: "n".into(),
                source: Box::new(crate::coordinator::CoordinatorError::Connect {
                    url: "http://c".into(),
                    source: dfs_client::ClientError::InvalidEndpoint {
                        address: "c".into(),
                        reason: "test".into(),
                    },
                }),
            },
            Error::Membership {
                change: "add 2".into(),
                source: Box::new(crate::coordinator::CoordinatorError::Connect {
                    url: "http://c".into(),
                    source: dfs_client::ClientError::InvalidEndpoint {
                        address: "c".into(),
                        reason: "test".into(),
                    },
                }),
            },
            Error::Secret {
                name: "n".into(),
                source: kube(),
            },
            Error::Pki {
                cluster: "c".into(),
                message: "m".into(),
            },
        ];
        // Exhaustive: a new Error variant does not compile here until it is
        // added to `all` above (and its label to RECONCILE_ERRORS).
        for e in &all {
            match e {
                Error::Apply { .. }
                | Error::List { .. }
                | Error::Delete { .. }
                | Error::Finalizer { .. }
                | Error::LabelNode { .. }
                | Error::WriteStatus { .. }
                | Error::PublishEvent(_)
                | Error::SetMaintenance { .. }
                | Error::Membership { .. }
                | Error::Secret { .. }
                | Error::Pki { .. } => {}
            }
        }
        let labels: Vec<&str> = all.iter().map(Error::metric_label).collect();
        assert_eq!(labels, RECONCILE_ERRORS);
    }
}

/// How a request ended, for `dfs_operator_pod_certificate_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodCertificateOutcome {
    /// A certificate was issued.
    Issued,
    /// The request was refused (not one of our datanodes, bad input).
    Denied,
    /// The signer could not issue a certificate for a request it accepted.
    Failed,
}

impl PodCertificateOutcome {
    /// Every outcome (the metric's label values).
    pub const ALL: [Self; 3] = [Self::Issued, Self::Denied, Self::Failed];

    /// The metric label, which is also the condition type, lowercased.
    pub fn label(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }
}
