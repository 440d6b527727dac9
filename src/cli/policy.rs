//! `portcullis policy`: tools for policy authors. `validate` and `test` work on a policy
//! directory offline; `explain` and `export` ask the running server's admin API;
//! `push`, `history` and `rollback` manage the policy sets kept in the control plane
//! (in force on every gateway) through it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::admin_client::{AdminClient, ClientArgs, cell, items, print, render_table};
use crate::identity::{Action, PasswordSlot};
use crate::policy::PolicyEngine;
use crate::policy::testcases;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate the schema, the base policies and every `*.cedar` in DIR (strict mode).
    Validate {
        #[arg(default_value = "./policies")]
        dir: PathBuf,
    },
    /// Run the policy test cases in DIR/tests/*.toml.
    Test {
        #[arg(default_value = "./policies")]
        dir: PathBuf,
    },
    /// Explain the running server's decision for a token's request.
    Explain {
        #[arg(long)]
        token: String,
        #[arg(long)]
        repository: String,
        /// `content/read`, `content/write`, `content/delete`, `metadata/read`,
        /// `metadata/write` or `trust/write`.
        #[arg(long)]
        action: Action,
        #[arg(long, conflicts_with = "digest")]
        tag: Option<String>,
        #[arg(long)]
        digest: Option<String>,
        #[arg(long)]
        source_ip: Option<IpAddr>,
        /// Whether the referenced manifest is signed (content trust).
        #[arg(long)]
        signed: bool,
        /// A verification identity whose OCI signature over the manifest verifies
        /// (`context.signatures`); repeat for several. Without it, the server finds
        /// and checks the manifest's own signatures and names each.
        #[arg(long = "signature", value_name = "NAME")]
        signatures: Vec<String>,
        /// The manifest is itself a signature (`context.signatureArtifact`).
        #[arg(long)]
        signature_artifact: bool,
        /// The password slot the caller authenticates with.
        #[arg(long, value_parser = parse_slot, default_value = "password1")]
        slot: PasswordSlot,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the running server's scope maps compiled to Cedar policies.
    Export {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Push every `*.cedar` in DIR to the control plane as a new policy version, in
    /// force on every gateway once validated with their policy directories' files.
    Push {
        dir: PathBuf,
        /// Why (e.g. the commit it comes from); kept with the version.
        #[arg(long, short = 'm')]
        message: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the pushed policy versions (the last one is in force).
    History {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Put the files of an earlier VERSION in force again, as a new version.
    Rollback {
        version: i64,
        #[arg(long, short = 'm')]
        message: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn parse_slot(s: &str) -> Result<PasswordSlot, String> {
    match s {
        "password1" => Ok(PasswordSlot::Password1),
        "password2" => Ok(PasswordSlot::Password2),
        other => Err(format!(
            "unknown password slot `{other}`: expected password1 or password2"
        )),
    }
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Validate { dir } => validate(&dir),
        PolicyCommand::Test { dir } => test(&dir),
        PolicyCommand::Explain {
            token,
            repository,
            action,
            tag,
            digest,
            source_ip,
            signed,
            signatures,
            signature_artifact,
            slot,
            client,
        } => {
            let body = json!({
                "token": token,
                "slot": slot,
                "repository": repository,
                "action": action,
                "tag": tag,
                "digest": digest,
                "sourceIp": source_ip,
                "signed": signed,
                "signatures": (!signatures.is_empty()).then_some(signatures),
                "signatureArtifact": signature_artifact,
            });
            let answer =
                AdminClient::new(&client)?.call(Method::POST, "/policy/explain", Some(&body))?;
            print(&client, &answer, explain_text)?;
            Ok(())
        }
        PolicyCommand::Export { client } => {
            let text = AdminClient::new(&client)?.call(Method::GET, "/policy/export", None)?;
            match text {
                Value::String(s) => print!("{s}"),
                other => println!("{other}"),
            }
            Ok(())
        }
        PolicyCommand::Push {
            dir,
            message,
            client,
        } => {
            let files = crate::policy::pushable_files(&dir)?;
            let body = json!({ "files": files, "message": message });
            let answer = AdminClient::new(&client)?.call(Method::PUT, "/policies", Some(&body))?;
            print(&client, &answer, versions_table)?;
            Ok(())
        }
        PolicyCommand::History { client } => {
            let answer = AdminClient::new(&client)?.call(Method::GET, "/policies", None)?;
            print(&client, &answer, versions_table)?;
            Ok(())
        }
        PolicyCommand::Rollback {
            version,
            message,
            client,
        } => {
            let body = json!({ "version": version, "message": message });
            let answer =
                AdminClient::new(&client)?.call(Method::POST, "/policies/rollback", Some(&body))?;
            print(&client, &answer, versions_table)?;
            Ok(())
        }
    }
}

/// VERSION, CREATED, AUTHOR, SHA256, FILES, MESSAGE per version.
fn versions_table(versions: &Value) -> String {
    let rows: Vec<Vec<String>> = items(versions)
        .into_iter()
        .map(|v| {
            let message = match (v["rollbackOf"].as_i64(), v["message"].as_str()) {
                (Some(old), Some(m)) => format!("rollback to {old}: {m}"),
                (Some(old), None) => format!("rollback to {old}"),
                (None, m) => m.unwrap_or_default().to_owned(),
            };
            vec![
                cell(&v["version"]),
                cell(&v["created"]),
                cell(&v["author"]),
                v["sha256"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(12)
                    .collect(),
                items(&v["files"])
                    .iter()
                    .map(|f| cell(f))
                    .collect::<Vec<_>>()
                    .join(","),
                message,
            ]
        })
        .collect();
    render_table(
        &["VERSION", "CREATED", "AUTHOR", "SHA256", "FILES", "MESSAGE"],
        &rows,
    )
}

fn validate(dir: &Path) -> anyhow::Result<()> {
    let engine = PolicyEngine::load(&[dir.to_owned()])?;
    println!("ok: {} policies", engine.policy_count());
    Ok(())
}

fn test(dir: &Path) -> anyhow::Result<()> {
    let files = testcases::test_files(dir)?;
    if files.is_empty() {
        bail!("no test files in `{}`", dir.join("tests").display());
    }
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let name = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let results = match testcases::run_file(dir, &file) {
            Ok(results) => results,
            Err(e) => {
                println!("FAIL {name}: {e}");
                failed += 1;
                continue;
            }
        };
        for case in results {
            let got = if case.decision.allowed {
                "allow"
            } else {
                "deny"
            };
            if case.passed() {
                passed += 1;
                println!("pass {name}: {} ({got})", case.name);
            } else {
                failed += 1;
                let want = if case.expected_allow { "allow" } else { "deny" };
                println!(
                    "FAIL {name}: {}: expected {want}, got {got} (policies: [{}]; errors: [{}])",
                    case.name,
                    case.decision.policies.join(", "),
                    case.decision.errors.join("; ")
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} policy test case(s) failed");
    }
    Ok(())
}

fn explain_text(answer: &Value) -> String {
    let list = |key: &str| -> String {
        let items: Vec<String> = answer[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| format!("  {}\n", v.as_str().unwrap_or_default()))
            .collect();
        if items.is_empty() {
            "  (none)\n".to_owned()
        } else {
            items.concat()
        }
    };
    let mut text = format!(
        "decision: {}\ndetermining policies:\n{}matching scope-map rules:\n{}errors:\n{}",
        answer["decision"].as_str().unwrap_or("unknown"),
        list("policies"),
        list("matchingRules"),
        list("errors"),
    );
    if let Some(manifest) = answer.get("manifest") {
        text.push_str(&format!(
            "signatures of {}:\n",
            manifest["digest"].as_str().unwrap_or_default()
        ));
        let found = manifest["signatures"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if found.is_empty() {
            text.push_str("  (none)\n");
        }
        for signature in found {
            text.push_str(&format!("  {}\n", signature_line(&signature)));
        }
    }
    text
}

/// `signature by 'release' (cosign) verified` or `notation signature rejected: why`.
fn signature_line(signature: &Value) -> String {
    let kind = signature["kind"].as_str().unwrap_or("unknown");
    match signature["refused"].as_str() {
        Some(why) => format!("{kind} signature rejected: {why}"),
        None => {
            let names: Vec<String> = signature["identities"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(|n| format!("'{n}'")))
                .collect();
            format!("signature by {} ({kind}) verified", names.join(", "))
        }
    }
}
