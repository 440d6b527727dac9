//! The real docker CLI (28.x, the last with content trust in push/pull) and engine against
//! the gateway over TLS (issue 5, "How it is checked"): `DOCKER_CONTENT_TRUST=1 docker push`
//! signs, a DCT pull with a fresh trust cache verifies, unsigned tags fail the DCT pull
//! with the client's wording, signing needs `trust/write` and is refused to the admin
//! account, and a repository demanding signatures serves plain pulls of signed tags only.
//! The README's walkthrough runs on both backends (local, S3 + PostgreSQL).
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::docker;

use std::path::Path;
use std::process::{Command, Output};

use common::ADMIN_PASSWORD;
use common::backend::Backend;
use common::trust::{PASSPHRASE, TrustGateway};
use docker::Docker;

/// What the notary client inside the docker CLI says when the trust server answers 401.
const NOT_AUTHORIZED: &str = "you are not authorized to perform this operation";

/// `docker args...` with content trust on and the key passphrases in the environment;
/// returns success and stdout + stderr.
fn trusted(docker: &Docker, args: &[&str]) -> (bool, String) {
    let out: Output = docker
        .command(args)
        .env("DOCKER_CONTENT_TRUST", "1")
        .env("DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE", PASSPHRASE)
        .env("DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn trusted_ok(docker: &Docker, args: &[&str]) -> String {
    let (success, text) = trusted(docker, args);
    assert!(success, "DCT docker {} failed:\n{text}", args.join(" "));
    text
}

fn trusted_fails(docker: &Docker, args: &[&str]) -> String {
    let (success, text) = trusted(docker, args);
    assert!(!success, "DCT docker {} succeeded:\n{text}", args.join(" "));
    text
}

/// Forgets the client's cached trust metadata (keys stay), as on another machine.
fn forget_trust_cache(docker: &Docker) {
    let tuf = docker.config_dir().join("trust/tuf");
    if tuf.exists() {
        std::fs::remove_dir_all(tuf).unwrap();
    }
}

#[test]
fn signed_push_verified_pull_and_signed_only_repository() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TrustGateway::start(dir.path(), &[]);
    let host = gateway.host().to_owned();
    let password = gateway.token(
        "signer",
        "samples/*",
        &[
            "content/read",
            "content/write",
            "metadata/read",
            "trust/write",
        ],
    );
    let docker = gateway.docker("signer", &password);

    // Signed push, then a verified pull from scratch.
    let v1 = docker.import(
        &format!("{host}/samples/app:v1"),
        &format!("signed v1 {host}"),
    );
    let out = trusted_ok(&docker, &["push", &v1]);
    assert!(
        out.contains(&format!("Successfully signed {v1}")),
        "DCT push of {v1}:\n{out}"
    );
    let v1_id = docker.image_id(&v1);
    docker.run(&["rmi", &v1]);
    forget_trust_cache(&docker);
    let out = trusted_ok(&docker, &["pull", &v1]);
    assert!(
        out.contains("sha256:"),
        "DCT pull of {v1} goes by digest:\n{out}"
    );
    assert_eq!(docker.image_id(&v1), v1_id, "pulled {v1}");

    // A tag pushed without signing: no valid trust data for it.
    let v2 = docker.import(
        &format!("{host}/samples/app:v2"),
        &format!("unsigned v2 {host}"),
    );
    docker.run(&["push", &v2]);
    docker.run(&["rmi", &v2]);
    forget_trust_cache(&docker);
    let out = trusted_fails(&docker, &["pull", &v2]);
    assert!(
        out.contains("No valid trust data for v2"),
        "DCT pull of unsigned {v2}:\n{out}"
    );

    // A repository without any trust data.
    let plain = docker.import(
        &format!("{host}/samples/plain:v1"),
        &format!("plain v1 {host}"),
    );
    docker.run(&["push", &plain]);
    docker.run(&["rmi", &plain]);
    let out = trusted_fails(&docker, &["pull", &plain]);
    let gun = gateway.gun("samples/plain");
    assert!(
        out.contains(&format!("does not have trust data for {gun}")),
        "DCT pull of {plain}:\n{out}"
    );

    // The repository demands signatures: plain pulls get the signed tag only.
    gateway.portcullis(&[
        "repository",
        "update",
        "--repository",
        "samples/app",
        "--signed-only",
        "true",
    ]);
    docker.run(&["rmi", &v1]);
    let out = docker.fails(&["pull", &v2]);
    assert!(
        out.contains("not signed"),
        "plain pull of unsigned {v2} from a signed-only repository:\n{out}"
    );
    docker.run(&["pull", &v1]);
    assert_eq!(docker.image_id(&v1), v1_id, "plain pull of signed {v1}");
    docker.run(&["rmi", &v1]);
    forget_trust_cache(&docker);
    trusted_ok(&docker, &["pull", &v1]);
    assert_eq!(docker.image_id(&v1), v1_id, "DCT pull of signed {v1}");
    docker.run(&["rmi", &v1]);
}

#[test]
fn signing_needs_trust_write_and_is_refused_to_the_admin_account() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TrustGateway::start(dir.path(), &[]);
    let host = gateway.host().to_owned();
    let password = gateway.token("pusher", "samples/*", &["content/read", "content/write"]);

    for (who, user, password, repository) in [
        (
            "a token without trust/write",
            "pusher",
            password.as_str(),
            "samples/pusher",
        ),
        (
            "the admin account",
            "admin",
            ADMIN_PASSWORD,
            "samples/admin",
        ),
    ] {
        let docker = gateway.docker(user, password);
        let image = docker.import(
            &format!("{host}/{repository}:v1"),
            &format!("{repository} {host}"),
        );
        let out = trusted_fails(&docker, &["push", &image]);
        // The image itself is pushed (push rights); only the signing is refused.
        assert!(
            out.contains("digest: sha256:"),
            "DCT push by {who}: image push\n{out}"
        );
        assert!(
            !out.contains("Successfully signed") && out.contains(NOT_AUTHORIZED),
            "DCT push by {who}: signing\n{out}"
        );
        docker.run(&["rmi", &image]);
        let out = trusted_fails(&docker, &["pull", &image]);
        assert!(
            out.contains(&format!(
                "does not have trust data for {}",
                gateway.gun(repository)
            )),
            "DCT pull after a refused signing by {who}:\n{out}"
        );
    }
}

portcullis_test_support::backend_matrix!(the_readme_content_trust_walkthrough_runs_as_written);

/// The README's content-trust walkthrough, run by bash as written, but for two changes a
/// reader makes by hand: the gateway listens on a free port (not 5000) and `portcullis
/// serve` runs in the background (started here). The CLI finds the admin password the
/// server generated in ./data, as on a first start; the image to push exists. On S3 +
/// PostgreSQL the server gets `--storage` and `--metadata` besides.
fn the_readme_content_trust_walkthrough_runs_as_written(backend: Backend) {
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("## Content trust").unwrap()..];
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap();
    let lines: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .map(|l| match l.find("  #") {
            Some(i) => l[..i].trim_end().to_owned(),
            None => l.trim_end().to_owned(),
        })
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines[0], "portcullis serve --tls-self-signed");

    let dir = tempfile::tempdir().unwrap();
    let server =
        backend
            .storage()
            .serve(&dir.path().join("data"), None, &["--tls-self-signed"], &[]);
    let host = server.host().to_owned();
    let certs_d = Path::new("/etc/docker/certs.d").join(&host);
    let _remove = RemoveDir(certs_d.clone());

    // `portcullis` and (as root without one) `sudo` on the PATH.
    let tools = dir.path().join("bin");
    std::fs::create_dir(&tools).unwrap();
    std::os::unix::fs::symlink(common::bin(), tools.join("portcullis")).unwrap();
    if Command::new("sudo").arg("true").output().is_err() {
        std::fs::write(tools.join("sudo"), "#!/bin/sh\nexec \"$@\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tools.join("sudo"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let mut script = vec!["set -euo pipefail -x".to_owned()];
    for line in &lines[1..] {
        script.push(line.replace("127.0.0.1:5000", &host));
    }

    let docker = Docker::new();
    docker.import(&format!("{host}/samples/app:v1"), "readme walkthrough");
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script.join("\n"))
        .current_dir(dir.path())
        .env("PATH", path)
        .env("HOME", &home)
        .env_remove("PORTCULLIS_ADMIN_PASSWORD")
        .env_remove("PORTCULLIS_DATA_DIR")
        .env("DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE", PASSPHRASE)
        .env("DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE", PASSPHRASE)
        .env("NOTARY_ROOT_PASSPHRASE", PASSPHRASE);
    // The same engine and client configuration as `docker`.
    for (key, value) in docker.command(&[]).get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "README walkthrough failed:\n{text}");
    assert!(
        text.contains(&format!("Successfully signed {host}/samples/app:v1")),
        "{text}"
    );
    assert!(
        certs_d.join("ca.crt").is_file()
            && docker
                .config_dir()
                .join("tls")
                .join(&host)
                .join("ca.crt")
                .is_file(),
        "the CA copied for the engine and the CLI"
    );
    // `notary list` printed the signed tag.
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some("v1")),
        "{text}"
    );
}

/// Removes a directory the test created outside its temporary directory.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
