//! `kube-standin serve [--kubeconfig PATH] [--port N] [--namespace NS ...] [--tls]`: runs
//! the Kubernetes API stand-in until SIGINT/SIGTERM (`--tls`: HTTPS with a generated CA,
//! carried by the kubeconfig).

use kube_standin::{Options, StandIn};
use std::process::ExitCode;

const USAGE: &str =
    "usage: kube-standin serve [--kubeconfig PATH] [--port N] [--namespace NS ...] [--tls]";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut opts = Options::default();
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("serve") => {}
        Some(other) => return Err(format!("unknown command {other:?}")),
        None => return Err("missing command".into()),
    }
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--kubeconfig" => opts.kubeconfig = Some(value()?.into()),
            "--port" => {
                opts.port = value()?
                    .parse()
                    .map_err(|_| "--port needs a number".to_string())?
            }
            "--namespace" | "-n" => opts.namespaces.push(value()?),
            "--tls" => opts.tls = Some(kube_standin::TlsOptions::default()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("kube-standin: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let standin = match StandIn::start_with(opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kube-standin: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "kube-standin listening on {}, kubeconfig at {}",
        standin.url(),
        standin.kubeconfig().display()
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-standin: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
    standin.stop();
    eprintln!("kube-standin stopped");
    ExitCode::SUCCESS
}
