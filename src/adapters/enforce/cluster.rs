//! The cluster's enforcer (Secret and ConfigMap drivers): the admission policies of
//! [`super::admission`], switched on per release by its two parameter ConfigMaps (one in
//! the release's namespace, one cluster-wide in [`admission::LOCKS_NAMESPACE`]).

use kube::Client;

use super::admission::{self, Availability, Lifted, Observed, Probe};
use super::scope::{self, Frozen};
use super::{Described, Enforcement, HardLock, Lift, SwitchedOn};
use crate::adapters::storage::kube_store::KubeStore;
use crate::adapters::storage::{ReleaseStore, Store};
use crate::core::lock::Lock;

/// The admission policies' side of a hard lock in one namespace.
pub(crate) struct ClusterEnforcer<'a> {
    client: &'a Client,
    /// The records' store (None: the release's manifest is not read here).
    store: Option<&'a Store>,
    namespace: &'a str,
    /// `Secret` or `ConfigMap`: the kind of the records probed.
    kind: &'static str,
}

impl<'a> ClusterEnforcer<'a> {
    pub(super) fn new(store: &'a Store, client: &'a Client) -> ClusterEnforcer<'a> {
        ClusterEnforcer {
            store: Some(store),
            ..ClusterEnforcer::in_namespace(client, store.namespace(), store.kind())
        }
    }

    /// For records of `kind` in `namespace`.
    pub(super) fn in_namespace(
        client: &'a Client,
        namespace: &'a str,
        kind: &'static str,
    ) -> ClusterEnforcer<'a> {
        ClusterEnforcer {
            client,
            store: None,
            namespace,
            kind,
        }
    }

    pub(super) async fn availability(&self, release: &str) -> Availability {
        admission::availability(self.client, self.namespace, release).await
    }

    /// What the policies freeze of `release` (latest record `latest`), from its manifest
    /// read in `namespace`.
    async fn scope(&self, namespace: &str, latest: &str) -> Frozen {
        match self.store {
            Some(store) if store.namespace() == namespace => {
                scope::freeze_scope_of(self.client, store, latest).await
            }
            Some(Store::ConfigMaps(_)) => {
                let other: KubeStore<k8s_openapi::api::core::v1::ConfigMap> =
                    KubeStore::new(self.client.clone(), namespace);
                scope::freeze_scope_of(self.client, &other, latest).await
            }
            Some(_) => {
                let other: KubeStore<k8s_openapi::api::core::v1::Secret> =
                    KubeStore::new(self.client.clone(), namespace);
                scope::freeze_scope_of(self.client, &other, latest).await
            }
            None => Frozen::default(),
        }
    }

    /// Writes the release's cluster-wide parameter (unless it is already as wanted) and
    /// waits until the API server refuses a change of it: Err says why the release's objects
    /// outside its namespace are not frozen.
    async fn switch_on_wide(&self, release: &str, spec: &Lock) -> Result<(), String> {
        admission::put_wide_param(self.client, self.namespace, release, spec).await?;
        Probe::Wide {
            namespace: self.namespace,
            release,
        }
        .settle(self.client, true)
        .await
    }

    /// Writes the release's parameters (unless they are already as wanted): the
    /// cluster-wide one first, then the one in its namespace, with what the policies freeze
    /// of the release (from the manifest of `latest`).
    pub(super) async fn switch_on(
        &self,
        release: &str,
        latest: &str,
        spec: &Lock,
    ) -> Result<SwitchedOn, String> {
        let frozen = self.scope(self.namespace, latest).await;
        self.freeze_objects(release, spec, &frozen).await
    }

    /// Puts the release's objects (`frozen`, from its manifest) under the policies: the
    /// cluster-wide parameter first, then the one in its namespace. Also used by the
    /// database's enforcer, whose records are rows but whose objects are the cluster's.
    pub(super) async fn freeze_objects(
        &self,
        release: &str,
        spec: &Lock,
        frozen: &Frozen,
    ) -> Result<SwitchedOn, String> {
        let namespace = self.namespace;
        let mut not_frozen = frozen.not_frozen.clone();
        let mut how = format!(
            "ValidatingAdmissionPolicy {}, ConfigMap {}",
            admission::POLICY_NAME,
            admission::param_name(release)
        );
        match self.switch_on_wide(release, spec).await {
            Ok(()) => how.push_str(&format!(
                "; outside the namespace ValidatingAdmissionPolicy {}, ConfigMap {} in \
                 namespace {}",
                admission::WIDE_POLICY_NAME,
                admission::wide_param_name(namespace, release),
                admission::LOCKS_NAMESPACE
            )),
            Err(why) => not_frozen.extend(frozen.wide_not_frozen(namespace, &why)),
        }
        admission::put_param(self.client, namespace, release, spec, frozen).await?;
        Ok(SwitchedOn {
            how,
            notes: not_frozen
                .iter()
                .map(|o| format!("not frozen by the cluster: {o}"))
                .collect(),
        })
    }

    /// A dry-run change of the record is refused by the policy. The parameter reaches the
    /// API server through an informer, so this waits a bounded while for it.
    pub(super) async fn probe(&self, record: &str) -> Result<(), String> {
        Probe::Record {
            namespace: self.namespace,
            kind: self.kind,
            record,
        }
        .settle(self.client, true)
        .await
    }

    /// Deletes the cluster-wide parameter, then the one in the release's namespace (whose
    /// enforcement refuses the record writes that follow): an unlock stopped in between
    /// still finds the lock enforced in the namespace, and a re-run finishes it.
    pub(super) async fn lift(
        &self,
        release: &str,
        hard: bool,
        latest: Option<&str>,
    ) -> Result<Lift, String> {
        let namespace = self.namespace;
        let cannot = |why: String| {
            format!(
                "cannot lift the cluster's enforcement of the lock first: {why}; nothing \
                 changed on the records. Deleting the lock's ConfigMaps needs get and delete on \
                 configmaps in the namespace (docs/locks.md)"
            )
        };
        // Every user may read the cluster-wide parameters once the policies are installed;
        // one that cannot be read (the policies are not installed) is looked at below. A
        // lock that is not hard has none, unless one is left over next to a parameter in
        // the namespace.
        let remove_wide = || async {
            admission::remove_wide_param(self.client, namespace, release)
                .await
                .map_err(cannot)
        };
        let wide = if hard {
            remove_wide().await?
        } else {
            Lifted::Absent
        };
        let mut notes = Vec::new();
        let here = admission::remove_param(self.client, namespace, release)
            .await
            .map_err(cannot)?;
        let wide = match (&here, hard) {
            (Lifted::Deleted, false) => remove_wide().await?,
            _ => wide,
        };
        let lifted = match &here {
            Lifted::Deleted => {
                // The server drops the parameter from its cache a moment later: wait for
                // it, so the record writes that follow are not refused.
                if let Some(record) = latest {
                    let probe = Probe::Record {
                        namespace,
                        kind: self.kind,
                        record,
                    };
                    if let Err(why) = probe.settle(self.client, false).await {
                        notes.push(format!("lifted the cluster's enforcement, but {why}"));
                    }
                }
                true
            }
            Lifted::Absent => wide == Lifted::Deleted,
            Lifted::Unknown(why) => {
                if hard {
                    notes.push(format!(
                        "{why}: if the cluster enforces this hard lock, the record writes are \
                         refused; lifting it needs get and delete on configmaps \
                         (docs/locks.md)"
                    ));
                }
                wide == Lifted::Deleted
            }
        };
        // The lock was enforced here, so the policies are installed: its cluster-wide part
        // should have been readable.
        if let (Lifted::Unknown(why), Lifted::Deleted) = (&wide, &here) {
            notes.push(format!(
                "{why}: if the cluster enforces this hard lock outside the namespace, it still \
                 does; a user who may read and delete it runs the same command again"
            ));
        }
        Ok(Lift { lifted, notes })
    }

    /// How each hard lock is enforced: `cluster policy` only when the policies are
    /// installed, the lock's ConfigMap holds what the records' lock and the release's
    /// objects call for now, and a dry-run change of its latest record by the caller is
    /// refused now. What is not frozen is found again from the release's manifest, with the
    /// cluster-wide part checked the same way (its ConfigMap as the lock says, a dry-run
    /// change of it refused).
    pub(super) async fn describe(
        &self,
        namespace: Option<&str>,
        hard_locks: &[HardLock<'_>],
    ) -> Vec<Described> {
        let observed = Observed::read(self.client, namespace).await;
        let mut out = Vec::new();
        for lock in hard_locks {
            out.push(match self.describe_one(&observed, lock).await {
                Ok(not_frozen) => Described {
                    enforcement: Enforcement::ClusterPolicy,
                    note: None,
                    not_frozen,
                },
                Err(why) => Described {
                    enforcement: Enforcement::LabelsOnly,
                    note: Some(admission::not_enforced(&why)),
                    not_frozen: Vec::new(),
                },
            });
        }
        out
    }

    /// One hard lock: Ok(what is not frozen) when enforced, Err(why) when not.
    async fn describe_one(
        &self,
        observed: &Observed,
        lock: &HardLock<'_>,
    ) -> Result<Vec<String>, String> {
        let (ns, release) = (lock.namespace, lock.release);
        let param = observed.hard_lock(ns, release)?;
        let probe = Probe::Record {
            namespace: ns,
            kind: self.kind,
            record: lock.record,
        };
        if !probe.run(self.client).await? {
            return Err(probe.accepted());
        }
        let want = admission::expected_lock_data(release, lock.reason, lock.by, lock.since);
        let have = param.data.clone().unwrap_or_default();
        let name = admission::param_name(release);
        let restore = format!(
            "run the same `guarded-upgrade lock {release} --hard -n {ns}` (with the lock's \
             reason) again to restore it"
        );
        let mut changed = admission::lock_fields_differ(&have, &want);
        let frozen = self.scope(ns, lock.record).await;
        let written = param
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second());
        let keys = scope::compare_keys(&have, &frozen, written);
        if !keys.missing.is_empty() {
            changed.push(format!("it no longer freezes {}", keys.missing.join(", ")));
        }
        let foreign = scope::foreign(self.client, ns, &keys.extra).await;
        if !foreign.is_empty() {
            changed.push(format!(
                "it freezes {}, which the release does not own",
                foreign.join(", ")
            ));
        }
        if !changed.is_empty() {
            return Err(format!(
                "the lock's ConfigMap {name} was changed after the lock was set ({}); {restore}",
                changed.join("; ")
            ));
        }
        let mut not_frozen = frozen.not_frozen.clone();
        not_frozen.extend(keys.later);
        if let Err(why) = self.describe_wide(lock, &restore).await {
            not_frozen.extend(frozen.wide_not_frozen(ns, &why));
        }
        not_frozen.sort();
        not_frozen.dedup();
        Ok(not_frozen)
    }

    /// The cluster-wide part of one hard lock: Err(why) when it is not in force.
    async fn describe_wide(&self, lock: &HardLock<'_>, restore: &str) -> Result<(), String> {
        let (ns, release) = (lock.namespace, lock.release);
        let name = admission::wide_param_name(ns, release);
        let Some(param) = admission::read_wide_param(self.client, ns, release).await? else {
            return Err(format!(
                "no ConfigMap {name} in namespace {}; {restore}",
                admission::LOCKS_NAMESPACE
            ));
        };
        let mut want = admission::expected_lock_data(release, lock.reason, lock.by, lock.since);
        want.insert("namespace".to_string(), ns.to_string());
        let have = param.data.clone().unwrap_or_default();
        let mut changed = admission::lock_fields_differ(&have, &want);
        changed.extend(
            have.keys()
                .filter(|k| !want.contains_key(*k))
                .map(|k| format!("it has a key {k:?}")),
        );
        if !changed.is_empty() {
            return Err(format!(
                "the ConfigMap {name} in namespace {} was changed after the lock was set ({}); \
                 {restore}",
                admission::LOCKS_NAMESPACE,
                changed.join("; ")
            ));
        }
        let probe = Probe::Wide {
            namespace: ns,
            release,
        };
        match probe.run(self.client).await? {
            true => Ok(()),
            false => Err(probe.accepted()),
        }
    }
}
