//! The operator's Prometheus metrics, in their own [`Registry`] so tests can
//! read them.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

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
        for m in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(pods_rolled.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            pods_rolled,
        }
    }
}
