//! Which store holds helm's release records: `HELM_DRIVER`.

/// Where helm keeps release records, from `HELM_DRIVER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    /// `secret`, `secrets` or unset: one Secret per revision (helm's default).
    Secret,
    /// `configmap`, `configmaps`: one ConfigMap per revision.
    ConfigMap,
    /// `sql`: rows in helm's PostgreSQL tables (`HELM_DRIVER_SQL_CONNECTION_STRING`).
    Sql,
}

impl DriverKind {
    /// Maps a `HELM_DRIVER` value to a supported driver, or explains why it is not.
    pub fn from_helm_driver(value: Option<&str>) -> Result<DriverKind, DriverError> {
        match value.map(str::trim).unwrap_or("") {
            "" | "secret" | "secrets" => Ok(DriverKind::Secret),
            "configmap" | "configmaps" => Ok(DriverKind::ConfigMap),
            "sql" => Ok(DriverKind::Sql),
            other @ "memory" => Err(DriverError::UnsupportedDriver(other.to_string())),
            other => Err(DriverError::UnknownDriver(other.to_string())),
        }
    }
}

/// A `HELM_DRIVER` value this tool cannot read releases from.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// `HELM_DRIVER=sql|memory`.
    #[error(
        "HELM_DRIVER={0} is not supported: helm keeps such releases only inside its own \
         process; guarded-upgrade reads releases from Secrets (default), ConfigMaps \
         (HELM_DRIVER=configmap) or PostgreSQL (HELM_DRIVER=sql)"
    )]
    UnsupportedDriver(String),
    /// A `HELM_DRIVER` value helm itself does not know.
    #[error(
        "HELM_DRIVER={0:?} is not a helm storage driver (use secret, configmap, sql or memory)"
    )]
    UnknownDriver(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_driver_values() {
        assert_eq!(
            DriverKind::from_helm_driver(None).unwrap(),
            DriverKind::Secret
        );
        for v in ["", "secret", "secrets"] {
            assert_eq!(
                DriverKind::from_helm_driver(Some(v)).unwrap(),
                DriverKind::Secret
            );
        }
        for v in ["configmap", "configmaps"] {
            assert_eq!(
                DriverKind::from_helm_driver(Some(v)).unwrap(),
                DriverKind::ConfigMap
            );
        }
        assert_eq!(
            DriverKind::from_helm_driver(Some("sql")).unwrap(),
            DriverKind::Sql
        );
        let mem = DriverKind::from_helm_driver(Some("memory")).unwrap_err();
        assert!(mem.to_string().contains("HELM_DRIVER=memory"), "{mem}");
        assert!(matches!(
            DriverKind::from_helm_driver(Some("etcd")),
            Err(DriverError::UnknownDriver(_))
        ));
    }
}
