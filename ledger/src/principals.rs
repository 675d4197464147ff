//! Who may write what: bearer tokens name principals, and each facet has exactly one
//! owning principal (single-writer principle). Both are configuration files, with the
//! defaults of DESIGN.md built in.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use fleetledger_schemas::{Facet, Side};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The principal that may write every desired facet, for recovery.
pub const RECOVERY: &str = "recovery";
/// The principal that imports history, the only one allowed to set `ts`.
pub const IMPORT: &str = "import";

/// An operation reserved to one principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Restore a deleted cluster's desired facets (`recovery`).
    Recover,
    /// Append history with its original times and writers (`import`).
    Import,
}

impl Operation {
    /// Whether `principal` may perform this operation; [`Error::OperationForbidden`]
    /// otherwise.
    pub fn check(self, principal: &str) -> Result<()> {
        let (operation, only) = match self {
            Operation::Recover => ("recover clusters", RECOVERY),
            Operation::Import => ("import history", IMPORT),
        };
        if principal == only {
            return Ok(());
        }
        Err(Error::OperationForbidden {
            principal: principal.to_owned(),
            operation,
            only,
        })
    }
}

/// Facet → owning principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    owners: BTreeMap<Facet, String>,
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership {
            owners: BTreeMap::from([
                (Facet::Logical, "frontend".to_owned()),
                (Facet::Physical, "physical-controller".to_owned()),
                (Facet::Capacity, "capacity-controller".to_owned()),
                (Facet::Status, "sync".to_owned()),
            ]),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnershipFile {
    owners: BTreeMap<String, String>,
}

impl Ownership {
    /// Reads a TOML file with an `[owners]` table of `facet = "principal"`; facets it does
    /// not name keep their default owner.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let file: OwnershipFile = parse_toml(&text, path)?;
        let mut o = Ownership::default();
        for (facet, owner) in file.owners {
            let facet: Facet = facet
                .parse()
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            o.owners.insert(facet, owner);
        }
        Ok(o)
    }

    /// The owner of `facet`.
    pub fn owner(&self, facet: Facet) -> &str {
        self.owners.get(&facet).map(String::as_str).unwrap_or("")
    }

    /// Whether `principal` may write `facet`: its owner, `recovery` for desired facets,
    /// and `import` for every facet.
    pub fn may_write(&self, principal: &str, facet: Facet) -> bool {
        self.owner(facet) == principal
            || principal == IMPORT
            || (principal == RECOVERY && facet.side() == Side::Desired)
    }

    /// Every principal named as an owner, plus `recovery` and `import`.
    pub fn principals(&self) -> Vec<String> {
        let mut p: Vec<String> = self.owners.values().cloned().collect();
        p.push(RECOVERY.into());
        p.push(IMPORT.into());
        p.sort();
        p.dedup();
        p
    }
}

/// Bearer token → principal.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_token: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: BTreeMap<String, String>,
}

impl Tokens {
    /// The local development tokens: `dev-X` for every principal `X` of `ownership`.
    pub fn development(ownership: &Ownership) -> Self {
        Tokens {
            by_token: ownership
                .principals()
                .into_iter()
                .map(|p| (format!("dev-{p}"), p))
                .collect(),
        }
    }

    /// Reads a TOML file with a `[tokens]` table of `"token" = "principal"`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let file: TokensFile = parse_toml(&text, path)?;
        Ok(Tokens {
            by_token: file.tokens.into_iter().collect(),
        })
    }

    /// The principal of `token`, if it is known.
    pub fn principal(&self, token: &str) -> Option<&str> {
        self.by_token.get(token).map(String::as_str)
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_writer_with_recovery_for_desired_only() {
        let o = Ownership::default();
        assert!(o.may_write("frontend", Facet::Logical));
        assert!(!o.may_write("frontend", Facet::Status));
        assert!(!o.may_write("sync", Facet::Logical));
        assert!(o.may_write("recovery", Facet::Physical));
        assert!(!o.may_write("recovery", Facet::Status));
        let t = Tokens::development(&o);
        assert_eq!(t.principal("dev-sync"), Some("sync"));
        assert_eq!(t.principal("dev-nobody"), None);
    }
}

#[cfg(test)]
mod shipped_files {
    use super::*;

    #[test]
    fn the_local_files_parse_and_match_the_defaults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local");
        let o = Ownership::from_file(&dir.join("ownership.toml")).unwrap();
        assert_eq!(o, Ownership::default());
        let t = Tokens::from_file(&dir.join("tokens.toml")).unwrap();
        for p in o.principals() {
            assert_eq!(t.principal(&format!("dev-{p}")), Some(p.as_str()));
        }
    }
}
