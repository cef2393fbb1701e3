//! `policy install|uninstall|show|manifest`: the cluster's admission policy that enforces
//! hard locks (the policy itself is [`crate::adapters::enforce::admission`]; what
//! `lock --hard` and `unlock` do with it goes through the store's enforcer).

use crate::adapters::enforce::admission;
use crate::error::{Error, Exit};
use crate::output;
use crate::plan::PolicyPlan;

/// Runs `policy …`.
pub(super) async fn run(plan: PolicyPlan) -> Result<Exit, Error> {
    let cluster = match &plan {
        PolicyPlan::Manifest => {
            output::result(&admission::manifest_yaml());
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
            let done = admission::install(&client).await.map_err(Error::Policy)?;
            for object in done {
                output::progress(&format!("applied: {object}"));
            }
            output::progress(&format!(
                "installed: ValidatingAdmissionPolicies {} version {}; `guarded-upgrade lock \
                 RELEASE --hard` is now enforced by the cluster",
                admission::POLICY_NAMES.join(", "),
                admission::POLICY_VERSION
            ));
        }
        PolicyPlan::Uninstall(_) => {
            let done = admission::uninstall(&client).await.map_err(Error::Policy)?;
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
            let policy = match admission::policy_state(&client).await {
                Ok(()) => format!(
                    "installed (ValidatingAdmissionPolicies {} version {}, each with its binding)",
                    admission::POLICY_NAMES.join(", "),
                    admission::POLICY_VERSION,
                ),
                Err(why) => why,
            };
            output::result(&format!("policy:    {policy}\n"));
            match admission::params_in(&client, None).await {
                Ok(set) if set.is_empty() => output::result("locks:     none enforced\n"),
                Ok(set) => {
                    for (ns, release) in set.into_keys() {
                        output::result(&format!("locks:     {release} in {ns}\n"));
                    }
                }
                Err(why) => output::result(&format!("locks:     {why}\n")),
            }
            match admission::wide_params(&client).await {
                Ok(set) => {
                    for (ns, release) in set {
                        output::result(&format!(
                            "wide:      {release} in {ns} (its objects outside the namespace)\n"
                        ));
                    }
                }
                Err(why) => output::result(&format!("wide:      {why}\n")),
            }
        }
        PolicyPlan::Manifest => unreachable!("handled above"),
    }
    Ok(Exit::Success)
}
