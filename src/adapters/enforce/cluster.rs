//! The cluster's enforcer (Secret and ConfigMap drivers): the admission policy of
//! [`super::admission`], switched on per release by its parameter ConfigMap.

use kube::Client;

use super::admission::{self, Availability, Lifted, Observed};
use super::{Described, Enforcement, Lift, SwitchedOn};
use crate::adapters::storage::{ReleaseStore, Store};
use crate::core::lock::Lock;

/// The admission policy's side of a hard lock in one namespace.
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

    /// Writes the release's parameter (unless it is already as wanted), with what the
    /// policy freezes of the release (from the manifest of `latest`, read from `store`).
    pub(super) async fn switch_on(
        &self,
        release: &str,
        latest: &str,
        spec: &Lock,
    ) -> Result<SwitchedOn, String> {
        let namespace = self.namespace;
        let frozen = match self.store {
            Some(store) => admission::freeze_scope_of(self.client, store, latest).await,
            None => admission::Frozen::default(),
        };
        let unchanged = match admission::read_param(self.client, namespace, release).await {
            Ok(Some(current)) => {
                let wanted = admission::param_object(release, namespace, spec, &frozen);
                current.data == wanted.data
            }
            _ => false,
        };
        if !unchanged {
            admission::put_param(self.client, namespace, release, spec, &frozen).await?;
        }
        Ok(SwitchedOn {
            how: format!(
                "ValidatingAdmissionPolicy {}, ConfigMap {}",
                admission::POLICY_NAME,
                admission::param_name(release)
            ),
            notes: frozen
                .not_frozen
                .iter()
                .map(|o| format!("not frozen by the cluster: {o}"))
                .collect(),
        })
    }

    /// A dry-run change of the record is refused by the policy. The parameter reaches the
    /// API server through an informer, so this waits a bounded while for it
    /// ([`admission::settle`]).
    pub(super) async fn probe(&self, record: &str) -> Result<(), String> {
        admission::settle(self.client, self.namespace, self.kind, record, true).await
    }

    pub(super) async fn lift(
        &self,
        release: &str,
        hard: bool,
        latest: Option<&str>,
    ) -> Result<Lift, String> {
        let namespace = self.namespace;
        match admission::remove_param(self.client, namespace, release).await {
            Ok(Lifted::Deleted) => {
                let mut notes = Vec::new();
                // The server drops the parameter from its cache a moment later: wait for
                // it, so the record writes that follow are not refused.
                if let Some(record) = latest {
                    if let Err(why) =
                        admission::settle(self.client, namespace, self.kind, record, false).await
                    {
                        notes.push(format!("lifted the cluster's enforcement, but {why}"));
                    }
                }
                Ok(Lift {
                    lifted: true,
                    notes,
                })
            }
            Ok(Lifted::Absent) => Ok(Lift::default()),
            Ok(Lifted::Unknown(why)) => Ok(Lift {
                lifted: false,
                notes: hard
                    .then(|| {
                        format!(
                            "{why}: if the cluster enforces this hard lock, the record writes \
                             are refused; lifting it needs get and delete on configmaps \
                             (docs/locks.md)"
                        )
                    })
                    .into_iter()
                    .collect(),
            }),
            Err(why) => Err(format!(
                "cannot lift the cluster's enforcement of the lock first: {why}; nothing \
                 changed on the records. Deleting the lock's ConfigMap needs get and delete on \
                 configmaps in the namespace (docs/locks.md)"
            )),
        }
    }

    pub(super) async fn describe(
        &self,
        namespace: Option<&str>,
        hard_locks: &[(&str, &str, &str)],
    ) -> Vec<Described> {
        let observed = Observed::read(self.client, namespace).await;
        let mut out = Vec::new();
        for (ns, release, record) in hard_locks {
            let view = observed.hard_lock(ns, release);
            let described = match view.present {
                Err(why) => Described {
                    enforcement: Enforcement::LabelsOnly,
                    note: Some(admission::not_enforced(&why)),
                    not_frozen: Vec::new(),
                },
                Ok(()) => match admission::probe(self.client, ns, self.kind, record).await {
                    Ok(true) => Described {
                        enforcement: Enforcement::ClusterPolicy,
                        note: None,
                        not_frozen: view.not_frozen,
                    },
                    Ok(false) => Described {
                        enforcement: Enforcement::LabelsOnly,
                        note: Some(admission::not_enforced(&admission::accepted(
                            self.kind, record,
                        ))),
                        not_frozen: Vec::new(),
                    },
                    Err(why) => Described {
                        enforcement: Enforcement::LabelsOnly,
                        note: Some(admission::not_enforced(&why)),
                        not_frozen: Vec::new(),
                    },
                },
            };
            out.push(described);
        }
        out
    }
}
