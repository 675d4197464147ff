//! Column catalog of the `clusters` projection and the per-service views built on it.
//!
//! Each owning service reads the clusters and columns it needs, declared in configuration
//! (`deploy/local/views.toml` ships the defaults, [`ServiceViews::default`] equals it): a
//! view names its columns, whether it sees only live (not deleted) clusters, and optionally
//! the regions it serves. Views are computed from the `clusters` projection when read, so
//! they are always consistent with it and need no checkpoint of their own.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::clusters::ClusterRow;

/// A value of one cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text.
    Str(String),
    /// Integer.
    Int(i64),
    /// Boolean.
    Bool(bool),
    /// Milliseconds since the epoch, UTC.
    Ts(i64),
    /// No value (the facet does not exist yet).
    Null,
}

/// The type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Text.
    Str,
    /// 64-bit integer.
    Int,
    /// Boolean.
    Bool,
    /// Timestamp (ms, UTC).
    Ts,
}

/// A column of the `clusters` table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
    /// Reads the cell of one cluster.
    pub get: fn(&str, &ClusterRow) -> Cell,
}

fn s(v: Option<&String>) -> Cell {
    v.map_or(Cell::Null, |v| Cell::Str(v.clone()))
}
fn i(v: Option<i64>) -> Cell {
    v.map_or(Cell::Null, Cell::Int)
}

/// Every column of `clusters`, in table order.
pub const CLUSTER_COLUMNS: &[Column] = &[
    Column {
        name: "cluster_id",
        ty: ColumnType::Str,
        get: |id, _| Cell::Str(id.to_owned()),
    },
    Column {
        name: "org_id",
        ty: ColumnType::Str,
        get: |_, r| s(r.logical.as_ref().map(|l| &l.state.org_id)),
    },
    Column {
        name: "env_id",
        ty: ColumnType::Str,
        get: |_, r| s(r.logical.as_ref().map(|l| &l.state.env_id)),
    },
    Column {
        name: "kind",
        ty: ColumnType::Str,
        get: |_, r| s(r.logical.as_ref().map(|l| &l.state.kind)),
    },
    Column {
        name: "name",
        ty: ColumnType::Str,
        get: |_, r| s(r.logical.as_ref().map(|l| &l.state.name)),
    },
    Column {
        name: "sku",
        ty: ColumnType::Str,
        get: |_, r| s(r.logical.as_ref().map(|l| &l.state.sku)),
    },
    Column {
        name: "cloud",
        ty: ColumnType::Str,
        get: |_, r| s(r.logical.as_ref().map(|l| &l.state.cloud)),
    },
    Column {
        name: "region",
        ty: ColumnType::Str,
        get: |_, r| s(r.logical.as_ref().map(|l| &l.state.region)),
    },
    Column {
        name: "network",
        ty: ColumnType::Str,
        get: |_, r| s(r.logical.as_ref().map(|l| &l.state.network)),
    },
    Column {
        name: "cku_desired",
        ty: ColumnType::Int,
        get: |_, r| i(r.logical.as_ref().map(|l| i64::from(l.state.cku))),
    },
    Column {
        name: "cku_actual",
        ty: ColumnType::Int,
        get: |_, r| i(r.status.as_ref().map(|v| i64::from(v.state.cku))),
    },
    Column {
        name: "phase",
        ty: ColumnType::Str,
        get: |_, r| s(r.status.as_ref().map(|v| &v.state.phase)),
    },
    Column {
        name: "deleted",
        ty: ColumnType::Bool,
        get: |_, r| Cell::Bool(r.deleted()),
    },
    Column {
        name: "drift",
        ty: ColumnType::Bool,
        get: |_, r| Cell::Bool(r.drift()),
    },
    Column {
        name: "logical_version",
        ty: ColumnType::Int,
        get: |_, r| i(r.logical.as_ref().map(|v| v.version)),
    },
    Column {
        name: "observed_version",
        ty: ColumnType::Int,
        get: |_, r| i(r.status.as_ref().map(|v| v.state.observed_version)),
    },
    Column {
        name: "updated_at",
        ty: ColumnType::Ts,
        get: |_, r| Cell::Ts(r.updated_at_ms()),
    },
    Column {
        name: "drift_since",
        ty: ColumnType::Ts,
        get: |_, r| r.drift_since_ms().map_or(Cell::Null, Cell::Ts),
    },
    Column {
        name: "logical_updated_at",
        ty: ColumnType::Ts,
        get: |_, r| r.logical.as_ref().map_or(Cell::Null, |v| Cell::Ts(v.ts_ms)),
    },
    Column {
        name: "status_updated_at",
        ty: ColumnType::Ts,
        get: |_, r| r.status.as_ref().map_or(Cell::Null, |v| Cell::Ts(v.ts_ms)),
    },
    Column {
        name: "brokers",
        ty: ColumnType::Int,
        get: |_, r| i(r.physical.as_ref().map(|v| i64::from(v.state.brokers))),
    },
    Column {
        name: "disk_gb_per_broker",
        ty: ColumnType::Int,
        get: |_, r| {
            i(r.physical
                .as_ref()
                .map(|v| i64::from(v.state.disk_gb_per_broker)))
        },
    },
    Column {
        name: "zones",
        ty: ColumnType::Str,
        get: |_, r| {
            r.physical
                .as_ref()
                .map_or(Cell::Null, |v| Cell::Str(v.state.zones.join(",")))
        },
    },
    Column {
        name: "software_version",
        ty: ColumnType::Str,
        get: |_, r| s(r.physical.as_ref().map(|v| &v.state.version)),
    },
    Column {
        name: "physical_version",
        ty: ColumnType::Int,
        get: |_, r| i(r.physical.as_ref().map(|v| v.version)),
    },
    Column {
        name: "satellite",
        ty: ColumnType::Str,
        get: |_, r| s(r.capacity.as_ref().map(|v| &v.state.satellite)),
    },
    Column {
        name: "k8s_cluster",
        ty: ColumnType::Str,
        get: |_, r| s(r.capacity.as_ref().map(|v| &v.state.k8s_cluster)),
    },
    Column {
        name: "node_pool",
        ty: ColumnType::Str,
        get: |_, r| s(r.capacity.as_ref().map(|v| &v.state.node_pool)),
    },
    Column {
        name: "capacity_version",
        ty: ColumnType::Int,
        get: |_, r| i(r.capacity.as_ref().map(|v| v.version)),
    },
    Column {
        name: "brokers_ready",
        ty: ColumnType::Int,
        get: |_, r| i(r.status.as_ref().map(|v| i64::from(v.state.brokers_ready))),
    },
    Column {
        name: "status_message",
        ty: ColumnType::Str,
        get: |_, r| s(r.status.as_ref().and_then(|v| v.state.message.as_ref())),
    },
    Column {
        name: "status_version",
        ty: ColumnType::Int,
        get: |_, r| i(r.status.as_ref().map(|v| v.version)),
    },
];

/// The column named `name`.
pub fn column(name: &str) -> Option<&'static Column> {
    CLUSTER_COLUMNS.iter().find(|c| c.name == name)
}

/// One service's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceView {
    /// Table name, e.g. `capacity_controller_view`.
    pub name: String,
    /// The service (principal) it is for.
    pub service: String,
    /// Columns, from the `clusters` columns.
    pub columns: Vec<String>,
    /// Only clusters that are not deleted.
    #[serde(default)]
    pub live_only: bool,
    /// Only these regions (empty: all).
    #[serde(default)]
    pub regions: Vec<String>,
}

impl ServiceView {
    /// The view's columns.
    pub fn columns(&self) -> Vec<&'static Column> {
        self.columns.iter().filter_map(|c| column(c)).collect()
    }

    /// Whether the view shows cluster `row`.
    pub fn shows(&self, row: &ClusterRow) -> bool {
        if self.live_only && row.deleted() {
            return false;
        }
        if self.regions.is_empty() {
            return true;
        }
        row.logical
            .as_ref()
            .is_some_and(|l| self.regions.contains(&l.state.region))
    }
}

/// Every service view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceViews {
    /// The views.
    pub views: Vec<ServiceView>,
}

impl Default for ServiceViews {
    fn default() -> Self {
        // Parsing our own shipped text cannot fail; the test below proves it.
        toml::from_str(DEFAULT_VIEWS).unwrap_or(ServiceViews { views: vec![] })
    }
}

/// The defaults, also shipped as `deploy/local/views.toml`.
pub const DEFAULT_VIEWS: &str = include_str!("../../deploy/local/views.toml");

impl ServiceViews {
    /// Reads a views file; unknown columns or duplicate names are refused with the list of
    /// columns that exist.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and checks views.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: ServiceViews = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::BTreeSet::new();
        for view in &v.views {
            if !names.insert(view.name.clone()) {
                return Err(format!("view {} is declared twice", view.name));
            }
            for c in &view.columns {
                if column(c).is_none() {
                    let all: Vec<&str> = CLUSTER_COLUMNS.iter().map(|c| c.name).collect();
                    return Err(format!(
                        "view {}: unknown column {c:?}; columns are {}",
                        view.name,
                        all.join(", ")
                    ));
                }
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_views_parse_and_unknown_columns_are_named() {
        let v = ServiceViews::parse(DEFAULT_VIEWS).unwrap();
        assert_eq!(v, ServiceViews::default());
        assert!(v.views.iter().any(|v| v.name == "capacity_controller_view"));
        let err = ServiceViews::parse(
            "[[views]]\nname = \"x\"\nservice = \"s\"\ncolumns = [\"colour\"]\n",
        )
        .unwrap_err();
        assert!(
            err.contains("unknown column \"colour\"") && err.contains("cluster_id"),
            "{err}"
        );
    }
}
