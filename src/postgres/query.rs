//! Statements: SQL goes to the query engine with the session's scope; the session
//! commands a driver sends around it (`SET`, `SHOW`, `BEGIN`, …) are answered here.

use super::rows::{fields_of, param_values, rows_of};
use super::{Session, refusal};
use crate::http::AppState;
use async_trait::async_trait;
use fleetledger_queries::pg_catalog::{SETTINGS, pg_type_of, setting};
use fleetledger_queries::{Error, PreparedQuery, QueryEngine, ScalarValue};
use futures::Sink;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use std::fmt::Debug;
use std::sync::Arc;

/// One statement of a session.
#[derive(Debug, Clone)]
pub(super) enum Statement {
    /// SQL for the query engine, planned for the session's scope.
    Sql {
        sql: String,
        prepared: PreparedQuery,
    },
    /// A session command, answered without the engine.
    Session(Command),
}

/// The session commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    /// `SET`, `RESET`, `DISCARD`, `DEALLOCATE`: accepted, changing nothing.
    Accept(&'static str),
    /// `BEGIN`, `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`, `ROLLBACK`, `ABORT`.
    End(&'static str),
    /// `SHOW name` for a setting of [`SETTINGS`], or `SHOW ALL`.
    Show(Option<&'static str>),
    /// `SHOW name` for a setting there is none of.
    Unknown(String),
}

/// The session command `sql` is, if it is one.
fn command_of(sql: &str) -> Option<Command> {
    let words: Vec<String> = sql
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .take(3)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let first = words.first()?.as_str();
    let second = words.get(1).map(String::as_str);
    Some(match first {
        "SET" => Command::Accept("SET"),
        "RESET" => Command::Accept("RESET"),
        "DISCARD" => Command::Accept("DISCARD ALL"),
        "DEALLOCATE" => Command::Accept("DEALLOCATE"),
        "BEGIN" => Command::Begin,
        "START" if second == Some("TRANSACTION") => Command::Begin,
        "COMMIT" | "END" => Command::End("COMMIT"),
        "ROLLBACK" | "ABORT" => Command::End("ROLLBACK"),
        "SHOW" => match second {
            Some("ALL") => Command::Show(None),
            // SHOW TABLES and SHOW COLUMNS are SQL's own.
            Some("TABLES" | "COLUMNS") => return None,
            Some(name) => {
                let name = name.trim_matches('"');
                match SETTINGS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    Some(known) => Command::Show(Some(known.0)),
                    None => Command::Unknown(name.to_ascii_lowercase()),
                }
            }
            None => return None,
        },
        _ => return None,
    })
}

/// Splits a simple query into its statements at `;`, outside quotes and comments.
fn statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote, mut line_comment, mut block_comment) = (0, None, false, false);
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        match (quote, line_comment, block_comment) {
            (Some(q), _, _) => {
                if c == q {
                    quote = None;
                }
            }
            (_, true, _) => line_comment = c != b'\n',
            (_, _, true) => {
                if c == b'*' && next == Some(b'/') {
                    block_comment = false;
                    i += 1;
                }
            }
            _ => match c {
                b'\'' | b'"' => quote = Some(c),
                b'-' if next == Some(b'-') => line_comment = true,
                b'/' if next == Some(b'*') => block_comment = true,
                b';' => {
                    out.push(&sql[start..i]);
                    start = i + 1;
                }
                _ => {}
            },
        }
        i += 1;
    }
    out.push(&sql[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The SQLSTATE and message of an engine error.
fn pg_error(e: Error) -> PgWireError {
    let code = match &e {
        Error::NotReadOnly(_) => "25006",
        Error::Invalid(m) if m.starts_with("syntax error") => "42601",
        Error::Invalid(m) if m.contains("not found") => "42P01",
        Error::Invalid(_) => "42000",
        Error::Timeout { .. } => "57014",
        Error::TooManyRows { .. } => "54000",
        Error::MemoryLimit { .. } => "53200",
        Error::Busy { .. } => "53000",
        Error::TooComplex(_) => "54001",
        Error::Internal(_) => "XX000",
    };
    refusal(code, e.to_string())
}

/// The statement handlers over the service's query engine.
#[derive(Debug)]
pub(super) struct Queries {
    state: Arc<AppState>,
    parser: Arc<Planner>,
}

impl Queries {
    pub(super) fn new(state: Arc<AppState>) -> Self {
        Queries {
            parser: Arc::new(Planner(state.clone())),
            state,
        }
    }
}

/// The session of `client`, or an error if it did not log in.
fn session_of<C: ClientInfo>(client: &C) -> PgWireResult<Arc<Session>> {
    client
        .session_extensions()
        .get::<Session>()
        .ok_or_else(|| refusal("28000", "not logged in"))
}

fn engine_of(state: &AppState) -> PgWireResult<&QueryEngine> {
    state
        .queries
        .get()
        .ok_or_else(|| refusal("57P03", "the projections are still starting"))
}

/// Plans each statement when the client parses it, for the session's scope.
#[derive(Debug)]
pub(super) struct Planner(Arc<AppState>);

impl Planner {
    async fn plan(&self, session: &Session, sql: &str) -> PgWireResult<Statement> {
        if let Some(c) = command_of(sql) {
            return Ok(Statement::Session(c));
        }
        let prepared = engine_of(&self.0)?
            .prepare(sql, &session.caller.scope)
            .await
            .map_err(pg_error)?;
        Ok(Statement::Sql {
            sql: sql.to_owned(),
            prepared,
        })
    }
}

#[async_trait]
impl QueryParser for Planner {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let session = session_of(client)?;
        self.plan(&session, sql).await.map(Some)
    }

    fn get_parameter_types(&self, stmt: &Statement) -> PgWireResult<Vec<Type>> {
        Ok(match stmt {
            Statement::Sql { prepared, .. } => prepared
                .params
                .iter()
                .map(|t| match t {
                    Some(t) => Type::from_oid(pg_type_of(t).oid).unwrap_or(Type::TEXT),
                    None => Type::TEXT,
                })
                .collect(),
            Statement::Session(_) => Vec::new(),
        })
    }

    fn get_result_schema(
        &self,
        stmt: &Statement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.unwrap_or(&Format::UnifiedText);
        Ok(match stmt {
            Statement::Sql { prepared, .. } => fields_of(&prepared.schema, format),
            Statement::Session(Command::Show(name)) => show_fields(*name, format),
            Statement::Session(_) => Vec::new(),
        })
    }
}

fn show_fields(name: Option<&str>, format: &Format) -> Vec<FieldInfo> {
    let text =
        |n: &str, i| FieldInfo::new(n.to_owned(), None, None, Type::TEXT, format.format_for(i));
    match name {
        Some(n) => vec![text(n, 0)],
        None => vec![text("name", 0), text("setting", 1)],
    }
}

/// The answer to a session command.
fn answer(command: &Command, format: &Format) -> PgWireResult<Response> {
    Ok(match command {
        Command::Accept(tag) => Response::Execution(Tag::new(tag)),
        Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Command::Unknown(name) => {
            let known: Vec<&str> = SETTINGS.iter().map(|(n, _)| *n).collect();
            return Err(refusal(
                "42704",
                format!(
                    "unrecognized configuration parameter \"{name}\"; the settings are {}",
                    known.join(", ")
                ),
            ));
        }
        Command::End(tag) => Response::TransactionEnd(Tag::new(tag)),
        Command::Show(name) => {
            let fields = Arc::new(show_fields(*name, format));
            let mut encoder = pgwire::api::results::DataRowEncoder::new(fields.clone());
            let mut rows = Vec::new();
            match name {
                Some(n) => {
                    encoder.encode_field(&setting(n))?;
                    rows.push(Ok(encoder.take_row()));
                }
                None => {
                    for (n, v) in SETTINGS {
                        encoder.encode_field(&n)?;
                        encoder.encode_field(&v)?;
                        rows.push(Ok(encoder.take_row()));
                    }
                }
            }
            Response::Query(QueryResponse::new(fields, futures::stream::iter(rows)))
        }
    })
}

impl Queries {
    async fn run(
        &self,
        session: &Session,
        sql: &str,
        params: &[ScalarValue],
        format: &Format,
    ) -> PgWireResult<Response> {
        let span = tracing::info_span!("pg_query", principal = %session.caller.principal);
        let out = tracing::Instrument::instrument(
            engine_of(&self.state)?.query_with(sql, params, &session.caller.scope),
            span,
        )
        .await
        .map_err(pg_error)?;
        let fields = Arc::new(fields_of(&out.schema, format));
        let rows = rows_of(&fields, &out.batches)?;
        let mut response =
            QueryResponse::new(fields, futures::stream::iter(rows.into_iter().map(Ok)));
        response.set_command_tag("SELECT");
        Ok(Response::Query(response))
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        let mut answers = Vec::new();
        for sql in statements(query) {
            let answer = match command_of(sql) {
                Some(c) => answer(&c, &Format::UnifiedText),
                None => self.run(&session, sql, &[], &Format::UnifiedText).await,
            };
            match answer {
                Ok(a) => answers.push(a),
                // Later statements of the query are not run, as PostgreSQL does.
                Err(PgWireError::UserError(e)) => {
                    answers.push(Response::Error(e));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(answers)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Statement;
    type QueryParser = Planner;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = session_of(client)?;
        match &portal.statement.statement {
            Statement::Session(c) => answer(c, &portal.result_column_format),
            Statement::Sql { sql, prepared } => {
                let params = param_values(portal, &prepared.params)?;
                self.run(&session, sql, &params, &portal.result_column_format)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simple_query_splits_at_semicolons_outside_quotes_and_comments() {
        assert_eq!(
            statements("SELECT 1; SELECT ';' -- a; comment\n; /* ; */ SELECT \"a;b\" FROM t;"),
            vec![
                "SELECT 1",
                " SELECT ';' -- a; comment\n",
                " /* ; */ SELECT \"a;b\" FROM t"
            ]
        );
        assert!(statements(" ; ;").is_empty());
    }

    #[test]
    fn session_commands_are_answered_and_sql_is_not_taken_for_one() {
        assert_eq!(
            command_of("SET extra_float_digits = 3"),
            Some(Command::Accept("SET"))
        );
        assert_eq!(command_of("begin"), Some(Command::Begin));
        assert_eq!(
            command_of("START TRANSACTION READ ONLY"),
            Some(Command::Begin)
        );
        assert_eq!(command_of("rollback;"), Some(Command::End("ROLLBACK")));
        assert_eq!(
            command_of("SHOW TimeZone"),
            Some(Command::Show(Some("TimeZone")))
        );
        assert_eq!(command_of("show all"), Some(Command::Show(None)));
        // SHOW TABLES is SQL's; an unknown setting is refused by name.
        assert_eq!(command_of("SHOW TABLES"), None);
        assert_eq!(
            command_of("SHOW work_mem"),
            Some(Command::Unknown("work_mem".into()))
        );
        assert!(answer(&Command::Unknown("work_mem".into()), &Format::UnifiedText).is_err());
        assert_eq!(command_of("SELECT 1"), None);
        assert_eq!(command_of("settle"), None);
    }
}
