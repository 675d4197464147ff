//! Who may write what: bearer tokens name principals, and each facet has exactly one
//! owning principal (single-writer principle). Both are configuration files, with the
//! defaults of DESIGN.md built in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

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

/// The principal that may register schemas and change compatibility in the embedded
/// registry (reads are open to every client).
pub const REGISTRY_ADMIN: &str = "registry-admin";

/// The prefix of a token's hash in a tokens file.
const HASH_PREFIX: &str = "sha256:";

/// The SHA-256 of a token, as a tokens file stores it: `sha256:<64 hex digits>`.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    format!(
        "{HASH_PREFIX}{}",
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    )
}

/// Whether two digests are equal, in time that does not depend on where they differ.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which orgs a caller may see and change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every org: the services and operators.
    #[default]
    All,
    /// Only these orgs (never empty): a tenant's token. It sees only their clusters,
    /// history, audit and billing, and cannot write outside them.
    Orgs(Arc<BTreeSet<String>>),
}

impl Scope {
    /// Whether `org` is within the scope.
    pub fn allows(&self, org: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Orgs(orgs) => orgs.contains(org),
        }
    }

    /// Whether a caller of this scope sees a cluster whose current logical state names
    /// `org` (`None`: no logical state yet, seen only by unscoped callers).
    pub fn sees(&self, org: Option<&str>) -> bool {
        match self {
            Scope::All => true,
            Scope::Orgs(orgs) => org.is_some_and(|o| orgs.contains(o)),
        }
    }

    /// The orgs, if the scope is limited.
    pub fn orgs(&self) -> Option<&BTreeSet<String>> {
        match self {
            Scope::All => None,
            Scope::Orgs(orgs) => Some(orgs),
        }
    }
}

/// Who presented a token: its principal and the orgs it may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal (owner of facets, `recovery`, `import`, `registry-admin`, or any
    /// reader).
    pub principal: String,
    /// The orgs it may see and change.
    pub scope: Scope,
}

/// Bearer token → caller. Only the tokens' SHA-256 digests are kept (a tokens file holds
/// no token), and a presented token is compared with every digest in constant time.
#[derive(Clone, Default)]
pub struct Tokens {
    digests: Vec<([u8; 32], Caller)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.digests.len())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: BTreeMap<String, TokenEntry>,
}

/// A tokens file's value: a principal, or a principal limited to some orgs.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenEntry {
    Principal(String),
    Scoped(ScopedEntry),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopedEntry {
    principal: String,
    orgs: Vec<String>,
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// The local development tokens: `dev-X` for every principal `X` of `ownership` and
    /// for `registry-admin`. Only for a service on loopback that asked for them.
    pub fn development(ownership: &Ownership) -> Self {
        let mut principals = ownership.principals();
        principals.push(REGISTRY_ADMIN.to_owned());
        Tokens {
            digests: principals
                .into_iter()
                .map(|p| {
                    let caller = Caller {
                        principal: p.clone(),
                        scope: Scope::All,
                    };
                    (digest(&format!("dev-{p}")), caller)
                })
                .collect(),
        }
    }

    /// Reads a TOML file with a `[tokens]` table of `"sha256:<hex>" = "principal"` (the
    /// hashes [`token_hash`] makes; `fleetledger token create` prints a new token and its
    /// line), or `"sha256:<hex>" = { principal = "p", orgs = ["org-1", …] }` for a token
    /// limited to those orgs. A key that is not such a hash (a token in the clear), or a
    /// scope without orgs, is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let file: TokensFile = parse_toml(&text, path)?;
        let mut digests = Vec::with_capacity(file.tokens.len());
        for (key, entry) in file.tokens {
            let (principal, scope) = match entry {
                TokenEntry::Principal(p) => (p, Scope::All),
                TokenEntry::Scoped(ScopedEntry { principal, orgs }) => {
                    if orgs.is_empty() || orgs.iter().any(|o| o.trim().is_empty()) {
                        return Err(Error::Config(format!(
                            "{}: the token of principal {principal} has an empty orgs list or org; give the orgs it may reach, or a plain \"principal\" for every org",
                            path.display()
                        )));
                    }
                    (principal, Scope::Orgs(Arc::new(orgs.into_iter().collect())))
                }
            };
            let hex_part = key.strip_prefix(HASH_PREFIX).unwrap_or("");
            let mut d = [0u8; 32];
            if hex::decode_to_slice(hex_part, &mut d).is_err() {
                return Err(Error::Config(format!(
                    "{}: the key of principal {principal} is not a token hash; a tokens file holds \"sha256:<64 hex digits>\" = \"principal\" (fleetledger token create PRINCIPAL prints one), never a token",
                    path.display()
                )));
            }
            digests.push((d, Caller { principal, scope }));
        }
        Ok(Tokens { digests })
    }

    /// Who `token` is, if it is known.
    pub fn caller(&self, token: &str) -> Option<&Caller> {
        let presented = digest(token);
        let mut found = None;
        // Every digest is compared, whatever matches: the time says nothing of which.
        for (d, c) in &self.digests {
            if digests_equal(d, &presented) {
                found = Some(c);
            }
        }
        found
    }

    /// The principal of `token`, if it is known.
    pub fn principal(&self, token: &str) -> Option<&str> {
        self.caller(token).map(|c| c.principal.as_str())
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
        assert_eq!(t.principal("dev-registry-admin"), Some(REGISTRY_ADMIN));
        assert_eq!(t.principal("dev-nobody"), None);
    }

    #[test]
    fn a_tokens_file_holds_hashes_never_tokens() {
        let dir = std::env::temp_dir().join(format!("fl-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tokens.toml");
        let line = format!("[tokens]\n\"{}\" = \"sync\"\n", token_hash("s3cret"));
        std::fs::write(&f, line).unwrap();
        let t = Tokens::from_file(&f).unwrap();
        assert_eq!(t.principal("s3cret"), Some("sync"));
        assert_eq!(t.principal("s3cre"), None);
        assert_eq!(
            t.principal(&token_hash("s3cret")),
            None,
            "the hash is no token"
        );
        let scoped = format!(
            "[tokens]\n\"{}\" = {{ principal = \"frontend\", orgs = [\"org-a\", \"org-b\"] }}\n",
            token_hash("tenant")
        );
        std::fs::write(&f, scoped).unwrap();
        let t = Tokens::from_file(&f).unwrap();
        let c = t.caller("tenant").unwrap();
        assert_eq!(c.principal, "frontend");
        assert!(c.scope.allows("org-a") && c.scope.allows("org-b") && !c.scope.allows("org-c"));
        std::fs::write(
            &f,
            format!(
                "[tokens]\n\"{}\" = {{ principal = \"frontend\", orgs = [] }}\n",
                token_hash("tenant")
            ),
        )
        .unwrap();
        let err = Tokens::from_file(&f).unwrap_err().to_string();
        assert!(err.contains("empty orgs"), "{err}");
        std::fs::write(&f, "[tokens]\n\"s3cret\" = \"sync\"\n").unwrap();
        let err = Tokens::from_file(&f).unwrap_err().to_string();
        assert!(
            err.contains("not a token hash") && !err.contains("s3cret"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
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
        assert_eq!(t.principal("dev-registry-admin"), Some(REGISTRY_ADMIN));
        for p in o.principals() {
            assert_eq!(t.principal(&format!("dev-{p}")), Some(p.as_str()));
        }
    }
}
