//! A PgBouncer of the test's own, in transaction mode with a tiny server pool, in front of this
//! machine's PostgreSQL: the pooler a Kubernetes deployment would put there, squeezed so that every
//! server connection is shared by many clients. Debian's `pgbouncer` package (`.ci/run` installs it).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::wait_until;

pub(crate) const PGBOUNCER_BIN: &str = "/usr/sbin/pgbouncer";

pub(crate) struct PgBouncer {
    pub(crate) addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl PgBouncer {
    /// Starts one on a free loopback port with `pool_size` server connections per database.
    pub(crate) async fn start(pool_size: u32) -> Self {
        assert!(
            std::path::Path::new(PGBOUNCER_BIN).exists(),
            "{PGBOUNCER_BIN} is missing: `apt-get install pgbouncer` (.ci/run does)"
        );
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("brx-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port=5432\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
                 max_client_conn = 1000\ndefault_pool_size = {pool_size}\n\
                 ignore_startup_parameters = extra_float_digits\nlogfile = {log}\n",
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let mut command = Command::new(PGBOUNCER_BIN);
        // PgBouncer refuses to run as root; CI runs as root.
        if running_as_root() {
            command.args(["-u", "postgres"]);
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status();
        }
        let child = command
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until(
            "PgBouncer accepting connections",
            Duration::from_secs(10),
            || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        Self { addr, child, dir }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}
