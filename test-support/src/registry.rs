//! Harness for Debian's `docker-registry` 2.8.2 (distribution), the reference the
//! differential test compares our backend against: a YAML config and storage root in a
//! temporary directory, a free loopback port, and a wait until `/v2/` answers.
//! The gateway's tests use it too, as the upstream a gateway fronts (deletes enabled).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// A running `docker-registry serve CONFIG`; killed on drop.
pub struct DockerRegistry {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    tmp: tempfile::TempDir,
}

impl DockerRegistry {
    pub fn start() -> DockerRegistry {
        assert!(
            std::path::Path::new(DOCKER_REGISTRY).exists(),
            "{DOCKER_REGISTRY} is missing: install Debian's docker-registry package (apt-get install docker-registry)"
        );
        let tmp = tempfile::tempdir().unwrap();
        // Bind :0 to learn a free port, then release it for the registry (a small race
        // window, acceptable on loopback in tests).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = tmp.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                tmp.path().join("data").display()
            ),
        )
        .unwrap();
        // Its per-request error lines would drown the test output: keep them in a file that
        // is shown if the registry fails to start.
        let log = tmp.path().join("registry.log");
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut reg = DockerRegistry {
            child,
            url: format!("http://127.0.0.1:{port}"),
            tmp,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let c = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.tmp.path().join("registry.log"));
                panic!(
                    "docker-registry exited early ({status}): {}",
                    log.unwrap_or_default()
                );
            }
            if c.get(format!("{}/v2/", self.url))
                .send()
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not answer /v2/ within 20 s");
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
