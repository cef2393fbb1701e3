//! `policy install|uninstall|show|manifest`, and the enforcement steps `lock --hard`,
//! `unlock`, `status` and `locks` take (issue 18; the model is in [`crate::adapters::enforce`]).

use crate::adapters::enforce::{self, Availability, Enforcement, Lifted};
use crate::adapters::storage::Store;
use crate::core::decision::LockKind;
use crate::core::lock::LockSpec;
use crate::error::{Error, Exit};
use crate::output::{self, report::LockReport};
use crate::plan::PolicyPlan;

/// Runs `policy …`.
pub(super) async fn run(plan: PolicyPlan) -> Result<Exit, Error> {
    let cluster = match &plan {
        PolicyPlan::Manifest => {
            print!("{}", enforce::manifest_yaml());
            return Ok(Exit::Success);
        }
        PolicyPlan::Install(c) | PolicyPlan::Uninstall(c) | PolicyPlan::Show(c) => c,
    };
    let target = crate::adapters::cluster::connect(&cluster.flags, &cluster.env)
        .await
        .map_err(|source| Error::Connect {
            release: None,
            source: Box::new(source),
        })?;
    let client = target.client;
    match plan {
        PolicyPlan::Install(_) => {
            let done = enforce::install(&client).await.map_err(policy_error)?;
            for object in done {
                output::progress(&format!("applied: {object}"));
            }
            output::progress(&format!(
                "installed: ValidatingAdmissionPolicy {} version {}; `guarded-upgrade lock \
                 RELEASE --hard` is now enforced by the cluster",
                enforce::POLICY_NAME,
                enforce::POLICY_VERSION
            ));
        }
        PolicyPlan::Uninstall(_) => {
            let done = enforce::uninstall(&client).await.map_err(policy_error)?;
            for object in &done {
                output::progress(&format!("deleted: {object}"));
            }
            if done.is_empty() {
                output::progress("uninstalled: the policy was not installed");
            } else {
                output::progress(
                    "uninstalled: hard locks are no longer enforced by the cluster (labels only)",
                );
                // Found on the real kube-apiserver (v1.37): a policy whose ConfigMap
                // parameters lost their binding is not enforced again until a restart.
                output::note(
                    "kube-apiserver stops reading ConfigMap parameters of an admission policy \
                     once its binding is gone (kubernetes/kubernetes#130887): after a later \
                     `guarded-upgrade policy install`, restart each kube-apiserver, or `lock \
                     --hard` will report the lock as not enforced",
                );
            }
        }
        PolicyPlan::Show(_) => {
            match enforce::policy_state(&client).await {
                Ok(()) => println!(
                    "policy:    installed (ValidatingAdmissionPolicy {} version {}, binding {})",
                    enforce::POLICY_NAME,
                    enforce::POLICY_VERSION,
                    enforce::POLICY_NAME
                ),
                Err(why) => println!("policy:    {why}"),
            }
            match enforce::params_in(&client, None).await {
                Ok(set) if set.is_empty() => println!("locks:     none enforced"),
                Ok(set) => {
                    for (ns, release) in set {
                        println!("locks:     {release} in {ns}");
                    }
                }
                Err(why) => println!("locks:     {why}"),
            }
        }
        PolicyPlan::Manifest => unreachable!("handled above"),
    }
    Ok(Exit::Success)
}

fn policy_error(message: String) -> Error {
    Error::Policy(message)
}

/// What `lock` learnt about enforcement before writing anything.
pub(super) struct Before {
    /// For a hard lock: whether the cluster can enforce it.
    pub available: Option<Availability>,
}

/// Before `lock` writes: for a hard lock, can the cluster enforce it? With `--enforce`, a
/// "no" ends the command here (exit 3, nothing written).
pub(super) async fn before_lock(
    session: &super::Session,
    release: &str,
    spec: &LockSpec,
    enforce_required: bool,
) -> Result<Before, Error> {
    if spec.kind != LockKind::Hard {
        return Ok(Before { available: None });
    }
    // HELM_DRIVER=sql: the database enforces (a trigger on releases_v1). Checked in a
    // transaction that is rolled back, so `--enforce` writes nothing when it cannot.
    if let Store::Sql(sql) = &session.store {
        let available = match sql.install_trigger(false).await {
            Ok(()) => Availability::Ready,
            Err(why) => Availability::Unavailable(why),
        };
        if let (true, Availability::Unavailable(why)) = (enforce_required, &available) {
            return Err(Error::Refused {
                release: release.to_string(),
                namespace: session.namespace.clone(),
                message: format!(
                    "--enforce: the hard lock cannot be enforced by the database: {why}; \
                     nothing changed (without --enforce the lock is set, labels only)"
                ),
            });
        }
        return Ok(Before {
            available: Some(available),
        });
    }
    let available = enforce::availability(&session.client, &session.namespace, release).await;
    if enforce_required {
        if let Availability::Unavailable(why) = &available {
            return Err(Error::Refused {
                release: release.to_string(),
                namespace: session.namespace.clone(),
                message: format!(
                    "--enforce: the hard lock cannot be enforced by the cluster: {why}; nothing \
                     changed (without --enforce the lock is set, labels only)"
                ),
            });
        }
    }
    Ok(Before {
        available: Some(available),
    })
}

/// Removes the cluster's enforcement of `release` before its records are rewritten (the
/// policy would refuse those writes). True when there was one. When the lock's ConfigMap
/// cannot even be read (no rights on configmaps: a labels-only lock), `hard` says a note;
/// if the cluster does enforce the lock, the record writes are then refused by it.
pub(super) async fn lift(
    session: &super::Session,
    release: &str,
    hard: bool,
    latest: Option<&str>,
) -> Result<bool, Error> {
    match enforce::remove_param(&session.client, &session.namespace, release).await {
        Ok(Lifted::Deleted) => {
            // The server drops the parameter from its cache a moment later: wait for it, so
            // the record writes that follow are not refused.
            if let (Some(record), false) = (latest, matches!(session.store, Store::Sql(_))) {
                let kind = session.store_kind();
                if let Err(why) =
                    enforce::settle(&session.client, &session.namespace, kind, record, false).await
                {
                    output::note(&format!("lifted the cluster's enforcement, but {why}"));
                }
            }
            Ok(true)
        }
        Ok(Lifted::Absent) => Ok(false),
        Ok(Lifted::Unknown(why)) => {
            if hard {
                output::note(&format!(
                    "{why}: if the cluster enforces this hard lock, the record writes are \
                     refused; lifting it needs get and delete on configmaps (docs/locks.md)"
                ));
            }
            Ok(false)
        }
        Err(why) => Err(Error::Refused {
            release: release.to_string(),
            namespace: session.namespace.clone(),
            message: format!(
                "cannot lift the cluster's enforcement of the lock first: {why}; nothing \
                 changed on the records. Deleting the lock's ConfigMap needs get and delete on \
                 configmaps in the namespace (docs/locks.md)"
            ),
        }),
    }
}

/// After the records carry the hard lock: turn enforcement on, when available. Returns
/// the line to print.
pub(super) async fn impose(
    session: &super::Session,
    release: &str,
    latest: &str,
    spec: &LockSpec,
    available: &Availability,
    enforce_required: bool,
) -> Result<EnforceOutcome, Error> {
    let namespace = &session.namespace;
    if let Store::Sql(sql) = &session.store {
        return impose_sql(session, sql, release, spec, available, enforce_required).await;
    }
    if let Availability::Unavailable(why) = available {
        return Ok(EnforceOutcome::NotEnforced(why.clone()));
    }
    let unchanged = match enforce::read_param(&session.client, namespace, release).await {
        Ok(Some(current)) => {
            let wanted = enforce::param_object(release, namespace, spec);
            current.data == wanted.data
        }
        _ => false,
    };
    let written = if unchanged {
        Ok(())
    } else {
        enforce::put_param(&session.client, namespace, release, spec).await
    };
    // Only say "enforced" once the server refuses a (dry-run) change of the record.
    let written = match written {
        Ok(()) if !matches!(session.store, Store::Sql(_)) => {
            let kind = session.store_kind();
            enforce::settle(&session.client, namespace, kind, latest, true).await
        }
        other => other,
    };
    match written {
        Ok(()) => Ok(EnforceOutcome::Enforced),
        Err(why) if enforce_required => Err(Error::Refused {
            release: release.to_string(),
            namespace: namespace.clone(),
            message: format!(
                "--enforce: the hard lock is set (labels only) but the cluster does not enforce \
                 it: {why}. Run the same command again, or `guarded-upgrade unlock {release} -n \
                 {namespace}`"
            ),
        }),
        Err(why) => Ok(EnforceOutcome::NotEnforced(why)),
    }
}

/// `impose` for `HELM_DRIVER=sql`: installs the trigger on `releases_v1` (the records);
/// where the cluster's policy is installed, its parameter also guards the release's
/// objects against deletion (best effort: the records are what the trigger protects).
async fn impose_sql(
    session: &super::Session,
    sql: &crate::adapters::storage::sql::SqlStore,
    release: &str,
    spec: &LockSpec,
    available: &Availability,
    enforce_required: bool,
) -> Result<EnforceOutcome, Error> {
    let namespace = &session.namespace;
    let installed = match available {
        Availability::Unavailable(why) => Err(why.clone()),
        Availability::Ready => sql.install_trigger(true).await,
    };
    match installed {
        Ok(()) => {}
        Err(why) if enforce_required => {
            return Err(Error::Refused {
                release: release.to_string(),
                namespace: namespace.clone(),
                message: format!(
                    "--enforce: the hard lock is set (labels only) but the database does not \
                     enforce it: {why}. Run the same command again, or `guarded-upgrade unlock \
                     {release} -n {namespace}`"
                ),
            })
        }
        Err(why) => return Ok(EnforceOutcome::NotEnforcedByDatabase(why)),
    }
    if enforce::availability(&session.client, namespace, release).await == Availability::Ready {
        if let Err(why) = enforce::put_param(&session.client, namespace, release, spec).await {
            output::note(&format!(
                "the cluster does not guard the release's objects against deletion: {why}"
            ));
        }
    }
    Ok(EnforceOutcome::EnforcedByTrigger)
}

/// How `lock --hard` ended, as far as the cluster (or database) is concerned.
pub(super) enum EnforceOutcome {
    /// The parameter is in place.
    Enforced,
    /// Labels only, and why.
    NotEnforced(String),
    /// `HELM_DRIVER=sql`: the trigger on `releases_v1` is in place.
    EnforcedByTrigger,
    /// `HELM_DRIVER=sql`: labels only, and why.
    NotEnforcedByDatabase(String),
}

impl EnforceOutcome {
    /// The line `lock --hard` prints after `locked: …`.
    pub(super) fn say(&self, release: &str, namespace: &str) {
        match self {
            EnforceOutcome::Enforced => output::progress(&format!(
                "enforced: the cluster refuses changes to release {release:?} in {namespace:?} \
                 (ValidatingAdmissionPolicy {}, ConfigMap {})",
                enforce::POLICY_NAME,
                enforce::param_name(release)
            )),
            EnforceOutcome::EnforcedByTrigger => output::progress(&format!(
                "enforced: the database refuses changes to release {release:?} in \
                 {namespace:?} (trigger {} on releases_v1)",
                crate::adapters::storage::sql::TRIGGER_NAME
            )),
            EnforceOutcome::NotEnforcedByDatabase(why) => output::warning(&format!(
                "the hard lock is {}; plain helm upgrade and install are refused (pending \
                 record), but helm rollback, helm uninstall and direct SQL are not",
                enforce::not_enforced_by_database(why)
            )),
            EnforceOutcome::NotEnforced(why) => output::warning(&format!(
                "the hard lock is {}; plain helm upgrade and install are refused (pending \
                 record), but helm rollback, helm uninstall and kubectl are not",
                enforce::not_enforced(why)
            )),
        }
    }
}

/// Fills in how each lock is enforced (`status`, `locks`): soft and pin locks are labels
/// only; a hard lock is `cluster policy` when its parameter and the policy are in place.
pub(super) async fn describe(
    client: &kube::Client,
    store: &Store,
    namespace: Option<&str>,
    locks: &mut [(&str, &str, &mut LockReport)],
) {
    let any_hard = locks.iter().any(|(_, _, l)| l.kind == "hard");
    let observed = if any_hard && !matches!(store, Store::Sql(_)) {
        Some(enforce::Observed::read(client, namespace).await)
    } else {
        None
    };
    let trigger = match store {
        Store::Sql(sql) if any_hard => Some(sql.trigger_installed().await),
        _ => None,
    };
    for (ns, release, lock) in locks.iter_mut() {
        let (how, note) = match (&observed, lock.kind == "hard") {
            (Some(o), true) => o.hard_lock(ns, release),
            (None, true) => match &trigger {
                Some(Ok(true)) => (Enforcement::DatabaseTrigger, None),
                Some(Ok(false)) => (
                    Enforcement::LabelsOnly,
                    Some(enforce::not_enforced_by_database(&format!(
                        "the trigger {} is not installed on releases_v1; run `guarded-upgrade \
                         lock {release} --hard -n {ns}` again to install it",
                        crate::adapters::storage::sql::TRIGGER_NAME
                    ))),
                ),
                Some(Err(why)) => (
                    Enforcement::LabelsOnly,
                    Some(enforce::not_enforced_by_database(why)),
                ),
                None => (Enforcement::LabelsOnly, None),
            },
            _ => (Enforcement::LabelsOnly, None),
        };
        lock.enforcement = Some(how);
        lock.enforcement_note = note;
    }
}
