//! Authorization metrics: decisions by result and mode, policy reloads, shadow disagreements.
//!
//! Counters live in a [`Metrics`] that request paths share; [`Metrics::register`] adds them to
//! a `prometheus-client` registry, which encodes the Prometheus/OpenMetrics text format.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::modes::Mode;

/// The counters of one authorization service. Cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    remembered: Counter,
    latency: Histogram,
    bad_requests: Family<ApiLabels, Counter>,
    reloads: Family<ReloadLabels, Counter>,
    shadow_decisions: Counter,
    shadow_disagreements: Family<DisagreementLabels, Counter>,
}

/// Which kind of revision a reload concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTarget {
    /// The enforced revision.
    Enforced,
    /// The candidate revision evaluated in shadow.
    Candidate,
}

/// Exposes the audit writer's counters through a `prometheus-client` registry.
#[derive(Debug)]
pub struct AuditCollector(pub Arc<ward_audit::Metrics>);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    result: &'static str,
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    target: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DisagreementLabels {
    enforced: &'static str,
    candidate: &'static str,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self {
            decisions: Family::default(),
            remembered: Counter::default(),
            // 1 µs to ~16 ms: in-process decisions take microseconds.
            latency: Histogram::new(exponential_buckets(1e-6, 2.0, 15)),
            bad_requests: Family::default(),
            reloads: Family::default(),
            shadow_decisions: Counter::default(),
            shadow_disagreements: Family::default(),
        }
    }
}

impl Metrics {
    /// Adds every counter to `registry` (names start with `ward_authz_`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ward_authz");
        r.register(
            "decisions",
            "Authorization decisions by policy result and service mode",
            self.decisions.clone(),
        );
        r.register(
            "decision_duration_seconds",
            "Time spent deciding one request in-process",
            self.latency.clone(),
        );
        r.register(
            "bad_requests",
            "Requests rejected before a decision because they could not be mapped",
            self.bad_requests.clone(),
        );
        r.register(
            "decisions_remembered",
            "Decisions answered with the outcome of an earlier request that agreed on everything the policies read",
            self.remembered.clone(),
        );
        r.register(
            "reloads",
            "Policy revision reloads by target and result",
            self.reloads.clone(),
        );
        r.register(
            "shadow_decisions",
            "Decisions also evaluated by the candidate revision",
            self.shadow_decisions.clone(),
        );
        r.register(
            "shadow_disagreements",
            "Decisions where the candidate revision disagreed with the enforced one",
            self.shadow_disagreements.clone(),
        );
    }

    /// Counts one decision: what policy said (`allow`/`deny`), how it was applied, and
    /// whether it was remembered rather than evaluated.
    pub(crate) fn decision(&self, allow: bool, mode: Mode, elapsed: Duration, remembered: bool) {
        self.decisions
            .get_or_create(&DecisionLabels {
                result: result(allow),
                mode: mode.as_str(),
            })
            .inc();
        if remembered {
            self.remembered.inc();
        }
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts one shadow evaluation, and a disagreement when the decisions differ.
    pub(crate) fn shadow(&self, enforced: bool, candidate: bool) {
        self.shadow_decisions.inc();
        if enforced != candidate {
            self.shadow_disagreements
                .get_or_create(&DisagreementLabels {
                    enforced: result(enforced),
                    candidate: result(candidate),
                })
                .inc();
        }
    }

    /// Counts a request that `api` (e.g. `http`, `ext_authz`) rejected before deciding it.
    pub fn bad_request(&self, api: &'static str) {
        self.bad_requests.get_or_create(&ApiLabels { api }).inc();
    }

    /// Counts a reload attempt of `target`.
    pub fn reload(&self, target: ReloadTarget, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                target: target.as_str(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Total disagreements so far, whatever their direction.
    pub fn shadow_disagreement_count(&self) -> u64 {
        [(true, false), (false, true)]
            .into_iter()
            .map(|(e, c)| {
                self.shadow_disagreements
                    .get_or_create(&DisagreementLabels {
                        enforced: result(e),
                        candidate: result(c),
                    })
                    .get()
            })
            .sum()
    }
}

fn result(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

// === impl ReloadTarget ===

impl ReloadTarget {
    /// `enforced` or `candidate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforced => "enforced",
            Self::Candidate => "candidate",
        }
    }
}

// === impl AuditCollector ===

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        for (name, help, value) in [
            (
                "written",
                "Audit records committed to the store",
                &m.written,
            ),
            (
                "spooled",
                "Audit records spooled to disk while the store was failing",
                &m.spooled,
            ),
            (
                "replayed",
                "Spooled audit records later committed to the store",
                &m.replayed,
            ),
            (
                "overflowed",
                "Audit records that found the queue full and went to the overflow file",
                &m.overflowed,
            ),
            (
                "dropped",
                "Audit records lost because the spool disk failed",
                &m.dropped,
            ),
            (
                "checkpoints",
                "Signed audit checkpoints stored",
                &m.checkpoints,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let name = format!("ward_audit_records_{name}");
            let metric = encoder.encode_descriptor(&name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn counters_encode_with_labels() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.decision(true, Mode::Enforce, Duration::from_micros(3), true);
        m.decision(false, Mode::DryRun, Duration::from_micros(3), false);
        m.shadow(true, false);
        m.shadow(true, true);
        m.reload(ReloadTarget::Enforced, false);
        m.bad_request("http");
        let audit = Arc::new(ward_audit::Metrics::default());
        ward_audit::Metrics::add(&audit.written, 5);
        registry.register_collector(Box::new(AuditCollector(audit)));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for want in [
            r#"ward_authz_decisions_total{result="allow",mode="enforce"} 1"#,
            r#"ward_authz_decisions_total{result="deny",mode="dry-run"} 1"#,
            r#"ward_authz_decisions_remembered_total 1"#,
            r#"ward_authz_shadow_decisions_total 2"#,
            r#"ward_authz_shadow_disagreements_total{enforced="allow",candidate="deny"} 1"#,
            r#"ward_authz_reloads_total{target="enforced",result="failed"} 1"#,
            r#"ward_authz_bad_requests_total{api="http"} 1"#,
            r#"ward_audit_records_written_total 5"#,
            "ward_authz_decision_duration_seconds_count 2",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert_eq!(m.shadow_disagreement_count(), 1);
    }
}
