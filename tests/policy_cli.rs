//! `portcullis policy validate` and `policy test`, run as the built binary on the
//! shipped `policies/` directory and on broken copies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("run portcullis")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn shipped_policies_validate() {
    let out = portcullis(&["policy", "validate", arg(&shipped())]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("ok: ") && stdout.contains(" policies"),
        "{stdout}"
    );
}

#[test]
fn shipped_policy_tests_pass() {
    let out = portcullis(&["policy", "test", arg(&shipped())]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    // Every example has test cases.
    for example in [
        "no-prod-deletes",
        "signed-release-pulls",
        "push-from-internal",
    ] {
        assert!(stdout.contains(&format!("pass {example}.toml")), "{stdout}");
    }
}

#[test]
fn broken_policy_file_fails_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("broken.cedar"),
        "@id(\"ok\")\nforbid(principal, action, resource)\nwhen { resource.nosuch == 1 };\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", arg(tmp.path())]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("broken.cedar:3:"), "{stderr}");

    std::fs::write(
        tmp.path().join("broken.cedar"),
        "permit(principal, action, resource);\nforbid(principal action, resource);\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "validate", arg(tmp.path())]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("broken.cedar:2:"), "{stderr}");

    // `policy test` on the same directory fails too, naming the file and line.
    std::fs::create_dir(tmp.path().join("tests")).unwrap();
    std::fs::write(
        tmp.path().join("tests/t.toml"),
        "[[cases]]\nname = \"admin reads\"\nprincipal = \"admin\"\naction = \"content/read\"\nrepository = \"a\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "test", arg(tmp.path())]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("broken.cedar:2:"), "{stdout}");
    assert!(stdout.contains("0 passed, 1 failed"), "{stdout}");
}

#[test]
fn failing_case_is_reported_and_fails_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("tests")).unwrap();
    std::fs::write(
        tmp.path().join("tests/t.toml"),
        r#"
[[cases]]
name = "admin reads"
principal = "admin"
action = "content/read"
repository = "a"
expect = "allow"

[[cases]]
name = "admin signs (wrongly expected)"
principal = "admin"
action = "trust/write"
repository = "a"
expect = "allow"
"#,
    )
    .unwrap();
    let out = portcullis(&["policy", "test", arg(tmp.path())]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("pass t.toml: admin reads (allow)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL t.toml: admin signs (wrongly expected): expected allow, got deny (policies: [base/admin-no-trust-write]"),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}
