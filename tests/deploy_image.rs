//! deploy/Dockerfile's image, built and run by the real docker engine. No base image can be
//! pulled here, so the published final stage is replayed on a local `FROM scratch` base:
//! its `FROM` and `RUN` lines become a root file system made here (the binaries' shared
//! libraries from `ldd`, the data directory owned by the image's user), its
//! `COPY --from=build` takes the binaries of this build, and every other line (`COPY
//! policies/`, `USER`, `ENV`, `VOLUME`, `EXPOSE`, `ENTRYPOINT`) is used as written. The
//! container runs as that user with a read-only root and a named data volume, and must
//! answer `/v2/` with 401 and `/healthz` with 200.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::docker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use docker::Docker;

const DOCKERFILE: &str = include_str!("../deploy/Dockerfile");

/// The lines of the Dockerfile's last stage (continuations joined), without comments.
fn final_stage() -> Vec<String> {
    let joined = DOCKERFILE.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines.iter().rposition(|l| l.starts_with("FROM ")).unwrap();
    lines[last_from..].iter().map(|l| (*l).to_owned()).collect()
}

/// The shared libraries `binary` loads (and the loader), as absolute paths.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

/// Copies `src` to `root` + its absolute path, following symlinks.
fn copy_into(root: &Path, src: &Path) {
    let dest = root.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(src, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_image_runs_as_non_root_on_a_read_only_root_with_a_data_volume() {
    let stage = final_stage();
    let bin_dir = Path::new(common::bin()).parent().unwrap().to_path_buf();
    let context = tempfile::tempdir().unwrap();
    let root = context.path().join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    // The data directory, copied as content so that `--chown` applies to it.
    let data_parent = context.path().join("var-lib");
    std::fs::create_dir_all(data_parent.join("portcullis")).unwrap();

    let mut dockerfile = vec!["FROM scratch".to_owned(), "COPY rootfs/ /".to_owned()];
    let mut copied_binaries = Vec::new();
    for line in &stage[1..] {
        if line.starts_with("RUN ") {
            continue; // replaced by the prepared root file system
        }
        if let Some(rest) = line.strip_prefix("COPY --from=build ") {
            // `COPY --from=build /src/target/release/A ... DEST/`: this build's binaries.
            let mut words: Vec<&str> = rest.split_whitespace().collect();
            let dest = words.pop().unwrap();
            for src in words {
                let name = Path::new(src).file_name().unwrap().to_str().unwrap();
                let binary = bin_dir.join(name);
                assert!(
                    binary.is_file(),
                    "{} missing: build it first (cargo build --workspace)",
                    binary.display()
                );
                std::fs::create_dir_all(context.path().join("bin")).unwrap();
                std::fs::copy(&binary, context.path().join("bin").join(name)).unwrap();
                for lib in shared_libraries(&binary) {
                    copy_into(&root, &lib);
                }
                dockerfile.push(format!("COPY bin/{name} {dest}"));
                copied_binaries.push(name.to_owned());
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("COPY ") {
            // Sources from the repository, as the published build context has them.
            let words: Vec<&str> = rest.split_whitespace().collect();
            for src in &words[..words.len() - 1] {
                let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(src);
                let status = Command::new("cp")
                    .arg("-r")
                    .arg(&from)
                    .arg(context.path().join(src.trim_end_matches('/')))
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        dockerfile.push(line.clone());
    }
    assert_eq!(copied_binaries, ["portcullis", "portcullis-storage"]);
    let user = stage
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image names its user");
    assert!(
        user.split(':')
            .all(|id| id.parse::<u32>().is_ok_and(|id| id != 0)),
        "USER {user}: numeric and not root (Kubernetes runAsNonRoot checks it)"
    );
    // The data directory as the published stage's RUN leaves it: owned by the user, 0700.
    dockerfile.insert(2, format!("COPY --chown={user} var-lib/ /var/lib/"));
    std::fs::write(context.path().join("Dockerfile"), dockerfile.join("\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data_parent.join("portcullis"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();

    let docker = Docker::new();
    let tag = format!("portcullis-test:{}", std::process::id());
    let out = docker
        .command(&["build", "-q", "-t", &tag, context.path().to_str().unwrap()])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build failed:\n{}\nDockerfile:\n{}",
        String::from_utf8_lossy(&out.stderr),
        dockerfile.join("\n")
    );

    // Host network (the test engine has no bridge): listen on a loopback port only.
    let port = free_port();
    let volume = format!("portcullis-test-data-{}", std::process::id());
    let name = format!("portcullis-test-{}", std::process::id());
    let listen = format!("PORTCULLIS_LISTEN=127.0.0.1:{port}");
    docker.run(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        &format!("{volume}:/var/lib/portcullis"),
        "-e",
        &listen,
        "-e",
        "PORTCULLIS_ADMIN_PASSWORD=image-test-password",
        &tag,
    ]);
    let cleanup = Cleanup {
        docker: &docker,
        name: &name,
        volume: &volume,
        tag: &tag,
    };

    let http = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        match http.get(format!("{base}/healthz")).send() {
            Ok(resp) => break resp.status(),
            Err(e) if Instant::now() > deadline => {
                let logs = docker.output(&["logs", &name]);
                panic!(
                    "the container never answered: {e}\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert_eq!(health, reqwest::StatusCode::OK);
    let resp = http.get(format!("{base}/v2/")).send().unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    let resp = http
        .get(format!("{base}/v2/"))
        .basic_auth("admin", Some("image-test-password"))
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::OK,
        "the admin password from the environment"
    );
    // It runs as the image's user and keeps its data in the volume, owner-only.
    let top = docker.run(&["top", &name, "-o", "pid,uid,args"]);
    let uid = user.split(':').next().unwrap();
    assert!(
        top.lines()
            .skip(1)
            .all(|l| l.split_whitespace().nth(1) == Some(uid)),
        "{top}"
    );
    let mountpoint = docker
        .run(&["volume", "inspect", "--format", "{{.Mountpoint}}", &volume])
        .trim()
        .to_owned();
    let data = Path::new(&mountpoint);
    for file in ["control.redb", "meta.redb"] {
        let mode = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file} in the volume");
    }
    drop(cleanup);
}

/// Removes the container, its volume and the image, also when an assertion failed.
struct Cleanup<'a> {
    docker: &'a Docker,
    name: &'a str,
    volume: &'a str,
    tag: &'a str,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.docker.output(&["rm", "-f", self.name]);
        let _ = self.docker.output(&["volume", "rm", "-f", self.volume]);
        let _ = self.docker.output(&["rmi", "-f", self.tag]);
    }
}
