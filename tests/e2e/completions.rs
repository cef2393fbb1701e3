//! Shell completions, the man page and `--version`, generated from the clap definitions.

use std::process::Command;

use crate::common::{guard_bin, lines};

fn generate(args: &[&str]) -> String {
    let out = Command::new(guard_bin()).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `SHELL -n` on a generated script.
fn syntax_ok(shell: &str, script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("completion.{shell}"));
    std::fs::write(&file, script).unwrap();
    let out = Command::new(shell).arg("-n").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{shell} -n: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completion_scripts_parse() {
    syntax_ok("bash", &generate(&["completions", "bash"]));
    // zsh and fish are checked where installed (CI installs neither; bash is always there).
    for shell in ["zsh", "fish"] {
        if installed(shell) {
            syntax_ok(shell, &generate(&["completions", shell]));
        }
    }
    for shell in ["elvish", "powershell"] {
        assert!(!generate(&["completions", shell]).is_empty());
    }
}

/// The bash completion really completes subcommands and the lock flags.
#[test]
fn bash_completion_completes() {
    let script = generate(&["completions", "bash"]);
    let complete = |line: &str| -> Vec<String> {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "{script}\nCOMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
             COMP_POINT=${{#COMP_LINE}}; _guarded__upgrade guarded-upgrade '{last}' '{prev}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            words = words
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" "),
            cword = words.len() - 1,
            last = words[words.len() - 1],
            prev = words[words.len() - 2],
        );
        let out = Command::new("bash")
            .args(["-c", &program])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(complete("guarded-upgrade lo"), ["lock", "locks"]);
    assert!(complete("guarded-upgrade lock db --").contains(&"--reason".to_string()));
    assert_eq!(
        complete("guarded-upgrade completions f"),
        ["fish"],
        "value completion"
    );
}

#[test]
fn man_page_renders() {
    let page = generate(&["man"]);
    assert!(lines(&page).contains(&".SH NAME"), "not a man page: {page}");
    // groff (man's formatter) must accept it without warnings.
    let mut groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff (package groff-base) is needed to check the man page");
    use std::io::Write;
    groff
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = groff.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    for sub in [
        "upgrade", "check", "lock", "unlock", "status", "locks", "helm",
    ] {
        let line = format!("guarded\\-upgrade\\-{sub}(1)");
        assert!(lines(&page).contains(&line.as_str()), "{line} missing");
    }
}

#[test]
fn version_names_the_commit() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string())
        .unwrap_or_else(|| "unknown".to_string());
    assert_eq!(
        generate(&["--version"]),
        format!(
            "guarded-upgrade {} (commit {commit})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn man_pages_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(guard_bin())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("wrote man pages to {}\n", dir.path().display())
    );
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "guarded-upgrade-check.1",
            "guarded-upgrade-completions.1",
            "guarded-upgrade-helm.1",
            "guarded-upgrade-lock.1",
            "guarded-upgrade-locks.1",
            "guarded-upgrade-man.1",
            "guarded-upgrade-policy-install.1",
            "guarded-upgrade-policy-manifest.1",
            "guarded-upgrade-policy-show.1",
            "guarded-upgrade-policy-uninstall.1",
            "guarded-upgrade-policy.1",
            "guarded-upgrade-status.1",
            "guarded-upgrade-unlock.1",
            "guarded-upgrade-upgrade.1",
            "guarded-upgrade.1",
        ]
    );
    let missing = Command::new(guard_bin())
        .args(["man", "--dir", "/nonexistent/man1"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr),
        "guarded-upgrade: error: cannot write man pages to \"/nonexistent/man1\": No such file or \
         directory (os error 2); check that the directory exists and is writable\n"
    );
}
