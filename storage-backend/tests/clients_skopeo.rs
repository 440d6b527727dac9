//! skopeo against `portcullis-storage`: copy an OCI layout (generated here, three
//! gzip'd layers, one of 6 MiB) into the registry as OCI and as Docker schema2,
//! inspect, list tags, copy back to a `dir:` and compare every blob byte for
//! byte, delete (that one on both backends: local, S3 + PostgreSQL); and copy a
//! multi-arch OCI index with `--all`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::image;

use std::path::Path;

use common::oci::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, header};
use common::{Server, client, digest};
use image::{Image, Prng, error_code, get_manifest, tar_gz_layer};
use portcullis_test_support::backend::Backend;
use portcullis_test_support::skopeo_ok;
use serde_json::Value;

/// An image of three gzip'd layers: a small text file, 6 MiB of random bytes
/// (larger than any single client write, so uploads are streamed in pieces),
/// and 300 KiB of random bytes.
fn app_image(rng: &mut Prng, arch: &str) -> Image {
    Image::new(
        arch,
        vec![
            tar_gz_layer(&[("etc/hello.txt", format!("hello {arch}\n").as_bytes())]),
            tar_gz_layer(&[("data/big.bin", &rng.bytes(6 << 20))]),
            tar_gz_layer(&[("data/small.bin", &rng.bytes(300 << 10))]),
        ],
    )
}

fn small_image(rng: &mut Prng, arch: &str) -> Image {
    Image::new(
        arch,
        vec![
            tar_gz_layer(&[("etc/arch", arch.as_bytes())]),
            tar_gz_layer(&[("data/x.bin", &rng.bytes(64 << 10))]),
        ],
    )
}

/// Every blob `manifest` (as stored in `dir`) references is a file named by its
/// hex digest in `dir` whose bytes equal the source blob with that digest.
fn assert_dir_blobs(dir: &Path, source_blobs: &[&[u8]]) {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let descriptors: Vec<&Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&manifest["config"]])
        .collect();
    assert_eq!(
        descriptors.len(),
        source_blobs.len(),
        "blob count in {}",
        dir.display()
    );
    for d in descriptors {
        let want = d["digest"].as_str().unwrap();
        let source = source_blobs
            .iter()
            .find(|b| digest(b) == want)
            .unwrap_or_else(|| panic!("{want} is not a source blob"));
        let copied = std::fs::read(dir.join(want.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(digest(&copied), want, "digest of copied blob");
        assert!(
            copied == *source,
            "copied blob {want} differs from the source"
        );
        assert_eq!(
            d["size"].as_u64(),
            Some(copied.len() as u64),
            "size of {want}"
        );
    }
}

portcullis_test_support::backend_matrix!(skopeo_copy_inspect_list_pull_delete);

fn skopeo_copy_inspect_list_pull_delete(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.storage().store(dir.path(), &[]);
    let mut rng = Prng::from_time();
    let app = app_image(&mut rng, "amd64");
    let layout = tempfile::tempdir().unwrap();
    image::write_oci_layout(
        layout.path(),
        &app.blobs(),
        &[("app", OCI_MANIFEST, &app.manifest)],
    );
    let src = format!("oci:{}:app", layout.path().display());
    let dest = format!("docker://{}/samples/app", server.addr);

    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        &src,
        &format!("{dest}:v1"),
    ]);
    let (status, content_type, body) = get_manifest(&client(), &server.url, "samples/app", "v1");
    assert_eq!(status, 200);
    assert_eq!(content_type, OCI_MANIFEST);
    assert!(
        body == app.manifest,
        "stored manifest bytes differ from the pushed ones"
    );

    let inspect: Value = serde_json::from_str(&skopeo_ok(&[
        "inspect",
        "--tls-verify=false",
        &format!("{dest}:v1"),
    ]))
    .unwrap();
    assert_eq!(inspect["Digest"], app.digest().as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    let layers: Vec<String> = app.layers.iter().map(|l| digest(&l.gz)).collect();
    assert_eq!(inspect["Layers"], serde_json::json!(layers));
    assert!(
        skopeo_ok(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("{dest}:v1")
        ])
        .as_bytes()
            == app.manifest
    );

    // A second tag: skopeo finds every blob present and only PUTs the manifest.
    skopeo_ok(&[
        "copy",
        "--dest-tls-verify=false",
        &src,
        &format!("{dest}:v2"),
    ]);
    let listed: Value =
        serde_json::from_str(&skopeo_ok(&["list-tags", "--tls-verify=false", &dest])).unwrap();
    assert_eq!(listed["Tags"], serde_json::json!(["v1", "v2"]));

    let out = tempfile::tempdir().unwrap();
    let out_ref = format!("dir:{}", out.path().display());
    skopeo_ok(&[
        "copy",
        "--src-tls-verify=false",
        &format!("{dest}:v1"),
        &out_ref,
    ]);
    assert!(std::fs::read(out.path().join("manifest.json")).unwrap() == app.manifest);
    assert_dir_blobs(out.path(), &app.blobs());

    // skopeo deletes by digest, which removes the manifest and every tag on it.
    skopeo_ok(&["delete", "--tls-verify=false", &format!("{dest}:v1")]);
    for reference in ["v1", "v2", app.digest().as_str()] {
        let resp = client()
            .get(format!(
                "{}/v2/samples/app/manifests/{reference}",
                server.url
            ))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 404, "manifest {reference} after delete");
        assert_eq!(error_code(resp), "MANIFEST_UNKNOWN");
    }
}

#[test]
fn skopeo_copy_as_docker_schema2() {
    let server = Server::start(&[]);
    let mut rng = Prng::from_time();
    let app = app_image(&mut rng, "amd64");
    let layout = tempfile::tempdir().unwrap();
    image::write_oci_layout(
        layout.path(),
        &app.blobs(),
        &[("app", OCI_MANIFEST, &app.manifest)],
    );
    let dest = format!("docker://{}/samples/app-v2s2:v1", server.addr);

    skopeo_ok(&[
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        &format!("oci:{}:app", layout.path().display()),
        &dest,
    ]);
    let raw = skopeo_ok(&["inspect", "--raw", "--tls-verify=false", &dest]);
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(manifest["mediaType"], DOCKER_MANIFEST);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(manifest["config"]["digest"], digest(&app.config).as_str());
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let want: Vec<String> = app.layers.iter().map(|l| digest(&l.gz)).collect();
    assert_eq!(layers, want, "gzip'd layers are pushed unchanged");

    let resp = client()
        .get(format!("{}/v2/samples/app-v2s2/manifests/v1", server.url))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "content-type").as_deref(),
        Some(DOCKER_MANIFEST)
    );
    assert_eq!(
        header(resp.headers(), "docker-content-digest"),
        Some(digest(raw.as_bytes()))
    );
    assert!(resp.bytes().unwrap() == raw.as_bytes());

    let out = tempfile::tempdir().unwrap();
    skopeo_ok(&[
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("dir:{}", out.path().display()),
    ]);
    assert_dir_blobs(out.path(), &app.blobs());
}

#[test]
fn skopeo_copy_multi_arch_index() {
    let server = Server::start(&[]);
    let mut rng = Prng::from_time();
    let amd64 = small_image(&mut rng, "amd64");
    let arm64 = small_image(&mut rng, "arm64");
    let index = image::oci_index(&[("amd64", &amd64), ("arm64", &arm64)]);
    let layout = tempfile::tempdir().unwrap();
    let blobs: Vec<&[u8]> = amd64
        .blobs()
        .into_iter()
        .chain(arm64.blobs())
        .chain([amd64.manifest.as_slice(), arm64.manifest.as_slice()])
        .collect();
    image::write_oci_layout(layout.path(), &blobs, &[("multi", OCI_INDEX, &index)]);
    let dest = format!("docker://{}/samples/multi:v1", server.addr);

    skopeo_ok(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.path().display()),
        &dest,
    ]);
    let c = client();
    let (status, content_type, body) = get_manifest(&c, &server.url, "samples/multi", "v1");
    assert_eq!((status.as_u16(), content_type.as_str()), (200, OCI_INDEX));
    assert!(
        body == index,
        "stored index bytes differ from the pushed ones"
    );
    for child in [&amd64, &arm64] {
        let (status, content_type, body) =
            get_manifest(&c, &server.url, "samples/multi", &child.digest());
        assert_eq!(
            (status.as_u16(), content_type.as_str()),
            (200, OCI_MANIFEST)
        );
        assert!(body == child.manifest, "child manifest bytes differ");
    }
    assert_eq!(
        image::check_repo(&c, &server.url, "samples/multi"),
        Vec::<String>::new()
    );

    // Pulling one platform out of the index gets exactly that image's blobs.
    let out = tempfile::tempdir().unwrap();
    skopeo_ok(&[
        "--override-arch",
        "arm64",
        "copy",
        "--src-tls-verify=false",
        &dest,
        &format!("dir:{}", out.path().display()),
    ]);
    assert!(std::fs::read(out.path().join("manifest.json")).unwrap() == arm64.manifest);
    assert_dir_blobs(out.path(), &arm64.blobs());
}
