//! Who gets in: token hashes, development tokens only where asked for and on loopback.

use fleetledger::server;
use fleetledger_ledger::principals::token_hash;
use tokio_util::sync::CancellationToken;

use crate::append::{Api, logical};
use crate::support::{TestServer, config, unique_prefix};

#[tokio::test]
async fn without_a_tokens_file_the_service_starts_only_with_development_tokens_on_loopback() {
    let mut cfg = config(&unique_prefix("notokens"));
    cfg.auth.development_tokens = false;
    let err = server::start(cfg.clone(), CancellationToken::new())
        .await
        .expect_err("refused without tokens")
        .to_string();
    assert!(
        err.contains("auth.tokens_file") && err.contains("token create"),
        "{err}"
    );
    cfg.auth.development_tokens = true;
    cfg.listen = "0.0.0.0:0".into();
    let err = server::start(cfg, CancellationToken::new())
        .await
        .expect_err("refused off loopback")
        .to_string();
    assert!(
        err.contains("loopback") && err.contains("0.0.0.0:0"),
        "{err}"
    );
}

#[tokio::test]
async fn a_tokens_file_of_hashes_lets_in_its_tokens_and_nothing_else() {
    let mut cfg = config(&unique_prefix("tokensfile"));
    let dir = std::env::temp_dir().join("fleetledger-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}-tokens.toml", unique_prefix("t")));
    std::fs::write(
        &file,
        format!(
            "[tokens]\n\"{}\" = \"frontend\"\n",
            token_hash("prod-frontend-secret")
        ),
    )
    .unwrap();
    cfg.auth.tokens_file = Some(file);
    cfg.auth.development_tokens = true; // a tokens file wins: no dev tokens then
    let server = TestServer::start(cfg).await;
    let api = Api::new(&server);
    let (st, v) = api
        .append(
            "lkc-tok1",
            "logical",
            "prod-frontend-secret",
            &logical(1),
            &[],
        )
        .await;
    assert_eq!(st, 201, "{v}");
    for bad in [
        "dev-frontend",
        "prod-frontend-secre",
        &token_hash("prod-frontend-secret"),
    ] {
        let (st, v) = api
            .append("lkc-tok2", "logical", bad, &logical(1), &[])
            .await;
        assert_eq!(st, 401, "{bad}: {v}");
    }
    server.stop().await;
}
