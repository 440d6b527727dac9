//! Three gateways as one registry behind HAProxy (`deploy/haproxy.cfg`), on one
//! PostgreSQL and one S3 (test-support's `cluster`): docker pushes through one gateway and
//! pulls through the others and through HAProxy, a bearer token from one gateway is good
//! on the others; a gateway killed with `kill -9` under a sustained docker push and pull
//! load through HAProxy fails no client operation and rejoins once restarted; PostgreSQL
//! restarted under that load: the gateways reconnect by themselves and every push a
//! client saw acknowledged pulls back byte for byte.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::time::{Duration, Instant};

use portcullis_test_support::client;
use portcullis_test_support::cluster::{Cluster, GATEWAYS, Load, LoadReport, check_exact};
use portcullis_test_support::content::TestImage;
use portcullis_test_support::docker::Docker;
use reqwest::StatusCode;
use serde_json::Value;

/// The file in each image of the load: a few MiB moved per operation.
const FILE_BYTES: usize = 2 << 20;
/// Client threads of each kind.
const PUSHERS: usize = 2;
const PULLERS: usize = 2;

#[test]
fn docker_push_through_one_gateway_pulls_through_the_others_and_haproxy() {
    let cluster = Cluster::start();
    let password = cluster.admin_password();

    // A bearer token from the first gateway is good on the others.
    let http = client();
    let reply: Value = http
        .get(format!(
            "{}/oauth2/token?service=portcullis&scope=repository:cluster/app:pull",
            cluster.gateway_url(0)
        ))
        .basic_auth("admin", Some(password))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = reply["token"].as_str().expect("a token");
    for i in 1..GATEWAYS {
        let resp = http
            .get(format!("{}/v2/", cluster.gateway_url(i)))
            .bearer_auth(token)
            .send()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "token of gateway 0 on {i}");
    }

    let docker = Docker::new();
    let hosts: Vec<&str> = (0..GATEWAYS)
        .map(|i| cluster.gateway_host(i))
        .chain([cluster.host()])
        .collect();
    for host in &hosts {
        let out = docker.login(host, "admin", password);
        assert!(out.status.success(), "docker login {host}: {out:?}");
    }
    let pushed = format!("{}/cluster/app:v1", hosts[0]);
    docker.import(&pushed, "pushed through the first gateway");
    let id = docker.image_id(&pushed);
    docker.run(&["push", &pushed]);
    docker.run(&["rmi", &pushed]);
    for host in &hosts[1..] {
        let reference = format!("{host}/cluster/app:v1");
        docker.run(&["pull", &reference]);
        assert_eq!(docker.image_id(&reference), id, "pulled through {host}");
        docker.run(&["rmi", &reference]);
    }
}

/// Prints what the clients saw, and every failure.
fn print(what: &str, report: &LoadReport) {
    println!("{what}: {report}");
    for failure in report.failures() {
        println!("  failed: {failure}");
    }
}

/// Every push the clients saw acknowledged pulls back byte for byte, through each gateway
/// in turn.
fn assert_no_acknowledged_write_lost(cluster: &Cluster, report: &LoadReport) {
    assert!(!report.acknowledged.is_empty(), "no push succeeded");
    let lost: Vec<String> = report
        .acknowledged
        .iter()
        .enumerate()
        .filter_map(|(n, (reference, digest))| {
            check_exact(&cluster.gateway_url(n % GATEWAYS), reference, digest).err()
        })
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged pushes lost:\n{}",
        lost.join("\n")
    );
}

/// The kill comes at a moment unrelated to the clients. Docker retries no step after the
/// layers; a request whose gateway died without answering is repeated by HAProxy on
/// another gateway (see deploy/haproxy.cfg), and a completing PUT whose first try had
/// committed is answered 201 there (`Registry::finish_upload`).
#[test]
fn kill_9_of_a_gateway_under_load_fails_no_client_operation() {
    let mut cluster = Cluster::start();
    let load = Load::start(cluster.host(), PUSHERS, PULLERS, FILE_BYTES);
    std::thread::sleep(Duration::from_secs(3));
    let victim = 1;
    let in_flight = cluster.balancer_view(victim).current;
    cluster.kill(victim);
    println!("kill -9 of gateway {victim} with {in_flight} requests in flight");
    cluster.wait_in_rotation(victim, false);
    std::thread::sleep(Duration::from_secs(2));
    cluster.restart(victim);
    cluster.wait_in_rotation(victim, true);
    let sessions = cluster.balancer_view(victim).sessions;
    std::thread::sleep(Duration::from_secs(3));
    let report = load.stop();
    print("kill -9 of one gateway under load", &report);
    let view = cluster.balancer_view(victim);
    println!(
        "HAProxy on gateway {victim}: {} retries, {} requests redispatched to another gateway",
        view.retried, view.redispatched
    );

    assert_eq!(report.failures().count(), 0, "client operations failed");
    assert!(
        report.counts(false, None).succeeded > 0,
        "no pull succeeded"
    );
    assert!(
        cluster.balancer_view(victim).sessions > sessions,
        "the restarted gateway takes requests again"
    );
    assert_no_acknowledged_write_lost(&cluster, &report);
}

#[test]
fn postgres_restart_under_load_loses_no_acknowledged_write() {
    let cluster = Cluster::start();
    let load = Load::start(cluster.host(), PUSHERS, PULLERS, FILE_BYTES);
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart_postgres(Duration::from_secs(1));
    // The gateways find PostgreSQL again by themselves: HAProxy's readiness checks pass.
    for i in 0..GATEWAYS {
        cluster.wait_in_rotation(i, true);
    }
    let recovered = Instant::now();
    std::thread::sleep(Duration::from_secs(6));
    let report = load.stop();
    print("PostgreSQL restarted under load", &report);
    let (pushes, pulls) = (
        report.counts(true, Some(recovered)),
        report.counts(false, Some(recovered)),
    );
    println!("after the gateways were back in rotation: pushes: {pushes}; pulls: {pulls}");

    // While PostgreSQL was down, clients were refused (503; docker retries layer
    // transfers, not manifests). Once it was back, every operation succeeded, and each gateway takes a push that
    // the next one serves.
    assert_eq!(
        pushes.failed + pulls.failed,
        0,
        "operations failed after recovery"
    );
    let http = client();
    for i in 0..GATEWAYS {
        let image = TestImage::new(&format!("after the restart, through gateway {i}"));
        image.push(
            &http,
            &cluster.gateway_url(i),
            "after/restart",
            &format!("v{i}"),
            &|rb| rb.basic_auth("admin", Some(cluster.admin_password())),
        );
        let next = cluster.gateway_url((i + 1) % GATEWAYS);
        check_exact(&next, &format!("after/restart:v{i}"), &image.digest()).unwrap();
    }
    assert_no_acknowledged_write_lost(&cluster, &report);
}
