//! How every Kafka client authenticates and encrypts: TLS with a CA file, SASL `PLAIN`
//! or `SCRAM-SHA-256/512`, the password from the environment or a file. The decision
//! ([`KafkaSecurity::client_settings`]) is a pure function from the configuration to
//! librdkafka's settings, so a wrong combination is refused with a message before any
//! client exists; the password is never printed ([`Secret`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A secret: its `Debug` (and so every log line and error that prints a configuration)
/// shows `***`, never the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that hands it to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Kafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (a local broker).
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL without TLS: the password crosses the network in clear with `PLAIN`.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// `PLAIN`: the password itself is sent (use it over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Client security (`kafka.security.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// PEM file of the CA that signed the brokers' certificates; none: the system's CAs.
    pub ca_file: Option<PathBuf>,
    /// Do not check that a broker's certificate names the host it was reached at. Off by
    /// default; only for brokers whose certificates lack their addresses.
    pub skip_hostname_verification: bool,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (required with a `sasl_*` protocol).
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user name.
    pub sasl_username: Option<String>,
    /// The SASL password; set it through `FLEETLEDGER_KAFKA__SECURITY__SASL_PASSWORD`
    /// rather than a file of configuration. Never logged.
    pub sasl_password: Option<Secret>,
    /// A file whose content (trailing newline removed) is the SASL password, as secret
    /// stores mount them; instead of `sasl_password`.
    pub sasl_password_file: Option<PathBuf>,
}

fn config_error(message: String) -> Error {
    Error::Config(format!("kafka.security: {message}"))
}

impl KafkaSecurity {
    /// librdkafka's settings for this configuration, or what is wrong with it: a SASL
    /// protocol without a mechanism, user or password; a password both inline and in a
    /// file; a CA or password file that cannot be read; TLS or SASL settings given for a
    /// protocol that does not use them (they would be silently ignored).
    pub fn client_settings(&self) -> Result<Vec<(&'static str, String)>> {
        let p = self.protocol;
        let mut out = vec![("security.protocol", p.as_str().to_owned())];
        if p.tls() {
            if let Some(ca) = &self.ca_file {
                std::fs::metadata(ca)
                    .map_err(|e| config_error(format!("ca_file {}: {e}", ca.display())))?;
                out.push(("ssl.ca.location", ca.display().to_string()));
            }
            let check = if self.skip_hostname_verification {
                "none"
            } else {
                "https"
            };
            out.push(("ssl.endpoint.identification.algorithm", check.to_owned()));
        } else if self.ca_file.is_some() || self.skip_hostname_verification {
            return Err(config_error(format!(
                "ca_file and skip_hostname_verification are TLS settings, but protocol is {}; use ssl or sasl_ssl",
                p.as_str()
            )));
        }
        let sasl_given = self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
            || self.sasl_password_file.is_some();
        if !p.sasl() {
            if sasl_given {
                return Err(config_error(format!(
                    "SASL settings are given, but protocol is {}; use sasl_ssl (or sasl_plaintext)",
                    p.as_str()
                )));
            }
            return Ok(out);
        }
        let mechanism = self.sasl_mechanism.ok_or_else(|| {
            config_error(format!(
                "protocol {} needs sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                p.as_str()
            ))
        })?;
        let user = self
            .sasl_username
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| config_error(format!("protocol {} needs sasl_username", p.as_str())))?;
        let password = match (&self.sasl_password, &self.sasl_password_file) {
            (Some(_), Some(_)) => {
                return Err(config_error(
                    "give the SASL password once: sasl_password or sasl_password_file, not both"
                        .into(),
                ));
            }
            (Some(s), None) => s.expose().to_owned(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| config_error(format!("sasl_password_file {}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            (None, None) => {
                return Err(config_error(format!(
                    "protocol {} needs a password: FLEETLEDGER_KAFKA__SECURITY__SASL_PASSWORD or sasl_password_file",
                    p.as_str()
                )));
            }
        };
        if password.is_empty() {
            return Err(config_error("the SASL password is empty".into()));
        }
        out.push(("sasl.mechanisms", mechanism.as_str().to_owned()));
        out.push(("sasl.username", user));
        out.push(("sasl.password", password));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl_ssl() -> KafkaSecurity {
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("fleetledger".into()),
            sasl_password: Some(Secret::new("s3cret")),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn plaintext_is_the_default_and_sets_only_the_protocol() {
        let s = KafkaSecurity::default().client_settings().unwrap();
        assert_eq!(s, vec![("security.protocol", "plaintext".to_owned())]);
    }

    #[test]
    fn sasl_over_tls_verifies_the_host_and_passes_the_credentials() {
        let s = sasl_ssl().client_settings().unwrap();
        let get = |k: &str| s.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.username"), Some("fleetledger"));
        assert_eq!(get("sasl.password"), Some("s3cret"));
        assert_eq!(get("ssl.ca.location"), None, "the system's CAs");
    }

    #[test]
    fn the_password_comes_from_a_file_without_its_newline() {
        let f = std::env::temp_dir().join(format!("fl-sasl-{}", std::process::id()));
        std::fs::write(&f, "from-file\n").unwrap();
        let c = KafkaSecurity {
            sasl_password: None,
            sasl_password_file: Some(f.clone()),
            ..sasl_ssl()
        };
        let s = c.client_settings().unwrap();
        assert!(s.contains(&("sasl.password", "from-file".to_owned())));
        std::fs::remove_file(f).unwrap();
    }

    #[test]
    fn wrong_combinations_are_refused_with_what_would_be_right() {
        let refused = |c: KafkaSecurity, says: &str| {
            let e = c.client_settings().unwrap_err().to_string();
            assert!(e.contains(says), "{e} should say {says}");
        };
        refused(
            KafkaSecurity {
                sasl_mechanism: None,
                ..sasl_ssl()
            },
            "needs sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        );
        refused(
            KafkaSecurity {
                sasl_username: None,
                ..sasl_ssl()
            },
            "needs sasl_username",
        );
        refused(
            KafkaSecurity {
                sasl_password: None,
                ..sasl_ssl()
            },
            "FLEETLEDGER_KAFKA__SECURITY__SASL_PASSWORD or sasl_password_file",
        );
        refused(
            KafkaSecurity {
                sasl_password_file: Some("/x".into()),
                ..sasl_ssl()
            },
            "not both",
        );
        refused(
            KafkaSecurity {
                ca_file: Some("/no/such/ca.pem".into()),
                ..sasl_ssl()
            },
            "ca_file /no/such/ca.pem",
        );
        refused(
            KafkaSecurity {
                protocol: SecurityProtocol::Plaintext,
                ..sasl_ssl()
            },
            "SASL settings are given, but protocol is plaintext",
        );
        refused(
            KafkaSecurity {
                ca_file: Some("/tmp".into()),
                ..KafkaSecurity::default()
            },
            "TLS settings, but protocol is plaintext",
        );
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let text = format!("{:?}", sasl_ssl());
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("***"));
    }
}
