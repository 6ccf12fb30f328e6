//! The session registry: which task holds which client id.
//!
//! Every client id with a session has one entry: the generation of the task
//! that owns it (so a task ending late never removes its successor's entry),
//! the task's [`Mailbox`] (a takeover or a resume is a connection left
//! there), the user who owns the id (only that user may take it over) and a
//! takeover rate window. Session tasks are spawned here and tracked, so a
//! shutdown waits for exactly the tasks that exist ([`Registry::wait_closed`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::task::TaskTracker;

use super::Hub;
use super::Pending;
use crate::stats::Reason;

/// Takeovers of one client id allowed per [`TAKEOVER_WINDOW`].
const MAX_TAKEOVERS: u32 = 5;
const TAKEOVER_WINDOW: Duration = Duration::from_secs(10);

/// Entry of one client id.
struct Entry {
    /// Tells this task's entry from a successor's with the same id.
    gen: u64,
    /// The session task's mailbox for takeovers and resumes.
    tx: Arc<Mailbox>,
    /// Who owns the client id: only the same user may take it over.
    user: Option<String>,
    /// Start of the current takeover window and takeovers in it.
    takeovers: (Instant, u32),
}

/// Client ids to session tasks. See the module documentation.
pub(crate) struct Registry {
    map: Mutex<HashMap<String, Entry>>,
    next_gen: AtomicU64,
    tasks: TaskTracker,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
            next_gen: AtomicU64::new(1),
            tasks: TaskTracker::new(),
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a connection by `user` may take over the session of `id`: an
    /// error when another user owns it (an anonymous client must not knock a
    /// bridge off), or when the id changed hands too often lately (two
    /// clients fighting over one id). A logged-in user may always take an
    /// id back from an anonymous client. Otherwise the id's takeover
    /// window, counted.
    pub(crate) fn takeover_check(
        &self,
        id: &str,
        user: Option<&str>,
    ) -> Result<(Instant, u32), Reason> {
        let now = Instant::now();
        let mut reg = self.lock();
        let Some(e) = reg.get_mut(id) else {
            return Ok((now, 0));
        };
        if e.user.as_deref() != user {
            // A logged-in user takes an id back from an anonymous client
            // (a squatter on a bridge's id): always, never rate-limited,
            // and the anonymous session is not resumed by it.
            if e.user.is_none() && user.is_some() {
                return Ok((now, 0)).inspect(|_| {
                    tracing::warn!(client_id = %crate::stats::short(id), user = %crate::stats::who(user), "client id taken back from an anonymous client");
                });
            }
            return Err(Reason::TakeoverOtherUser);
        }
        if now.duration_since(e.takeovers.0) > TAKEOVER_WINDOW {
            e.takeovers = (now, 0);
        }
        e.takeovers.1 += 1;
        if e.takeovers.1 > MAX_TAKEOVERS {
            return Err(Reason::TakeoverRate);
        }
        Ok(e.takeovers)
    }

    /// Waits, at most `limit`, until every session task has ended (they
    /// deliver what they still hold at shutdown, then close). True when
    /// they all did.
    pub(crate) async fn wait_closed(&self, limit: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(limit, self.tasks.wait()).await.is_ok()
    }

    /// Session tasks running now.
    pub(crate) fn tasks(&self) -> usize {
        self.tasks.len()
    }
}

impl Registry {
    /// Numbers new sessions from `next` on (above every key the store
    /// holds, so a restarted broker never reuses one).
    pub(crate) fn number_from(&self, next: u64) {
        self.next_gen.fetch_max(next, Relaxed);
    }

    /// Enters a session read back from the store under its client id and
    /// spawns its task (`task`, given the session's mailbox).
    pub(crate) fn restore<F, Fut>(&self, id: String, gen: u64, user: Option<String>, task: F)
    where
        F: FnOnce(Arc<Mailbox>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let tx = Arc::new(Mailbox::default());
        self.lock().insert(
            id,
            Entry {
                gen,
                tx: tx.clone(),
                user,
                takeovers: (Instant::now(), 0),
            },
        );
        self.tasks.spawn(task(tx));
    }
}

/// Hands a connection to the session task for its client id, starting one
/// if there is none.
pub(crate) fn dispatch(mut pending: Box<Pending>, shared: Arc<Hub>) {
    let reg = &shared.registry;
    loop {
        let id = pending.info.client_id.clone();
        let mut map = reg.lock();
        if let Some(entry) = map.get(&id) {
            match entry.tx.try_send(pending) {
                Ok(()) => return,
                Err(SendError::Full(p)) => {
                    // Several takeovers at once: the newest wins, the others are closed.
                    drop(map);
                    tracing::info!(client_id = %id, "takeover already in progress; closing this connection");
                    drop(p);
                    return;
                }
                Err(SendError::Closed(p)) => {
                    map.remove(&id);
                    pending = p;
                    continue;
                }
            }
        }
        let tx = Arc::new(Mailbox::default());
        let rx = tx.clone();
        let gen = reg.next_gen.fetch_add(1, Relaxed);
        map.insert(
            id,
            Entry {
                gen,
                tx,
                user: pending.user.clone(),
                takeovers: pending.takeovers,
            },
        );
        drop(map);
        let shared2 = shared.clone();
        reg.tasks.spawn(async move {
            super::run(pending, rx, gen, shared2).await;
        });
        return;
    }
}

/// Removes the entry of task `gen` for `id` (not a successor's), then
/// restarts any connection that reached its mailbox meanwhile (and `next`)
/// on a fresh session.
pub(crate) fn unregister(
    shared: &Arc<Hub>,
    id: &str,
    gen: u64,
    mailbox: &Mailbox,
    next: Option<Box<Pending>>,
) {
    {
        let mut map = shared.registry.lock();
        if map.get(id).is_some_and(|e| e.gen == gen) {
            map.remove(id);
        }
    }
    mailbox.close();
    let mut waiting: Vec<Box<Pending>> = next.into_iter().collect();
    waiting.extend(mailbox.try_recv());
    // Only the newest connection may have the id; older ones are closed.
    if let Some(p) = waiting.pop() {
        dispatch(p, shared.clone());
    }
}

/// Why [`Mailbox::try_send`] gave the connection back.
enum SendError {
    /// A takeover is already waiting.
    Full(Box<Pending>),
    /// The session task is ending.
    Closed(Box<Pending>),
}

/// A session task's mailbox: one slot for a connection that takes the
/// session over. (A tokio mpsc channel would allocate a block of 32 slots
/// per session, idle or not.)
#[derive(Default)]
pub(crate) struct Mailbox {
    /// The waiting connection, and whether the mailbox is closed.
    slot: Mutex<(Option<Box<Pending>>, bool)>,
    notify: Notify,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, (Option<Box<Pending>>, bool)> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves `p` for the session task, unless one is waiting or it closed.
    fn try_send(&self, p: Box<Pending>) -> Result<(), SendError> {
        let mut s = self.lock();
        if s.1 {
            return Err(SendError::Closed(p));
        }
        if s.0.is_some() {
            return Err(SendError::Full(p));
        }
        s.0 = Some(p);
        drop(s);
        self.notify.notify_one();
        Ok(())
    }

    /// The next connection; `None` once closed and empty.
    pub(crate) async fn recv(&self) -> Option<Box<Pending>> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(p) = s.0.take() {
                    return Some(p);
                }
                if s.1 {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Refuses further connections; one already waiting stays for
    /// [`Mailbox::try_recv`].
    fn close(&self) {
        self.lock().1 = true;
    }

    /// The waiting connection, if any.
    fn try_recv(&self) -> Option<Box<Pending>> {
        self.lock().0.take()
    }
}
