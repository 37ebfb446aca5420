//! argon2id password hashing. Each hash costs 19 MiB and tens of
//! milliseconds by design, and logins and registrations are open to anyone,
//! so requests go through [`PasswordPool`]: a few threads of its own and a
//! short bounded queue. When both are full the caller is told at once
//! ([`PoolBusy`], 503 `busy`) instead of queueing memory and threads.

use std::sync::LazyLock;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use tokio::sync::oneshot;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};

/// OWASP's recommended argon2id configuration: 19 MiB, 2 passes, 1 lane.
fn hasher() -> Argon2<'static> {
    #[allow(clippy::expect_used)] // constant, valid parameters
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    hasher()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// Constant-shape verification: an unparsable hash is just a mismatch.
pub fn verify_password(password: &str, hash: &str) -> bool {
    hasher().verify_password(password.as_bytes(), hash).is_ok()
}

/// Verified against when the email is unknown, so that "no such user" costs
/// the same time as "wrong password" and cannot be told apart.
pub static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("payg-dummy-password-for-timing").unwrap_or_default());

/// The hashing threads are all busy and the queue is full.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("password hashing is saturated")]
pub struct PoolBusy;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that run argon2, fed by a bounded queue.
pub struct PasswordPool {
    jobs: SyncSender<Job>,
}

impl PasswordPool {
    /// `threads` hashing threads (at least 1) and room for `queue` waiting
    /// requests. Peak memory is bounded by `threads` × 19 MiB.
    pub fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, receiver) = sync_channel::<Job>(queue);
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        for i in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("payg-argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let receiver = receiver.lock().unwrap_or_else(|e| e.into_inner());
                            receiver.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            // The pool was dropped: no more work will come.
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolBusy> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(work());
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return Err(PoolBusy),
        }
        rx.await.map_err(|_| PoolBusy)
    }

    pub async fn hash(&self, password: String) -> Result<anyhow::Result<String>, PoolBusy> {
        self.run(move || hash_password(&password)).await
    }

    /// Verifies against `hash`, or against [`DUMMY_HASH`] when there is no
    /// account (false then), so both cost the same.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, PoolBusy> {
        self.run(move || match hash {
            Some(hash) => verify_password(&password, &hash),
            None => {
                let _ = verify_password(&password, &DUMMY_HASH);
                false
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_own_password() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("correct horse batterY", &hash));
        assert!(!verify_password("anything", "not a hash"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saturated_pool_refuses_at_once_instead_of_queueing() {
        let pool = std::sync::Arc::new(PasswordPool::new(1, 1).unwrap());
        let (started, release) = (
            std::sync::Arc::new(std::sync::Barrier::new(2)),
            std::sync::Arc::new(std::sync::Barrier::new(2)),
        );
        let (s, r) = (started.clone(), release.clone());
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    s.wait();
                    r.wait();
                })
                .await
            }
        });
        // The thread is now busy; one request may wait in the queue, the next is refused.
        tokio::task::spawn_blocking(move || started.wait()).await.unwrap();
        let queued = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(|| 1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(pool.run(|| 2).await.is_err(), "thread and queue full: refused");
        tokio::task::spawn_blocking(move || release.wait()).await.unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(queued.await.unwrap().unwrap(), 1);
        assert!(pool.verify("x".into(), None).await.is_ok(), "free again");
    }
}
