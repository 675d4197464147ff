//! Facets, their states, and the domain rules every state must satisfy. These checks are
//! the one validation used by the HTTP API, the CLI and the import path.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest CKU a cluster may ask for.
pub const MAX_CKU: i32 = 256;

/// One owned slice of a cluster's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facet {
    /// Desired: what the customer asked for (owner: frontend).
    Logical,
    /// Desired: brokers, disks, zones, version (owner: physical-controller).
    Physical,
    /// Desired: placement (owner: capacity-controller).
    Capacity,
    /// Actual: what the data plane reports (owner: sync).
    Status,
}

/// Whether a facet holds desired or actual state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What services asked for; restored by recovery.
    Desired,
    /// What the data plane reports back.
    Actual,
}

impl Facet {
    /// Every facet, in a fixed order.
    pub const ALL: [Facet; 4] = [
        Facet::Logical,
        Facet::Physical,
        Facet::Capacity,
        Facet::Status,
    ];

    /// The facet's name as used in URLs, keys and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Facet::Logical => "logical",
            Facet::Physical => "physical",
            Facet::Capacity => "capacity",
            Facet::Status => "status",
        }
    }

    /// Desired or actual.
    pub fn side(self) -> Side {
        match self {
            Facet::Status => Side::Actual,
            _ => Side::Desired,
        }
    }

    /// The Avro schema (`.avsc` text) of this facet's state record.
    pub fn schema_text(self) -> &'static str {
        match self {
            Facet::Logical => include_str!("../avro/logical.avsc"),
            Facet::Physical => include_str!("../avro/physical.avsc"),
            Facet::Capacity => include_str!("../avro/capacity.avsc"),
            Facet::Status => include_str!("../avro/status.avsc"),
        }
    }

    /// The registry subject of this facet's records (RecordNameStrategy: the record's
    /// full name).
    pub fn subject(self) -> &'static str {
        match self {
            Facet::Logical => "fleetledger.v1.LogicalRecord",
            Facet::Physical => "fleetledger.v1.PhysicalRecord",
            Facet::Capacity => "fleetledger.v1.CapacityRecord",
            Facet::Status => "fleetledger.v1.StatusRecord",
        }
    }

    /// The facet whose subject is `subject`, if any.
    pub fn from_subject(subject: &str) -> Option<Facet> {
        Facet::ALL.into_iter().find(|f| f.subject() == subject)
    }
}

impl fmt::Display for Facet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Facet {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Facet::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| Error::UnknownFacet(s.to_owned()))
    }
}

/// Checks a cluster id: 1–64 characters of lowercase letters, digits and `-`, starting
/// with a letter.
pub fn validate_cluster_id(id: &str) -> Result<()> {
    let ok_start = id.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if id.is_empty() || id.len() > 64 || !ok_start || !ok_chars {
        return Err(Error::invalid(
            "cluster_id",
            format!(
                "{id:?} is not a cluster id: expected 1-64 characters of lowercase letters, digits and '-', starting with a letter (e.g. lkc-7x2k9)"
            ),
        ));
    }
    Ok(())
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{value:?} is not allowed: expected one of {}",
                allowed.join(", ")
            ),
        ))
    }
}

fn non_empty(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(Error::invalid(
            field,
            format!("must be 1-{max} characters, got {}", value.len()),
        ));
    }
    Ok(())
}

fn range(field: &str, value: i64, lo: i64, hi: i64) -> Result<()> {
    if value < lo || value > hi {
        return Err(Error::invalid(
            field,
            format!("must be between {lo} and {hi}, got {value}"),
        ));
    }
    Ok(())
}

/// Allowed clouds.
pub const CLOUDS: &[&str] = &["aws", "gcp", "azure"];
/// Allowed SKUs.
pub const SKUS: &[&str] = &["basic", "standard", "dedicated"];
/// Allowed networks.
pub const NETWORKS: &[&str] = &["public", "vpc-peering", "private-link"];
/// Allowed cluster kinds.
pub const KINDS: &[&str] = &["kafka", "ksqldb", "connect", "flink", "schema-registry"];
/// Phases the data plane may report.
pub const PHASES: &[&str] = &[
    "provisioning",
    "running",
    "expanding",
    "shrinking",
    "degraded",
    "deleting",
    "deleted",
    "failed",
];

/// Desired logical state (owner: frontend).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalState {
    /// Owning organisation.
    pub org_id: String,
    /// Environment inside the organisation.
    pub env_id: String,
    /// kafka | ksqldb | connect | flink | schema-registry.
    pub kind: String,
    /// Display name.
    pub name: String,
    /// basic | standard | dedicated.
    pub sku: String,
    /// Desired CKU, 1..=256.
    pub cku: i32,
    /// aws | gcp | azure.
    pub cloud: String,
    /// Cloud region, e.g. `us-east-1`.
    pub region: String,
    /// public | vpc-peering | private-link.
    pub network: String,
    /// Customer configuration.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Deletion is a state: true once the customer deleted the cluster.
    #[serde(default)]
    pub deleted: bool,
}

impl LogicalState {
    /// Checks the domain rules; the error names the field and what would be right.
    pub fn validate(&self) -> Result<()> {
        non_empty("org_id", &self.org_id, 64)?;
        non_empty("env_id", &self.env_id, 64)?;
        one_of("kind", &self.kind, KINDS)?;
        non_empty("name", &self.name, 256)?;
        one_of("sku", &self.sku, SKUS)?;
        range("cku", self.cku.into(), 1, MAX_CKU.into())?;
        one_of("cloud", &self.cloud, CLOUDS)?;
        non_empty("region", &self.region, 64)?;
        one_of("network", &self.network, NETWORKS)?;
        if self.config.len() > 1000 {
            return Err(Error::invalid(
                "config",
                format!("at most 1000 entries, got {}", self.config.len()),
            ));
        }
        for (k, v) in &self.config {
            non_empty("config key", k, 256)?;
            if v.len() > 4096 {
                return Err(Error::invalid(
                    "config",
                    format!(
                        "the value of {:?} must be at most 4096 characters, got {}",
                        k.chars().take(64).collect::<String>(),
                        v.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Desired physical layout (owner: physical-controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhysicalState {
    /// Number of brokers, 1..=1024.
    pub brokers: i32,
    /// Disk per broker in GB, 1..=1,000,000.
    pub disk_gb_per_broker: i32,
    /// Availability zones.
    #[serde(default)]
    pub zones: Vec<String>,
    /// Software version to run.
    pub version: String,
}

impl PhysicalState {
    /// Checks the domain rules.
    pub fn validate(&self) -> Result<()> {
        range("brokers", self.brokers.into(), 1, 1024)?;
        range(
            "disk_gb_per_broker",
            self.disk_gb_per_broker.into(),
            1,
            1_000_000,
        )?;
        for z in &self.zones {
            non_empty("zones", z, 64)?;
        }
        non_empty("version", &self.version, 64)
    }
}

/// Desired placement (owner: capacity-controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityState {
    /// Satellite (data plane cell) that hosts the cluster.
    pub satellite: String,
    /// Kubernetes cluster inside the satellite.
    pub k8s_cluster: String,
    /// Node pool.
    pub node_pool: String,
}

impl CapacityState {
    /// Checks the domain rules.
    pub fn validate(&self) -> Result<()> {
        non_empty("satellite", &self.satellite, 128)?;
        non_empty("k8s_cluster", &self.k8s_cluster, 128)?;
        non_empty("node_pool", &self.node_pool, 128)
    }
}

/// Actual state reported by the data plane (owner: sync).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusState {
    /// provisioning | running | expanding | shrinking | degraded | deleting | deleted | failed.
    pub phase: String,
    /// CKU the data plane runs, 0..=256.
    pub cku: i32,
    /// Brokers that are ready.
    pub brokers_ready: i32,
    /// The `logical` version this status reflects.
    pub observed_version: i64,
    /// Human text from the data plane.
    #[serde(default)]
    pub message: Option<String>,
}

impl StatusState {
    /// Checks the domain rules.
    pub fn validate(&self) -> Result<()> {
        one_of("phase", &self.phase, PHASES)?;
        range("cku", self.cku.into(), 0, MAX_CKU.into())?;
        range("brokers_ready", self.brokers_ready.into(), 0, 1024)?;
        range("observed_version", self.observed_version, 0, i64::MAX)
    }

    /// The billable actual CKU: `cku` while running, expanding, shrinking or degraded.
    pub fn billable_cku(&self) -> i32 {
        match self.phase.as_str() {
            "running" | "expanding" | "shrinking" | "degraded" => self.cku,
            _ => 0,
        }
    }
}

/// The state of any one facet. The inner state is shared (`Arc`): cloning a `FacetState`
/// is a reference count, so projections that each keep a cluster's latest state (the
/// `clusters` table, the audit log's previous versions) hold one copy between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FacetState {
    /// See [`LogicalState`].
    Logical(Arc<LogicalState>),
    /// See [`PhysicalState`].
    Physical(Arc<PhysicalState>),
    /// See [`CapacityState`].
    Capacity(Arc<CapacityState>),
    /// See [`StatusState`].
    Status(Arc<StatusState>),
}

impl FacetState {
    /// Parses the JSON of `facet`'s state and checks its domain rules. Unknown fields,
    /// wrong types and out-of-range values are refused with an error that says which.
    pub fn from_json(facet: Facet, json: &[u8]) -> Result<FacetState> {
        fn parse<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T> {
            serde_json::from_slice(json).map_err(|e| Error::invalid("body", e.to_string()))
        }
        let state = match facet {
            Facet::Logical => FacetState::Logical(parse(json)?),
            Facet::Physical => FacetState::Physical(parse(json)?),
            Facet::Capacity => FacetState::Capacity(parse(json)?),
            Facet::Status => FacetState::Status(parse(json)?),
        };
        state.validate()?;
        Ok(state)
    }

    /// The facet this state belongs to.
    pub fn facet(&self) -> Facet {
        match self {
            FacetState::Logical(_) => Facet::Logical,
            FacetState::Physical(_) => Facet::Physical,
            FacetState::Capacity(_) => Facet::Capacity,
            FacetState::Status(_) => Facet::Status,
        }
    }

    /// Checks the domain rules of the inner state.
    pub fn validate(&self) -> Result<()> {
        match self {
            FacetState::Logical(s) => s.validate(),
            FacetState::Physical(s) => s.validate(),
            FacetState::Capacity(s) => s.validate(),
            FacetState::Status(s) => s.validate(),
        }
    }

    /// The state as JSON, with the field names other programs rely on.
    pub fn to_json(&self) -> serde_json::Value {
        // Plain structs of strings, numbers and string maps always serialize.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Parses `facet`'s state as fleetledger stored it (e.g. in a projection checkpoint):
    /// field names and types are checked, the domain rules are not, because the record
    /// was accepted under the rules of its time.
    pub fn from_stored_json(facet: Facet, json: serde_json::Value) -> Result<FacetState> {
        fn parse<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> Result<T> {
            serde_json::from_value(json).map_err(|e| Error::invalid("state", e.to_string()))
        }
        Ok(match facet {
            Facet::Logical => FacetState::Logical(parse(json)?),
            Facet::Physical => FacetState::Physical(parse(json)?),
            Facet::Capacity => FacetState::Capacity(parse(json)?),
            Facet::Status => FacetState::Status(parse(json)?),
        })
    }
}

/// Serializes as the inner state's JSON object, without naming the facet.
impl Serialize for FacetState {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match self {
            FacetState::Logical(s) => s.serialize(serializer),
            FacetState::Physical(s) => s.serialize(serializer),
            FacetState::Capacity(s) => s.serialize(serializer),
            FacetState::Status(s) => s.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logical() -> serde_json::Value {
        serde_json::json!({"org_id":"o1","env_id":"e1","kind":"kafka","name":"n","sku":"basic",
            "cku":2,"cloud":"aws","region":"us-east-1","network":"public"})
    }

    #[test]
    fn cluster_ids() {
        assert!(validate_cluster_id("lkc-7x2k9").is_ok());
        for bad in ["", "7abc", "Abc", "a_b", &"a".repeat(65)] {
            assert!(validate_cluster_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cku_range_is_enforced() {
        let mut v = logical();
        v["cku"] = 0.into();
        let err = FacetState::from_json(Facet::Logical, v.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "cku: must be between 1 and 256, got 0");
        v["cku"] = 257.into();
        assert!(FacetState::from_json(Facet::Logical, v.to_string().as_bytes()).is_err());
    }

    #[test]
    fn unknown_cloud_and_unknown_field_are_refused() {
        let mut v = logical();
        v["cloud"] = "ibm".into();
        let err = FacetState::from_json(Facet::Logical, v.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("aws, gcp, azure"), "{err}");
        let mut v = logical();
        v["colour"] = "red".into();
        assert!(FacetState::from_json(Facet::Logical, v.to_string().as_bytes()).is_err());
    }

    #[test]
    fn json_round_trip_keeps_defaults() {
        let s = FacetState::from_json(Facet::Logical, logical().to_string().as_bytes()).unwrap();
        let back = FacetState::from_json(Facet::Logical, s.to_json().to_string().as_bytes());
        assert_eq!(back.unwrap(), s);
        assert_eq!(s.to_json()["deleted"], false);
    }

    #[test]
    fn facets_parse_and_name_their_subjects() {
        for f in Facet::ALL {
            assert_eq!(f.as_str().parse::<Facet>().unwrap(), f);
            assert_eq!(Facet::from_subject(f.subject()), Some(f));
            let schema: serde_json::Value = serde_json::from_str(f.schema_text()).unwrap();
            assert_eq!(
                format!(
                    "{}.{}",
                    schema["namespace"].as_str().unwrap(),
                    schema["name"].as_str().unwrap()
                ),
                f.subject()
            );
        }
        assert!("nope".parse::<Facet>().is_err());
    }
}
