//! `GET /v1/watch` as a controller uses it: Server-Sent Events of accepted changes,
//! filtered, resumable from any event's id without skipping or repeating a change.

use std::time::Duration;

use serde_json::Value;

use crate::append::{Api, logical, status};
use crate::support::{TestServer, config, unique_prefix};

/// An open event stream and the text read from it but not yet parsed.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(url: &str, query: &str, last_event_id: Option<&str>) -> Events {
        let mut req = reqwest::Client::new()
            .get(format!("{url}/v1/watch?{query}"))
            .bearer_auth("dev-sync");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Events {
            resp,
            buf: String::new(),
        }
    }

    /// The next `change` event: its id and record; `None` if none comes within 10 s.
    async fn next_change(&mut self) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = ("", "", String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if event == "change" {
                    return Some((id.to_owned(), serde_json::from_str(&data).unwrap()));
                }
                assert_ne!(event, "error", "the watch failed: {data}");
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?
                .unwrap()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn a_watch_streams_filtered_changes_and_resumes_without_skipping_or_repeating() {
    let server = TestServer::start(config(&unique_prefix("watch"))).await;
    let api = Api::new(&server);
    let url = server.url();
    let in_org = |cluster: &'static str, org: &'static str| {
        let api = api.clone();
        async move {
            let mut l = logical(1);
            l["org_id"] = serde_json::json!(org);
            let (st, v) = api
                .append(cluster, "logical", "dev-frontend", &l, &[])
                .await;
            assert_eq!(st, 201, "{v}");
        }
    };
    in_org("lkc-w1", "org-a").await;
    in_org("lkc-w2", "org-b").await;
    let push = |cluster: &'static str, n: i64| {
        let api = api.clone();
        async move {
            let (st, v) = api
                .append(cluster, "status", "dev-sync", &status("running", n, 1), &[])
                .await;
            assert_eq!(st, 201, "{v}");
            v["version"].as_i64().unwrap()
        }
    };
    // From now: only what is committed after the stream opened, of lkc-w1's status.
    let mut w = Events::open(&url, "cluster=lkc-w1&facet=status", None).await;
    let mut org_b = Events::open(&url, "org=org-b", None).await;
    let mut written = Vec::new();
    for n in 1..=3 {
        written.push(push("lkc-w1", n).await);
        push("lkc-w2", n).await;
    }
    let mut ids = Vec::new();
    for version in &written {
        let (id, record) = w.next_change().await.expect("a change");
        assert_eq!(
            (record["cluster_id"].as_str(), record["facet"].as_str()),
            (Some("lkc-w1"), Some("status"))
        );
        assert_eq!(record["version"].as_i64(), Some(*version));
        ids.push(id);
    }
    // The org filter passes the other org's cluster, status included (its org is its
    // logical state's).
    for n in 1..=3 {
        let (_, record) = org_b.next_change().await.expect("an org-b change");
        assert_eq!(record["cluster_id"], "lkc-w2");
        assert_eq!(record["version"].as_i64(), Some(n));
    }
    drop(w);
    drop(org_b);
    // Two more while nobody watches; resumed from the second event's id: the third, then
    // the two new ones, and nothing before.
    for n in 4..=5 {
        written.push(push("lkc-w1", n).await);
    }
    let mut resumed = Events::open(&url, "cluster=lkc-w1&facet=status", Some(&ids[1])).await;
    for version in &written[2..] {
        let (_, record) = resumed.next_change().await.expect("a resumed change");
        assert_eq!(record["version"].as_i64(), Some(*version));
    }
    // The same position given as `from`.
    let mut again = Events::open(
        &url,
        &format!("cluster=lkc-w1&facet=status&from={}", ids[1]),
        None,
    )
    .await;
    let (_, record) = again.next_change().await.expect("a change");
    assert_eq!(record["version"].as_i64(), Some(written[2]));
    // A position that is not one is refused.
    let (st, v) = api.get("/v1/watch?from=banana", "dev-sync").await;
    assert_eq!(
        (st, v["error"].as_str()),
        (400, Some("invalid_point")),
        "{v}"
    );
    server.stop().await;
}

/// A watch outlives its request, so watches have a cap of their own: one past
/// `max_watches` is refused at once with 503 and Retry-After.
#[tokio::test]
async fn watches_beyond_their_cap_are_refused() {
    let mut cfg = config(&unique_prefix("watchcap"));
    cfg.max_watches = 1;
    let server = TestServer::start(cfg).await;
    let url = server.url();
    let _open = Events::open(&url, "facet=status", None).await;
    let r = reqwest::Client::new()
        .get(format!("{url}/v1/watch"))
        .bearer_auth("dev-sync")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "overloaded", "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("max_watches"),
        "{v}"
    );
    server.stop().await;
}
