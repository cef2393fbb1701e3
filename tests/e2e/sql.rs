//! Helm's SQL storage driver against a real PostgreSQL: helm 3.17 and 4.1 write their
//! release records into it (`HELM_DRIVER=sql`), guarded-upgrade reads and locks them there,
//! and helm reads back what guarded-upgrade wrote. The mutex Lease stays in the stand-in.

use crate::common::{bed, chart, Bed, Run};
use crate::servers::postgres;

const NS: &str = "shared";
const LOCK_KEY: &str = "guarded-upgrade.io/lock";

/// A bed plus a fresh database; every command gets the SQL driver environment.
struct SqlBed {
    b: Bed,
    db: String,
    url: String,
}

impl SqlBed {
    fn new(label: &str, test: &str) -> SqlBed {
        let b = bed(label);
        b.api.create_namespace(NS);
        let pg = postgres();
        let db = format!("gu_{test}_{label}");
        pg.create_db(&db);
        let url = pg.url(&db);
        SqlBed { b, db, url }
    }

    fn env(&self) -> [(&str, &str); 2] {
        [
            ("HELM_DRIVER", "sql"),
            ("HELM_DRIVER_SQL_CONNECTION_STRING", self.url.as_str()),
        ]
    }

    fn guard(&self, args: &[&str]) -> Run {
        self.b.guard_env(args, &self.env())
    }

    fn helm(&self, args: &[&str]) -> Run {
        self.b.helm_env(args, &self.env())
    }

    fn query(&self, sql: &str) -> String {
        postgres().query(&self.db, sql)
    }

    /// (chart version, revision) per `helm get metadata` through the SQL driver.
    fn deployed(&self) -> (String, u64) {
        let run = self.helm(&["get", "metadata", "db", "-n", NS, "-o", "json"]);
        run.expect_code(0, "helm get metadata");
        let m: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
        (
            m["version"].as_str().unwrap_or_default().to_string(),
            m["revision"].as_u64().unwrap_or_default(),
        )
    }

    /// `status` column of every revision, in order.
    fn statuses(&self) -> String {
        self.query(&format!(
            "SELECT string_agg(version || '=' || status, ',' ORDER BY version) FROM releases_v1 \
             WHERE name = 'db' AND namespace = '{NS}'"
        ))
    }

    /// Value of a custom label on revision `rev`, empty when absent.
    fn label(&self, rev: u64, key: &str) -> String {
        self.query(&format!(
            "SELECT coalesce(max(value), '') FROM custom_labels_v1 WHERE releasekey = \
             'sh.helm.release.v1.db.v{rev}' AND releasenamespace = '{NS}' AND key = '{key}'"
        ))
    }

    fn try_query(&self, sql: &str) -> Result<String, String> {
        postgres().try_query(&self.db, sql)
    }

    /// Every release row and label, whole: equal before and after means nothing changed.
    fn snapshot(&self) -> String {
        self.query(
            "SELECT (SELECT count(*) FROM releases_v1) || '|' || \
             (SELECT string_agg(md5(r::text) || xmin::text, ',' ORDER BY key) FROM releases_v1 r) \
             || '|' || (SELECT string_agg(md5(l::text), ',' ORDER BY l::text) FROM custom_labels_v1 l)",
        )
    }

    /// Every row version of the release rows: changes whenever anything writes them.
    fn row_versions(&self) -> String {
        self.query("SELECT string_agg(key || ':' || xmin::text, ',' ORDER BY key) FROM releases_v1")
    }
}

fn first_line(run: &Run) -> &str {
    run.stderr.lines().next().unwrap_or_default()
}

/// install -> same version skipped (nothing written) -> downgrade refused -> upgrade.
fn sql_decisions(label: &str) {
    let s = SqlBed::new(label, "decisions");
    let run = s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS]);
    run.expect_code(0, "install");
    assert!(
        run.stderr.contains(r#"install: "db" in "shared" 1.0.0"#),
        "{}",
        run.stderr
    );
    assert_eq!(s.deployed(), ("1.0.0".into(), 1));
    assert_eq!(s.statuses(), "1=deployed");
    // The release lives in PostgreSQL only: no Secret was written to the cluster.
    assert!(
        s.b.api
            .list("secrets", Some(NS))
            .iter()
            .all(|o| o["metadata"]["labels"]["owner"] != "helm"),
        "helm wrote a Secret"
    );

    let before = s.row_versions();
    let run = s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS]);
    run.expect_code(0, "same version");
    assert_eq!(
        first_line(&run),
        "skip: release \"db\" in \"shared\" is at 1.0.0 (revision 1); target 1.0.0 is not newer \
         (policy newer; use --min-version-policy newer-or-equal to re-apply)",
        "{}",
        run.stderr
    );
    assert_eq!(s.row_versions(), before, "a skip must not write");

    let run = s.guard(&["upgrade", "db", &chart("demo-0.9.0"), "-n", NS]);
    run.expect_code(0, "downgrade");
    assert!(first_line(&run).starts_with("skip: "), "{}", run.stderr);
    assert!(first_line(&run).contains("downgrade"), "{}", run.stderr);
    assert_eq!(
        s.row_versions(),
        before,
        "a refused downgrade must not write"
    );

    let run = s.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(0, "upgrade");
    assert!(
        run.stderr
            .contains(r#"upgrade: "db" in "shared" 1.0.0 -> 1.1.0"#),
        "{}",
        run.stderr
    );
    assert_eq!(s.deployed(), ("1.1.0".into(), 2));
    assert_eq!(s.statuses(), "1=superseded,2=deployed");
    let check = s.guard(&["check", "db", &chart("demo-1.2.0"), "-n", NS, "-o", "json"]);
    check.expect_code(0, "check");
    let json: serde_json::Value = serde_json::from_str(check.stdout.trim()).unwrap();
    assert_eq!(json["driver"], "sql", "{json}");
    assert_eq!(json["deployed"]["version"], "1.1.0", "{json}");

    // A server that is not there: exit 3 naming it (without the credentials), helm not run.
    let dead = format!(
        "postgres://postgres:hunter2@{}/x?sslmode=disable",
        crate::servers::dead_address()
    );
    let run = s.b.guard_env(
        &["upgrade", "db", &chart("demo-1.2.0"), "-n", NS],
        &[
            ("HELM_DRIVER", "sql"),
            ("HELM_DRIVER_SQL_CONNECTION_STRING", dead.as_str()),
        ],
    );
    run.expect_code(3, "database down");
    let line = run.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(
            "guarded-upgrade: error: cannot decide for release \"db\": cannot connect to \
             PostgreSQL at 127.0.0.1:"
        ) && line.ends_with("; helm was not run"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    assert_eq!(s.deployed(), ("1.1.0".into(), 2));
}

/// Soft lock survives a plain helm upgrade and rollback (custom_labels_v1); a hard lock
/// stops plain helm; unlock restores everything.
fn sql_locks(label: &str) {
    let s = SqlBed::new(label, "locks");
    s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    let run = s.guard(&[
        "lock", "db", "-n", NS, "--reason", "freeze", "--by", "alice",
    ]);
    run.expect_code(0, "lock");
    assert_eq!(
        run.stderr.trim_end(),
        r#"locked: release "db" in "shared" (soft): freeze"#
    );
    assert_eq!(s.label(1, LOCK_KEY), "soft");

    // Plain helm upgrade: the new revision carries the lock (helm merges custom labels).
    s.helm(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "plain helm upgrade");
    assert_eq!(s.deployed(), ("1.1.0".into(), 2));
    assert_eq!(s.label(2, LOCK_KEY), "soft");
    let before = s.row_versions();
    let run = s.guard(&["upgrade", "db", &chart("demo-1.2.0"), "-n", NS]);
    run.expect_code(0, "locked after plain upgrade");
    assert!(first_line(&run).starts_with("skip: "), "{}", run.stderr);
    assert!(run.stderr.contains("freeze"), "{}", run.stderr);
    assert_eq!(s.row_versions(), before, "a locked skip must not write");

    // Plain helm rollback: revision 3 gets revision 1's labels, lock included.
    s.helm(&["rollback", "db", "1", "-n", NS])
        .expect_code(0, "plain helm rollback");
    assert_eq!(s.deployed(), ("1.0.0".into(), 3));
    assert_eq!(s.label(3, LOCK_KEY), "soft");
    let check = s.guard(&["check", "db", &chart("demo-1.2.0"), "-n", NS, "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(check.stdout.trim()).unwrap();
    assert_eq!(json["reason"], "locked", "{json}");
    assert_eq!(json["lock"]["by"], "alice", "{json}");
    for scope in [&["-n", NS][..], &["-A"][..]] {
        let mut args = vec!["locks", "-o", "json"];
        args.extend_from_slice(scope);
        let run = s.guard(&args);
        run.expect_code(0, "locks");
        let rows: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
        assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
        assert_eq!(rows[0]["release"], "db", "{rows}");
        assert_eq!(rows[0]["namespace"], NS, "{rows}");
        assert_eq!(rows[0]["kind"], "soft", "{rows}");
    }

    let run = s.guard(&["unlock", "db", "-n", NS]);
    run.expect_code(0, "unlock");
    for rev in 1..=3 {
        assert_eq!(s.label(rev, LOCK_KEY), "", "revision {rev} still locked");
    }
    // Revision 2 (1.1.0) had deployed when it was rolled back: the rollback was asked for
    // and is kept against 1.1.0 (docs/decision.md); a newer version upgrades.
    let run = s.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(0, "the version rolled back from");
    assert!(
        first_line(&run).starts_with("skip: ") && run.stderr.contains("the rollback is kept"),
        "{}",
        run.stderr
    );
    s.guard(&["upgrade", "db", &chart("demo-1.2.0"), "-n", NS])
        .expect_code(0, "upgrade after unlock");
    assert_eq!(s.deployed(), ("1.2.0".into(), 4));

    // Hard lock: the latest row becomes pending-upgrade (column and body); plain helm stops.
    s.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS])
        .expect_code(0, "lock --hard");
    assert_eq!(
        s.statuses(),
        "1=superseded,2=superseded,3=superseded,4=pending-upgrade"
    );
    assert_eq!(
        s.label(4, "guarded-upgrade.io/hard-original-status"),
        "deployed"
    );
    let run = s.helm(&["upgrade", "db", &chart("demo-1.2.0"), "-n", NS]);
    assert_ne!(run.code, 0, "plain helm must be stopped: {}", run.stdout);
    assert!(
        run.stderr
            .contains("another operation (install/upgrade/rollback) is in progress"),
        "{}",
        run.stderr
    );
    let run = s.guard(&["upgrade", "db", &chart("demo-1.2.0"), "-n", NS]);
    run.expect_code(0, "guarded upgrade of a hard-locked release");
    assert!(first_line(&run).starts_with("skip: "), "{}", run.stderr);
    let status = s.guard(&["status", "db", "-n", NS, "-o", "json"]);
    status.expect_code(0, "status");
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(json["lock"]["kind"], "hard", "{json}");

    // Unlock restores the status in the column and in the body helm reads.
    s.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock hard");
    assert_eq!(
        s.statuses(),
        "1=superseded,2=superseded,3=superseded,4=deployed"
    );
    let run = s.helm(&["status", "db", "-n", NS, "-o", "json"]);
    run.expect_code(0, "helm status");
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["info"]["status"], "deployed", "{json}");
    s.helm(&["upgrade", "db", &chart("demo-1.2.0"), "-n", NS])
        .expect_code(0, "plain helm after unlock");
    assert_eq!(s.deployed(), ("1.2.0".into(), 5));
}

/// TLS modes as helm's lib/pq applies them, against PostgreSQL serving a `localhost`
/// certificate from a test CA: helm and guarded-upgrade accept and refuse the same ones.
fn sql_tls(label: &str) {
    let s = SqlBed::new(label, "tls");
    let pg = postgres();
    let ca = pg.ca_file.display().to_string();
    let with = |host: &str, params: &str| pg.url_with(host, &s.db, params);
    let full = with(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let env = |url: &str| -> Vec<(&'static str, String)> {
        vec![
            ("HELM_DRIVER", "sql".to_string()),
            ("HELM_DRIVER_SQL_CONNECTION_STRING", url.to_string()),
        ]
    };
    let run_with = |url: &str, args: &[&str], helm: bool| {
        let e = env(url);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if helm {
            s.b.helm_env(args, &e)
        } else {
            s.b.guard_env(args, &e)
        }
    };
    let c100 = chart("demo-1.0.0");
    run_with(
        &full,
        &["upgrade", "--install", "db", &c100, "-n", NS],
        false,
    )
    .expect_code(0, "install over verify-full");
    // Modes that succeed for helm succeed for us: the same version is skipped through each.
    let keyword = format!(
        "host=127.0.0.1 port={} user=postgres dbname={} sslmode=verify-ca sslrootcert='{ca}'",
        pg.port, s.db
    );
    for url in [
        full.clone(),
        with("127.0.0.1", "sslmode=require"),
        with("127.0.0.1", ""),
        with("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        keyword,
    ] {
        run_with(&url, &["history", "db", "-n", NS], true).expect_code(0, &url);
        let run = run_with(&url, &["upgrade", "db", &c100, "-n", NS], false);
        run.expect_code(0, &url);
        assert!(
            first_line(&run).starts_with("skip: "),
            "{url}: {}",
            run.stderr
        );
    }
    // The certificate is for localhost, not 127.0.0.1: verify-full refuses, helm too.
    let wrong_name = with(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let helm = run_with(&wrong_name, &["history", "db", "-n", NS], true);
    assert_ne!(helm.code, 0, "helm accepted a wrong host name");
    let run = run_with(&wrong_name, &["upgrade", "db", &c100, "-n", NS], false);
    run.expect_code(3, "verify-full, wrong name");
    let line = run.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "guarded-upgrade: error: cannot decide for release \"db\": cannot connect to \
             PostgreSQL at 127.0.0.1:{}/{}: ",
            pg.port, s.db
        )) && line.contains("certificate")
            && line.ends_with("; helm was not run"),
        "{}",
        run.stderr
    );
    // sslmode=prefer and allow: helm 3.17.3 and 4.1.4 (lib/pq 1.10) refuse them; the
    // newest helms (lib/pq 1.12.3) accept them, and so does the tool (TLS when offered /
    // plain first), reading the same records as helm.
    for mode in ["prefer", "allow"] {
        let conn = with("127.0.0.1", &format!("sslmode={mode}"));
        let helm_code = run_with(&conn, &["history", "db", "-n", NS], true).code;
        if matches!(
            label,
            "helm3.17" | "helm4.1" | "standin-helm3" | "standin-helm4"
        ) {
            assert_ne!(helm_code, 0, "{label}: old lib/pq accepted sslmode={mode}");
        } else {
            assert_eq!(helm_code, 0, "{label}: lib/pq 1.12 refused sslmode={mode}");
        }
        run_with(&conn, &["check", "db", &c100, "-n", NS], false)
            .expect_code(0, &format!("check with sslmode={mode}"));
    }
    // A mode lib/pq does not know is configuration, checked before any I/O: a usage error.
    let bogus = with("127.0.0.1", "sslmode=sometimes");
    let run = run_with(&bogus, &["upgrade", "db", &c100, "-n", NS], false);
    run.expect_code(2, "sslmode=sometimes");
    assert_eq!(
        run.stderr.lines().last().unwrap_or_default(),
        "guarded-upgrade: error: HELM_DRIVER_SQL_CONNECTION_STRING is not usable: unsupported \
         sslmode \"sometimes\"; only \"require\" (default), \"verify-full\", \"verify-ca\", \
         \"prefer\", \"allow\", and \"disable\" are supported (as by helm's SQL driver)"
    );
}

/// Issue 17: what the SQL store cannot read refuses (exit 3) naming the row and the field,
/// never "no lock" and never a panic: an unknown lock kind, a NULL label, a mistyped
/// column, a missing labels table.
fn sql_unreadable_rows_refuse(label: &str) {
    let s = SqlBed::new(label, "unreadable");
    s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    let upgrade = || s.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    let key = "sh.helm.release.v1.db.v1";
    let cannot = "guarded-upgrade: error: release \"db\" in namespace \"shared\": reading the \
                  deployed release: ";
    s.query(&format!(
        "INSERT INTO custom_labels_v1 (releaseKey, releaseNamespace, key, value) VALUES \
         ('{key}', '{NS}', '{LOCK_KEY}', 'bogus'), ('{key}', '{NS}', \
         'guarded-upgrade.io/since', '1700000000')"
    ));
    upgrade().expect_code(3, "unknown lock kind").assert_stderr(&[&format!(
        "{cannot}inconsistent record: releases_v1 \"{key}\": label {LOCK_KEY} is not soft, hard or pin; fix the label, or remove \
         the lock with `guarded-upgrade unlock db -n shared`; helm was not run"
    )]);
    s.query("DELETE FROM custom_labels_v1 WHERE key LIKE 'guarded-upgrade.io/%'");

    s.query("ALTER TABLE custom_labels_v1 ALTER COLUMN value DROP NOT NULL");
    s.query(&format!(
        "INSERT INTO custom_labels_v1 (releaseKey, releaseNamespace, key, value) VALUES \
         ('{key}', '{NS}', '{LOCK_KEY}', NULL)"
    ));
    upgrade()
        .expect_code(3, "NULL label")
        .assert_stderr(&[&format!(
        "{cannot}listing releases_v1 records: SQL row \"{key}\": custom_labels_v1 column value \
         is NULL; helm was not run"
    )]);
    s.query("DELETE FROM custom_labels_v1 WHERE value IS NULL");

    s.query("ALTER TABLE releases_v1 ALTER COLUMN version TYPE bigint");
    let run = upgrade();
    run.expect_code(3, "mistyped column");
    assert!(
        run.stderr.starts_with(&format!(
            "{cannot}listing releases_v1 records: SQL row \"{key}\": column version cannot be \
             read ("
        )),
        "{}",
        run.stderr
    );
    s.query("ALTER TABLE releases_v1 ALTER COLUMN version TYPE integer");

    s.query("DROP TABLE custom_labels_v1");
    let run = upgrade();
    run.expect_code(3, "missing labels table");
    assert!(
        run.stderr.contains(
            "releases_v1 has rows but table custom_labels_v1, where helm keeps release labels \
             (and guarded-upgrade its locks), does not exist"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(s.statuses(), "1=deployed", "helm must not have run");
}

/// Sets revision `rev` of `db` to `status` in both the status column and the encoded body,
/// as an interrupted helm leaves it.
fn set_status(s: &SqlBed, rev: u64, status: &str) {
    use base64::Engine;
    use std::io::{Read, Write};
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = format!("sh.helm.release.v1.db.v{rev}");
    let body = s.query(&format!("SELECT body FROM releases_v1 WHERE key = '{key}'"));
    let mut json = String::new();
    flate2::read::GzDecoder::new(&b64.decode(body.trim()).expect("base64")[..])
        .read_to_string(&mut json)
        .expect("gzip");
    let mut release: serde_json::Value = serde_json::from_str(&json).expect("json");
    release["info"]["status"] = status.into();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(release.to_string().as_bytes()).expect("gzip");
    let body = b64.encode(gz.finish().expect("gzip"));
    s.query(&format!(
        "UPDATE releases_v1 SET body = '{body}', status = '{status}' WHERE key = '{key}'"
    ));
}

/// Issue 17: with the records in PostgreSQL, a missing namespace (no place for the mutex
/// Lease) never lets a refusal reach helm; a decision that proceeds says why it runs
/// without the mutex.
fn sql_missing_namespace_keeps_refusals(label: &str) {
    let s = SqlBed::new(label, "nonamespace");
    s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    set_status(&s, 1, "pending-upgrade");
    assert!(
        s.b.api.delete_object("namespaces", None, NS),
        "delete the namespace"
    );
    let run = s.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS]);
    run.expect_code(3, "pending release in a missing namespace")
        .assert_stderr(&[
            "refused: release \"db\" in \"shared\": latest revision 1 is pending-upgrade, so \
             another helm operation is in progress or was interrupted. Wait for it to finish and \
             retry; if it was interrupted, check \"helm history db -n shared\" and recover with \
             \"helm rollback db <REVISION> -n shared\" (rollback works while a revision is \
             pending)",
        ]);
    assert_eq!(s.statuses(), "1=pending-upgrade", "helm must not have run");

    let run = s.guard(&[
        "upgrade",
        "--install",
        "other",
        &chart("demo-1.0.0"),
        "-n",
        NS,
    ]);
    run.assert_stderr_line(
        "note: running unserialized: namespace \"shared\" does not exist, so the mutex (a \
         Lease in it) cannot be taken",
    );
}

/// A hard lock is enforced by PostgreSQL: a trigger on releases_v1 refuses helm rollback,
/// helm uninstall, helm upgrade and direct UPDATE/DELETE of the release's rows, with a
/// message naming the lock; unlock passes, and afterwards everything works again.
fn sql_hard_lock_trigger(label: &str) {
    let s = SqlBed::new(label, "trigger");
    s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    s.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "upgrade");
    let run = s.guard(&[
        "lock",
        "db",
        "--hard",
        "--reason",
        "quarter close",
        "--by",
        "alice",
        "-n",
        NS,
    ]);
    run.expect_code(0, "lock --hard");
    assert!(
        run.stderr.contains(
            "enforced: the database refuses changes to release \"db\" in \"shared\" (trigger \
             guarded_upgrade_hard_lock on releases_v1)"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(s.statuses(), "1=superseded,2=pending-upgrade");
    let status = s.guard(&["status", "db", "-n", NS, "-o", "json"]);
    status.expect_code(0, "status");
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(json["lock"]["enforcement"], "database trigger", "{json}");
    let locks = s.guard(&["locks", "-A", "-o", "json"]);
    locks.expect_code(0, "locks");
    let rows: serde_json::Value = serde_json::from_str(locks.stdout.trim()).unwrap();
    assert_eq!(rows[0]["enforcement"], "database trigger", "{rows}");

    let before = s.snapshot();
    let named = |text: &str| {
        assert!(
            text.contains(
                "release \"db\" in namespace \"shared\" is hard-locked: quarter close \
                 (locked by alice since "
            ) && text.contains("guarded-upgrade unlock db -n shared"),
            "{text}"
        );
    };
    let run = s.helm(&["rollback", "db", "1", "-n", NS]);
    assert_ne!(run.code, 0, "helm rollback must fail: {}", run.stdout);
    named(&run.stderr);
    assert_eq!(s.snapshot(), before, "helm rollback changed rows");
    let run = s.helm(&["upgrade", "db", &chart("demo-1.2.0"), "-n", NS]);
    assert_ne!(run.code, 0, "helm upgrade must fail: {}", run.stdout);
    assert_eq!(s.snapshot(), before, "helm upgrade changed rows");
    let run = s.helm(&["uninstall", "db", "-n", NS]);
    assert_ne!(run.code, 0, "helm uninstall must fail: {}", run.stdout);
    named(&run.stderr);
    assert_eq!(s.snapshot(), before, "helm uninstall changed rows");
    for sql in [
        "UPDATE releases_v1 SET status = 'deployed' WHERE name = 'db'",
        "DELETE FROM releases_v1 WHERE name = 'db'",
        "INSERT INTO releases_v1 SELECT 'sh.helm.release.v1.db.v9', type, body, name, \
         namespace, 9, status, owner, createdat, modifiedat FROM releases_v1 \
         WHERE key = 'sh.helm.release.v1.db.v2'",
    ] {
        let err = s.try_query(sql).expect_err(sql);
        named(&err);
    }
    assert_eq!(s.snapshot(), before, "direct SQL changed rows");
    // Other releases are not affected.
    s.helm(&["install", "other", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "another release");

    s.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
    assert_eq!(s.statuses(), "1=superseded,2=deployed");
    s.helm(&["rollback", "db", "1", "-n", NS])
        .expect_code(0, "helm rollback after unlock");
    s.helm(&["upgrade", "db", &chart("demo-1.2.0"), "-n", NS])
        .expect_code(0, "helm upgrade after unlock");
    assert_eq!(s.deployed(), ("1.2.0".into(), 4));
    s.try_query("UPDATE releases_v1 SET modifiedat = modifiedat WHERE name = 'db'")
        .expect("UPDATE after unlock");
    s.helm(&["uninstall", "db", "-n", NS])
        .expect_code(0, "helm uninstall after unlock");
    assert_eq!(
        s.query("SELECT count(*) FROM releases_v1 WHERE name = 'db'"),
        "0"
    );
}

/// Without the right to create the trigger, `lock --hard` says the lock is not enforced
/// by the database; `--enforce` refuses and writes nothing.
fn sql_hard_lock_trigger_not_permitted(label: &str) {
    let s = SqlBed::new(label, "trigger_denied");
    s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    // helm's tables have row-level security without policies: only their owner (helm's
    // role) sees rows. The owner may create triggers on them, but not functions in a
    // schema without CREATE.
    let role = format!("gu_helm_{label}");
    s.query(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; \
         ALTER TABLE releases_v1 OWNER TO {role}; ALTER TABLE custom_labels_v1 OWNER TO {role}; \
         REVOKE CREATE ON SCHEMA public FROM PUBLIC"
    ));
    let url = s
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let env = [
        ("HELM_DRIVER", "sql"),
        ("HELM_DRIVER_SQL_CONNECTION_STRING", url.as_str()),
    ];
    let before = s.snapshot();
    let run =
        s.b.guard_env(&["lock", "db", "--hard", "--enforce", "-n", NS], &env);
    run.expect_code(3, "--enforce without rights");
    assert!(
        run.stderr.contains(
            "--enforce: the hard lock cannot be enforced by the database: cannot install \
                 the trigger guarded_upgrade_hard_lock"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(s.snapshot(), before, "--enforce wrote");
    let run = s.b.guard_env(&["lock", "db", "--hard", "-n", NS], &env);
    run.expect_code(0, "lock --hard without rights");
    assert!(
        run.stderr
            .contains("the hard lock is not enforced by the database: ")
            && run
                .stderr
                .contains("(permission denied for schema public); it needs CREATE"),
        "{}",
        run.stderr
    );
    let status =
        s.b.guard_env(&["status", "db", "-n", NS, "-o", "json"], &env);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(json["lock"]["enforcement"], "labels only", "{json}");
    s.b.guard_env(&["unlock", "db", "-n", NS], &env)
        .expect_code(0, "unlock");
}

/// With `HELM_DRIVER=sql` and the cluster policy installed, a hard lock is enforced twice:
/// the database refuses record writes, and the API server refuses deleting the release's
/// objects (issue 18: "the object deletes are denied by the same admission policy").
fn sql_hard_lock_with_the_cluster_policy(label: &str) {
    let s = SqlBed::new(label, "trigger_policy");
    s.guard(&["policy", "install"])
        .expect_code(0, "policy install");
    s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    let run = s.guard(&["lock", "db", "--hard", "--reason", "freeze", "-n", NS]);
    run.expect_code(0, "lock --hard");
    assert!(
        run.stderr.contains(
            "enforced: the database refuses changes to release \"db\" in \"shared\" (trigger \
             guarded_upgrade_hard_lock on releases_v1)"
        ),
        "{}",
        run.stderr
    );
    let kubectl = |args: &[&str]| {
        let mut cmd = s.b.command(kube_testbed::kubectl());
        cmd.args(args);
        crate::common::run(&mut cmd)
    };
    // Admission takes effect through the server's informers: wait (bounded) for the refusal.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let refused = loop {
        let run = kubectl(&[
            "-n",
            NS,
            "delete",
            "deployment",
            "db-app",
            "--dry-run=server",
        ]);
        if run.code != 0 || std::time::Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_ne!(
        refused.code, 0,
        "deleting the release's Deployment was allowed"
    );
    assert!(
        refused.stderr.contains("Forbidden")
            && refused
                .stderr
                .contains("guarded-upgrade unlock db -n shared"),
        "{}",
        refused.stderr
    );
    assert!(s.b.api.get("deployments", Some(NS), "db-app").is_some());
    s.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
    kubectl(&["-n", NS, "delete", "deployment", "db-app"]).expect_code(0, "delete after unlock");

    // Objects outside the namespace (a ClusterRole, a ConfigMap in another namespace) are
    // frozen by the cluster's policies as for the other drivers: the records are rows, the
    // objects the cluster's.
    s.b.api.create_namespace("elsewhere");
    let wide = crate::freeze::wide_chart(&s.b, "1.0.0", "one");
    s.guard(&[
        "upgrade",
        "--install",
        "wide",
        wide.to_str().unwrap(),
        "-n",
        NS,
    ])
    .expect_code(0, "install the wide chart");
    let outside: [&[&str]; 2] = [
        &[
            "delete",
            "clusterrole",
            "shared-wide-reader",
            "--dry-run=server",
        ],
        &[
            "-n",
            "elsewhere",
            "delete",
            "cm/shared-wide-remote",
            "--dry-run=server",
        ],
    ];
    for args in outside {
        kubectl(args).expect_code(0, &format!("{args:?} before the lock"));
    }
    let run = s.guard(&["lock", "wide", "--hard", "--reason", "freeze", "-n", NS]);
    run.expect_code(0, "lock --hard wide");
    assert!(
        run.stderr
            .contains("note: not frozen by the cluster: ConfigMap wide-hook (a helm hook"),
        "the not-frozen list is given: {}",
        run.stderr
    );
    for args in outside {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let refused = loop {
            let run = kubectl(args);
            if run.code != 0 || std::time::Instant::now() > deadline {
                break run;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert!(
            refused.code != 0
                && refused
                    .stderr
                    .contains("guarded-upgrade unlock wide -n shared"),
            "{args:?} under the hard lock: {}",
            refused.stderr
        );
    }
    s.guard(&["unlock", "wide", "-n", NS])
        .expect_code(0, "unlock wide");
    for args in outside {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let allowed = loop {
            let run = kubectl(args);
            if run.code == 0 || std::time::Instant::now() > deadline {
                break run;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        allowed.expect_code(0, &format!("{args:?} after unlock"));
    }
}

/// Issue 25: the ways around the database trigger are closed. TRUNCATE of either table
/// (by helm's role or another role: helm grants ALL to PUBLIC, and TRUNCATE ignores
/// row-level security) and any change of the lock's own label rows are refused; the writer
/// bypass cannot be switched on from a connection string; TRUNCATE and TRIGGER are revoked
/// from PUBLIC. A trigger switched to ENABLE REPLICA or disabled reads as `labels only`,
/// naming it, and `lock --hard` puts it back.
fn sql_freeze_closes_the_ways_around(label: &str) {
    let s = SqlBed::new(label, "freeze");
    s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    s.guard(&["upgrade", "db", &chart("demo-1.1.0"), "-n", NS])
        .expect_code(0, "upgrade");
    s.guard(&[
        "lock",
        "db",
        "--hard",
        "--reason",
        "quarter close",
        "--by",
        "alice",
        "-n",
        NS,
    ])
    .expect_code(0, "lock --hard")
    .assert_stderr(&[
        r#"locked: release "db" in "shared" (hard): quarter close"#,
        "enforced: the database refuses changes to release \"db\" in \"shared\" (trigger \
             guarded_upgrade_hard_lock on releases_v1)",
    ]);
    let role = format!("gu_other_{}", label.replace('.', "_"));
    s.query(&format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role}"));
    // Revoked from PUBLIC by lock --hard (helm's migration granted ALL).
    for (table, privilege) in [
        ("releases_v1", "TRUNCATE"),
        ("releases_v1", "TRIGGER"),
        ("custom_labels_v1", "TRUNCATE"),
        ("custom_labels_v1", "TRIGGER"),
    ] {
        assert_eq!(
            s.query(&format!(
                "SELECT has_table_privilege('{role}', '{table}', '{privilege}')"
            )),
            "f",
            "{role} still holds {privilege} on {table}"
        );
    }
    // Even with the grant back, the statement trigger refuses.
    s.query(&format!(
        "GRANT TRUNCATE ON releases_v1, custom_labels_v1 TO {role}"
    ));
    let before = s.snapshot();
    let refused = |sql: &str, what: &str| {
        let err = s.try_query(sql).expect_err(sql);
        assert!(
            err.contains(
                "release \"db\" in namespace \"shared\" is hard-locked: quarter close (locked by \
                 alice since "
            ) && err.contains(&format!(
                "; {what} refused by guarded-upgrade. To change the release, first run: \
                 guarded-upgrade unlock db -n shared"
            )),
            "{sql}: {err}"
        );
    };
    for who in ["", &format!("SET ROLE {role}; ")] {
        refused(
            &format!("{who}TRUNCATE custom_labels_v1"),
            "truncate of custom_labels_v1",
        );
        refused(
            &format!("{who}TRUNCATE releases_v1"),
            "truncate of releases_v1",
        );
    }
    let latest = "sh.helm.release.v1.db.v2";
    refused(
        &format!(
            "DELETE FROM custom_labels_v1 WHERE releasekey = '{latest}' AND key = \
             'guarded-upgrade.io/hard-original-status'"
        ),
        &format!(
            "delete of custom_labels_v1 row \"guarded-upgrade.io/hard-original-status\" of \"{latest}\""
        ),
    );
    refused(
        &format!(
            "UPDATE custom_labels_v1 SET value = 'soft' WHERE releasekey = '{latest}' AND key = \
             '{LOCK_KEY}'"
        ),
        &format!("update of custom_labels_v1 row \"{LOCK_KEY}\" of \"{latest}\""),
    );
    refused(
        &format!(
            "INSERT INTO custom_labels_v1 VALUES ('{latest}', '{NS}', 'guarded-upgrade.io/expires', '1')"
        ),
        &format!("insert of custom_labels_v1 row \"guarded-upgrade.io/expires\" of \"{latest}\""),
    );
    // The writer bypass from a connection string (options=-c …), also as helm's driver.
    let bypass = format!("{}&options=-c%20guarded_upgrade.writer%3Don", s.url);
    let out = std::process::Command::new("psql")
        .args([&bypass, "-v", "ON_ERROR_STOP=1", "-At", "-c"])
        .arg("DELETE FROM releases_v1 WHERE name = 'db'")
        .output()
        .expect("psql");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the bypass deleted the release");
    assert!(err.contains("refused by guarded-upgrade"), "{err}");
    let run = s.b.helm_env(
        &["rollback", "db", "1", "-n", NS],
        &[
            ("HELM_DRIVER", "sql"),
            ("HELM_DRIVER_SQL_CONNECTION_STRING", bypass.as_str()),
        ],
    );
    assert_ne!(
        run.code, 0,
        "helm rollback with the bypass in its connection string"
    );
    assert!(
        run.stderr.contains("refused by guarded-upgrade"),
        "{}",
        run.stderr
    );
    assert_eq!(s.snapshot(), before, "a refused statement changed rows");

    // A trigger that does not fire is not enforcement.
    for (alter, why) in [
        (
            "ALTER TABLE releases_v1 ENABLE REPLICA TRIGGER guarded_upgrade_hard_lock",
            "the trigger guarded_upgrade_hard_lock on releases_v1 fires only for replication \
             (ENABLE REPLICA)",
        ),
        (
            "ALTER TABLE custom_labels_v1 DISABLE TRIGGER guarded_upgrade_hard_lock_truncate",
            "the trigger guarded_upgrade_hard_lock_truncate on custom_labels_v1 is disabled",
        ),
    ] {
        s.query(alter);
        let status = s.guard(&["status", "db", "-n", NS, "-o", "json"]);
        status.expect_code(0, "status");
        let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
        assert_eq!(json["lock"]["enforcement"], "labels only", "{json}");
        assert_eq!(
            json["lock"]["enforcement_note"],
            format!(
                "not enforced by the database: {why}; run `guarded-upgrade lock db --hard -n \
                 shared` again to install them"
            ),
            "{json}"
        );
        let locks = s.guard(&["locks", "-n", NS, "-o", "json"]);
        let rows: serde_json::Value = serde_json::from_str(locks.stdout.trim()).unwrap();
        assert_eq!(rows[0]["enforcement"], "labels only", "{rows}");
        s.guard(&[
            "lock",
            "db",
            "--hard",
            "--reason",
            "quarter close",
            "--by",
            "alice",
            "-n",
            NS,
        ])
        .expect_code(0, "lock --hard again");
        let status = s.guard(&["status", "db", "-n", NS, "-o", "json"]);
        let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
        assert_eq!(json["lock"]["enforcement"], "database trigger", "{json}");
    }
    s.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
    s.query(&format!("SET ROLE {role}; TRUNCATE custom_labels_v1"));
}

/// Issue 25: a grant to PUBLIC that `lock --hard` cannot revoke (made by another grantor
/// than the tool's role: helm's owner revokes only its own grants) is reported, naming the
/// grantor and the command that removes it; that command works, and `lock --hard` then
/// reports nothing.
fn sql_surviving_public_grants_are_reported(label: &str) {
    let s = SqlBed::new(label, "grants");
    s.guard(&["upgrade", "--install", "db", &chart("demo-1.0.0"), "-n", NS])
        .expect_code(0, "install");
    let granter = format!("gu_granter_{}", label.replace('.', "_"));
    s.query(&format!(
        "DROP ROLE IF EXISTS {granter}; CREATE ROLE {granter}; \
         GRANT TRUNCATE ON releases_v1 TO {granter} WITH GRANT OPTION; \
         SET ROLE {granter}; GRANT TRUNCATE ON releases_v1 TO PUBLIC; RESET ROLE"
    ));
    let weaker = format!(
        "the database lock is weaker: PUBLIC still holds TRUNCATE on releases_v1, granted by \
         {granter} (any role may empty it once the statement trigger is disabled); {granter} \
         can run REVOKE TRUNCATE ON releases_v1 FROM PUBLIC"
    );
    let run = s.guard(&["lock", "db", "--hard", "-n", NS]);
    run.expect_code(0, "lock --hard");
    assert!(
        run.stderr.lines().any(|l| l.ends_with(&weaker)),
        "no line ending {weaker:?}:\n{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("TRIGGER on"),
        "only the surviving grant is named:\n{}",
        run.stderr
    );
    // The advice works: after it, a new hard lock reports nothing.
    s.query(&format!(
        "SET ROLE {granter}; REVOKE TRUNCATE ON releases_v1 FROM PUBLIC; RESET ROLE"
    ));
    s.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
    let run = s.guard(&["lock", "db", "--hard", "-n", NS]);
    run.expect_code(0, "lock --hard again");
    assert!(
        !run.stderr.contains("weaker"),
        "reported after the grant was revoked:\n{}",
        run.stderr
    );
    s.guard(&["unlock", "db", "-n", NS])
        .expect_code(0, "unlock");
}

crate::common::per_helm!(
    sql_surviving_public_grants_are_reported,
    sql_freeze_closes_the_ways_around,
    sql_hard_lock_with_the_cluster_policy,
    sql_hard_lock_trigger,
    sql_hard_lock_trigger_not_permitted,
    sql_missing_namespace_keeps_refusals,
    sql_decisions,
    sql_locks,
    sql_tls,
    sql_unreadable_rows_refuse
);
