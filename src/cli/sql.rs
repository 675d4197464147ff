//! `fleetledger sql`: one statement, or an interactive prompt, against `POST /v1/sql`.

use std::process::ExitCode;

use fleetledger_client::{ApiClient, ClientError};

/// The answer to `sql` as text: `table` (aligned, from the server's Arrow stream), `json`
/// (pretty) or `csv`.
async fn answer(client: &ApiClient, sql: &str, format: &str) -> anyhow::Result<String> {
    Ok(match format {
        "table" => fleetledger_queries::ipc_to_table(&client.sql(sql, "arrow").await?)?,
        "json" => {
            let bytes = client.sql(sql, "json").await?;
            serde_json::to_string_pretty(&serde_json::from_slice::<serde_json::Value>(&bytes)?)?
        }
        "csv" => String::from_utf8_lossy(&client.sql(sql, "csv").await?).into_owned(),
        other => anyhow::bail!("unknown format {other:?}: expected table, json or csv"),
    })
}

/// Runs `sql`, or the prompt without it. A refused statement ends with 2 (or 1 for a
/// server error).
pub(crate) async fn sql(
    client: &ApiClient,
    sql: Option<String>,
    format: &str,
) -> anyhow::Result<ExitCode> {
    let Some(q) = sql else {
        prompt(client, format).await?;
        return Ok(ExitCode::SUCCESS);
    };
    match answer(client, &q, format).await {
        Ok(text) => {
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api(api)) => {
                eprintln!("error: {api}");
                Ok(ExitCode::from(if api.status < 500 { 2 } else { 1 }))
            }
            _ => Err(e),
        },
    }
}

/// The interactive prompt: one statement per line (end with `;` to span lines), history
/// in `~/.fleetledger_sql_history`, errors printed and the prompt kept.
async fn prompt(client: &ApiClient, format: &str) -> anyhow::Result<()> {
    let mut rl = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".fleetledger_sql_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() {
            "fleetledger> "
        } else {
            "        ...> "
        };
        let line = match rl.readline(prompt) {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                statement.clear();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if statement.is_empty() && matches!(trimmed, "quit" | "exit" | "\\q") {
            break;
        }
        if trimmed.is_empty() {
            continue;
        }
        statement.push_str(&line);
        statement.push('\n');
        if !trimmed.ends_with(';')
            && !statement
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("show")
        {
            continue;
        }
        let sql = statement.trim().trim_end_matches(';').to_owned();
        statement.clear();
        let _ = rl.add_history_entry(sql.as_str());
        match answer(client, &sql, format).await {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}
