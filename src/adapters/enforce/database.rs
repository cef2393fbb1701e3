//! The database's enforcer (`HELM_DRIVER=sql`): the hard lock's triggers on helm's tables
//! refuse changes to a hard-locked release's rows, and TRUNCATE while any release is
//! hard-locked, except in the tool's own transactions (the store's writer mark,
//! [`WRITER_SETTING`]). Their SQL, installing, probing and the REVOKE from PUBLIC are all
//! here; the driver ([`crate::adapters::storage::sql`]) only lends its connection. Where the
//! cluster's admission policy is installed, its parameter also guards the release's
//! objects (best effort: the records are what the triggers protect).

use kube::Client;
use tokio_postgres::error::SqlState;

use super::admission::{self, Availability};
use super::cluster::ClusterEnforcer;
use super::{Described, Enforcement, Lift, SwitchedOn};
use crate::adapters::storage::sql::{SqlStore, WRITER_SETTING, WRITER_VALUE};
use crate::core::lock::Lock;

/// The trigger's side of a hard lock, and the cluster's for the release's objects.
pub(crate) struct DatabaseEnforcer<'a> {
    sql: &'a SqlStore,
    client: &'a Client,
    namespace: &'a str,
}

impl<'a> DatabaseEnforcer<'a> {
    pub(super) fn new(sql: &'a SqlStore, client: &'a Client) -> DatabaseEnforcer<'a> {
        use crate::adapters::storage::ReleaseStore;
        DatabaseEnforcer {
            sql,
            client,
            namespace: sql.namespace(),
        }
    }

    /// The trigger can be installed: checked in a transaction that is rolled back.
    pub(super) async fn availability(&self) -> Availability {
        match self.install_trigger(false).await {
            Ok(_) => Availability::Ready,
            Err(why) => Availability::Unavailable(why),
        }
    }

    /// Installs the triggers (if they are not already this version's) and revokes
    /// TRUNCATE and TRIGGER from PUBLIC; where the cluster's policy is installed, also
    /// writes the release's parameter (best effort).
    pub(super) async fn switch_on(
        &self,
        release: &str,
        latest: &str,
        spec: &Lock,
    ) -> Result<SwitchedOn, String> {
        let weaker = self.install_trigger(true).await?;
        let mut notes: Vec<String> = weaker
            .into_iter()
            .map(|g| format!("the database lock is weaker: {g}"))
            .collect();
        let namespace = self.namespace;
        if admission::availability(self.client, namespace, release).await == Availability::Ready {
            // The records are rows, the objects the cluster's: the cluster's policies freeze
            // them as for the other drivers, inside and outside the release's namespace.
            let frozen = admission::freeze_scope_of(self.client, self.sql, latest).await;
            match ClusterEnforcer::in_namespace(self.client, namespace, "Secret")
                .freeze_objects(release, spec, &frozen)
                .await
            {
                Ok(objects) => notes.extend(objects.notes),
                Err(why) => notes.push(format!(
                    "the cluster does not freeze the release's objects: {why}"
                )),
            }
        }
        Ok(SwitchedOn {
            how: format!("trigger {TRIGGER_NAME} on releases_v1"),
            notes,
        })
    }

    /// The triggers are in force and an update of the latest row, in a transaction that
    /// is rolled back, is refused.
    pub(super) async fn probe(&self, release: &str, record: &str) -> Result<(), String> {
        self.probe_trigger(release, self.namespace, record).await
    }

    /// The trigger lets the tool's own writes pass; only the cluster's parameter for the
    /// release's objects is removed.
    pub(super) async fn lift(&self, release: &str, hard: bool) -> Result<Lift, String> {
        ClusterEnforcer::in_namespace(self.client, self.namespace, "Secret")
            .lift(release, hard, None)
            .await
    }

    pub(super) async fn describe(&self, hard_locks: &[(&str, &str, &str)]) -> Vec<Described> {
        let mut out = Vec::new();
        for (ns, release, record) in hard_locks {
            out.push(match self.probe_trigger(release, ns, record).await {
                Ok(()) => Described {
                    enforcement: Enforcement::DatabaseTrigger,
                    note: None,
                    not_frozen: Vec::new(),
                },
                Err(why) => Described {
                    enforcement: Enforcement::LabelsOnly,
                    note: Some(admission::not_enforced_by_database(&why)),
                    not_frozen: Vec::new(),
                },
            });
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The triggers: installing, probing, and their SQL.
// ---------------------------------------------------------------------------------------

impl DatabaseEnforcer<'_> {
    /// What keeps the hard-lock triggers from being in force, read from the catalog: each
    /// trigger of [`TRIGGERS`] present, firing (`tgenabled` `O` or `A`: not disabled, not
    /// `ENABLE REPLICA`) and running this version's function. Empty: all in force.
    async fn trigger_problems(&self) -> Result<Vec<String>, String> {
        let client = self.sql.live_client().await.map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        for (trigger, table, function) in TRIGGERS {
            let row = self
                .sql
                .bounded(
                    "reading the hard-lock triggers",
                    client.query_opt(
                        "SELECT t.tgenabled::text, p.prosrc = $3 FROM pg_trigger t \
                     JOIN pg_proc p ON p.oid = t.tgfoid \
                     WHERE t.tgrelid = to_regclass($2) AND t.tgname = $1 AND NOT t.tgisinternal",
                        &[&trigger, &table, &function_body(function)],
                    ),
                )
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| self.sql.error(e).to_string())?;
            match row {
                None => problems.push(format!("the trigger {trigger} on {table} is not installed")),
                Some(row) => {
                    let enabled: String = row.get(0);
                    let current: bool = row.get(1);
                    match enabled.as_str() {
                        "O" | "A" if current => {}
                        "O" | "A" => problems.push(format!(
                            "the trigger {trigger} on {table} runs another version's function"
                        )),
                        "D" => {
                            problems.push(format!("the trigger {trigger} on {table} is disabled"))
                        }
                        "R" => problems.push(format!(
                            "the trigger {trigger} on {table} fires only for replication \
                             (ENABLE REPLICA)"
                        )),
                        other => problems.push(format!(
                            "the trigger {trigger} on {table} is in state {other:?}"
                        )),
                    }
                }
            }
        }
        for function in [REFUSE_FUNCTION, WRITER_FUNCTION, TEXT_FUNCTION] {
            let row = self
                .sql
                .bounded(
                    "reading the hard-lock functions",
                    client.query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = $1 AND prosrc = $2)",
                        &[&function, &function_body(function)],
                    ),
                )
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| self.sql.error(e).to_string())?;
            if !row.get::<_, bool>(0) {
                problems.push(format!(
                    "the function {function}() is missing or another version"
                ));
            }
        }
        Ok(problems)
    }

    /// Whether every hard-lock trigger is installed, firing and current.
    async fn trigger_installed(&self) -> Result<bool, String> {
        Ok(self.trigger_problems().await?.is_empty())
    }

    /// Proves the database refuses a change of `record` (of `release`) now: the triggers
    /// are in force in the catalog, and an `UPDATE` of the row without the writer setting,
    /// in a transaction that is rolled back, is refused by the trigger. Err says why not.
    async fn probe_trigger(
        &self,
        release: &str,
        namespace: &str,
        record: &str,
    ) -> Result<(), String> {
        let problems = self.trigger_problems().await?;
        if !problems.is_empty() {
            return Err(format!(
                "{}; run `guarded-upgrade lock {release} --hard -n {namespace}` again to install \
                 them",
                problems.join("; "),
            ));
        }
        let mut client = self.sql.live_client().await.map_err(|e| e.to_string())?;
        let server = self.sql.server();
        let tx = self
            .sql
            .bounded("starting a transaction", client.transaction())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| self.sql.error(e).to_string())?;
        let tried = self
            .sql
            .bounded(
                "probing the hard-lock trigger",
                tx.execute(
                    "UPDATE releases_v1 SET body = body WHERE key = $1 AND namespace = $2",
                    &[&record, &namespace],
                ),
            )
            .await
            .map_err(|e| e.to_string())?;
        // Nothing is kept either way.
        let _ = tx.rollback().await;
        match tried {
            Err(e)
                if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE)
                    && e.as_db_error()
                        .is_some_and(|d| d.message().contains("refused by guarded-upgrade")) =>
            {
                Ok(())
            }
            Err(e) => Err(format!(
                "cannot check it with an update of releases_v1 row {record} that is rolled back \
                 ({})",
                self.sql.error(e)
            )),
            Ok(_) => Err(format!(
                "PostgreSQL at {server} accepted an update of releases_v1 row {record} (in a \
                 transaction rolled back): the trigger does not refuse it now"
            )),
        }
    }

    /// Installs the hard-lock triggers (`commit`), or checks that they could be (a
    /// transaction rolled back: nothing written). Already installed and current: nothing to
    /// do. Committing also revokes TRUNCATE and TRIGGER on helm's tables from PUBLIC; the
    /// returned lines say which such grants remain (they leave the lock weaker).
    async fn install_trigger(&self, commit: bool) -> Result<Vec<String>, String> {
        if self.trigger_installed().await? {
            return if commit {
                self.revoke_from_public().await
            } else {
                Ok(Vec::new())
            };
        }
        let mut client = self.sql.live_client().await.map_err(|e| e.to_string())?;
        let server = self.sql.server();
        let why = |e: tokio_postgres::Error| {
            let text = match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => crate::core::chain::error_chain(&e),
            };
            let rights = if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                "; it needs CREATE on the schema of releases_v1, ownership of releases_v1 and \
                 custom_labels_v1, and ownership of the functions once they exist (see \
                 docs/locks.md)"
            } else {
                ""
            };
            format!(
                "cannot install the trigger {TRIGGER_NAME} on releases_v1 at {server} \
                 ({text}){rights}"
            )
        };
        let tx = self
            .sql
            .bounded("starting a transaction", client.transaction())
            .await
            .map_err(|e| e.to_string())?
            .map_err(why)?;
        for statement in trigger_sql() {
            self.sql
                .bounded(
                    "installing the hard-lock trigger",
                    tx.batch_execute(&statement),
                )
                .await
                .map_err(|e| e.to_string())?
                .map_err(why)?;
        }
        if commit {
            tx.commit().await.map_err(why)?;
            // The connection is held until here: release it before the next statement.
            drop(client);
            self.revoke_from_public().await
        } else {
            tx.rollback().await.map_err(why)?;
            Ok(Vec::new())
        }
    }

    /// Revokes TRUNCATE and TRIGGER on helm's tables from PUBLIC (helm's migration grants
    /// them); says which of them PUBLIC still holds afterwards (a REVOKE by a role that did
    /// not grant them changes nothing).
    async fn revoke_from_public(&self) -> Result<Vec<String>, String> {
        let client = self.sql.live_client().await.map_err(|e| e.to_string())?;
        // Only the grantor (helm's role, the owner) can revoke; a warning otherwise.
        let _ = self
            .sql
            .bounded(
                "revoking TRUNCATE and TRIGGER from PUBLIC",
                client.batch_execute(
                    "REVOKE TRUNCATE, TRIGGER ON releases_v1, custom_labels_v1 FROM PUBLIC",
                ),
            )
            .await
            .map_err(|e| e.to_string())?;
        let rows = self
            .sql
            .bounded(
                "reading the grants of helm's tables",
                client.query(
                    "SELECT c.relname::text, a.privilege_type::text, \
                 pg_get_userbyid(a.grantor)::text, a.grantor = c.relowner FROM pg_class c, \
                 aclexplode(c.relacl) a WHERE c.oid IN (to_regclass('releases_v1'), \
                 to_regclass('custom_labels_v1')) AND a.grantee = 0 AND a.privilege_type IN \
                 ('TRUNCATE', 'TRIGGER') ORDER BY 1, 2, 3",
                    &[],
                ),
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| self.sql.error(e).to_string())?;
        Ok(rows
            .iter()
            .map(|r| {
                let table: String = r.get(0);
                let privilege: String = r.get(1);
                let grantor: String = r.get(2);
                let by_owner: bool = r.get(3);
                let means = if privilege == "TRIGGER" {
                    "any role may add triggers of its own to it"
                } else {
                    "any role may empty it once the statement trigger is disabled"
                };
                // Only the grantor's REVOKE removes a grant: name the role that can.
                let who = if by_owner {
                    format!("its owner {grantor}")
                } else {
                    grantor.clone()
                };
                format!(
                    "PUBLIC still holds {privilege} on {table}, granted by {grantor} ({means}); \
                     {who} can run REVOKE {privilege} ON {table} FROM PUBLIC"
                )
            })
            .collect())
    }
}

/// Name of the row trigger on `releases_v1` and of its function.
const TRIGGER_NAME: &str = "guarded_upgrade_hard_lock";
/// The row trigger on `custom_labels_v1` (the lock's own label rows) and its function.
const LABELS_TRIGGER: &str = "guarded_upgrade_hard_lock_labels";
/// The statement triggers refusing TRUNCATE of either table, and their function.
const TRUNCATE_TRIGGER: &str = "guarded_upgrade_hard_lock_truncate";
/// The function raising the refusal for a hard-locked release (shared by the triggers).
const REFUSE_FUNCTION: &str = "guarded_upgrade_refuse";
/// The function telling the tool's own transactions apart.
const WRITER_FUNCTION: &str = "guarded_upgrade_writer";
/// Name of the helper that reads a lock's text label (plain or base32, as `lock.rs` writes).
const TEXT_FUNCTION: &str = "guarded_upgrade_lock_text";
/// Every trigger: (trigger, table, function).
const TRIGGERS: [(&str, &str, &str); 4] = [
    (TRIGGER_NAME, "releases_v1", TRIGGER_NAME),
    (LABELS_TRIGGER, "custom_labels_v1", LABELS_TRIGGER),
    (TRUNCATE_TRIGGER, "releases_v1", TRUNCATE_TRIGGER),
    (TRUNCATE_TRIGGER, "custom_labels_v1", TRUNCATE_TRIGGER),
];

/// The body of one of the tool's functions, by name.
fn function_body(name: &str) -> String {
    match name {
        TRIGGER_NAME => trigger_function_body(),
        LABELS_TRIGGER => labels_function_body(),
        TRUNCATE_TRIGGER => truncate_function_body(),
        REFUSE_FUNCTION => refuse_function_body(),
        WRITER_FUNCTION => writer_function_body(),
        _ => text_function_body().to_string(),
    }
}

/// `true` in the tool's own transactions: those carrying the store's writer mark
/// ([`WRITER_SETTING`] = [`WRITER_VALUE`]).
fn writer_function_body() -> String {
    format!(
        "\nBEGIN\n  RETURN coalesce(current_setting('{WRITER_SETTING}', true), '') = {WRITER_VALUE};\nEND\n"
    )
}

/// Raises the refusal when release `rel` in `ns` carries a hard lock in force (its latest
/// record's labels hold the hard-lock status); `what` says what was refused.
fn refuse_function_body() -> String {
    let hard = crate::core::lock::KEY_HARD_STATUS;
    format!(
        r#"
DECLARE
  latest text;
  reason text;
  who text;
  since text;
BEGIN
  SELECT r.key INTO latest FROM releases_v1 r
    WHERE r.name = rel AND r.namespace = ns AND r.owner = 'helm'
    ORDER BY r.version DESC LIMIT 1;
  IF latest IS NOT NULL AND EXISTS (SELECT 1 FROM custom_labels_v1 l
      WHERE l.releasekey = latest AND l.releasenamespace = ns AND l.key = '{hard}') THEN
    reason := {TEXT_FUNCTION}(latest, ns, 'guarded-upgrade.io/reason');
    who := {TEXT_FUNCTION}(latest, ns, 'guarded-upgrade.io/by');
    SELECT to_char(to_timestamp(l.value::bigint) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
      INTO since FROM custom_labels_v1 l
      WHERE l.releasekey = latest AND l.releasenamespace = ns AND l.key = 'guarded-upgrade.io/since'
        AND l.value ~ '^[0-9]+$';
    RAISE EXCEPTION USING
      ERRCODE = 'insufficient_privilege',
      MESSAGE = format('release "%s" in namespace "%s" is hard-locked%s (locked by %s since %s); %s refused by guarded-upgrade. To change the release, first run: guarded-upgrade unlock %s -n %s',
        rel, ns, CASE WHEN coalesce(reason, '') <> '' THEN ': ' || reason ELSE '' END,
        coalesce(nullif(who, ''), 'unknown'), coalesce(since, 'unknown'), what, rel, ns);
  END IF;
END
"#
    )
}

/// The row trigger on `releases_v1`: refuses INSERT, UPDATE and DELETE of the rows of a
/// hard-locked release (the row before and after the change), unless the transaction is
/// the tool's.
fn trigger_function_body() -> String {
    format!(
        r#"
BEGIN
  IF NOT {WRITER_FUNCTION}() THEN
    IF TG_OP <> 'INSERT' THEN
      PERFORM {REFUSE_FUNCTION}(OLD.name, OLD.namespace, format('%s of releases_v1 row "%s"', lower(TG_OP), OLD.key));
    END IF;
    IF TG_OP <> 'DELETE' THEN
      PERFORM {REFUSE_FUNCTION}(NEW.name, NEW.namespace, format('%s of releases_v1 row "%s"', lower(TG_OP), NEW.key));
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END
"#
    )
}

/// The row trigger on `custom_labels_v1`: the label rows of a hard-locked release's
/// records (the lock itself among them) are guarded like its rows in `releases_v1`.
fn labels_function_body() -> String {
    format!(
        r#"
DECLARE
  rel text;
BEGIN
  IF NOT {WRITER_FUNCTION}() THEN
    IF TG_OP <> 'INSERT' THEN
      SELECT r.name INTO rel FROM releases_v1 r
        WHERE r.key = OLD.releasekey AND r.namespace = OLD.releasenamespace;
      IF rel IS NOT NULL THEN
        PERFORM {REFUSE_FUNCTION}(rel, OLD.releasenamespace, format('%s of custom_labels_v1 row "%s" of "%s"', lower(TG_OP), OLD.key, OLD.releasekey));
      END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
      SELECT r.name INTO rel FROM releases_v1 r
        WHERE r.key = NEW.releasekey AND r.namespace = NEW.releasenamespace;
      IF rel IS NOT NULL THEN
        PERFORM {REFUSE_FUNCTION}(rel, NEW.releasenamespace, format('%s of custom_labels_v1 row "%s" of "%s"', lower(TG_OP), NEW.key, NEW.releasekey));
      END IF;
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END
"#
    )
}

/// The statement trigger on both tables: TRUNCATE is refused while any release is
/// hard-locked (a row trigger never sees TRUNCATE).
fn truncate_function_body() -> String {
    let hard = crate::core::lock::KEY_HARD_STATUS;
    format!(
        r#"
DECLARE
  rel text;
  ns text;
BEGIN
  IF NOT {WRITER_FUNCTION}() THEN
    FOR rel, ns IN SELECT DISTINCT r.name, r.namespace FROM custom_labels_v1 l
        JOIN releases_v1 r ON r.key = l.releasekey AND r.namespace = l.releasenamespace
        WHERE l.key = '{hard}' ORDER BY 1, 2 LOOP
      PERFORM {REFUSE_FUNCTION}(rel, ns, format('truncate of %s', TG_TABLE_NAME));
    END LOOP;
  END IF;
  RETURN NULL;
END
"#
    )
}

/// The helper decoding a lock's text label (`b32.` + base32 over `KEY`, `KEY-1`, …).
fn text_function_body() -> &'static str {
    r#"
DECLARE
  enc text;
  buf integer := 0;
  nbits integer := 0;
  v integer;
  out bytea := ''::bytea;
BEGIN
  SELECT l.value INTO enc FROM custom_labels_v1 l
    WHERE l.releasekey = rkey AND l.releasenamespace = rns AND l.key = lkey;
  IF enc IS NULL OR left(enc, 4) <> 'b32.' THEN RETURN enc; END IF;
  SELECT substr(enc, 5) || coalesce(string_agg(l.value, '' ORDER BY substr(l.key, length(lkey) + 2)::int), '')
    INTO enc FROM custom_labels_v1 l
    WHERE l.releasekey = rkey AND l.releasenamespace = rns
      AND left(l.key, length(lkey) + 1) = lkey || '-'
      AND substr(l.key, length(lkey) + 2) ~ '^[0-9]+$';
  FOR i IN 1..length(enc) LOOP
    v := strpos('abcdefghijklmnopqrstuvwxyz234567', substr(enc, i, 1)) - 1;
    IF v < 0 THEN RETURN '(unreadable)'; END IF;
    buf := ((buf << 5) | v) & 65535;
    nbits := nbits + 5;
    IF nbits >= 8 THEN
      nbits := nbits - 8;
      out := out || set_byte('\x00'::bytea, 0, (buf >> nbits) & 255);
    END IF;
  END LOOP;
  RETURN convert_from(out, 'UTF8');
EXCEPTION WHEN OTHERS THEN
  RETURN '(unreadable)';
END
"#
}

/// The statements that install the triggers (idempotent; PostgreSQL 14 or later). The
/// functions run as their owner (SECURITY DEFINER): helm's tables have row-level security
/// without policies, so only the owner sees the rows the refusal needs, whoever writes.
/// Every trigger is ENABLE ALWAYS: it fires with `session_replication_role = replica` too.
fn trigger_sql() -> Vec<String> {
    let definer = "SECURITY DEFINER SET search_path FROM CURRENT";
    let mut sql = vec![
        format!(
            "CREATE OR REPLACE FUNCTION {TEXT_FUNCTION}(rkey text, rns text, lkey text) \
             RETURNS text LANGUAGE plpgsql STABLE {definer} AS $gu${}$gu$",
            text_function_body()
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {WRITER_FUNCTION}() RETURNS boolean LANGUAGE plpgsql \
             SET search_path FROM CURRENT AS $gu${}$gu$",
            writer_function_body()
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {REFUSE_FUNCTION}(rel text, ns text, what text) \
             RETURNS void LANGUAGE plpgsql {definer} AS $gu${}$gu$",
            refuse_function_body()
        ),
    ];
    for (function, body) in [
        (TRIGGER_NAME, trigger_function_body()),
        (LABELS_TRIGGER, labels_function_body()),
        (TRUNCATE_TRIGGER, truncate_function_body()),
    ] {
        sql.push(format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql \
             {definer} AS $gu${body}$gu$"
        ));
    }
    sql.push(format!(
        "CREATE OR REPLACE TRIGGER {TRIGGER_NAME} BEFORE INSERT OR UPDATE OR DELETE ON \
         releases_v1 FOR EACH ROW EXECUTE FUNCTION {TRIGGER_NAME}()"
    ));
    sql.push(format!(
        "CREATE OR REPLACE TRIGGER {LABELS_TRIGGER} BEFORE INSERT OR UPDATE OR DELETE ON \
         custom_labels_v1 FOR EACH ROW EXECUTE FUNCTION {LABELS_TRIGGER}()"
    ));
    for table in ["releases_v1", "custom_labels_v1"] {
        sql.push(format!(
            "CREATE OR REPLACE TRIGGER {TRUNCATE_TRIGGER} BEFORE TRUNCATE ON {table} FOR EACH \
             STATEMENT EXECUTE FUNCTION {TRUNCATE_TRIGGER}()"
        ));
    }
    for (trigger, table, _) in TRIGGERS {
        sql.push(format!(
            "ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}"
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_sql_is_idempotent_and_names_the_lock() {
        let sql = trigger_sql();
        // Every statement can run again (CREATE OR REPLACE, ALTER … ENABLE ALWAYS).
        for statement in &sql {
            assert!(
                statement.starts_with("CREATE OR REPLACE ")
                    || statement.starts_with("ALTER TABLE "),
                "{statement}"
            );
        }
        assert!(sql.contains(
            &"CREATE OR REPLACE TRIGGER guarded_upgrade_hard_lock BEFORE INSERT OR UPDATE OR \
              DELETE ON releases_v1 FOR EACH ROW EXECUTE FUNCTION guarded_upgrade_hard_lock()"
                .to_string()
        ));
        for table in ["releases_v1", "custom_labels_v1"] {
            assert!(sql.contains(&format!(
                "CREATE OR REPLACE TRIGGER guarded_upgrade_hard_lock_truncate BEFORE TRUNCATE ON \
                 {table} FOR EACH STATEMENT EXECUTE FUNCTION guarded_upgrade_hard_lock_truncate()"
            )));
        }
        for (trigger, table, _) in TRIGGERS {
            assert!(sql.contains(&format!(
                "ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}"
            )));
        }
        for name in [
            TRIGGER_NAME,
            LABELS_TRIGGER,
            TRUNCATE_TRIGGER,
            REFUSE_FUNCTION,
            WRITER_FUNCTION,
            TEXT_FUNCTION,
        ] {
            let body = function_body(name);
            // The dollar quote cannot end early; the body is what `trigger_problems` compares.
            assert!(!body.contains("$gu$"), "{name}");
            assert!(
                sql.iter()
                    .any(|s| s.contains(&format!("FUNCTION {name}(")) && s.contains(&body)),
                "{name}"
            );
        }
        let refuse = refuse_function_body();
        assert!(refuse.contains(&format!("l.key = '{}'", crate::core::lock::KEY_HARD_STATUS)));
        assert!(refuse.contains("guarded-upgrade unlock %s -n %s"));
        for key in ["reason", "by", "since"] {
            assert!(
                refuse.contains(&format!("'guarded-upgrade.io/{key}'")),
                "{key}"
            );
        }
        // The writer's mark is this transaction's id and start time, never a fixed value a
        // connection string could carry.
        assert!(writer_function_body().contains(&format!(
            "current_setting('guarded_upgrade.writer', true), '') = {WRITER_VALUE}"
        )));
        assert!(WRITER_VALUE.contains("txid_current()") && WRITER_VALUE.contains("now()"));
    }
}
