//! Login: database `fleetledger`, the token as the password, the token's principal as the
//! user, and a turn among `pg_max_connections`.

use super::{Session, refusal};
use crate::http::AppState;
use async_trait::async_trait;
use fleetledger_ledger::Caller;
use fleetledger_queries::pg_catalog::{DATABASE, SETTINGS};
use futures::Sink;
use pgwire::api::ClientInfo;
use pgwire::api::auth::cleartext::CleartextPasswordAuth;
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::{
    AuthDriver, AuthSource, LoginInfo, Password, ServerParameterProvider, StartupHandler,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The tokens of the HTTP API, as passwords.
#[derive(Debug)]
struct Tokens(Arc<AppState>);

#[async_trait]
impl AuthSource<Caller> for Tokens {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Tokens are kept as digests only; verify_password compares them.
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn verify_password(
        &self,
        login: &LoginInfo,
        presented: &[u8],
    ) -> PgWireResult<Option<Caller>> {
        let user = login.user().unwrap_or_default();
        let caller = std::str::from_utf8(presented)
            .ok()
            .and_then(|t| self.0.tokens.caller(t.trim()))
            .ok_or_else(|| {
                refusal(
                    "28P01",
                    format!(
                        "password authentication failed for user \"{user}\": the password must be a fleetledger API token (fleetledger token create PRINCIPAL)"
                    ),
                )
            })?;
        if caller.principal != user {
            return Err(refusal(
                "28000",
                format!(
                    "the token belongs to principal \"{}\", not to user \"{user}\": connect as user {}",
                    caller.principal, caller.principal
                ),
            ));
        }
        Ok(Some(caller.clone()))
    }
}

/// The parameters a PostgreSQL 16 server reports at login.
#[derive(Debug)]
struct Parameters;

impl ServerParameterProvider for Parameters {
    fn server_parameters<C>(&self, _client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let reported = [
            "server_version",
            "server_encoding",
            "client_encoding",
            "DateStyle",
            "TimeZone",
            "integer_datetimes",
            "standard_conforming_strings",
        ];
        Some(
            SETTINGS
                .iter()
                .filter(|(n, _)| reported.contains(n))
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .chain([
                    ("application_name".to_owned(), String::new()),
                    ("is_superuser".to_owned(), "off".to_owned()),
                ])
                .collect(),
        )
    }
}

/// The login of every connection.
pub(super) struct TokenLogin {
    state: Arc<AppState>,
    driver: AuthDriver<Parameters, Caller>,
    passwords: CleartextPasswordAuth<Tokens>,
    turns: Arc<Semaphore>,
    max_connections: usize,
}

impl Debug for TokenLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenLogin")
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl TokenLogin {
    pub(super) fn new(state: Arc<AppState>, turns: Arc<Semaphore>, max_connections: usize) -> Self {
        TokenLogin {
            passwords: CleartextPasswordAuth::new(Arc::new(Tokens(state.clone()))),
            state,
            driver: AuthDriver::new(Parameters),
            turns,
            max_connections,
        }
    }
}

#[async_trait]
impl StartupHandler for TokenLogin {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                pgwire::api::auth::protocol_negotiation(client, startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
                let database = client
                    .metadata()
                    .get("database")
                    .or_else(|| client.metadata().get("user"))
                    .cloned()
                    .unwrap_or_default();
                if database != DATABASE {
                    self.state.metrics.pg_login("refused");
                    return Err(refusal(
                        "3D000",
                        format!(
                            "database \"{database}\" does not exist: connect to database {DATABASE}"
                        ),
                    ));
                }
                if self.state.queries.get().is_none() {
                    return Err(refusal(
                        "57P03",
                        "the projections are still starting; connect again in a moment",
                    ));
                }
                self.driver
                    .begin_authentication(client, self.passwords.create())
                    .await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let count = |outcome| self.state.metrics.pg_login(outcome);
                let advanced = self.driver.advance_authentication(client, message).await;
                if advanced.is_err() {
                    count("refused");
                }
                match advanced? {
                    AuthOutcome::Authenticated {
                        identity,
                        final_message,
                    } => {
                        let caller = identity
                            .ok_or_else(|| refusal("28000", "the login named no principal"))?;
                        let turn = self.turns.clone().try_acquire_owned().map_err(|_| {
                            count("too_many");
                            refusal(
                                "53300",
                                format!(
                                    "{} sessions are open, the most allowed (pg_max_connections); close one or retry later",
                                    self.max_connections
                                ),
                            )
                        })?;
                        tracing::info!(principal = %caller.principal, "postgres session opened");
                        count("accepted");
                        let open = self.state.metrics.pg_sessions.clone();
                        open.inc();
                        client.session_extensions().insert(Session {
                            caller,
                            _turn: turn,
                            open,
                        });
                        self.driver
                            .complete_authentication(client, final_message)
                            .await?;
                    }
                    AuthOutcome::InProgress => {}
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
