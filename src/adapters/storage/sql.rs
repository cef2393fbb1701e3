//! Helm's SQL storage driver (`HELM_DRIVER=sql`): release records in PostgreSQL.
//!
//! Schema, as helm's `pkg/storage/driver/sql.go` (3.17 and 4.1 alike) creates it, with
//! unquoted (so lower-cased) column names:
//! - `releases_v1(key, type, body, name, namespace, version, status, owner, createdAt,
//!   modifiedAt)`, primary key `(key, namespace)`; `key` is the record name
//!   `sh.helm.release.v1.<release>.v<revision>`, `body` the same `base64(gzip(json))` text a
//!   Secret holds, `status` a column helm rewrites on every update.
//! - `custom_labels_v1(releaseKey, releaseNamespace, key, value)`: the release's custom
//!   labels. Helm reads them back as the release's labels on every Get, merges them into
//!   the next revision on upgrade and copies the target's on rollback, exactly as with
//!   Secret labels. So the lock labels live here and survive plain helm upgrades and
//!   rollbacks. Helm never rewrites this table on Update.
//!
//! Metadata first, as for Secrets: headers come from the metadata columns and the labels
//! table only; `body` is read for one record at a time ([`ReleaseStore::get`]).
//!
//! Optimistic concurrency: the record's write token is PostgreSQL's `xmin` of its
//! `releases_v1` row (it changes whenever helm rewrites the row). Every write runs in one
//! transaction that locks the row, compares `xmin` ([`ErrorKind::Conflict`] on a mismatch,
//! [`ErrorKind::NotFound`] when the row is gone), changes labels/body/status, and touches the
//! row so its `xmin` moves on too. Each such transaction carries the writer mark
//! ([`WRITER_SETTING`]), by which the hard lock's triggers (the database enforcer,
//! `adapters/enforce/database.rs`) tell the tool's own writes apart.
//!
//! Errors are this driver's own: `PostgreSQL at host:port/db: …` with the SQLSTATE when the
//! server answered one, mapped into the store's [`ErrorKind`]s ([`store_error`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::sql_conn::{self, TlsMode};
use crate::adapters::storage::{
    with_retry, DriverError, ErrorKind, InvalidRecord, RecordHeader, ReleaseStore, StoreError,
    StoredRecord, LABEL_NAME, LABEL_OWNER, LABEL_STATUS, LABEL_VERSION,
};
use crate::core::release::ReleaseStatus;
use crate::core::time::format_rfc3339;

/// The environment variable helm reads the connection string from.
pub const CONNECTION_ENV: &str = "HELM_DRIVER_SQL_CONNECTION_STRING";

/// Longest wait for connecting and for any one statement.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Labels helm keeps in columns, never in `custom_labels_v1`.
use crate::core::release::HELM_SYSTEM_LABELS as SYSTEM_LABELS;

/// The setting each write transaction of this store sets (`set_config(…, true)`: for this
/// transaction only) to [`WRITER_VALUE`]: the writer mark. The hard lock's triggers let
/// marked transactions pass (the tool's own unlock and re-lock) and refuse the rest.
pub(crate) const WRITER_SETTING: &str = "guarded_upgrade.writer";
/// The value of [`WRITER_SETTING`] that marks the tool's transaction: its transaction id
/// and start time (microseconds), as SQL evaluated inside it. A value given in a connection
/// string (`options=-c …`), `PGOPTIONS` or `ALTER ROLE … SET` was fixed before the
/// transaction began and cannot match it.
pub(crate) const WRITER_VALUE: &str =
    "txid_current()::text || '@' || extract(epoch from now())::text";

/// Failures before the store is usable. Messages never contain the connection string
/// (it usually carries a password).
#[derive(Debug, thiserror::Error)]
pub enum SqlConnectError {
    /// `HELM_DRIVER=sql` without a connection string.
    #[error("HELM_DRIVER=sql needs {CONNECTION_ENV} (the PostgreSQL connection string helm uses)")]
    MissingConnectionString,
    /// The connection string could not be parsed or its TLS files not used.
    #[error("{CONNECTION_ENV} is not usable: {0}")]
    BadConnectionString(String),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {server}: {message}")]
    Connect {
        /// `host:port/dbname`, without credentials.
        server: String,
        /// Why.
        message: String,
    },
}

/// Checks a connection string as [`SqlStore::connect`] reads it, without connecting: the
/// plan step calls this so a missing or malformed string is a usage error before any I/O.
pub(crate) fn check_connection_string(text: Option<&str>) -> Result<(), SqlConnectError> {
    let text = text
        .filter(|s| !s.trim().is_empty())
        .ok_or(SqlConnectError::MissingConnectionString)?;
    let (rest, _ssl) =
        sql_conn::split_connection_string(text).map_err(SqlConnectError::BadConnectionString)?;
    rest.parse::<tokio_postgres::Config>()
        .map_err(|e| SqlConnectError::BadConnectionString(crate::core::chain::error_chain(&e)))?;
    Ok(())
}

/// Release records in helm's PostgreSQL tables, for one namespace.
pub(crate) struct SqlStore {
    client: Mutex<tokio_postgres::Client>,
    /// To connect again when the server closed the connection (a terminated backend, a
    /// restart): the string holds the password, so it is kept secret and never printed.
    connection: secrecy::SecretString,
    namespace: String,
    server: String,
}

impl SqlStore {
    /// Connects with `HELM_DRIVER_SQL_CONNECTION_STRING`, reading `namespace`.
    pub(crate) async fn connect_from_env(namespace: &str) -> Result<SqlStore, SqlConnectError> {
        let text = std::env::var(CONNECTION_ENV)
            .ok()
            .filter(|s| !s.trim().is_empty())
            .ok_or(SqlConnectError::MissingConnectionString)?;
        SqlStore::connect(&text, namespace).await
    }

    /// Connects with a libpq/lib/pq connection string (URL or `key=value`).
    pub(crate) async fn connect(
        connection: &str,
        namespace: &str,
    ) -> Result<SqlStore, SqlConnectError> {
        let (client, server) = open(connection).await?;
        Ok(SqlStore {
            client: Mutex::new(client),
            connection: connection.to_string().into(),
            namespace: namespace.to_string(),
            server,
        })
    }

    /// The connection, opened again first when the server closed it: every statement
    /// retried after a terminated backend or a server restart runs on a live connection
    /// (its transaction, if any, was rolled back with the old one). Also the database
    /// enforcer's way to its triggers.
    pub(crate) async fn live_client(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, tokio_postgres::Client>, StoreError> {
        use secrecy::ExposeSecret;
        let mut client = self.client.lock().await;
        if client.is_closed() {
            let (fresh, _) = open(self.connection.expose_secret())
                .await
                .map_err(|e| match e {
                    SqlConnectError::Connect { server, message } => failed(
                        &server,
                        ErrorKind::ConnectionLost,
                        format!("cannot connect again: {message}"),
                    ),
                    other => failed(
                        &self.server,
                        ErrorKind::ConnectionLost,
                        format!("cannot connect again: {other}"),
                    ),
                })?;
            *client = fresh;
        }
        Ok(client)
    }

    /// `host:port/dbname`, without credentials: how messages name the database.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// One statement of `fut`, bounded by the statement timeout ([`bounded`]).
    pub(crate) async fn bounded<F, T>(
        &self,
        what: &str,
        fut: F,
    ) -> Result<Result<T, tokio_postgres::Error>, StoreError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        bounded(&self.server, what, fut).await
    }

    /// A PostgreSQL error as this driver says and classifies it ([`store_error`]).
    pub(crate) fn error(&self, e: tokio_postgres::Error) -> StoreError {
        store_error(&self.server, e)
    }
}

/// Opens a connection; returns it with the server's description (`host:port/db`).
async fn open(connection: &str) -> Result<(tokio_postgres::Client, String), SqlConnectError> {
    {
        let (rest, ssl) = sql_conn::split_connection_string(connection)
            .map_err(SqlConnectError::BadConnectionString)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            SqlConnectError::BadConnectionString(crate::core::chain::error_chain(&e))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let server = describe_server(&config);
        let fail = |message: String| SqlConnectError::Connect {
            server: server.clone(),
            message,
        };
        let mode = ssl
            .tls_mode()
            .map_err(SqlConnectError::BadConnectionString)?;
        let tls = |mode| {
            sql_conn::client_config(mode, &ssl)
                .map(tokio_postgres_rustls::MakeRustlsConnect::new)
                .map_err(SqlConnectError::BadConnectionString)
        };
        let client = match mode {
            TlsMode::Disable => {
                let connecting = config.connect(tokio_postgres::NoTls);
                let (client, connection) = bounded_connect(connecting).await.map_err(fail)?;
                tokio::spawn(connection);
                client
            }
            TlsMode::Allow => {
                let plain = bounded_connect(config.connect(tokio_postgres::NoTls)).await;
                match plain {
                    Ok((client, connection)) => {
                        tokio::spawn(connection);
                        client
                    }
                    // Refused in plain text (pg_hba `hostssl`): lib/pq then tries TLS once.
                    Err(_) => {
                        config.ssl_mode(tokio_postgres::config::SslMode::Require);
                        let connecting = config.connect(tls(mode)?);
                        let (client, connection) =
                            bounded_connect(connecting).await.map_err(fail)?;
                        tokio::spawn(connection);
                        client
                    }
                }
            }
            _ => {
                let connecting = config.connect(tls(mode)?);
                let (client, connection) = bounded_connect(connecting).await.map_err(fail)?;
                tokio::spawn(connection);
                client
            }
        };
        Ok((client, server))
    }
}

impl SqlStore {
    /// Record `name` has no row (any more): not found, as a missing Secret.
    fn no_row(&self, name: &str) -> StoreError {
        failed(
            &self.server,
            ErrorKind::NotFound,
            format!(
                "no row {name} in releases_v1 for namespace {}",
                self.namespace
            ),
        )
    }

    /// Headers for rows matching `filter` (SQL after WHERE, `$1..` bound to `params`).
    async fn headers_where(
        &self,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<RecordHeader>, StoreError> {
        let client = self.live_client().await?;
        let sql = format!(
            "SELECT key, namespace, name, version, status, owner, createdAt, modifiedAt, \
             xmin::text FROM releases_v1 WHERE {filter}"
        );
        let rows = match bounded(
            &self.server,
            "listing releases_v1",
            client.query(&sql, params),
        )
        .await?
        {
            Ok(rows) => rows,
            // No table yet: helm creates it on first use, so there are no releases.
            Err(e) if is_undefined_table(&e) => return Ok(Vec::new()),
            Err(e) => return Err(store_error(&self.server, e)),
        };
        let mut headers = rows
            .iter()
            .map(header_from_row)
            .collect::<Result<Vec<RecordHeader>, InvalidRecord>>()?;
        let keys: Vec<String> = headers.iter().map(|h| h.name.clone()).collect();
        if !keys.is_empty() {
            let labels = bounded(
                &self.server,
                "reading custom_labels_v1",
                client.query(
                    "SELECT releaseKey, releaseNamespace, key, value FROM custom_labels_v1 \
                     WHERE releaseKey = ANY($1)",
                    &[&keys],
                ),
            )
            .await?;
            let labels = match labels {
                Ok(rows) => rows,
                // helm creates both tables in one migration: without the labels table the
                // locks are unknown, not absent.
                Err(e) if is_undefined_table(&e) => {
                    return Err(StoreError::Malformed(format!(
                        "PostgreSQL at {}: releases_v1 has rows but table custom_labels_v1, \
                         where helm keeps release labels (and guarded-upgrade its locks), does \
                         not exist",
                        self.server
                    )))
                }
                Err(e) => return Err(store_error(&self.server, e)),
            };
            for row in &labels {
                let labels = "custom_labels_v1";
                let key: String = column(row, 0, labels, "(unknown)")?;
                let ns: String = column(row, 1, labels, &key)?;
                let k: String = column(row, 2, labels, &key)?;
                let v: String = column(row, 3, labels, &key)?;
                if SYSTEM_LABELS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(h) = headers
                    .iter_mut()
                    .find(|h| h.name == key && h.namespace == ns)
                {
                    h.labels.insert(k, v);
                }
            }
        }
        headers.sort_by(|a, b| (&a.namespace, a.revision).cmp(&(&b.namespace, b.revision)));
        Ok(headers)
    }

    /// One write transaction on record `name`: lock the row, check `write_token`, run
    /// `body`, touch the row; returns the new `xmin`.
    async fn write(
        &self,
        name: &str,
        write_token: &str,
        payload: Option<&str>,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        let mut client = self.live_client().await?;
        let server = self.server.clone();
        let err = |e: tokio_postgres::Error| store_error(&server, e);
        let tx = bounded(&self.server, "starting a transaction", client.transaction())
            .await?
            .map_err(err)?;
        // The tool's own writes pass the hard-lock trigger (unlock, re-lock).
        bounded(
            &self.server,
            "marking the transaction as guarded-upgrade's",
            tx.batch_execute(&format!(
                "SELECT set_config('{WRITER_SETTING}', {WRITER_VALUE}, true)"
            )),
        )
        .await?
        .map_err(err)?;
        let current = bounded(
            &self.server,
            "locking the release row",
            tx.query_opt(
                "SELECT xmin::text FROM releases_v1 WHERE key = $1 AND namespace = $2 FOR UPDATE",
                &[&name, &self.namespace],
            ),
        )
        .await?;
        let current = match current {
            Ok(row) => row,
            Err(e) if is_undefined_table(&e) => None,
            Err(e) => return Err(err(e)),
        };
        let Some(current) = current else {
            return Err(self.no_row(name));
        };
        let xmin: String = column(&current, 0, "releases_v1", name)?;
        if xmin != write_token {
            return Err(failed(
                &self.server,
                ErrorKind::Conflict,
                format!("row {name} in releases_v1 changed since it was read"),
            ));
        }
        let mut status: Option<String> = None;
        for (key, value) in labels {
            if key == LABEL_STATUS {
                status = value.clone();
                continue;
            }
            if SYSTEM_LABELS.contains(&key.as_str()) {
                return Err(failed(
                    &self.server,
                    ErrorKind::Refused,
                    format!("label {key} is a column of releases_v1, not a label"),
                ));
            }
            bounded(
                &self.server,
                "removing a custom label",
                tx.execute(
                    "DELETE FROM custom_labels_v1 WHERE releaseKey = $1 AND \
                     releaseNamespace = $2 AND key = $3",
                    &[&name, &self.namespace, key],
                ),
            )
            .await?
            .map_err(err)?;
            if let Some(value) = value {
                bounded(
                    &self.server,
                    "writing a custom label",
                    tx.execute(
                        "INSERT INTO custom_labels_v1 (releaseKey, releaseNamespace, key, value) \
                         VALUES ($1, $2, $3, $4)",
                        &[&name, &self.namespace, key, value],
                    ),
                )
                .await?
                .map_err(err)?;
            }
        }
        // Every write touches the row, so its xmin (our resourceVersion) moves on even when
        // only labels changed.
        let row = bounded(
            &self.server,
            "updating the release row",
            tx.query_one(
                "UPDATE releases_v1 SET body = COALESCE($3, body), status = COALESCE($4, status) \
                 WHERE key = $1 AND namespace = $2 RETURNING xmin::text",
                &[&name, &self.namespace, &payload, &status],
            ),
        )
        .await?
        .map_err(err)?;
        let new_xmin: String = column(&row, 0, "releases_v1", name)?;
        bounded(&self.server, "committing", tx.commit())
            .await?
            .map_err(err)?;
        Ok(Some(new_xmin))
    }
}

fn describe_server(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

async fn bounded_connect<F, T>(connecting: F) -> Result<T, String>
where
    F: Future<Output = Result<T, tokio_postgres::Error>>,
{
    match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(2), connecting).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(crate::core::chain::error_chain(&e)),
        Err(_) => Err(format!(
            "no answer within {}s while connecting",
            CONNECT_TIMEOUT.as_secs() + 2
        )),
    }
}

/// Bounds one statement: the outer error is the timeout, naming what was waited for.
async fn bounded<F, T>(
    server: &str,
    what: &str,
    fut: F,
) -> Result<Result<T, tokio_postgres::Error>, StoreError>
where
    F: Future<Output = Result<T, tokio_postgres::Error>>,
{
    tokio::time::timeout(STATEMENT_TIMEOUT, fut)
        .await
        .map_err(|_| {
            failed(
                server,
                ErrorKind::Transient { retry_after: None },
                format!(
                    "no answer within {}s while {what}",
                    STATEMENT_TIMEOUT.as_secs()
                ),
            )
        })
}

fn is_undefined_table(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_TABLE)
}

/// A failure as this driver says it: `PostgreSQL at host:port/db: MESSAGE`, naming the
/// database (never "the API server"); the message alone is the detail.
fn failed(server: &str, kind: ErrorKind, message: String) -> StoreError {
    StoreError::Driver(DriverError {
        kind,
        text: format!("PostgreSQL at {server}: {message}"),
        status: None,
        detail: Some(message),
    })
}

/// This driver's mapping of a PostgreSQL error into the store's kinds: no privilege is
/// forbidden; a serialization failure, a deadlock, insufficient resources (53) and operator
/// intervention (57P: a terminated backend, a server shutting down or starting) are
/// transient; a connection exception (08) or a connection that broke without an answer is a
/// lost connection (the retry connects again); any other answer is a refusal. The message
/// keeps the SQLSTATE.
fn store_error(server: &str, e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let state = db.code();
            let kind = if *state == SqlState::INSUFFICIENT_PRIVILEGE {
                ErrorKind::Forbidden
            } else if *state == SqlState::T_R_SERIALIZATION_FAILURE
                || *state == SqlState::T_R_DEADLOCK_DETECTED
                || state.code().starts_with("53")
                || state.code().starts_with("57P")
            {
                ErrorKind::Transient { retry_after: None }
            } else if state.code().starts_with("08") {
                ErrorKind::ConnectionLost
            } else {
                ErrorKind::Refused
            };
            failed(
                server,
                kind,
                format!("{} (SQLSTATE {})", db.message(), state.code()),
            )
        }
        None => failed(
            server,
            ErrorKind::ConnectionLost,
            crate::core::chain::error_chain(&e),
        ),
    }
}

/// Column `index` of a row of `table` (the record `key`), or the column named as invalid
/// when it is NULL or of another type than helm's schema gives it (never a panic).
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    table: &str,
    key: &str,
) -> Result<T, InvalidRecord> {
    row.try_get(index).map_err(|e| {
        let name = row
            .columns()
            .get(index)
            .map_or_else(|| index.to_string(), |c| c.name().to_string());
        let was_null =
            std::error::Error::source(&e).is_some_and(|s| s.is::<tokio_postgres::types::WasNull>());
        let problem = if was_null {
            "is NULL".to_string()
        } else {
            format!("cannot be read ({e})")
        };
        InvalidRecord {
            kind: "SQL row",
            name: key.to_string(),
            field: match table {
                "releases_v1" => format!("column {name}"),
                _ => format!("{table} column {name}"),
            },
            problem,
        }
    })
}

/// A row's header, refusing what helm would not have written (as for Secrets).
fn header_from_row(row: &Row) -> Result<RecordHeader, InvalidRecord> {
    let key: String = column(row, 0, "releases_v1", "(unknown)")?;
    let namespace: String = column(row, 1, "releases_v1", &key)?;
    let name: String = column(row, 2, "releases_v1", &key)?;
    let version: i32 = column(row, 3, "releases_v1", &key)?;
    let status: String = column(row, 4, "releases_v1", &key)?;
    let owner: String = column(row, 5, "releases_v1", &key)?;
    let created: i32 = column(row, 6, "releases_v1", &key)?;
    let modified: i32 = column(row, 7, "releases_v1", &key)?;
    let xmin: String = column(row, 8, "releases_v1", &key)?;
    let invalid = |field: &str, problem: &str| InvalidRecord::new("SQL row", &key, field, problem);
    if name.is_empty() {
        return Err(invalid("column name", "is empty"));
    }
    if owner != "helm" {
        return Err(invalid("column owner", "is not helm"));
    }
    let revision = u64::try_from(version)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| invalid("column version", "is not a revision number"))?;
    let parsed_status = ReleaseStatus::parse(&status);
    if matches!(parsed_status, ReleaseStatus::Other(_)) {
        return Err(invalid("column status", "is not a helm release status"));
    }
    let mut labels = BTreeMap::from([
        (LABEL_NAME.to_string(), name.clone()),
        (LABEL_OWNER.to_string(), owner),
        (LABEL_STATUS.to_string(), status.clone()),
        (LABEL_VERSION.to_string(), version.to_string()),
        ("createdAt".to_string(), created.to_string()),
    ]);
    // helm leaves modifiedAt at 0 until the first update.
    if modified > 0 {
        labels.insert("modifiedAt".to_string(), modified.to_string());
    }
    Ok(RecordHeader {
        name: key,
        namespace,
        release: name,
        revision,
        status: parsed_status,
        labels,
        write_token: Some(xmin),
        created: (created > 0).then(|| format_rfc3339(i64::from(created))),
    })
}

/// The `SELECT`s that show a record's row status and labels, in the database helm uses.
fn show_row(record: &str, namespace: &str) -> String {
    let quoted = |text: &str| text.replace('\'', "''");
    let (record, ns) = (quoted(record), quoted(namespace));
    format!(
        "SELECT status FROM releases_v1 WHERE key = '{record}' AND namespace = '{ns}'; \
         SELECT key, value FROM custom_labels_v1 WHERE releasekey = '{record}' AND \
         releasenamespace = '{ns}'"
    )
}

impl ReleaseStore for SqlStore {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn kind(&self) -> &'static str {
        "releases_v1"
    }

    fn show_command(&self, record: &str) -> String {
        show_row(record, &self.namespace)
    }

    async fn list_headers(&self, release: &str) -> Result<Vec<RecordHeader>, StoreError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&release, &self.namespace];
        with_retry(
            &format!("listing SQL records of release {release:?}"),
            || self.headers_where("name = $1 AND owner = 'helm' AND namespace = $2", &params),
        )
        .await
    }

    async fn list_headers_matching(
        &self,
        selector: &str,
        all_namespaces: bool,
    ) -> Result<Vec<RecordHeader>, StoreError> {
        let terms = super::parse_selector(selector);
        // Columns narrow the query; every term is also checked against the labels below.
        let mut filter = vec!["TRUE".to_string()];
        let mut values: Vec<String> = Vec::new();
        for (k, v) in &terms {
            if let (Some(column), Some(v)) =
                (["name", "owner", "status"].iter().find(|c| **c == k), v)
            {
                values.push(v.clone());
                filter.push(format!("{column} = ${}", values.len()));
            }
        }
        if !all_namespaces {
            values.push(self.namespace.clone());
            filter.push(format!("namespace = ${}", values.len()));
        }
        let filter = filter.join(" AND ");
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = values
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let headers = with_retry("listing SQL records", || {
            self.headers_where(&filter, &params)
        })
        .await?;
        Ok(headers
            .into_iter()
            .filter(|h| {
                terms.iter().all(|(k, v)| match v {
                    Some(v) => h.labels.get(k) == Some(v),
                    None => h.labels.contains_key(k),
                })
            })
            .collect())
    }

    async fn get(&self, name: &str) -> Result<StoredRecord, StoreError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&name, &self.namespace];
        let headers = with_retry(&format!("reading SQL record {name:?}"), || {
            self.headers_where("key = $1 AND namespace = $2", &params)
        })
        .await?;
        let not_found = || self.no_row(name);
        let header = headers.into_iter().next().ok_or_else(not_found)?;
        let body = with_retry(&format!("reading SQL record {name:?}"), || async {
            let client = self.live_client().await?;
            let row = bounded(
                &self.server,
                "reading a release body",
                client.query_opt(
                    "SELECT body FROM releases_v1 WHERE key = $1 AND namespace = $2",
                    &[&name, &self.namespace],
                ),
            )
            .await?
            .map_err(|e| store_error(&self.server, e))?;
            row.map(|r| column::<String>(&r, 0, "releases_v1", name))
                .transpose()
                .map_err(StoreError::from)
        })
        .await?
        .ok_or_else(not_found)?;
        Ok(StoredRecord {
            header,
            payload: body.into_bytes(),
        })
    }

    async fn patch_labels(
        &self,
        name: &str,
        write_token: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        with_retry(&format!("labelling SQL record {name:?}"), || {
            self.write(name, write_token, None, labels)
        })
        .await
    }

    async fn rewrite(
        &self,
        name: &str,
        write_token: &str,
        payload: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> Result<Option<String>, StoreError> {
        with_retry(&format!("rewriting SQL record {name:?}"), || {
            self.write(name, write_token, Some(payload), labels)
        })
        .await
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn connection_strings_are_checked_without_connecting() {
        let check = |text: Option<&str>| check_connection_string(text).map_err(|e| e.to_string());
        assert_eq!(
            check(None),
            Err(
                "HELM_DRIVER=sql needs HELM_DRIVER_SQL_CONNECTION_STRING (the PostgreSQL \
                 connection string helm uses)"
                    .into()
            )
        );
        assert_eq!(check(Some("  ")), check(None));
        assert_eq!(
            check(Some("postgres://u:s3cr3t@db:5432/helm?sslmode=sometimes")),
            Err(
                "HELM_DRIVER_SQL_CONNECTION_STRING is not usable: unsupported sslmode \
                 \"sometimes\"; only \"require\" (default), \"verify-full\", \"verify-ca\", \
                 \"prefer\", \"allow\", and \"disable\" are supported (as by helm's SQL driver)"
                    .into()
            )
        );
        assert_eq!(check(Some("postgres://db/helm?sslmode=prefer")), Ok(()));
        assert_eq!(check(Some("host=db dbname=helm sslmode=allow")), Ok(()));
        let malformed = check(Some("host=db port=notaport")).unwrap_err();
        assert!(
            malformed.starts_with("HELM_DRIVER_SQL_CONNECTION_STRING is not usable: "),
            "{malformed}"
        );
        assert_eq!(
            check(Some("postgres://u:p@db:5432/helm?sslmode=disable")),
            Ok(())
        );
        assert_eq!(
            check(Some("host=db user=u dbname=helm sslmode=disable")),
            Ok(())
        );
    }

    use super::*;
    use crate::adapters::retry::{Retryable, Verdict};

    #[test]
    fn selectors() {
        assert_eq!(
            super::super::parse_selector("name=db,owner=helm"),
            vec![
                ("name".to_string(), Some("db".to_string())),
                ("owner".to_string(), Some("helm".to_string()))
            ]
        );
        assert_eq!(
            super::super::parse_selector("owner==helm, guarded-upgrade.io/lock"),
            vec![
                ("owner".to_string(), Some("helm".to_string())),
                ("guarded-upgrade.io/lock".to_string(), None)
            ]
        );
    }

    #[tokio::test]
    async fn unusable_connection_strings_fail_before_connecting() {
        let err = |text: &str| {
            let text = text.to_string();
            async move {
                match SqlStore::connect(&text, "ns").await {
                    Err(e) => e.to_string(),
                    Ok(_) => panic!("connected with {text}"),
                }
            }
        };
        let unknown = err("postgres://u:hunter2@h/db?search_path=x&sslmode=disable").await;
        assert!(unknown.contains("search_path"), "{unknown}");
        assert!(!unknown.contains("hunter2"), "{unknown}");
        assert_eq!(
            err("host=h sslmode=sometimes").await,
            "HELM_DRIVER_SQL_CONNECTION_STRING is not usable: unsupported sslmode \"sometimes\"; \
             only \"require\" (default), \"verify-full\", \"verify-ca\", \"prefer\", \"allow\", \
             and \"disable\" are supported (as by helm's SQL driver)"
        );
    }

    /// The driver's words name the database, never "the API server" or an HTTP status,
    /// and what they mean is the store's kind.
    #[test]
    fn errors_name_the_database_in_its_own_words() {
        let e = failed(
            "db.example:5432/helm",
            ErrorKind::Transient { retry_after: None },
            "terminating connection due to administrator command (SQLSTATE 57P01)".into(),
        );
        assert_eq!(
            e.to_string(),
            "PostgreSQL at db.example:5432/helm: terminating connection due to administrator \
             command (SQLSTATE 57P01)"
        );
        assert_eq!(e.verdict(), Verdict::Retry { server_hint: None });
        assert_eq!(
            e.detail(),
            "terminating connection due to administrator command (SQLSTATE 57P01)"
        );
        let conflict = failed(
            "db.example:5432/helm",
            ErrorKind::Conflict,
            "row sh.helm.release.v1.db.v1 in releases_v1 changed since it was read".into(),
        );
        assert_eq!(conflict.kind(), ErrorKind::Conflict);
        // No HTTP status to quote: the brief form is the whole sentence.
        assert_eq!(conflict.status(), conflict.to_string());
        assert!(!conflict.status().contains("409"));
    }

    #[test]
    fn records_are_shown_with_sql_not_kubectl() {
        assert_eq!(
            show_row("sh.helm.release.v1.db.v1", "shared"),
            "SELECT status FROM releases_v1 WHERE key = 'sh.helm.release.v1.db.v1' AND \
             namespace = 'shared'; SELECT key, value FROM custom_labels_v1 WHERE releasekey = \
             'sh.helm.release.v1.db.v1' AND releasenamespace = 'shared'"
        );
        assert!(show_row("it's", "ns").contains("key = 'it''s'"));
    }

    #[test]
    fn servers_are_named_without_credentials() {
        let config: tokio_postgres::Config = "postgres://helm:hunter2@db.example:5433/releases"
            .parse()
            .unwrap();
        assert_eq!(describe_server(&config), "db.example:5433/releases");
        let config: tokio_postgres::Config = "host=10.1.2.3 user=helm".parse().unwrap();
        assert_eq!(describe_server(&config), "10.1.2.3:5432/helm");
    }
}
