//! The drain signal and the accounting every connection and tunnel takes part in.
//!
//! Accept loops, client connections, upgrade handshakes and tunnels are all spawned
//! through [`Shutdown::spawn`], so shutdown can say how many are still running and
//! wait for them with a deadline. All of them watch the same cancellation token:
//! accept loops stop (closing their listening sockets), HTTP connections finish their
//! in-flight request and close, tunnels close.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Cancelled when shutdown begins.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Runs `task` under the drain accounting.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Signals every task to finish and waits up to `timeout` for them. Returns how
    /// many were still running at the deadline.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(timeout, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_that_watch_the_token() {
        let s = Shutdown::new();
        let token = s.token().clone();
        s.spawn(async move { token.cancelled().await });
        assert_eq!(s.running(), 1);
        assert_eq!(s.drain(Duration::from_secs(5)).await, 0);
    }

    #[tokio::test]
    async fn drain_gives_up_at_the_deadline() {
        let s = Shutdown::new();
        s.spawn(std::future::pending());
        assert_eq!(s.drain(Duration::from_millis(10)).await, 1);
    }
}
