//! `GET /v1/watch`: accepted changes as Server-Sent Events, for controllers that react to
//! them over HTTP (those that speak Kafka read the history topic directly).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleetledger_ledger::watch::{WatchFilter, WatchPosition};
use fleetledger_schemas::Facet;
use futures::StreamExt;

use crate::http::clusters::record_json;
use crate::http::error::AppError;
use crate::http::request::*;
use crate::http::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/watch",
    tag = "queries",
    summary = "Accepted changes as Server-Sent Events",
    description = "Each event `change` carries a record (as `/history` shows it) and, as its id, the position to resume from (`from=` or `Last-Event-ID`).",
    params(
        ("facet" = Option<crate::http::openapi::FacetName>, Query, description = "Only this facet"),
        ("cluster" = Option<String>, Query, description = "Only this cluster"),
        ("org" = Option<String>, Query, description = "Only this org"),
        ("from" = Option<String>, Query, description = "The position to resume from (an event's id); default now"),
        ("Last-Event-ID" = Option<String>, Header, description = "As `from`, sent by an EventSource on reconnecting"),
    ),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        crate::http::openapi::Refusals,
    )
)]
/// `GET /v1/watch?facet=F&cluster=ID&org=ORG&from=POSITION`: every change committed from
/// `from` (or the `Last-Event-ID` header, as an `EventSource` sends on reconnecting; by
/// default from now) on, that passes the filters and the caller's scope, as an event
/// `change` whose data is the record (as `/history` shows it) and whose id is the position
/// to resume from just after it. A comment every 15 s keeps idle connections open. A
/// failure to read or decode history ends the stream with an event `error`.
pub(crate) async fn watch(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let who = authenticated(&state, &headers)?;
    let q = query_params(pairs, &["facet", "cluster", "org", "from"])?;
    // Held by the stream for as long as it runs.
    let turn = state.watches.clone().try_acquire_owned().map_err(|_| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "{} watches are open, the most allowed at once (max_watches); retry later",
                state.max_watches
            ),
        )
    })?;
    let ledger = ledger(&state)?;
    let facet: Option<Facet> = q.get("facet").map(|f| f.parse()).transpose()?;
    if let Some(c) = q.get("cluster") {
        cluster(c)?;
    }
    let from = q
        .get("from")
        .cloned()
        .or_else(|| {
            headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .map(|p| WatchPosition::parse(&p, ledger.layout_partitions()))
        .transpose()?;
    let mut changes = ledger
        .watch(
            from,
            WatchFilter {
                facet,
                cluster_id: q.get("cluster").cloned(),
                org_id: q.get("org").cloned(),
                scope: who.scope,
            },
        )
        .await?;
    let events = futures::stream::poll_fn(move |cx| changes.poll_recv(cx)).map(move |change| {
        let _turn = &turn;
        Ok::<_, std::convert::Infallible>(match change {
            Ok(c) => Event::default()
                .event("change")
                .id(c.position.to_string())
                .data(record_json(&c.entry).to_string()),
            Err(e) => {
                let (_, body) = AppError::from(e).parts();
                Event::default().event("error").data(body.to_string())
            }
        })
    });
    // A watch never ends by itself: shutdown ends it, so that it does not hold the
    // graceful shutdown open.
    let events = events.take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
