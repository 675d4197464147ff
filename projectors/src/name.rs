//! The projections by name: one enum, so that the runtime, the checkpoints, the SQL tables
//! and `project rebuild NAME` cannot disagree about which projections exist.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// A projection of the history topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProjectionName {
    /// One row per cluster, every facet joined ([`crate::Clusters`]).
    Clusters,
    /// CKU-hours per cluster and hour ([`crate::BillingHours`]).
    BillingHours,
    /// One row per accepted record ([`crate::AuditLog`]).
    AuditLog,
}

impl ProjectionName {
    /// Every projection, in the order they apply a record (the audit log last: it takes
    /// the record over).
    pub const ALL: [ProjectionName; 3] = [
        ProjectionName::Clusters,
        ProjectionName::BillingHours,
        ProjectionName::AuditLog,
    ];

    /// The name, as a SQL table, a checkpoint file and `project rebuild NAME`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionName::Clusters => "clusters",
            ProjectionName::BillingHours => "billing_hours",
            ProjectionName::AuditLog => "audit_log",
        }
    }
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProjectionName {
    type Err = Error;

    /// One of the names; anything else is [`Error::UnknownProjection`].
    fn from_str(s: &str) -> Result<Self, Error> {
        ProjectionName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| Error::UnknownProjection(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for p in ProjectionName::ALL {
            assert_eq!(p.as_str().parse::<ProjectionName>().unwrap(), p);
        }
        assert!("billing".parse::<ProjectionName>().is_err());
    }
}
