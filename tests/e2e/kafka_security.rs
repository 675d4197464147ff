//! Secured Kafka clients against a broker listener that requires them: a broker of the
//! test's own (`FLEETLEDGER_KAFKA_SECURE=1` on port 19600), whose SASL_SSL listener on
//! 19602 takes TLS with the local CA's certificate and SASL PLAIN or SCRAM-SHA-512. The
//! service writes and reads through it with each mechanism; a wrong password never gets
//! it ready, and no log line ever carries the password.

use std::time::Duration;

use fleetledger_ledger::{KafkaSecurity, SaslMechanism, Secret, SecurityProtocol};

use crate::support::{
    TestServer, config, fleetledger_command, free_port, kafka_script, sql_as, unique_prefix,
};

const SECURE_BROKER: [(&str, &str); 3] = [
    ("FLEETLEDGER_KAFKA_PORT", "19600"),
    ("FLEETLEDGER_KAFKA_SECURE", "1"),
    ("FLEETLEDGER_KAFKA_HEAP", "512m"),
];
const PASSWORD: &str = "fleetledger-secret";

fn secured(prefix: &str, ca: &str, mechanism: SaslMechanism) -> fleetledger::Config {
    let mut cfg = config(prefix);
    cfg.kafka.bootstrap_servers = "127.0.0.1:19602".into();
    cfg.kafka.accept_weak_durability = true;
    cfg.kafka.security = KafkaSecurity {
        protocol: SecurityProtocol::SaslSsl,
        ca_file: Some(ca.into()),
        sasl_mechanism: Some(mechanism),
        sasl_username: Some("fleetledger".into()),
        sasl_password: Some(Secret::new(PASSWORD)),
        ..KafkaSecurity::default()
    };
    cfg
}

#[tokio::test]
async fn the_service_works_through_tls_and_sasl_and_a_wrong_password_never_gets_it_ready() {
    kafka_script(&["start"], &SECURE_BROKER);
    let ca = kafka_script(&["tls-ca"], &SECURE_BROKER).trim().to_owned();

    for mechanism in [SaslMechanism::Plain, SaslMechanism::ScramSha512] {
        let cfg = secured(&unique_prefix("sasl"), &ca, mechanism);
        let server = TestServer::start(cfg).await;
        let url = server.url();
        let http = reqwest::Client::new();
        let state = crate::append::logical(2);
        let r = http
            .post(format!("{url}/v1/clusters/lkc-secured/logical"))
            .bearer_auth("dev-frontend")
            .json(&state)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "{mechanism:?}: {}",
            r.text().await.unwrap()
        );
        let mut projected = false;
        for _ in 0..100 {
            let (_, v) = sql_as(&url, "dev-sync", "SELECT count(*) AS n FROM clusters").await;
            if v["rows"][0]["n"] == 1 {
                projected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            projected,
            "{mechanism:?}: the projector reads through SASL_SSL too"
        );
        server.stop().await;
    }

    // The same service as a process, with the password from its environment: a wrong one
    // never gets it ready, the right one does, and neither reaches its log.
    let cfg = secured(&unique_prefix("sasl-env"), &ca, SaslMechanism::ScramSha512);
    let dir = std::env::temp_dir()
        .join("fleetledger-tests")
        .join(unique_prefix("sasl-logs"));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |password: &str, log: &std::path::Path| {
        let port = free_port();
        let child = fleetledger_command(&cfg)
            .arg("serve")
            .env("FLEETLEDGER_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLEETLEDGER_PG_LISTEN", "")
            .env("FLEETLEDGER_AUTH__DEVELOPMENT_TOKENS", "true")
            .env("FLEETLEDGER_KAFKA__ACCEPT_WEAK_DURABILITY", "true")
            .env("FLEETLEDGER_KAFKA__SECURITY__PROTOCOL", "sasl_ssl")
            .env("FLEETLEDGER_KAFKA__SECURITY__CA_FILE", &ca)
            .env(
                "FLEETLEDGER_KAFKA__SECURITY__SASL_MECHANISM",
                "SCRAM-SHA-512",
            )
            .env("FLEETLEDGER_KAFKA__SECURITY__SASL_USERNAME", "fleetledger")
            .env("FLEETLEDGER_KAFKA__SECURITY__SASL_PASSWORD", password)
            .env("FLEETLEDGER_LOG", "debug")
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("fleetledger serve starts");
        (child, format!("http://127.0.0.1:{port}"))
    };
    let ready_within = |url: String, limit: Duration| async move {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = reqwest::get(format!("{url}/readyz")).await
                && r.status().as_u16() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    };
    let wrong = "not-the-password-7f3a";
    let bad_log = dir.join("wrong.log");
    let (mut child, url) = run(wrong, &bad_log);
    assert!(
        !ready_within(url, Duration::from_secs(15)).await,
        "a wrong password is never ready"
    );
    let _ = child.kill();
    let _ = child.wait();
    let good_log = dir.join("right.log");
    let (mut child, url) = run(PASSWORD, &good_log);
    assert!(
        ready_within(url, Duration::from_secs(60)).await,
        "the right password is ready"
    );
    let _ = child.kill();
    let _ = child.wait();
    let logs = |p: &std::path::Path| {
        std::fs::read_to_string(p).unwrap()
            + &std::fs::read_to_string(p.with_extension("out")).unwrap()
    };
    let (bad, good) = (logs(&bad_log), logs(&good_log));
    assert!(
        bad.to_lowercase().contains("authentication"),
        "the refusal names the authentication: {}",
        bad.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    for (text, secret) in [(&bad, wrong), (&good, PASSWORD)] {
        assert!(!text.contains(secret), "the password is in a log line");
    }
    // Its JVM would load the cores under the rest of the suite.
    kafka_script(&["stop"], &SECURE_BROKER);
}
