//! Metric registration shared by every component: each family registered
//! is noted (so a test can check every one is exported), and labelled
//! families get their series at 0 for every known label value, so a
//! dashboard query or an `increase()` alert works from the first event.

use std::cell::RefCell;

use prometheus::Registry;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};

/// Registers `c` in `registry`, notes its family names in `families` and
/// hands it back.
pub fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    families: &RefCell<Vec<String>>,
    c: C,
) -> C {
    families
        .borrow_mut()
        .extend(c.desc().iter().map(|d| d.fq_name.clone()));
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

/// Creates the series of `vec` (at 0) for every combination of `values`:
/// one array of values per label, in label order.
pub fn init_series<T: MetricVecBuilder>(vec: &MetricVec<T>, values: &[&[&str]]) {
    fn go<'a, T: MetricVecBuilder>(
        vec: &MetricVec<T>,
        values: &[&[&'a str]],
        prefix: &mut Vec<&'a str>,
    ) {
        match values.split_first() {
            None => {
                vec.with_label_values(prefix);
            }
            Some((first, rest)) => {
                for v in first.iter() {
                    prefix.push(v);
                    go(vec, rest, prefix);
                    prefix.pop();
                }
            }
        }
    }
    go(vec, values, &mut Vec::new());
}

/// The families of `names` that `registry` does not export yet (no series),
/// except those in `lazy` (open-ended labels, created on first use).
pub fn families_without_series(
    registry: &Registry,
    names: &[String],
    lazy: &[&str],
) -> Vec<String> {
    let gathered = registry.gather();
    names
        .iter()
        .filter(|n| !lazy.contains(&n.as_str()))
        .filter(|n| {
            !gathered
                .iter()
                .any(|f| f.name() == n.as_str() && !f.get_metric().is_empty())
        })
        .cloned()
        .collect()
}

/// `family`'s series in `families` (as gathered) as (label values in label
/// order, value), sorted: a counter's or gauge's value, a histogram's sample
/// count. Panics when the family is not exported (tests read them).
pub fn series(
    families: &[prometheus::proto::MetricFamily],
    family: &str,
) -> Vec<(Vec<String>, f64)> {
    use prometheus::proto::MetricType;
    let f = families
        .iter()
        .find(|f| f.name() == family)
        .unwrap_or_else(|| panic!("{family} is not exported"));
    let mut out: Vec<_> = f
        .get_metric()
        .iter()
        .map(|m| {
            let labels: Vec<String> = m
                .get_label()
                .iter()
                .map(|l| l.value().to_string())
                .collect();
            let value = match f.get_field_type() {
                MetricType::COUNTER => m.get_counter().get_value(),
                MetricType::GAUGE => m.get_gauge().get_value(),
                MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                other => panic!("{family}: unexpected type {other:?}"),
            };
            (labels, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, Opts};

    #[test]
    fn every_combination_starts_at_zero_and_an_empty_family_is_found() {
        let r = Registry::new();
        let families = RefCell::new(Vec::new());
        let c = register(
            &r,
            &families,
            IntCounterVec::new(Opts::new("a_total", "a"), &["x", "y"]).unwrap(),
        );
        let lazy = register(
            &r,
            &families,
            IntCounterVec::new(Opts::new("b_total", "b"), &["node"]).unwrap(),
        );
        let names = families.into_inner();
        assert_eq!(names, ["a_total", "b_total"]);
        assert_eq!(
            families_without_series(&r, &names, &[]),
            ["a_total", "b_total"]
        );
        init_series(&c, &[&["1", "2"], &["p", "q", "r"]]);
        assert_eq!(c.with_label_values(&["2", "r"]).get(), 0);
        assert_eq!(r.gather()[0].get_metric().len(), 6);
        assert_eq!(
            families_without_series(&r, &names, &["b_total"]),
            Vec::<String>::new()
        );
        lazy.with_label_values(&["n1"]).inc();
        assert!(families_without_series(&r, &names, &[]).is_empty());
    }
}
