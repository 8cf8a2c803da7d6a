//! Leader election on a coordination.k8s.io Lease, so two operator replicas
//! never reconcile at once. kube-rs has none built in; this is the usual
//! small loop: take the Lease when it is free or expired, renew it while
//! holding it, and report loss (the binary then exits so Kubernetes restarts
//! it as a follower). Updates use the Lease's resourceVersion (optimistic
//! concurrency), so two candidates cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This candidate's identity.
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew_every: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            name: "dfs-operator".into(),
            namespace: "default".into(),
            identity: "dfs-operator".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// Outcome of one election round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// We hold the Lease.
    Leader,
    /// Someone else does.
    Follower,
}

/// Decides whether `identity` may take or keep `lease` at `now`; pure.
pub fn may_hold(lease: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    let holder = lease.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = SignedDuration::from_secs(i64::from(lease.lease_duration_seconds.unwrap_or(15)));
    match &lease.renew_time {
        Some(MicroTime(t)) => *t + duration < now,
        None => true,
    }
}

/// One round: create, take or renew the Lease.
pub async fn try_acquire(client: &Client, cfg: &LeaseConfig) -> Result<Round, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = Timestamp::now();
    let spec = |transitions: i32, acquire: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
        acquire_time: acquire,
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(0, Some(MicroTime(now)))),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Leader),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Follower),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            if !may_hold(&current, &cfg.identity, now) {
                return Ok(Round::Follower);
            }
            let ours = current.holder_identity.as_deref() == Some(cfg.identity.as_str());
            let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
            let acquire = if ours {
                current.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            };
            lease.spec = Some(spec(transitions, acquire));
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(Round::Leader),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Follower),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this candidate leads.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) {
    loop {
        match try_acquire(client, cfg).await {
            Ok(Round::Leader) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
                return;
            }
            Ok(Round::Follower) => tracing::debug!(lease = %cfg.name, "another replica leads"),
            Err(e) => tracing::warn!("failed to acquire the lease: {e:#}"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the Lease until renewal fails for longer than the lease duration
/// (or another holder took it); returns then.
pub async fn hold(client: &Client, cfg: &LeaseConfig) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire(client, cfg).await {
            Ok(Round::Leader) => last_ok = tokio::time::Instant::now(),
            Ok(Round::Follower) => {
                tracing::error!(lease = %cfg.name, "lost leadership to another replica");
                return;
            }
            Err(e) => {
                tracing::warn!("failed to renew the lease: {e:#}");
                if last_ok.elapsed() >= cfg.lease_duration {
                    tracing::error!(lease = %cfg.name, "lease expired without renewal");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_or_own_leases_may_be_taken() {
        let now = Timestamp::now();
        let lease = |holder: &str, age: i64| LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(age))),
            ..LeaseSpec::default()
        };
        assert!(may_hold(&lease("me", 1), "me", now));
        assert!(!may_hold(&lease("other", 1), "me", now));
        assert!(may_hold(&lease("other", 60), "me", now));
        assert!(may_hold(&LeaseSpec::default(), "me", now));
    }
}
