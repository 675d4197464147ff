//! `fleetledger token create PRINCIPAL | hash`: tokens for a tokens file, which holds only
//! their hashes.

use std::io::Read;

use fleetledger_ledger::principals::token_hash;

/// A new token for `principal`: 32 random bytes from the operating system, hex, prefixed
/// `flt_`. Prints the token once (stdout) and the tokens-file line (stderr tells where);
/// with `orgs`, the line limits the token to them.
pub(crate) fn create(principal: &str, orgs: &[String]) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| anyhow::anyhow!("cannot read random bytes from /dev/urandom: {e}"))?;
    let token = format!(
        "flt_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    println!("{token}");
    eprintln!(
        "give the token above to {principal} (it is shown only now); add this line under [tokens] in the tokens file:"
    );
    if orgs.is_empty() {
        eprintln!("\"{}\" = \"{principal}\"", token_hash(&token));
    } else {
        let list: Vec<String> = orgs.iter().map(|o| format!("{o:?}")).collect();
        eprintln!(
            "\"{}\" = {{ principal = \"{principal}\", orgs = [{}] }}",
            token_hash(&token),
            list.join(", ")
        );
    }
    Ok(())
}

/// The tokens-file key of a token read from standard input (one line).
pub(crate) fn hash() -> anyhow::Result<()> {
    let mut token = String::new();
    std::io::stdin().read_line(&mut token)?;
    let token = token.trim();
    anyhow::ensure!(!token.is_empty(), "no token on standard input");
    println!("{}", token_hash(token));
    Ok(())
}
