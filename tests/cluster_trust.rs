//! Content trust with the control plane in PostgreSQL (issue 18): two real `portcullis
//! serve` processes on one real PostgreSQL share trust data. A `notary publish` through
//! one is listed through the other; a `DOCKER_CONTENT_TRUST=1 docker push` through one
//! (both on one S3 + PostgreSQL storage) makes the tag pullable from the other's
//! signed-only repository; concurrent publishes of one GUN through both are
//! serialized (exactly one wins each round, the other gets notary's `VERSION` error,
//! nothing is lost or mixed); a disable through one stops the other's trust reads and
//! signed-only views within a second; without an operator passphrase, or with another
//! one than the first gateway's, a gateway refuses to start.
//!
//! Until tokens live in the control plane, each gateway has its own: the same token is
//! created on both (or reused when the second already sees it), and each client takes
//! its bearer token from the gateway it talks to.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;

use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::backend::{Backend, Storage};
use common::content::{self, TestImage};
use common::trust::{Bearer, Fixture, Notary, TrustGateway, bump_version, notary_error};
use common::{ADMIN_PASSWORD, bin, json_output, password1, token_create_args};
use portcullis_test_support::postgres::Postgres;

/// The operator's passphrase of the trust keys' key-encryption key, given to every
/// gateway.
const PASSPHRASE: &str = "cluster trust passphrase";
const SIGNER: &str = "signer";
const READER: &str = "reader";
const SIGNER_ACTIONS: &[&str] = &[
    "content/read",
    "content/write",
    "content/delete",
    "metadata/read",
    "trust/write",
];
const READER_ACTIONS: &[&str] = &["content/read", "metadata/read"];
/// How long after an acknowledged change another gateway may still act on the old state.
const STALENESS: Duration = Duration::from_secs(1);

/// Two gateways on one control-plane database, content trust enabled.
struct Cluster {
    a: TrustGateway,
    b: TrustGateway,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Each gateway with its own bundled storage.
    fn start() -> Cluster {
        Cluster::on(&Storage::default())
    }

    /// Both gateways on `storage`.
    fn on(storage: &Storage) -> Cluster {
        let url = Postgres::shared().database();
        let dir = tempfile::tempdir().unwrap();
        let mut args = storage.args();
        args.extend(["--control-plane", &url]);
        let mut env = storage.env();
        env.push(("PORTCULLIS_TRUST_KEY_PASSPHRASE", PASSPHRASE.to_owned()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let start = |name: &str| TrustGateway::start_with_env(&dir.path().join(name), &args, &env);
        let a = start("a");
        let b = start("b");
        Cluster { a, b, _dir: dir }
    }

    /// Token `name` on `repository` with `actions`, usable on both gateways: its password
    /// on A and on B.
    fn token(&self, name: &str, repository: &str, actions: &[&str]) -> (String, String) {
        let on_a = self.a.token(name, repository, actions);
        let args = token_create_args(name, repository, actions);
        let out = self.b.portcullis_output(&args);
        // Tokens shared through the control plane already exist on B.
        let on_b = if out.status.success() {
            password1(&json_output(&args, &out))
        } else {
            on_a.clone()
        };
        (on_a, on_b)
    }
}

/// `registry.test:5443/fixtures/app` → `fixtures/app`.
fn repository_of(gun: &str) -> &str {
    gun.split_once('/').unwrap().1
}

/// A signed-targets entry for `image` (docker's: tag → manifest digest and length).
fn target(image: &TestImage) -> Value {
    let hex = image.digest();
    let hex = hex.trim_start_matches("sha256:");
    json!({
        "hashes": {"sha256": B64.encode(hex::decode(hex).unwrap())},
        "length": image.manifest.len(),
    })
}

/// The timestamp key `gateway` holds for `gun` (created on first ask; the same on every
/// gateway once a root pins it).
fn timestamp_key(gateway: &TrustGateway, gun: &str, bearer: &Bearer) -> Value {
    let resp = gateway.get(gun, "tuf/timestamp.key", Some(bearer));
    assert_eq!(resp.status(), StatusCode::OK, "GET {gun} timestamp.key");
    resp.json().unwrap()
}

#[test]
fn a_notary_publish_through_one_gateway_is_listed_through_the_other() {
    let cluster = Cluster::start();
    let repository = "samples/shared";
    let gun = cluster.a.gun(repository);
    let (signer_a, _) = cluster.token(SIGNER, repository, SIGNER_ACTIONS);
    let (_, reader_b) = cluster.token(READER, repository, READER_ACTIONS);
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload.txt");
    std::fs::write(&payload, "signed through gateway A\n").unwrap();
    let payload = payload.to_str().unwrap();

    let signer = Some((SIGNER, signer_a.as_str()));
    let notary_a = Notary::new(&cluster.a);
    notary_a.ok(signer, &["init", &gun, "-p"]);
    notary_a.ok(signer, &["add", &gun, "v1", payload]);
    notary_a.ok(signer, &["publish", &gun]);

    // Another machine, through the other gateway: the same data, verified by the client
    // (root, the server's timestamp and snapshot signatures).
    let reader = Some((READER, reader_b.as_str()));
    let listed = Notary::new(&cluster.b).ok(reader, &["list", &gun]);
    assert!(listed.contains("v1"), "list through B:\n{listed}");

    // A second publish through A is seen by B too.
    notary_a.ok(signer, &["add", &gun, "v2", payload, "-p"]);
    let listed = Notary::new(&cluster.b).ok(reader, &["list", &gun]);
    assert!(
        listed.contains("v1") && listed.contains("v2"),
        "list through B after a second publish:\n{listed}"
    );
}

/// Both gateways on one storage (S3 + PostgreSQL) too: `DOCKER_CONTENT_TRUST=1 docker
/// push` through A, then through B the signed-only repository serves docker the signed
/// tag and refuses the unsigned one, and notary verifies A's trust data.
#[test]
fn a_docker_signed_push_through_one_gateway_counts_on_the_other() {
    let cluster = Cluster::on(&Backend::S3Pg.storage());
    let (a, b) = (&cluster.a, &cluster.b);
    let repository = "samples/app";
    let (signer_a, _) = cluster.token(SIGNER, repository, SIGNER_ACTIONS);
    let (_, reader_b) = cluster.token(READER, repository, READER_ACTIONS);
    let signer = a.docker(SIGNER, &signer_a);
    let signed = signer.import(
        &format!("{}/{repository}:v1", a.host()),
        "signed through gateway A",
    );
    let out = signer
        .command(&["push", &signed])
        .env("DOCKER_CONTENT_TRUST", "1")
        .env(
            "DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE",
            common::trust::PASSPHRASE,
        )
        .env(
            "DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE",
            common::trust::PASSPHRASE,
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&format!("Successfully signed {signed}")),
        "DCT push of {signed}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unsigned = signer.import(
        &format!("{}/{repository}:v2", a.host()),
        "not signed, through gateway A",
    );
    signer.run(&["push", &unsigned]);

    // Through B: the repository demands signatures; the signature made through A counts.
    b.portcullis(&[
        "repository",
        "update",
        "--repository",
        repository,
        "--signed-only",
        "true",
    ]);
    let reader = b.docker(READER, &reader_b);
    reader.run(&["pull", &format!("{}/{repository}:v1", b.host())]);
    let out = reader.fails(&["pull", &format!("{}/{repository}:v2", b.host())]);
    assert!(out.contains("not signed"), "pull of v2 through B:\n{out}");
    let listed = Notary::new(b).ok(
        Some((READER, reader_b.as_str())),
        &["list", &a.gun(repository)],
    );
    assert!(listed.contains("v1"), "notary list through B:\n{listed}");
}

#[test]
fn concurrent_publishes_of_one_gun_through_two_gateways_are_serialized() {
    const ROUNDS: u64 = 20;
    let cluster = Cluster::start();
    let fixture = Fixture::load();
    let gun = fixture.gun.clone();
    let (signer_a, signer_b) = cluster.token(SIGNER, repository_of(&gun), SIGNER_ACTIONS);
    let push_a = cluster.a.bearer((SIGNER, &signer_a), &gun, "push,pull");
    let push_b = cluster.b.bearer((SIGNER, &signer_b), &gun, "push,pull");

    // The first publish through A, with the timestamp key the control plane holds.
    let bound = fixture.bind(&timestamp_key(&cluster.a, &gun, &push_a));
    let resp = cluster.a.post_update(&gun, &push_a, &bound.parts());
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().unwrap());
    assert_eq!(
        timestamp_key(&cluster.b, &gun, &push_b),
        timestamp_key(&cluster.a, &gun, &push_a),
        "both gateways hand out the pinned key"
    );

    // Targets and snapshot of the fixture's versions + `round`, tagging `side-round`.
    let update = |side: &str, round: u64| {
        let mut targets = Fixture::signed(&fixture.targets);
        bump_version(&mut targets, round);
        let mut entries = serde_json::Map::new();
        let entry = json!({"hashes": {"sha256": B64.encode([0u8; 32])}, "length": 1});
        entries.insert(format!("{side}-{round}"), entry);
        targets["targets"] = Value::Object(entries);
        let targets = fixture.targets_key.file(&targets);
        let snapshot = fixture.snapshot_for(&bound.root, &targets, round);
        (targets, snapshot)
    };
    let mut winners = Vec::new();
    for round in 1..=ROUNDS {
        let barrier = Arc::new(Barrier::new(2));
        let outcomes: Vec<(StatusCode, String, Vec<u8>)> = std::thread::scope(|s| {
            let racers = [("a", &cluster.a, &push_a), ("b", &cluster.b, &push_b)].map(
                |(side, gateway, bearer)| {
                    let barrier = Arc::clone(&barrier);
                    let (targets, snapshot) = update(side, round);
                    let gun = &gun;
                    s.spawn(move || {
                        let parts = [
                            ("targets", targets.as_slice()),
                            ("snapshot", snapshot.as_slice()),
                        ];
                        barrier.wait();
                        let resp = gateway.post_update(gun, bearer, &parts);
                        let status = resp.status();
                        let code = if status == StatusCode::OK {
                            String::new()
                        } else {
                            notary_error(resp).1
                        };
                        (status, code, targets)
                    })
                },
            );
            racers.map(|r| r.join().unwrap()).into()
        });
        let won: Vec<_> = outcomes
            .iter()
            .filter(|(status, _, _)| *status == StatusCode::OK)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: exactly one wins");
        let lost = outcomes
            .iter()
            .find(|(status, _, _)| *status != StatusCode::OK)
            .unwrap();
        assert_eq!(
            (lost.0, lost.1.as_str()),
            (StatusCode::BAD_REQUEST, "VERSION"),
            "round {round}: the loser gets notary's old-version error"
        );
        winners.push(won[0].2.clone());
    }

    // Every round's winner is stored, verbatim, and both gateways serve the same.
    let pull = cluster.b.bearer((SIGNER, &signer_b), &gun, "pull");
    let first = Fixture::signed(&fixture.targets)["version"]
        .as_u64()
        .unwrap();
    for (round, targets) in (1..=ROUNDS).zip(&winners) {
        let version = first + round;
        for (gateway, bearer) in [(&cluster.a, &push_a), (&cluster.b, &pull)] {
            let resp = gateway.get(&gun, &format!("tuf/{version}.targets.json"), Some(bearer));
            assert_eq!(resp.status(), StatusCode::OK, "targets v{version}");
            assert_eq!(resp.bytes().unwrap().as_ref(), targets.as_slice());
        }
    }
    let current = |gateway: &TrustGateway, bearer: &Bearer, role: &str| -> Value {
        let resp = gateway.get(&gun, &format!("tuf/{role}.json"), Some(bearer));
        assert_eq!(resp.status(), StatusCode::OK, "{role}.json");
        resp.json().unwrap()
    };
    for role in ["targets", "snapshot", "timestamp"] {
        assert_eq!(
            current(&cluster.a, &push_a, role),
            current(&cluster.b, &pull, role),
            "{role}.json on both gateways"
        );
    }
    let timestamp = current(&cluster.b, &pull, "timestamp");
    assert_eq!(timestamp["signed"]["version"], json!(1 + ROUNDS));
    // One changefeed update per publish, in order.
    let resp = cluster
        .b
        .get(&gun, "changefeed?change_id=0&records=100", Some(&pull));
    assert_eq!(resp.status(), StatusCode::OK, "changefeed");
    let feed: Value = resp.json().unwrap();
    let versions: Vec<u64> = feed["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=1 + ROUNDS).collect::<Vec<_>>());
}

#[test]
fn a_disable_through_one_gateway_stops_the_others_trust_reads_within_a_second() {
    let cluster = Cluster::start();
    let fixture = Fixture::load();
    let gun = fixture.gun.clone();
    let repository = repository_of(&gun);
    let (signer_a, _) = cluster.token(SIGNER, repository, SIGNER_ACTIONS);
    let (reader_a, _) = cluster.token(READER, repository, READER_ACTIONS);
    let a = &cluster.a;
    let (base, http) = (&a.server.base, &a.http);
    let signer = |r: reqwest::blocking::RequestBuilder| r.basic_auth(SIGNER, Some(&signer_a));
    let reader = |r: reqwest::blocking::RequestBuilder| r.basic_auth(READER, Some(&reader_a));

    // A signed image on A, its repository demanding signatures.
    let image = TestImage::new("cluster trust signed");
    image.push(http, base, repository, "signed", &signer);
    let push = a.bearer((SIGNER, &signer_a), &gun, "push,pull");
    let mut targets = Fixture::signed(&fixture.targets);
    targets["targets"] = json!({ "signed": target(&image) });
    let targets = fixture.targets_key.file(&targets);
    let bound = fixture.bind(&timestamp_key(a, &gun, &push));
    let snapshot = fixture.snapshot_for(&bound.root, &targets, 0);
    let parts = [
        ("root", bound.root.as_slice()),
        ("targets", targets.as_slice()),
        ("snapshot", snapshot.as_slice()),
    ];
    let resp = a.post_update(&gun, &push, &parts);
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().unwrap());
    let resp = http
        .patch(format!("{base}/portcullis/v1/repositories/{repository}"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .json(&json!({"signedOnly": true}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "PATCH signedOnly");
    let pull_signed = || {
        reader(http.get(format!("{base}/v2/{repository}/manifests/signed")))
            .header("accept", content::OCI_MANIFEST)
            .send()
            .unwrap()
            .status()
    };
    let pull = a.bearer((READER, &reader_a), &gun, "pull");
    let read_root = || a.get(&gun, "tuf/root.json", Some(&pull)).status();
    // Served (and cached) by A.
    for _ in 0..3 {
        assert_eq!(
            pull_signed(),
            StatusCode::OK,
            "signed pull before the disable"
        );
        assert_eq!(read_root(), StatusCode::OK, "root.json before the disable");
    }

    // Disabled through B: acknowledged, then A follows within the bound.
    cluster.b.portcullis(&[
        "config",
        "content-trust",
        "update",
        "--status",
        "disabled",
        "--yes",
    ]);
    let acknowledged = Instant::now();
    loop {
        let (view, trust) = (pull_signed(), read_root());
        if view.is_client_error() && trust == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            acknowledged.elapsed() < STALENESS,
            "A still serves trust data {:?} after the disable (view {view}, root.json {trust})",
            acknowledged.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = a.portcullis(&["config", "content-trust", "show"]);
    assert_eq!(status["status"], "disabled", "A's switch: {status}");
}

#[test]
fn a_shared_control_plane_needs_the_operators_passphrase() {
    let url = Postgres::shared().database();
    let dir = tempfile::tempdir().unwrap();
    let serve = |name: &str, passphrase: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--control-plane", &url])
            .arg("--data-dir")
            .arg(dir.path().join(name))
            .env("PORTCULLIS_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("PORTCULLIS_TRUST_KEY_PASSPHRASE");
        if let Some(p) = passphrase {
            cmd.env("PORTCULLIS_TRUST_KEY_PASSPHRASE", p);
        }
        cmd
    };
    let refused = |name: &str, passphrase: Option<&str>| -> String {
        let out = serve(name, passphrase).output().unwrap();
        assert!(!out.status.success(), "{name} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // No passphrase: refused before anything is set up.
    let err = refused("none", None);
    assert!(
        err.contains("--trust-key-passphrase-file") && err.contains("postgres://"),
        "{err}"
    );
    // The first gateway sets the key-encryption key up; another passphrase does not
    // open it.
    let data = dir.path().join("first");
    let first = common::Server::start_with_env(
        &data,
        Some(ADMIN_PASSWORD),
        &["--control-plane", &url],
        &[("PORTCULLIS_TRUST_KEY_PASSPHRASE", PASSPHRASE)],
    );
    let err = refused("second", Some("another passphrase"));
    assert!(err.contains("does not open"), "{err}");
    drop(first);
    // The offline re-encryption is for control.redb only, and says so.
    let out = Command::new(bin())
        .args(["trust", "rotate-kek", "--control-plane", &url, "--data-dir"])
        .arg(&data)
        .env("PORTCULLIS_TRUST_KEY_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("embedded control plane"),
        "{err}"
    );
}
