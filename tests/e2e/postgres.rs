//! The PostgreSQL protocol with the real clients: `psql` (Debian's postgresql-client),
//! psycopg (PyPI) and the PostgreSQL JDBC driver (Maven Central), all installed by
//! `deploy/local/test`, against a service with a simulated fleet. Each answer is checked
//! against `POST /v1/sql`.

use std::path::PathBuf;
use std::process::Command;

use crate::support::{config, simulated_fleet, sql_as, tokens_file, unique_prefix};

/// `psql -At` of `sql` as `user` with `password`: its exit status, stdout and stderr.
async fn psql(port: u16, user: &str, password: &str, sql: &str) -> (bool, String, String) {
    let mut c = Command::new("psql");
    c.args([
        &format!("host=127.0.0.1 port={port} dbname=fleetledger user={user}"),
        "-XAt",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ])
    .env("PGPASSWORD", password)
    .env("PGCONNECT_TIMEOUT", "10");
    // Off the test's runtime thread, which serves the session.
    let out = blocking(c).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

async fn blocking(mut c: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        c.output()
            .expect("the client runs (deploy/local/test installs psql, psycopg and java's driver)")
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn psql_psycopg_and_jdbc_read_what_the_http_sql_reads() {
    let org = "org-1";
    let mut cfg = config(&unique_prefix("pg"));
    cfg.auth.tokens_file = Some(tokens_file(&[
        ("dev-import", "import", &[]),
        ("dev-sync", "sync", &[]),
        ("tenant-token", "tenant", &[org]),
    ]));
    let fleet = simulated_fleet(cfg, 24, 3).await;
    let (server, url) = (&fleet.server, fleet.server.url());
    let port = server.pg_port();

    // psql: the same answers as /v1/sql, for every caller.
    for (sql, token, user) in [
        ("SELECT count(*) AS n FROM clusters", "dev-sync", "sync"),
        ("SELECT count(*) AS n FROM audit_log", "dev-sync", "sync"),
        (
            "SELECT count(*) AS n FROM clusters",
            "tenant-token",
            "tenant",
        ),
        (
            "SELECT round(sum(cku_hours), 6) AS n FROM billing_hours",
            "tenant-token",
            "tenant",
        ),
    ] {
        let (_, http) = sql_as(&url, token, sql).await;
        let (ok, out, err) = psql(port, user, token, sql).await;
        assert!(ok, "{sql}: {err}");
        assert_eq!(out, http["rows"][0]["n"].to_string(), "{sql} as {user}");
    }
    let (_, all) = sql_as(&url, "dev-sync", "SELECT count(*) AS n FROM clusters").await;
    let (_, own) = sql_as(&url, "tenant-token", "SELECT count(*) AS n FROM clusters").await;
    assert!(
        own["rows"][0]["n"].as_u64() < all["rows"][0]["n"].as_u64(),
        "the tenant sees fewer: {own} {all}"
    );
    let (ok, orgs, err) = psql(
        port,
        "tenant",
        "tenant-token",
        "SELECT DISTINCT org_id FROM billing_hours",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(orgs, org, "a tenant's session sees its org only");

    // Refusals name what was wrong; a write is refused and nothing changes.
    let (ok, _, err) = psql(port, "sync", "not-a-token", "SELECT 1").await;
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
    let (ok, _, err) = psql(port, "tenant", "dev-sync", "SELECT 1").await;
    assert!(
        !ok && err.contains("belongs to principal \"sync\""),
        "{err}"
    );
    let (ok, _, err) = psql(port, "sync", "dev-sync", "DELETE FROM clusters").await;
    assert!(!ok && err.contains("only queries are allowed"), "{err}");
    let (ok, _, err) = psql(port, "sync", "dev-sync", "SELECT * FROM nope").await;
    assert!(!ok && err.contains("nope"), "{err}");
    let (ok, shown, err) = psql(
        port,
        "sync",
        "dev-sync",
        "SET application_name = 'x'; SHOW TimeZone",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(shown, "SET\nUTC", "the SET tag, then the setting");
    // psql's own catalog query: \dt lists the tables.
    let (ok, listed, err) = psql(port, "sync", "dev-sync", "\\dt").await;
    assert!(ok, "{err}");
    assert!(
        listed
            .lines()
            .any(|l| l == "public|clusters|table|fleetledger"),
        "{listed}"
    );
    let (_, after) = sql_as(&url, "dev-sync", "SELECT count(*) AS n FROM audit_log").await;
    assert_eq!(
        after["rows"][0]["n"].as_u64(),
        Some(fleet.records),
        "nothing was written"
    );

    // psycopg: prepared statements, text and binary, typed answers.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pg/psycopg_client.py");
    let mut c = Command::new("python3");
    c.arg(script).args([
        "127.0.0.1",
        &port.to_string(),
        "sync",
        "dev-sync",
        &fleet.cluster,
    ]);
    let out = blocking(c).await;
    assert!(
        out.status.success(),
        "psycopg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("psycopg prints JSON");
    let (_, want) = sql_as(
        &url,
        "dev-sync",
        &format!(
            "SELECT cluster_id, org_id, logical_version, cku_desired FROM clusters WHERE cluster_id = '{}'",
            fleet.cluster
        ),
    )
    .await;
    for k in ["cluster_id", "org_id", "logical_version", "cku_desired"] {
        assert_eq!(got["cluster"][k], want["rows"][0][k], "{k}: {got}");
    }
    assert_eq!(
        got["cluster"]["types"],
        serde_json::json!(["str", "str", "int", "int", "datetime"]),
        "{got}"
    );
    let cluster_org = want["rows"][0]["org_id"].as_str().unwrap().to_owned();
    let (_, billed) = sql_as(
        &url,
        "dev-sync",
        &format!("SELECT count(*) AS n, sum(cku_hours) AS h FROM billing_hours WHERE org_id = '{cluster_org}' AND cku_hours >= 0"),
    )
    .await;
    assert_eq!(got["billing_binary"]["n"], billed["rows"][0]["n"], "{got}");
    let (a, b) = (
        got["billing_binary"]["cku_hours"].as_f64().unwrap(),
        billed["rows"][0]["h"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    assert_eq!(got["delete"]["sqlstate"], "25006", "{got}");
    assert!(got["server_version"].as_u64() >= Some(160_000), "{got}");

    // JDBC: the catalog a BI tool reads on connect, and a prepared statement.
    let jar = std::env::var("FLEETLEDGER_TEST_PGJDBC").expect(
        "FLEETLEDGER_TEST_PGJDBC names the PostgreSQL JDBC jar (deploy/local/test fetches it)",
    );
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pg/JdbcCatalog.java");
    let mut c = Command::new("java");
    c.arg("-cp").arg(&jar).arg(source).args([
        "127.0.0.1",
        &port.to_string(),
        "sync",
        "dev-sync",
        org,
    ]);
    let out = blocking(c).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "jdbc: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = |kind: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(kind).map(str::to_owned))
            .collect()
    };
    let (_, tables) = sql_as(
        &url,
        "dev-sync",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )
    .await;
    let want_tables: Vec<String> = tables["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["table_name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(lines("table "), want_tables);
    let (_, columns) = sql_as(
        &url,
        "dev-sync",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'clusters' ORDER BY ordinal_position",
    )
    .await;
    let names: Vec<String> = lines("column ")
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_owned())
        .collect();
    let want_columns: Vec<String> = columns["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["column_name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, want_columns);
    assert!(
        lines("column ").contains(&"updated_at timestamptz".to_owned()),
        "{stdout}"
    );
    let (_, n) = sql_as(
        &url,
        "dev-sync",
        &format!("SELECT count(*) AS n FROM clusters WHERE org_id = '{org}' AND cku_desired >= 0"),
    )
    .await;
    assert_eq!(
        lines("count "),
        vec![n["rows"][0]["n"].to_string(); 3],
        "{stdout}"
    );
    fleet.server.stop().await;
}

#[tokio::test]
async fn one_session_more_than_pg_max_connections_is_refused_at_login() {
    let mut cfg = config(&unique_prefix("pg-cap"));
    cfg.pg_max_connections = 1;
    let server = crate::support::TestServer::start(cfg).await;
    let port = server.pg_port();
    // A psql session that stays open while its standard input does.
    let mut held = std::process::Command::new("psql")
        .args([
            &format!("host=127.0.0.1 port={port} dbname=fleetledger user=sync"),
            "-XAtq",
        ])
        .env("PGPASSWORD", "dev-sync")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("psql runs");
    let mut stdin = held.stdin.take().unwrap();
    {
        use std::io::Write;
        writeln!(stdin, "SELECT 'held';").unwrap();
    }
    // Its answer is read once it is logged in and holds the only turn.
    let mut stdout = std::io::BufReader::new(held.stdout.take().unwrap());
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert_eq!(line.trim(), "held");
    let (ok, _, err) = psql(port, "sync", "dev-sync", "SELECT 1").await;
    assert!(!ok, "a second session is refused");
    assert!(err.contains("pg_max_connections"), "{err}");
    // Closing the first session gives its turn back.
    drop(stdin);
    tokio::task::spawn_blocking(move || held.wait())
        .await
        .unwrap()
        .unwrap();
    let mut answered = false;
    for _ in 0..50 {
        let (ok, out, _) = psql(port, "sync", "dev-sync", "SELECT 1").await;
        if ok && out == "1" {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(answered, "a session is served once the first one closed");
    // The operator sees it: the refused login, and no session left open (the last one
    // is closed once the server has read the client's goodbye).
    let value = crate::support::metric;
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = crate::support::metrics_text(&server.url()).await;
        if value(&metrics, "fleetledger_pg_sessions") == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        value(&metrics, "fleetledger_pg_sessions"),
        Some(0.0),
        "{metrics}"
    );
    let logins = |outcome: &str| {
        value(
            &metrics,
            &format!("fleetledger_pg_logins_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(logins("too_many"), Some(1.0), "{metrics}");
    assert!(logins("accepted") >= Some(2.0), "{metrics}");
    server.stop().await;
}
