//! The PostgreSQL wire protocol (`pg_listen`, default `127.0.0.1:5433`): `psql`, drivers
//! (libpq, psycopg, JDBC) and BI tools run the same read-only SQL as `POST /v1/sql`, through
//! the same [`QueryEngine`](fleetledger_queries::QueryEngine), so with the same limits,
//! tenant scopes and metrics.
//!
//! - **Login.** Database `fleetledger`; the user is the token's principal and the
//!   password is the token (cleartext password authentication, as the HTTP API's bearer
//!   token is sent in clear: keep the listener on loopback or behind TLS).
//! - **Statements.** Simple and extended query protocols: prepared statements with
//!   parameters `$1`, `$2`, … (text or binary), answers in text or binary per column.
//!   `SET`, `RESET`, `DISCARD`, `DEALLOCATE` and transaction control are accepted and
//!   change nothing: every statement reads a fresh snapshot of the projections and the
//!   session's limits are the server's. `SHOW` answers the settings of
//!   [`pg_catalog::SETTINGS`](fleetledger_queries::pg_catalog::SETTINGS) (`SHOW TABLES` is
//!   SQL's own).
//! - **Limits.** At most `pg_max_connections` sessions; one more is refused at login
//!   with SQLSTATE 53300. Sessions end at shutdown (they only read, so nothing is lost).

mod auth;
mod query;
mod rows;

use crate::http::AppState;
use fleetledger_ledger::Caller;
use pgwire::api::PgWireServerHandlers;
use pgwire::api::auth::StartupHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::error::{ErrorInfo, PgWireError};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A logged-in session: who it is, and its turn among the connections (given back, and
/// the open sessions' gauge lowered, when the connection's state is dropped).
#[derive(Debug)]
struct Session {
    caller: Caller,
    _turn: OwnedSemaphorePermit,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An error the client shows: SQLSTATE `code` and `message`.
fn refusal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

/// The handlers of every connection.
#[derive(Debug)]
struct Handlers {
    startup: Arc<auth::TokenLogin>,
    queries: Arc<query::Queries>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Serves the PostgreSQL protocol on `listener` until `shutdown`, at most `max_connections`
/// sessions at once, each a task of `tracker`.
pub(crate) fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    max_connections: usize,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let turns = Arc::new(Semaphore::new(max_connections.max(1)));
    let handlers = Arc::new(Handlers {
        startup: Arc::new(auth::TokenLogin::new(
            state.clone(),
            turns,
            max_connections.max(1),
        )),
        queries: Arc::new(query::Queries::new(state)),
    });
    let sessions = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (socket, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres protocol: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handlers = handlers.clone();
            let stop = shutdown.clone();
            sessions.spawn(async move {
                let span = tracing::info_span!("pg_session", %peer);
                let session = tracing::Instrument::instrument(
                    pgwire::tokio::process_socket(socket, None, handlers),
                    span,
                );
                tokio::select! {
                    _ = stop.cancelled() => {}
                    r = session => if let Err(e) = r {
                        tracing::debug!(error = %e, %peer, "postgres session ended with an error");
                    }
                }
            });
        }
    });
}
