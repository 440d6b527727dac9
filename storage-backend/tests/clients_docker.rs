//! The real docker engine against `portcullis-storage`: push an imported
//! single-layer image and a built multi-layer image, remove them locally, pull
//! them back (by tag and by digest) and compare image IDs and digests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::docker;
use common::image;

use common::oci::{DOCKER_MANIFEST, header};
use common::{Server, client};
use docker::Docker;
use image::Prng;

/// `docker push` output ends with `<tag>: digest: sha256:... size: N`.
fn pushed_digest(push_output: &str) -> String {
    push_output
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in push output: {push_output}"))
        .to_owned()
}

fn image_id(docker: &Docker, reference: &str) -> String {
    docker
        .run(&["image", "inspect", "--format", "{{.Id}}", reference])
        .trim()
        .to_owned()
}

fn repo_digests(docker: &Docker, reference: &str) -> String {
    docker.run(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        reference,
    ])
}

/// Pushes `local` as `remote`, removes every local name of the image, pulls it
/// back by tag and by digest, and checks the image ID and registry digest.
/// Returns the pushed manifest digest; the image stays present as `repo@digest`.
fn push_pull_round_trip(
    docker: &Docker,
    server: &Server,
    local: &str,
    repo: &str,
    tag: &str,
) -> String {
    let remote = remote_name(server, repo, tag);
    docker.run(&["tag", local, &remote]);
    let id = image_id(docker, &remote);
    let pushed = pushed_digest(&docker.run(&["push", &remote]));
    assert_registry_has(server, repo, tag, &pushed);

    docker.run(&["rmi", local, &remote]);
    assert!(
        !docker.output(&["image", "inspect", &id]).status.success(),
        "image {id} still present after rmi"
    );

    docker.run(&["pull", &remote]);
    assert_eq!(
        image_id(docker, &remote),
        id,
        "image ID after pulling {remote}"
    );
    let by_digest = digest_ref(server, repo, &pushed);
    assert!(
        repo_digests(docker, &remote).contains(&by_digest),
        "RepoDigests of {remote} lack {by_digest}"
    );

    docker.run(&["rmi", &remote]);
    docker.run(&["pull", &by_digest]);
    assert_eq!(
        image_id(docker, &by_digest),
        id,
        "image ID after pulling {by_digest}"
    );
    pushed
}

/// `localhost:PORT/repo:tag` (dockerd treats loopback registries as insecure).
fn remote_name(server: &Server, repo: &str, tag: &str) -> String {
    format!("localhost:{}/{repo}:{tag}", port(server))
}

fn digest_ref(server: &Server, repo: &str, digest: &str) -> String {
    format!("localhost:{}/{repo}@{digest}", port(server))
}

fn port(server: &Server) -> &str {
    server.addr.rsplit(':').next().unwrap()
}

/// The registry serves the manifest docker pushed, under the tag.
fn assert_registry_has(server: &Server, repo: &str, tag: &str, pushed: &str) {
    let resp = client()
        .head(format!("{}/v2/{repo}/manifests/{tag}", server.url))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "HEAD manifest {repo}:{tag}");
    assert_eq!(
        header(resp.headers(), "docker-content-digest").as_deref(),
        Some(pushed)
    );
    assert_eq!(
        header(resp.headers(), "content-type").as_deref(),
        Some(DOCKER_MANIFEST)
    );
}

#[test]
fn docker_push_and_pull_round_trip() {
    let server = Server::start(&[]);
    let docker = Docker::new();
    let work = tempfile::tempdir().unwrap();
    let mut rng = Prng::from_time();
    let unique = format!("portcullis-test-{}", rng.next_u64() % 1_000_000_000);

    // Single layer: `docker import` of a tarball made here.
    let data = rng.bytes(3 << 20);
    let tarball = work.path().join("rootfs.tar");
    std::fs::write(
        &tarball,
        image::tar(&[
            ("hello.txt", b"hello from portcullis\n"),
            ("data/random.bin", &data),
        ]),
    )
    .unwrap();
    let imported = format!("{unique}/imported:src");
    docker.run(&["import", tarball.to_str().unwrap(), &imported]);
    let pushed = push_pull_round_trip(&docker, &server, &imported, "samples/hello", "v1");
    docker.run(&["rmi", &digest_ref(&server, "samples/hello", &pushed)]);

    // Three layers (one of 6 MiB) from the classic builder, pushed concurrently by
    // dockerd; pushing the pulled image to a second repository makes dockerd mount
    // its layers from the first (`?mount=&from=`).
    let ctx = work.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(ctx.join("a.txt"), b"a\n").unwrap();
    std::fs::write(ctx.join("b.bin"), rng.bytes(6 << 20)).unwrap();
    std::fs::write(ctx.join("c.bin"), rng.bytes(100 << 10)).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY a.txt /a.txt\nCOPY b.bin /b.bin\nCOPY c.bin /c.bin\n",
    )
    .unwrap();
    let built = format!("{unique}/built:src");
    let out = docker
        .command(&["build", "-q", "-t", &built, ctx.to_str().unwrap()])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = push_pull_round_trip(&docker, &server, &built, "samples/multi", "v1");
    let pulled = digest_ref(&server, "samples/multi", &pushed);
    let copy = remote_name(&server, "samples/multi-copy", "v1");
    docker.run(&["tag", &pulled, &copy]);
    let out = docker.run(&["push", &copy]);
    assert_eq!(
        pushed_digest(&out),
        pushed,
        "same image, same manifest digest"
    );
    assert!(
        out.contains("Mounted from samples/multi"),
        "layers were not mounted from samples/multi:\n{out}"
    );
    assert_registry_has(&server, "samples/multi-copy", "v1", &pushed);
    docker.run(&["rmi", &pulled, &copy]);

    assert_eq!(image::tags(&client(), &server.url, "samples/multi"), ["v1"]);
}
