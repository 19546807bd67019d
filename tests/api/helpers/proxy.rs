//! A TCP forwarder a test can cut and restore, to take one service "down" for one app without
//! stopping the real server other tests are using.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Mutex,
    task::JoinSet,
};

pub(crate) struct TcpProxy {
    pub(crate) addr: SocketAddr,
    enabled: Arc<AtomicBool>,
    connections: Arc<Mutex<JoinSet<()>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a random loopback port and forwards every connection to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let enabled = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let accept_task = tokio::spawn({
            let enabled = enabled.clone();
            let connections = connections.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !enabled.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    connections.lock().await.spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Self {
            addr,
            enabled,
            connections,
            accept_task,
        }
    }

    /// Refuses new connections and cuts the open ones, as if the server had died.
    pub(crate) async fn cut(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        self.connections.lock().await.abort_all();
    }

    /// Accepts and forwards connections again.
    pub(crate) fn restore(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}
