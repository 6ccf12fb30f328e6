//! The live source: an IMAP folder that receives Launchpad mail.
//!
//! Each round searches the folder for unseen mail whose `X-Generated-By`
//! mentions Launchpad (server-side, so other mail is never fetched and
//! never touched), fetches it with `BODY.PEEK[]` (which does not set
//! `\Seen`), publishes each mail as one [`Batch`](firehose_bridge::Batch)
//! tagged with its UID, and applies `--after` (seen, move, delete) to a
//! mail only once the broker acknowledged its event. A mail that is from
//! Launchpad but cannot be read is dead-lettered whole and marked seen (it
//! stays on the server). Then it waits for new mail: IDLE when the server
//! offers it, `--poll-interval` otherwise. Any error drops the connection
//! and the runtime reconnects; UIDs published and not yet settled are
//! remembered across connections, so a reconnect does not publish them
//! twice.
//!
//! Every command has a deadline (`--imap-timeout`) and the socket has TCP
//! keepalive, so a server that stops answering (half-open, hung) is
//! noticed: the connection counts as lost, the status says why, and the
//! runtime reconnects. A mail over `--max-mail-bytes` (by its RFC822.SIZE)
//! is never fetched whole: its headers are dead-lettered with the reason,
//! and it is marked seen.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::Session;
use firehose_bridge::{Acks, BatchStatus, ResultExt, Source, SourceContext, SourceError};
use futures_util::TryStreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{After, Imap, Security};

/// How long one IDLE lasts before it is renewed (RFC 2177: under 29 minutes).
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);
/// Mails fetched per FETCH command.
const FETCH_CHUNK: usize = 50;
/// TCP keepalive: first probe after this much silence, then every
/// [`KEEPALIVE_INTERVAL`], given up after [`KEEPALIVE_RETRIES`]: a dead
/// peer (even in IDLE, where the server may be silent for 25 minutes) is
/// found in about 90 s.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// `fut` (IMAP command `what`) within `limit`; past it the connection
/// counts as lost, with a reason that says the server stopped answering.
async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, SourceError>>,
) -> Result<T, SourceError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(SourceError::Lost {
            context: format!("IMAP {what}"),
            source: format!(
                "no answer in {limit:?} (--imap-timeout): the server is not responding"
            )
            .into(),
        })
    })
}
/// The search that finds what lpmqtt handles, without fetching other mail.
const SEARCH: &str = "UNSEEN HEADER X-Generated-By Launchpad";

/// A TCP stream, with or without TLS: what the IMAP client runs over.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What became of one fetched mail.
enum Outcome {
    Published,
    DeadLettered,
    Skipped,
}

/// The IMAP source: the account, and what is published and not yet settled.
pub struct ImapSource {
    account: Imap,
    acks: Acks<u32>,
    /// UIDs published and waiting for the broker, with the folder's
    /// UIDVALIDITY they belong to.
    pending: BTreeSet<u32>,
    /// UIDs left unseen on the server and not fetched again by this
    /// process: events the broker refused (dead-lettered), and mail the
    /// server's search matched that is not from Launchpad after all.
    refused: BTreeSet<u32>,
    uid_validity: Option<u32>,
}

impl ImapSource {
    pub fn new(account: Imap) -> ImapSource {
        ImapSource {
            account,
            acks: Acks::new(),
            pending: BTreeSet::new(),
            refused: BTreeSet::new(),
            uid_validity: None,
        }
    }
}

impl Source for ImapSource {
    fn name(&self) -> String {
        self.account.display.clone()
    }

    async fn run(&mut self, ctx: &SourceContext) -> Result<(), SourceError> {
        let a = &self.account;
        let mut session = timed(a.timeout, "connect and log in", login(a)).await?;
        let t = a.timeout;
        let mailbox = timed(t, "SELECT", async {
            session
                .select(&a.folder)
                .await
                .lost(format!("selecting folder {:?}", a.folder))
        })
        .await?;
        if self.uid_validity != mailbox.uid_validity {
            // Other UIDs now: what was pending is found again by the search.
            self.pending.clear();
            self.refused.clear();
            self.uid_validity = mailbox.uid_validity;
        }
        if let After::Move(folder) = &a.after {
            timed(t, "LIST/CREATE", ensure_folder(&mut session, folder)).await?;
        }
        let idle = timed(t, "CAPABILITY", async {
            session.capabilities().await.lost("CAPABILITY")
        })
        .await?
        .has_str("IDLE");
        tracing::info!(imap = %a.display, folder = %a.folder, idle, "watching for Launchpad mail");
        let poll = a.poll_interval;
        ctx.connected();
        let mut shutdown = ctx.shutdown.clone();
        loop {
            self.round(ctx, &mut session).await?;
            let wait = async move {
                if idle {
                    wait_idle(session, t).await
                } else {
                    tokio::time::sleep(poll).await;
                    Ok(session)
                }
            };
            session = tokio::select! {
                s = wait => s?,
                // Everything published so far is settled (round waits for
                // it): nothing is left to mark.
                _ = shutdown.changed() => return Err(SourceError::Stopped),
            };
        }
    }
}

impl ImapSource {
    /// Publishes what is new, waits for the broker, applies `--after`.
    async fn round(
        &mut self,
        ctx: &SourceContext,
        session: &mut Session<Stream>,
    ) -> Result<(), SourceError> {
        let t = self.account.timeout;
        let max = self.account.screen.max_mail_bytes;
        let found = timed(t, "SEARCH", async {
            session.uid_search(SEARCH).await.lost("SEARCH")
        })
        .await?;
        let mut uids: Vec<u32> = found
            .into_iter()
            .filter(|u| !self.pending.contains(u) && !self.refused.contains(u))
            .collect();
        uids.sort_unstable();
        let mut dead = Vec::new();
        let mut published = 0usize;
        for chunk in uids.chunks(FETCH_CHUNK) {
            // Sizes first: a mail over --max-mail-bytes is never fetched
            // whole, only its headers, for the dead letter.
            let sizes = fetch_all(session, t, &uid_set(chunk), "(UID RFC822.SIZE)").await?;
            let (small, large): (Vec<_>, Vec<_>) = sizes
                .iter()
                .filter_map(|f| Some((f.uid?, f.size.unwrap_or(0) as usize)))
                .partition(|(_, size)| *size <= max);
            if !large.is_empty() {
                let set = uid_set(&large.iter().map(|(u, _)| *u).collect::<Vec<_>>());
                for f in fetch_all(session, t, &set, "(UID BODY.PEEK[HEADER])").await? {
                    let Some(uid) = f.uid else { continue };
                    let size = large.iter().find(|(u, _)| *u == uid).map_or(0, |l| l.1);
                    let reason = format!(
                        "uid {uid}: mail of {size} bytes is over --max-mail-bytes ({max}); not fetched, its headers kept here"
                    );
                    ctx.malformed_whole("launchpad", &reason, f.header().unwrap_or_default());
                    dead.push(uid);
                }
            }
            if small.is_empty() {
                continue;
            }
            let set = uid_set(&small.iter().map(|(u, _)| *u).collect::<Vec<_>>());
            let fetches = fetch_all(session, t, &set, "(UID RFC822.SIZE BODY.PEEK[])").await?;
            for f in fetches {
                let (Some(uid), Some(raw)) = (f.uid, f.body()) else {
                    continue;
                };
                match self.publish(ctx, uid, raw).await? {
                    Outcome::Published => published += 1,
                    Outcome::DeadLettered => dead.push(uid),
                    Outcome::Skipped => {}
                }
            }
        }
        if published > 0 || !dead.is_empty() {
            tracing::info!(imap = %self.account.display, published, dead_lettered = dead.len(), "new Launchpad mail");
        }
        if !dead.is_empty() {
            timed(t, "STORE", store_seen(session, &dead)).await?;
        }
        self.settle(session).await
    }

    /// One mail: an event (pending until acked), a dead letter, or not ours.
    async fn publish(
        &mut self,
        ctx: &SourceContext,
        uid: u32,
        raw: &[u8],
    ) -> Result<Outcome, SourceError> {
        let parsed = self.account.screen.read(raw).await;
        match parsed {
            Ok(Some(ev)) => {
                let batch = self.acks.batch(uid);
                ctx.publish(&ev, &self.account.display, Some(&batch))
                    .await?;
                self.pending.insert(uid);
                Ok(Outcome::Published)
            }
            // The search said Launchpad; the mail says otherwise: leave it,
            // and do not fetch it again.
            Ok(None) => {
                self.refused.insert(uid);
                Ok(Outcome::Skipped)
            }
            Err(reason) => {
                ctx.malformed_whole("launchpad", &format!("uid {uid}: {reason}"), raw);
                Ok(Outcome::DeadLettered)
            }
        }
    }

    /// Waits until every pending mail is settled (keeping the connection
    /// alive), then applies `--after` to the delivered ones. A failed one
    /// stays unseen and is published again next round.
    async fn settle(&mut self, session: &mut Session<Stream>) -> Result<(), SourceError> {
        let t = self.account.timeout;
        let mut delivered = Vec::new();
        while !self.pending.is_empty() {
            let settled = tokio::time::timeout(Duration::from_secs(60), self.acks.next()).await;
            match settled {
                Ok((uid, status)) => {
                    self.pending.remove(&uid);
                    match status {
                        BatchStatus::Delivered => delivered.push(uid),
                        // Published again next round.
                        BatchStatus::Failed => {}
                        BatchStatus::Rejected => {
                            self.refused.insert(uid);
                        }
                    }
                }
                // The broker is slow or away: keep the IMAP session alive.
                Err(_) => timed(t, "NOOP", async { session.noop().await.lost("NOOP") }).await?,
            }
        }
        if delivered.is_empty() {
            return Ok(());
        }
        timed(t, "--after", self.after(session, &delivered)).await
    }

    /// Applies `--after` to delivered mail.
    async fn after(
        &self,
        session: &mut Session<Stream>,
        delivered: &[u32],
    ) -> Result<(), SourceError> {
        match &self.account.after {
            After::Seen => store_seen(session, delivered).await,
            After::Move(folder) => session
                .uid_mv(uid_set(delivered), folder)
                .await
                .lost(format!("moving delivered mail to {folder:?}")),
            After::Delete => {
                let set = uid_set(delivered);
                drain(session.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await)
                    .await
                    .lost("STORE \\Deleted")?;
                let expunged: Result<Vec<_>, _> = session
                    .uid_expunge(&set)
                    .await
                    .lost("UID EXPUNGE")?
                    .try_collect()
                    .await;
                expunged.lost("UID EXPUNGE").map(|_| ())
            }
        }
    }
}

/// Connects, secures the connection as configured, and logs in.
async fn login(a: &Imap) -> Result<Session<Stream>, SourceError> {
    let where_ = format!("{}:{}", a.host, a.port);
    let tcp = TcpStream::connect((a.host.as_str(), a.port))
        .await
        .lost(format!("connecting to {where_}"))?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(&tcp)
        .set_tcp_keepalive(&keepalive)
        .lost("setting TCP keepalive")?;
    let stream = match (a.security, &a.tls) {
        (Security::Tls, Some(tls)) => tls_wrap(tcp, a, tls.clone()).await?,
        _ => Stream::Plain(tcp),
    };
    let mut client = async_imap::Client::new(stream);
    client
        .read_response()
        .await
        .lost("reading the IMAP greeting")?
        .ok_or_else(|| SourceError::Ended("the server closed before its greeting".into()))?;
    if let (Security::StartTls, Some(tls)) = (a.security, &a.tls) {
        client
            .run_command_and_check_ok("STARTTLS", None)
            .await
            .lost("STARTTLS (the server must offer it; imaps:// is the other way)")?;
        let Stream::Plain(tcp) = client.into_inner() else {
            return Err(SourceError::Ended("STARTTLS on a TLS stream".into()));
        };
        client = async_imap::Client::new(tls_wrap(tcp, a, tls.clone()).await?);
    }
    client
        .login(&a.user, &a.password)
        .await
        .map_err(|(e, _)| e)
        .lost(format!("logging in to {} as {}", where_, a.user))
}

async fn tls_wrap(
    tcp: TcpStream,
    a: &Imap,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> Result<Stream, SourceError> {
    let name = rustls::pki_types::ServerName::try_from(a.host.clone())
        .lost(format!("{}: not a valid TLS server name", a.host))?;
    let s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .lost(format!("TLS with {}", a.host))?;
    Ok(Stream::Tls(Box::new(s)))
}

/// Creates the `--after move:FOLDER` folder when it does not exist yet.
async fn ensure_folder(session: &mut Session<Stream>, folder: &str) -> Result<(), SourceError> {
    let found: Vec<_> = session
        .list(None, Some(folder))
        .await
        .lost("LIST")?
        .try_collect()
        .await
        .lost("LIST")?;
    if found.is_empty() {
        session
            .create(folder)
            .await
            .lost(format!("creating the --after folder {folder:?}"))?;
        tracing::info!(folder, "created the folder delivered mail moves to");
    }
    Ok(())
}

/// IDLE until the server says something changed, or for [`IDLE_RENEW`]
/// (a dead peer meanwhile is found by TCP keepalive).
async fn wait_idle(session: Session<Stream>, t: Duration) -> Result<Session<Stream>, SourceError> {
    let mut handle = session.idle();
    timed(t, "IDLE", async { handle.init().await.lost("IDLE") }).await?;
    let (wait, _stop) = handle.wait_with_timeout(IDLE_RENEW);
    let why = wait.await.lost("IDLE")?;
    tracing::debug!(?why, "IDLE ended");
    timed(t, "IDLE DONE", async {
        handle.done().await.lost("IDLE DONE")
    })
    .await
}

/// A UID FETCH of `items` for `set`, every response read, within `t`.
async fn fetch_all(
    session: &mut Session<Stream>,
    t: Duration,
    set: &str,
    items: &str,
) -> Result<Vec<async_imap::types::Fetch>, SourceError> {
    timed(t, "FETCH", async {
        session
            .uid_fetch(set, items)
            .await
            .lost("FETCH")?
            .try_collect()
            .await
            .lost("FETCH")
    })
    .await
}

/// Marks mails `\Seen`.
async fn store_seen(session: &mut Session<Stream>, uids: &[u32]) -> Result<(), SourceError> {
    drain(
        session
            .uid_store(uid_set(uids), "+FLAGS.SILENT (\\Seen)")
            .await,
    )
    .await
    .lost("STORE \\Seen")
}

/// Reads a STORE's responses to the end.
async fn drain<S, T>(stream: async_imap::error::Result<S>) -> async_imap::error::Result<()>
where
    S: futures_util::Stream<Item = async_imap::error::Result<T>>,
{
    let s = stream?;
    futures_util::pin_mut!(s);
    while s.try_next().await?.is_some() {}
    Ok(())
}

/// `1,5,7` for a FETCH or STORE.
fn uid_set(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
