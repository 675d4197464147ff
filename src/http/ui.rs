//! `/ui/`: the dashboard, three files built into the binary (no CDN, nothing fetched from
//! elsewhere: the page's Content-Security-Policy allows only this origin). The page calls
//! the same API with the same tokens as any client; the files themselves need none.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /ui`: to `/ui/`, so that the page's relative links resolve.
pub(crate) async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`: the page.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /ui/{file}`: its script and style sheet.
pub(crate) async fn file(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", APP),
        "style.css" => asset("text/css; charset=utf-8", STYLE),
        "" | "index.html" => index().await,
        _ => (StatusCode::NOT_FOUND, "no such file in the dashboard").into_response(),
    }
}
