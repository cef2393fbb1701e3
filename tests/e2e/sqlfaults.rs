//! Issue 20, PostgreSQL: real faults at **every** statement guarded-upgrade sends with
//! `HELM_DRIVER=sql`, for `lock`, `lock --hard`, `unlock` (of a hard lock) and a guarded
//! upgrade:
//!
//! - **terminate**: the tool's backend is terminated (`pg_terminate_backend`, the backend's
//!   process ID read from the connection's `BackendKeyData`) while the statement is held
//!   before the server sees it;
//! - **restart**: the server is restarted (fast shutdown, start on the same data) while it is
//!   held;
//! - **reply lost**: the server runs the statement (a `COMMIT` commits) and its answer is
//!   dropped with the connection, so the tool cannot know whether it happened.
//!
//! The tool connects through a small TCP proxy that reads the PostgreSQL wire protocol of
//! the first connection to a database after [`Proxy::arm`] (the tool's; helm connects
//! later) and counts its statements (each simple `Query` and each extended-protocol
//! `Parse`). Afterwards every record must be in its old or its new state as a whole
//! (status column, the status in the body, the guarded-upgrade labels), the write order
//! must hold, the mutex Lease must be free, a failure must name the database
//! (`127.0.0.1:<port>/<db>`) and never "the API server", and one re-run of the same
//! command must converge. Every one of these faults is in fact survived within the run
//! (exit 0, records as after a fault-free run), and the tests assert that.
//!
//! [`WORKERS`] cases run at once, each worker with its own copy of the release (the same
//! records in its own namespace, so its own mutex Lease) in databases of its own, put back
//! in place between cases; a restart is one restart for a round of cases, taken while every
//! case of the round holds its statement. `GU_SQLF_ONLY=<command>` runs one command's cases.
//!
//! [`sql_sample_pairs_with_api_faults`] is the fault matrix with the SQL driver: pairs of a
//! PostgreSQL fault and an API fault in one run, sampled from a printed seed.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::common::{bed, chart, Bed, Run};
use crate::matrix::{
    arm_guard_fault, guard_requests, matrix_samples, seed_from, Rng, FAULTS, LEASE,
};
use crate::servers::{postgres, postgres_restartable, Postgres};
use kube_standin::FaultAction;

const REL: &str = "db";
/// Tables of the templates keeping their records, to put them back between cases.
const PRISTINE: &str = "gu_test_pristine";
/// Cases run at once (each in its own namespace and database).
const WORKERS: usize = 10;
/// A faulted run ends within this (the retry deadline is 10 s, a connect 10 s).
const RUN_BOUND: Duration = Duration::from_secs(40);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Terminate,
    Restart,
    ReplyLost,
    /// The server stopped for longer than the retries last.
    Away,
}

/// Held by the tests that stop or restart [`postgres_restartable`].
static RESTARTABLE: Mutex<()> = Mutex::new(());

/// The proxy's view of one database: its watched connection, statements and fault.
#[derive(Default)]
struct Watch {
    /// The next connection to this database is the one to watch.
    waiting: bool,
    /// The statement (1-based) to fault, and how.
    fault: Option<(usize, Fault)>,
    /// Statements seen on the watched connection.
    statements: Vec<String>,
    /// The process ID of the watched connection's backend (its `BackendKeyData`).
    backend_pid: Option<i32>,
    /// The held statement is waiting (terminate, restart).
    held: bool,
    /// Let the held statement through.
    release: bool,
    /// Sync points (each `Sync` or simple `Query`; the startup counts as the first) the
    /// client has sent: each is answered by exactly one `ReadyForQuery`.
    syncs: usize,
    /// The answer to this sync point (1-based) is dropped, then the connection closed.
    lose_answer_of: Option<usize>,
    /// `ReadyForQuery` answers passed to the client.
    ready_seen: usize,
    /// An answer was dropped and the connection closed.
    lost: bool,
}

type Shared = Arc<(Mutex<HashMap<String, Watch>>, Condvar)>;

struct Proxy {
    port: u16,
    state: Shared,
}

fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).ok()?;
    let n = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; n.saturating_sub(4)];
    s.read_exact(&mut body).ok()?;
    Some((head[0], body))
}

fn write_message(s: &mut TcpStream, kind: u8, body: &[u8]) -> bool {
    let len = (body.len() as u32 + 4).to_be_bytes();
    s.write_all(&[kind]).is_ok() && s.write_all(&len).is_ok() && s.write_all(body).is_ok()
}

fn cstring(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn close(a: &TcpStream, b: &TcpStream) {
    let _ = a.shutdown(Shutdown::Both);
    let _ = b.shutdown(Shutdown::Both);
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    close(&from, &to);
}

/// The `database` of a startup message body (after the protocol version).
fn startup_database(body: &[u8]) -> Option<String> {
    let mut fields = body.get(4..)?.split(|&b| b == 0);
    let mut user = None;
    while let Some(key) = fields.next() {
        let value = String::from_utf8_lossy(fields.next()?).into_owned();
        match key {
            b"database" => return Some(value),
            b"user" => user = Some(value),
            _ => {}
        }
    }
    user
}

impl Proxy {
    fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let state: Shared = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || connection(client, upstream_port, &st));
            }
        });
        Proxy { port, state }
    }

    /// Watches the next connection to `db`, faulting its statement `fault.0` (1-based).
    fn arm(&self, db: &str, fault: Option<(usize, Fault)>) {
        let mut all = self.state.0.lock().unwrap();
        all.insert(
            db.to_string(),
            Watch {
                waiting: true,
                fault,
                ..Watch::default()
            },
        );
    }

    fn with<T>(&self, db: &str, f: impl FnOnce(&Watch) -> T) -> T {
        f(self.state.0.lock().unwrap().get(db).expect("armed"))
    }

    /// Waits until the armed statement of `db` is held; false when `done()` first.
    fn wait_held(&self, db: &str, done: impl Fn() -> bool) -> bool {
        let start = Instant::now();
        let mut all = self.state.0.lock().unwrap();
        loop {
            if all.get(db).is_some_and(|w| w.held) {
                return true;
            }
            if done() || start.elapsed() > Duration::from_secs(30) {
                return false;
            }
            all = self
                .state
                .1
                .wait_timeout(all, Duration::from_millis(20))
                .unwrap()
                .0;
        }
    }

    fn release(&self, db: &str) {
        let mut all = self.state.0.lock().unwrap();
        if let Some(w) = all.get_mut(db) {
            w.release = true;
        }
        self.state.1.notify_all();
    }

    /// The server name a failure must give: `127.0.0.1:<proxy port>/<db>`.
    fn server(&self, db: &str) -> String {
        format!("127.0.0.1:{}/{db}", self.port)
    }

    fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }
}

/// One client connection: the startup message names the database; the first connection
/// to an armed database is watched both ways, any other is piped.
fn connection(mut client: TcpStream, upstream_port: u16, st: &Shared) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let mut len = [0u8; 4];
    if client.read_exact(&mut len).is_err() {
        return close(&client, &server);
    }
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    if client.read_exact(&mut body).is_err()
        || server.write_all(&len).is_err()
        || server.write_all(&body).is_err()
    {
        return close(&client, &server);
    }
    let db = startup_database(&body).unwrap_or_default();
    let watched = {
        let mut all = st.0.lock().unwrap();
        match all.get_mut(&db).filter(|w| w.waiting) {
            Some(w) => {
                w.waiting = false;
                // The startup is answered by one ReadyForQuery, as a sync point is.
                w.syncs = 1;
                true
            }
            None => false,
        }
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    if !watched {
        std::thread::spawn(move || pipe(s2, c2));
        return pipe(client, server);
    }
    let (st2, db2) = (st.clone(), db.clone());
    std::thread::spawn(move || answers(s2, c2, &st2, &db2));
    statements(client, server, st, &db);
}

/// Client to server on the watched connection: counts statements and sync points, holds
/// or marks the faulted statement.
fn statements(mut client: TcpStream, mut server: TcpStream, st: &Shared, db: &str) {
    while let Some((kind, body)) = read_message(&mut client) {
        let text = match kind {
            b'Q' => Some(cstring(&body)),
            b'P' => {
                let name_end = body.iter().position(|&b| b == 0).unwrap_or(0);
                Some(cstring(&body[name_end + 1..]))
            }
            _ => None,
        };
        {
            let mut all = st.0.lock().unwrap();
            let w = all.get_mut(db).expect("armed");
            if let Some(text) = text {
                w.statements.push(text);
                match w.fault {
                    Some((n, Fault::Terminate | Fault::Restart | Fault::Away))
                        if n == w.statements.len() =>
                    {
                        w.held = true;
                        st.1.notify_all();
                        while !all.get(db).expect("armed").release {
                            all = st.1.wait(all).unwrap();
                        }
                    }
                    Some((n, Fault::ReplyLost)) if n == w.statements.len() => {
                        // A simple query is the next sync point; a parsed statement runs at
                        // the one after its Parse/Describe/Sync (its Bind/Execute/Sync).
                        w.lose_answer_of = Some(w.syncs + 1 + usize::from(kind == b'P'));
                    }
                    _ => {}
                }
            }
            let w = all.get_mut(db).expect("armed");
            if matches!(kind, b'S' | b'Q') {
                w.syncs += 1;
            }
        }
        if !write_message(&mut server, kind, &body) {
            break;
        }
    }
    close(&client, &server);
}

/// Server to client on the watched connection: drops the answer of the faulted sync point
/// (the statement ran) and then closes the connection. While a statement is held, what the
/// server says (a restart's `57P01`) waits with it: the client learns of the restart when
/// the restart is over, as it would of a restart within the retry budget. (Otherwise the
/// client's retries would race the test server's restart, which takes seconds under load;
/// a server away for longer than the retries is `sql_server_away_longer_than_the_retries`.)
fn answers(mut server: TcpStream, mut client: TcpStream, st: &Shared, db: &str) {
    while let Some((kind, body)) = read_message(&mut server) {
        let drop_it = {
            let mut all = st.0.lock().unwrap();
            while all.get(db).is_some_and(|w| {
                w.held && !w.release && w.fault.is_some_and(|f| f.1 == Fault::Restart)
            }) {
                all = st.1.wait(all).unwrap();
            }
            let w = all.get_mut(db).expect("armed");
            if kind == b'K' && body.len() >= 4 {
                w.backend_pid = Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]]));
            }
            let drop_it = w.lose_answer_of == Some(w.ready_seen + 1);
            if kind == b'Z' {
                w.ready_seen += 1;
                if drop_it {
                    w.lost = true;
                    drop(all);
                    return close(&client, &server);
                }
            }
            drop_it
        };
        if !drop_it && !write_message(&mut client, kind, &body) {
            break;
        }
    }
    close(&client, &server);
}

/// One record as the fault checks compare it: status column, status in the body, and the
/// guarded-upgrade labels (time values replaced by `*`).
type Snapshot = BTreeMap<String, (String, String, BTreeMap<String, String>)>;

fn body_status(body: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut json = String::new();
    flate2::read::GzDecoder::new(&b64.decode(body.trim()).expect("base64")[..])
        .read_to_string(&mut json)
        .expect("gzip");
    let release: serde_json::Value = serde_json::from_str(&json).expect("json");
    release["info"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn snapshot(pg: &Postgres, db: &str, ns: &str) -> Snapshot {
    // One query for both tables (one psql run): `r|key|status|body` and `l|key|label|value`.
    let rows = pg.query(
        db,
        &format!(
            "SELECT 'r', key, status, body FROM releases_v1 WHERE namespace = '{ns}' \
             UNION ALL SELECT 'l', releasekey, key, value FROM custom_labels_v1 \
             WHERE releasenamespace = '{ns}' AND key LIKE 'guarded-upgrade.io/%' ORDER BY 1 DESC"
        ),
    );
    let mut snap = Snapshot::new();
    for row in rows.lines() {
        let mut f = row.splitn(4, '|');
        let (table, key) = (f.next().unwrap(), f.next().unwrap().to_string());
        let (a, b) = (f.next().unwrap().to_string(), f.next().unwrap());
        if table == "r" {
            snap.insert(key, (a, body_status(b), BTreeMap::new()));
            continue;
        }
        let value = if a.ends_with("since") || b.chars().all(|c| c.is_ascii_digit()) {
            "*".to_string()
        } else {
            b.to_string()
        };
        if let Some(r) = snap.get_mut(&key) {
            r.2.insert(a, value);
        }
    }
    snap
}

fn revision(key: &str) -> u64 {
    key.rsplit(".v")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A command of the matrix.
struct Command {
    name: &'static str,
    /// `base` (1.0.0 then 1.1.0 deployed) or `hard` (the same, hard-locked).
    template: &'static str,
    args: fn(&str) -> Vec<String>,
    /// Checks the write order of lock/unlock (an older record locked only if the latest is).
    lock_order: bool,
}

fn commands() -> Vec<Command> {
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| a.to_string()).collect()
    }
    vec![
        Command {
            name: "lock",
            template: "base",
            args: |ns| s(&["lock", REL, "-n", ns, "--reason", "freeze", "--by", "alice"]),
            lock_order: true,
        },
        Command {
            name: "lock --hard",
            template: "base",
            args: |ns| s(&["lock", REL, "--hard", "--reason", "freeze", "-n", ns]),
            lock_order: true,
        },
        Command {
            name: "unlock",
            template: "hard",
            args: |ns| s(&["unlock", REL, "-n", ns]),
            lock_order: true,
        },
        Command {
            name: "upgrade",
            template: "base",
            args: |ns| {
                vec![
                    "upgrade".into(),
                    REL.into(),
                    chart("demo-1.2.0"),
                    "-n".into(),
                    ns.into(),
                ]
            },
            lock_order: false,
        },
    ]
}

struct Fixture {
    b: Bed,
    pg: &'static Postgres,
    proxy: Proxy,
    /// Database names are prefixed with this (one fixture per test).
    prefix: String,
    /// Cases run at once, each in its own namespace and databases.
    workers: usize,
    /// Worker databases created so far.
    created: Mutex<std::collections::HashSet<String>>,
}

fn namespace(worker: usize) -> String {
    format!("sqlf{worker}")
}

fn sql_env(url: &str) -> [(&'static str, &str); 2] {
    [
        ("HELM_DRIVER", "sql"),
        ("HELM_DRIVER_SQL_CONNECTION_STRING", url),
    ]
}

impl Fixture {
    /// Templates `<prefix>_base` (in every worker's namespace: 1.0.0 installed, upgraded to
    /// 1.1.0) and `<prefix>_hard` (the same, hard-locked).
    fn new(label: &str, pg: &'static Postgres, prefix: &str, workers: usize) -> Fixture {
        let b = bed(label);
        for w in 0..workers {
            b.api.create_namespace(&namespace(w));
        }
        let (base, hard) = (format!("{prefix}_base"), format!("{prefix}_hard"));
        for db in [&base, &hard] {
            pg.query(
                "postgres",
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
            );
        }
        pg.create_db(&base);
        // The first namespace alone: helm creates its tables on first use, and two helms
        // creating them at once collide.
        let each_namespace = |db: &str, steps: &[&[&str]]| {
            let url = pg.url(db);
            let in_namespace = |w: usize| {
                let ns = namespace(w);
                for step in steps {
                    let mut args: Vec<&str> = step.to_vec();
                    args.extend(["-n", &ns]);
                    b.guard_env(&args, &sql_env(&url))
                        .expect_code(0, &format!("{step:?} in {ns}"));
                }
            };
            in_namespace(0);
            std::thread::scope(|scope| {
                for w in 1..workers {
                    let in_namespace = &in_namespace;
                    scope.spawn(move || in_namespace(w));
                }
            });
        };
        let (c100, c110) = (chart("demo-1.0.0"), chart("demo-1.1.0"));
        each_namespace(
            &base,
            &[
                &["upgrade", "--install", REL, &c100],
                &["upgrade", REL, &c110],
            ],
        );
        pg.query(
            "postgres",
            &format!("CREATE DATABASE {hard} TEMPLATE {base} STRATEGY FILE_COPY"),
        );
        each_namespace(&hard, &[&["lock", REL, "--hard", "--reason", "freeze"]]);
        // What [`Fixture::fresh`] puts back.
        for db in [&base, &hard] {
            pg.query(
                db,
                &format!(
                    "CREATE TABLE {PRISTINE}_releases AS SELECT * FROM releases_v1; \
                     CREATE TABLE {PRISTINE}_labels AS SELECT * FROM custom_labels_v1;"
                ),
            );
        }
        Fixture {
            b,
            pg,
            proxy: Proxy::start(pg.port),
            prefix: prefix.to_string(),
            workers,
            created: Mutex::default(),
        }
    }

    /// Worker `w`'s database for template `which`, with the release in `w`'s namespace
    /// as in the template: created from it the first time, then put back in place (a
    /// database copy takes ten times as long).
    fn fresh(&self, which: &str, w: usize) -> String {
        let (pg, ns) = (self.pg, namespace(w));
        let db = format!("{}_w{w}_{which}", self.prefix);
        if self.created.lock().unwrap().insert(db.clone()) {
            pg.query(
                "postgres",
                &format!(
                    "CREATE DATABASE {db} TEMPLATE {}_{which} STRATEGY FILE_COPY",
                    self.prefix
                ),
            );
            return db;
        }
        // One transaction; it passes the hard-lock triggers as the tool's own writes do (the
        // writer mark is this transaction's id and start time).
        let mut reset = format!(
            "SELECT set_config('guarded_upgrade.writer', \
             txid_current()::text || '@' || extract(epoch from now())::text, true); \
             DELETE FROM custom_labels_v1 WHERE releasenamespace = '{ns}'; \
             DELETE FROM releases_v1 WHERE namespace = '{ns}'; \
             INSERT INTO releases_v1 SELECT * FROM {PRISTINE}_releases WHERE namespace = '{ns}'; \
             INSERT INTO custom_labels_v1 SELECT * FROM {PRISTINE}_labels \
             WHERE releasenamespace = '{ns}';"
        );
        if which == "base" {
            // The template has no hard-lock triggers; a `lock --hard` run installed them.
            reset.push_str(
                " DROP TRIGGER IF EXISTS guarded_upgrade_hard_lock ON releases_v1; \
                 DROP TRIGGER IF EXISTS guarded_upgrade_hard_lock_labels ON custom_labels_v1; \
                 DROP TRIGGER IF EXISTS guarded_upgrade_hard_lock_truncate ON releases_v1; \
                 DROP TRIGGER IF EXISTS guarded_upgrade_hard_lock_truncate ON custom_labels_v1; \
                 DROP FUNCTION IF EXISTS guarded_upgrade_hard_lock(); \
                 DROP FUNCTION IF EXISTS guarded_upgrade_hard_lock_labels(); \
                 DROP FUNCTION IF EXISTS guarded_upgrade_hard_lock_truncate(); \
                 DROP FUNCTION IF EXISTS guarded_upgrade_refuse(text, text, text); \
                 DROP FUNCTION IF EXISTS guarded_upgrade_writer(); \
                 DROP FUNCTION IF EXISTS guarded_upgrade_lock_text(text, text, text);",
            );
        }
        pg.query(&db, &reset);
        db
    }

    /// Runs guarded-upgrade on `db` through the proxy, which must be armed for `db` first.
    fn guard(&self, db: &str, args: &[String]) -> Run {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.b.guard_env(&args, &sql_env(&self.proxy.url(db)))
    }

    /// Runs guarded-upgrade on `db` without a fault, watching its statements.
    fn run(&self, db: &str, args: &[String]) -> Run {
        self.proxy.arm(db, None);
        self.guard(db, args)
    }
}

/// One faulted case: a command with its statement `n` (1-based) faulted.
struct Case<'a> {
    command: &'a Command,
    reference: &'a Reference,
    n: usize,
}

/// A command's fault-free run: its statements, and per worker's namespace the records
/// before and after (a hard lock's digest covers the namespace).
struct Reference {
    statements: Vec<String>,
    old: Vec<Snapshot>,
    new: Vec<Snapshot>,
}

fn reference(f: &Fixture, command: &Command) -> Reference {
    let runs: Vec<(Snapshot, Snapshot, Vec<String>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..f.workers)
            .map(|w| {
                scope.spawn(move || {
                    let ns = namespace(w);
                    let db = f.fresh(command.template, w);
                    let old = snapshot(f.pg, &db, &ns);
                    f.run(&db, &(command.args)(&ns))
                        .expect_code(0, command.name);
                    let new = snapshot(f.pg, &db, &ns);
                    assert_ne!(
                        old, new,
                        "{}: the fault-free run changed nothing",
                        command.name
                    );
                    (old, new, f.proxy.with(&db, |w| w.statements.clone()))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|h| h.join().expect("reference run"))
            .collect()
    });
    let statements = runs[0].2.clone();
    assert!(
        !statements.is_empty(),
        "{}: no statements seen",
        command.name
    );
    for (w, run) in runs.iter().enumerate() {
        assert_eq!(
            run.2.len(),
            statements.len(),
            "{}: statements in worker {w}",
            command.name
        );
    }
    Reference {
        statements,
        old: runs.iter().map(|r| r.0.clone()).collect(),
        new: runs.iter().map(|r| r.1.clone()).collect(),
    }
}

/// Nothing half-written: each record is as before or as after the command, as a whole; and
/// for lock/unlock an older record carries the lock only if the latest does.
fn records_whole(
    command: &Command,
    old: &Snapshot,
    new: &Snapshot,
    after: &Snapshot,
) -> Result<(), String> {
    for key in old.keys().chain(new.keys()).chain(after.keys()) {
        let a = after.get(key);
        if !(a == old.get(key) || a == new.get(key)) {
            return Err(format!(
                "record {key} is {a:?}, neither {:?} nor {:?}",
                old.get(key),
                new.get(key)
            ));
        }
    }
    if command.lock_order {
        let latest = after.keys().max_by_key(|k| revision(k)).expect("records");
        let locked = |k: &str| after[k].2.contains_key("guarded-upgrade.io/lock");
        if !(locked(latest) || after.keys().all(|k| !locked(k))) {
            return Err(format!(
                "an older record is locked but the latest is not: {after:?}"
            ));
        }
    }
    Ok(())
}

/// Terminates the backend of the watched connection to `db` and waits until it is gone.
fn terminate(f: &Fixture, db: &str) -> Result<(), String> {
    let pid = f
        .proxy
        .with(db, |w| w.backend_pid)
        .ok_or("no watched backend")?;
    // With a timeout, pg_terminate_backend waits until the backend is gone.
    let terminated = f.pg.try_query(
        "postgres",
        &format!("SELECT pg_terminate_backend({pid}, 5000)"),
    )?;
    match terminated.as_str() {
        "t" => Ok(()),
        other => Err(format!("backend {pid} was not terminated: {other}")),
    }
}

/// Runs `case` as worker `w` with `fault`; `barrier` (restart) is met by every worker of
/// the round once its statement is held, and again after the restart. `api`: a fault of
/// the matrix on the k-th guarded-upgrade request to the API stand-in in the same run
/// (then the run may fail, closed, and one re-run must converge).
fn run_case(
    f: &Fixture,
    w: usize,
    case: &Case,
    fault: Fault,
    barrier: &Barrier,
    api: Option<&(usize, FaultAction)>,
) -> Result<(), String> {
    let ns = namespace(w);
    let args = (case.command.args)(&ns);
    let n = case.n;
    let what = format!(
        "{} {fault:?} at statement {n} ({}){}",
        case.command.name,
        case.reference.statements[n - 1],
        api.map(|(k, a)| format!(" and {a:?} at API request {k}"))
            .unwrap_or_default()
    );
    let db = f.fresh(case.command.template, w);
    if let Some((k, action)) = api {
        f.b.api.clear_requests();
        arm_guard_fault(&f.b, *k, action);
    }
    let started = Instant::now();
    // Armed before the run starts: waiting for the hold must not see the last run's.
    f.proxy.arm(&db, Some((n, fault)));
    let run = std::thread::scope(|scope| {
        let h = scope.spawn(|| f.guard(&db, &args));
        let held = match fault {
            Fault::ReplyLost => true,
            Fault::Terminate | Fault::Restart | Fault::Away => {
                f.proxy.wait_held(&db, || h.is_finished())
            }
        };
        let injected = match fault {
            Fault::Terminate if held => terminate(f, &db),
            Fault::Restart => {
                // Every worker of the round meets here, held or not (then it failed).
                if barrier.wait().is_leader() {
                    f.pg.restart();
                }
                barrier.wait();
                Ok(())
            }
            _ => Ok(()),
        };
        f.proxy.release(&db);
        (held, injected, h.join().expect("guard thread"))
    });
    let (held, injected, run) = run;
    if api.is_some() {
        f.b.api.clear_faults();
    }
    eprintln!("{what}: exit {} in {:.1?}", run.code, started.elapsed());
    let took = started.elapsed();
    let shown = format!(
        "{what}: exit {} in {took:.1?}\n--- stdout\n{}--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    // With an API fault too, the command may stop before the statement.
    if !held && api.is_none() {
        return Err(format!("the statement was never sent\n{shown}"));
    }
    injected.map_err(|e| format!("{e}\n{shown}"))?;
    if fault == Fault::ReplyLost && api.is_none() && !f.proxy.with(&db, |w| w.lost) {
        return Err(format!("no answer was dropped\n{shown}"));
    }
    if took > RUN_BOUND {
        return Err(format!("took longer than {RUN_BOUND:?}\n{shown}"));
    }
    let after = snapshot(f.pg, &db, &ns);
    let (old, new) = (&case.reference.old[w], &case.reference.new[w]);
    records_whole(case.command, old, new, &after).map_err(|e| format!("{e}\n{shown}"))?;
    // The mutex Lease is free after the run, or a warning names it.
    if let Some(lease) = f.b.api.get("leases", Some(&ns), LEASE) {
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or("");
        if !holder.is_empty() && !run.stderr.contains("warning: could not release the mutex") {
            return Err(format!(
                "Lease still held by {holder}, not reported\n{shown}"
            ));
        }
    }
    if api.is_some() {
        // Two faults: a failure is allowed, closed (exit 3), naming release and namespace,
        // and one re-run converges.
        if run.code != 0 {
            let scope = format!("release \"{REL}\" in namespace \"{ns}\"");
            if run.code != 3 || !run.stderr.contains(&scope) {
                return Err(format!("failed other than closed, naming {scope}\n{shown}"));
            }
            let rerun = f.run(&db, &args);
            if rerun.code != 0 || &snapshot(f.pg, &db, &ns) != new {
                return Err(format!(
                    "the re-run did not converge: exit {}\n{}\n--- the faulted run: {shown}",
                    rerun.code, rerun.stderr
                ));
            }
        } else if &after != new {
            return Err(format!(
                "exit 0 but the records are not as after: {after:?}\n{shown}"
            ));
        }
        return Ok(());
    }
    // What the database did is named as the database's.
    if run.stderr.contains("API server") {
        return Err(format!(
            "a database fault is worded as the API server's\n{shown}"
        ));
    }
    if run.code != 0 && !run.stderr.contains(&f.proxy.server(&db)) {
        return Err(format!(
            "fails without naming {}\n{shown}",
            f.proxy.server(&db)
        ));
    }
    // Survived within the run: the store connects again and the statement (or its whole
    // transaction) is retried; a lost COMMIT answer is a 409 on the retry, re-read.
    if run.code == 0 && &after != new {
        return Err(format!(
            "exit 0 but the records are not as after: {after:?}\n{shown}"
        ));
    }
    if run.code != 0 {
        // Not survived: still, one re-run must converge (and it says so when it does not).
        let rerun = f.run(&db, &args);
        let converged = rerun.code == 0 && &snapshot(f.pg, &db, &ns) == new;
        return Err(format!(
            "the run did not recover; a re-run {}: exit {}\n{}\n--- the faulted run: {shown}",
            if converged {
                "converged"
            } else {
                "did not converge"
            },
            rerun.code,
            rerun.stderr
        ));
    }
    Ok(())
}

/// Every statement of every command, with `fault`.
fn every_statement(f: &Fixture, fault: Fault) {
    let started = Instant::now();
    let only = std::env::var("GU_SQLF_ONLY").ok();
    let commands: Vec<Command> = commands()
        .into_iter()
        .filter(|c| only.as_deref().is_none_or(|o| o == c.name))
        .collect();
    let references: Vec<Reference> = commands.iter().map(|c| reference(f, c)).collect();
    let mut cases = Vec::new();
    for (command, reference) in commands.iter().zip(&references) {
        let short: Vec<String> = reference
            .statements
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{} {}", i + 1, s.chars().take(32).collect::<String>()))
            .collect();
        eprintln!(
            "{} ({fault:?}): {} statements: {}",
            command.name,
            short.len(),
            short.join(" | ")
        );
        for n in 1..=reference.statements.len() {
            cases.push(Case {
                command,
                reference,
                n,
            });
        }
    }
    let failures = Mutex::new(Vec::new());
    let fail = |why| failures.lock().unwrap().push(why);
    if fault == Fault::Restart {
        // In rounds: one restart for every case of the round, each holding its statement.
        // A round never mixes commands: a held statement waits for the slowest case of its
        // round to reach its own, and the first statement of `unlock` held while `lock
        // --hard` runs its hundredth outlasts the retry deadline (a harness artefact, not
        // a restart as a server has one).
        let rounds = cases
            .chunk_by(|a, b| std::ptr::eq(a.command, b.command))
            .flat_map(|command| command.chunks(f.workers));
        for round in rounds {
            let barrier = Barrier::new(round.len());
            std::thread::scope(|scope| {
                for (w, case) in round.iter().enumerate() {
                    let (barrier, fail) = (&barrier, &fail);
                    scope.spawn(move || {
                        run_case(f, w, case, fault, barrier, None).unwrap_or_else(fail)
                    });
                }
            });
        }
    } else {
        // Each worker takes the next case as soon as it is done with one.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let unused = Barrier::new(1);
        std::thread::scope(|scope| {
            for w in 0..f.workers {
                let (next, unused, fail, cases) = (&next, &unused, &fail, &cases);
                scope.spawn(move || {
                    while let Some(case) =
                        cases.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        run_case(f, w, case, fault, unused, None).unwrap_or_else(fail);
                    }
                });
            }
        });
    }
    let failures = failures.into_inner().unwrap();
    eprintln!(
        "{fault:?}: {} cases in {:.1?}, {} failed",
        cases.len(),
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// The tool's backend terminated at every statement (helm 4, real API server).
#[test]
fn sql_backend_terminated_at_every_statement() {
    every_statement(
        &Fixture::new("helm4", postgres(), "gu_sqlf_t", WORKERS),
        Fault::Terminate,
    );
}

/// The answer to every statement lost after the server ran it (helm 4, real API server).
#[test]
fn sql_reply_lost_at_every_statement() {
    every_statement(
        &Fixture::new("helm4", postgres(), "gu_sqlf_l", WORKERS),
        Fault::ReplyLost,
    );
}

/// The server restarted at every statement (helm 3, real API server; a server of its own,
/// since a restart ends every connection).
#[test]
fn sql_server_restarted_at_every_statement() {
    let _own = RESTARTABLE.lock().unwrap_or_else(|e| e.into_inner());
    every_statement(
        &Fixture::new("helm3", postgres_restartable(), "gu_sqlf_r", WORKERS),
        Fault::Restart,
    );
}

/// The matrix with the SQL driver: a seeded sample of pairs, each a PostgreSQL fault
/// (backend terminated, or the answer lost) at a random statement and a fault of the
/// matrix (500, 503, 409, 403, dropped, truncated, wrong shape, 404) at a random
/// guarded-upgrade request to the API stand-in (the mutex Lease), in one run of each
/// command; `GU_MATRIX_SAMPLES` (3) per command. Prints its seed; `GU_MATRIX_SEED=N`
/// replays it.
#[test]
fn sql_sample_pairs_with_api_faults() {
    let f = Fixture::new("standin-helm4", postgres(), "gu_sqlf_p", 1);
    let seed = seed_from("GU_MATRIX_SEED");
    let samples = matrix_samples();
    eprintln!("sql matrix sample: GU_MATRIX_SEED={seed} GU_MATRIX_SAMPLES={samples}");
    let mut rng = Rng(seed);
    let mut failures = Vec::new();
    let unused = Barrier::new(1);
    for command in commands() {
        let reference = reference(&f, &command);
        // The guarded-upgrade requests to the API in a fault-free run (one at a time: a
        // fault is armed by position among all of them).
        let db = f.fresh(command.template, 0);
        f.b.api.clear_requests();
        f.run(&db, &(command.args)(&namespace(0)))
            .expect_code(0, command.name);
        let requests = guard_requests(&f.b);
        assert!(requests > 0, "{}: no API requests", command.name);
        for _ in 0..samples {
            let case = Case {
                command: &command,
                reference: &reference,
                n: 1 + rng.below(reference.statements.len()),
            };
            let sql = [Fault::Terminate, Fault::ReplyLost][rng.below(2)];
            let api = (
                rng.below(requests),
                FAULTS[rng.below(FAULTS.len())].1.clone(),
            );
            if let Err(why) = run_case(&f, 0, &case, sql, &unused, Some(&api)) {
                failures.push(why);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} sampled cases failed; reproduce with GU_MATRIX_SEED={seed} \
         GU_MATRIX_SAMPLES={samples}:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The server stopped at a statement in the middle of each command (the first `COMMIT`, or
/// the first read under the mutex) and kept away longer than the retries last: the run
/// fails closed within the bound, naming the database, with every record whole, helm not
/// run and the Lease free; once the server is back, one re-run converges.
#[test]
fn sql_server_away_longer_than_the_retries() {
    let _own = RESTARTABLE.lock().unwrap_or_else(|e| e.into_inner());
    let f = Fixture::new("helm4", postgres_restartable(), "gu_sqlf_a", 1);
    let ns = namespace(0);
    for command in commands() {
        let reference = reference(&f, &command);
        let statements = &reference.statements;
        let n = 1 + statements
            .iter()
            .position(|s| s == "COMMIT")
            .unwrap_or(statements.len() / 2);
        let what = format!(
            "{} with the server away at statement {n} ({})",
            command.name,
            statements[n - 1]
        );
        let db = f.fresh(command.template, 0);
        let args = (command.args)(&ns);
        f.b.api.clear_requests();
        f.proxy.arm(&db, Some((n, Fault::Away)));
        let started = Instant::now();
        let run = std::thread::scope(|scope| {
            let h = scope.spawn(|| f.guard(&db, &args));
            assert!(
                f.proxy.wait_held(&db, || h.is_finished()),
                "{what}: never sent"
            );
            f.pg.stop();
            f.proxy.release(&db);
            h.join().expect("guard thread")
        });
        let took = started.elapsed();
        f.pg.start();
        let shown = format!(
            "{what}: exit {} in {took:.1?}\n--- stdout\n{}--- stderr\n{}",
            run.code, run.stdout, run.stderr
        );
        eprintln!("{shown}");
        assert_eq!(run.code, 3, "{shown}");
        assert!(took < RUN_BOUND, "{shown}");
        let scope = format!("release \"{REL}\" in namespace \"{ns}\"");
        assert!(run.stderr.contains(&scope), "{shown}");
        assert!(
            run.stderr
                .contains(&format!("PostgreSQL at {}", f.proxy.server(&db))),
            "{shown}"
        );
        assert!(!run.stderr.contains("API server"), "{shown}");
        if command.name == "upgrade" {
            assert!(run.stderr.contains("helm was not run"), "{shown}");
            assert_eq!(snapshot(f.pg, &db, &ns), reference.old[0], "{shown}");
        }
        let lease = f.b.api.get("leases", Some(&ns), LEASE);
        let holder = lease
            .as_ref()
            .and_then(|l| l["spec"]["holderIdentity"].as_str())
            .unwrap_or("");
        assert!(
            holder.is_empty(),
            "{what}: the Lease is still held by {holder}\n{shown}"
        );
        // Whole records, the write order, and a converging re-run.
        let after = snapshot(f.pg, &db, &ns);
        if let Err(e) = records_whole(&command, &reference.old[0], &reference.new[0], &after) {
            panic!("{what}: {e}\n{shown}");
        }
        let rerun = f.run(&db, &args);
        rerun.expect_code(0, &format!("{what}: re-run"));
        assert_eq!(
            snapshot(f.pg, &db, &ns),
            reference.new[0],
            "{what}: the re-run did not converge"
        );
    }
}
