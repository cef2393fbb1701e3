//! Starts the real control plane (etcd + kube-apiserver) for people and benchmarks, prints
//! the admin kubeconfig's path, and runs until interrupted.
//!
//! `cargo run -p kube-testbed` (after `scripts/install-kube.sh`); `GU_KUBE_SERVERS=1` by
//! default here, `GU_KUBE_FSYNC=1` for etcd with fsync, `GU_KUBE_CONTROLLERS=1` for the
//! cluster's controllers (kube-controller-manager, kube-scheduler, kwok).

fn main() {
    if std::env::var_os("GU_KUBE_SERVERS").is_none() {
        std::env::set_var("GU_KUBE_SERVERS", "1");
    }
    let cluster = if std::env::var("GU_KUBE_CONTROLLERS").as_deref() == Ok("1") {
        kube_testbed::cluster_with_controllers()
    } else {
        kube_testbed::cluster()
    };
    if cluster.has_controllers() {
        println!("controllers run; fake node {}", cluster.node_name());
    }
    println!("kube-apiserver at {}", cluster.url());
    println!("export KUBECONFIG={}", cluster.kubeconfig().display());
    println!(
        "restricted users' kubeconfigs: {}",
        kube_testbed::RESTRICTED_USERS.join(", ")
    );
    for user in kube_testbed::RESTRICTED_USERS {
        println!("  {user}: {}", cluster.kubeconfig_for(user, None).display());
    }
    println!("audit log: {}", cluster.audit_log().display());
    println!("(Ctrl-C stops it)");
    loop {
        std::thread::park();
    }
}
