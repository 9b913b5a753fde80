//! The writer: a bounded queue in front of one background task that sequences, hash-chains,
//! batches and stores records, spooling to disk while the store is down.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Error;
use crate::chain::{Chain, ChainedRecord, Checkpoint, CheckpointKind};
use crate::key::AuditKey;
use crate::metrics::Metrics;
use crate::record::AuditRecord;
use crate::spool::{Overflow, Spool};
use crate::store::Store;

/// The writer thread's default nice value (see [`Config::nice`]).
pub const WRITER_NICE: i32 = 5;

/// Writer settings (documented in docs/AUDIT.md).
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name; also the name of its hash chain.
    pub node: String,
    /// Records the in-memory queue holds before new ones go to the overflow file.
    pub queue_capacity: usize,
    /// Records per store transaction at most.
    pub batch_size: usize,
    /// How long a record may wait in the queue before its batch is written.
    pub flush_interval: Duration,
    /// A signed checkpoint after this many records…
    pub checkpoint_every: u64,
    /// …or after this long, whichever comes first.
    pub checkpoint_interval: Duration,
    /// How often to retry the store while records are spooled.
    pub retry_interval: Duration,
    /// Where the spool and overflow files live.
    pub spool_dir: PathBuf,
    /// Fail callers closed when their record cannot be made durable.
    pub strict: bool,
    /// The nice value of the writer's thread (0 to 19) when it does not run in `SCHED_IDLE`,
    /// which SQLite's thread inherits: above 0, request handling on the same core runs first
    /// and the writer catches up in the gaps.
    pub nice: i32,
    /// Run the writer and SQLite's inserting thread in `SCHED_IDLE` while they keep up, so that
    /// a commit never holds a request task off its core.
    pub idle: bool,
    /// Records waiting after a commit that count as falling behind…
    pub catch_up_at: usize,
    /// …and for how long after every commit they must, before the writer moves back to its
    /// nice value (a burst the writer drains in the gaps does not); four times `catch_up_at`
    /// moves it at once.
    pub behind_for: Duration,
    /// How long fewer than a batch of records must wait before it goes back to `SCHED_IDLE`.
    pub calm_for: Duration,
}

/// The handle request paths use to hand over records. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    // Wakes the writer before its group-commit deadline: a full batch, a strict caller, a
    // flush, the last handle going away.
    wake: Arc<LastHandle>,
    // Records handed over through the queue and not yet committed.
    pending: Arc<AtomicUsize>,
    batch_size: usize,
    overflow: Arc<Overflow>,
    overflow_pending: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    strict: bool,
}

type Ack = oneshot::Sender<Result<(), String>>;

/// Shared by every clone of an [`Auditor`]; dropped with the last one, after its sender, it
/// wakes the writer so that it stops at once instead of at the end of its group-commit wait.
#[derive(Debug)]
struct LastHandle(Arc<Notify>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// The scheduling of the thread the writer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `SCHED_IDLE`: it runs only when nothing else on its core is runnable, and a request
    /// task waking up takes the core from it at once.
    Idle,
    /// Normal, at `Config::nice`.
    Nice,
}

impl Class {
    fn thread_name(self) -> &'static str {
        match self {
            Self::Idle => "ward-audit-idle",
            Self::Nice => "ward-audit-nice",
        }
    }
}

/// Why [`Writer::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Stopped,
    Moved,
}

#[derive(Debug)]
enum Msg {
    Record(Box<AuditRecord>, Option<Ack>),
    Flush(oneshot::Sender<bool>),
}

struct Writer {
    rx: mpsc::Receiver<Msg>,
    wake: Arc<Notify>,
    pending: Arc<AtomicUsize>,
    store: Store,
    spool: Spool,
    overflow: Arc<Overflow>,
    overflow_pending: Arc<AtomicBool>,
    chain: Chain,
    key: Option<Arc<AuditKey>>,
    cfg: Config,
    metrics: Arc<Metrics>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    last_retry: Instant,
    gate: ClassGate,
}

/// The writer's scheduling class and when it should change.
#[derive(Debug)]
pub(crate) struct ClassGate {
    pub(crate) class: Class,
    // Since when at least `catch_up_at` records have been waiting (in `Class::Idle`), or
    // fewer than a batch (in `Class::Nice`).
    since: Option<Instant>,
}

// === impl ClassGate ===

impl ClassGate {
    /// Starting in `class`, with no wait begun.
    pub(crate) fn new(class: Class) -> Self {
        Self { class, since: None }
    }

    /// Whether, with `waiting` records not yet written at `now`, the writer should move to a
    /// thread of the other class, which it then is: `SCHED_IDLE` while it keeps up, its nice
    /// value once records have piled up for `behind_for` (in `SCHED_IDLE` it gets almost no
    /// time on a core that request handling keeps busy; a burst it drains in the gaps is not
    /// that), and back after fewer than a batch have waited for `calm_for`.
    pub(crate) fn due(&mut self, cfg: &Config, waiting: usize, now: Instant) -> bool {
        let (holds, lasting) = match self.class {
            Class::Idle => (waiting >= cfg.catch_up_at, cfg.behind_for),
            Class::Nice => (waiting < cfg.batch_size, cfg.calm_for),
        };
        if !holds {
            self.since = None;
            return false;
        }
        // Four times `catch_up_at` moves it at once: records wait in memory, and a proxy's
        // RSS under load is a goal too (a second of them at saturation was 15 MB).
        let flooded = self.class == Class::Idle && waiting >= 4 * cfg.catch_up_at;
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) < lasting && !flooded {
            return false;
        }
        self.since = None;
        self.class = match self.class {
            Class::Idle => Class::Nice,
            Class::Nice => Class::Idle,
        };
        true
    }
}

// === impl Config ===

impl Config {
    /// Defaults for `node`, spooling under `spool_dir`.
    pub fn new(node: &str, spool_dir: PathBuf) -> Self {
        Self {
            node: node.to_owned(),
            queue_capacity: 65_536,
            batch_size: 256,
            flush_interval: Duration::from_millis(100),
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            retry_interval: Duration::from_secs(1),
            spool_dir,
            strict: false,
            nice: WRITER_NICE,
            idle: true,
            catch_up_at: 4 * 256,
            behind_for: Duration::from_secs(1),
            calm_for: Duration::from_secs(5),
        }
    }
}

// === impl Auditor ===

impl Auditor {
    /// Starts the writer on a thread of its own. The store must be reachable now, so the
    /// chain continues exactly where it stopped; afterwards outages are spooled. The returned
    /// task ends when the writer has stopped, which it does once every handle is dropped,
    /// after writing what it holds.
    pub async fn spawn(
        store: Store,
        key: Option<Arc<AuditKey>>,
        cfg: Config,
    ) -> Result<(Self, JoinHandle<()>), Error> {
        let spool = Spool::new(&cfg.spool_dir)?;
        let mut head = store.head(&cfg.node).await?;
        // Records spooled before a restart come after whatever the store holds.
        if let Some(last) = spool.read()?.into_iter().rfind(|r| r.chain == cfg.node)
            && head.as_ref().is_none_or(|(seq, _)| last.seq > *seq)
        {
            head = Some((last.seq, last.hash));
        }
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let overflow = Arc::new(Overflow::new(&cfg.spool_dir));
        let overflow_pending = Arc::new(AtomicBool::new(true));
        let metrics = Arc::new(Metrics::default());
        let wake = Arc::new(Notify::new());
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            rx,
            wake: wake.clone(),
            pending: pending.clone(),
            store,
            spool,
            overflow: overflow.clone(),
            overflow_pending: overflow_pending.clone(),
            chain: Chain::resume(&cfg.node, head),
            key,
            metrics: metrics.clone(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_retry: Instant::now(),
            gate: ClassGate::new(if cfg.idle { Class::Idle } else { Class::Nice }),
            cfg: cfg.clone(),
        };
        let task = run_on_own_thread(writer)?;
        Ok((
            Self {
                tx,
                wake: Arc::new(LastHandle(wake)),
                pending,
                batch_size: cfg.batch_size.max(1),
                overflow,
                overflow_pending,
                metrics,
                strict: cfg.strict,
            },
            task,
        ))
    }

    /// Hands a record over without waiting. When the queue is full the record goes to the
    /// overflow file instead; an error means it could not be kept anywhere (and was counted
    /// as dropped).
    pub fn record(&self, record: AuditRecord) -> Result<(), Error> {
        // Counted before sending, so that the writer never subtracts a record not yet added.
        let pending = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        let err = match self.tx.try_send(Msg::Record(Box::new(record), None)) {
            Ok(()) => {
                if pending >= self.batch_size {
                    self.wake.0.notify_one();
                }
                return Ok(());
            }
            Err(err) => err,
        };
        self.pending.fetch_sub(1, Ordering::AcqRel);
        let mpsc::error::TrySendError::Full(Msg::Record(record, _)) = err else {
            return Err(Error::Closed);
        };
        match self.overflow.push(&record) {
            Ok(()) => {
                Metrics::add(&self.metrics.overflowed, 1);
                self.overflow_pending.store(true, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                Metrics::add(&self.metrics.dropped, 1);
                Err(e)
            }
        }
    }

    /// Hands a record over and waits until it is in the store or fsynced to the spool.
    /// Strict mode uses this, so a request whose record cannot be kept is refused.
    pub async fn record_durable(&self, record: AuditRecord) -> Result<(), Error> {
        let (ack, done) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.tx
            .send_timeout(
                Msg::Record(Box::new(record), Some(ack)),
                Duration::from_secs(1),
            )
            .await
            .map_err(|_| {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                Error::NotDurable("the audit queue stayed full".into())
            })?;
        self.wake.0.notify_one();
        done.await
            .map_err(|_| Error::Closed)?
            .map_err(Error::NotDurable)
    }

    /// Hands over `record` the way the configured mode asks: durable in strict mode.
    pub async fn submit(&self, record: AuditRecord) -> Result<(), Error> {
        if self.strict {
            self.record_durable(record).await
        } else {
            self.record(record)
        }
    }

    /// Writes everything handed over so far, retries the spool, and seals the chain with a
    /// checkpoint. Returns true when nothing is left in the spool.
    pub async fn flush(&self) -> Result<bool, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| Error::Closed)?;
        self.wake.0.notify_one();
        rx.await.map_err(|_| Error::Closed)
    }

    /// The writer's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether callers must fail closed when a record cannot be made durable.
    pub fn is_strict(&self) -> bool {
        self.strict
    }
}

/// Runs the writer on threads of its own, each with a current-thread runtime, so that
/// hash-chaining and binding a batch never holds up request tasks on the caller's runtime (a
/// proxy runs one worker thread), and so that their scheduling can be chosen. A thread at the
/// writer's nice value (`ward-audit`) starts the threads the writer runs on, one after the
/// other: `ward-audit-idle` in `SCHED_IDLE` while the writer keeps up, `ward-audit-nice` at
/// that nice value while records pile up. Linux lets a thread enter `SCHED_IDLE` but not leave
/// it without CAP_SYS_NICE, so the writer moves to a new thread instead, and so does its
/// SQLite connection, whose thread sqlx starts from the inserting thread.
fn run_on_own_thread(writer: Writer) -> Result<JoinHandle<()>, Error> {
    let nice = writer.cfg.nice.clamp(0, 19);
    let (done_tx, done_rx) = oneshot::channel::<()>();
    // Aborting the returned task (or dropping its runtime) drops `stop_tx`, which stops the
    // writer where it is, as aborting the writer's own task did when it ran on the caller's
    // runtime.
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // The first runtime is built here, so that a failure to build one is reported to the caller.
    let runtime = current_thread_runtime().map_err(Error::Start)?;
    std::thread::Builder::new()
        .name("ward-audit".into())
        .spawn(move || {
            set_nice(nice);
            let (mut writer, mut stop, mut runtime) = (writer, stop_rx, Some(runtime));
            loop {
                let class = writer.gate.class;
                let rt = runtime.take();
                let Ok((moved, moved_stop, outcome)) = std::thread::Builder::new()
                    .name(class.thread_name().into())
                    .spawn(move || run_phase(writer, stop, class, rt))
                    .map_err(|e| tracing::error!(error = %e, "starting an audit writer thread"))
                    .and_then(|thread| thread.join().map_err(|_| ()))
                else {
                    // The writer and its queue are gone with the thread; callers now get
                    // `Closed`, and strict ones fail closed.
                    break;
                };
                if outcome == Outcome::Stopped {
                    break;
                }
                (writer, stop) = (moved, moved_stop);
            }
            let _ = done_tx.send(());
        })
        .map_err(Error::Start)?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
        drop(stop_tx);
    }))
}

/// Runs the writer on the calling thread, in `class`, until it stops or should move; `rt` is
/// the runtime to use, if one was built already.
fn run_phase(
    mut writer: Writer,
    mut stop: oneshot::Receiver<()>,
    class: Class,
    rt: Option<tokio::runtime::Runtime>,
) -> (Writer, oneshot::Receiver<()>, Outcome) {
    if class == Class::Idle && !enter_idle() {
        tracing::warn!("could not put the audit writer in SCHED_IDLE");
    }
    let outcome = match rt.map_or_else(current_thread_runtime, Ok) {
        Ok(rt) => rt.block_on(writer.run(&mut stop)),
        Err(e) => {
            tracing::error!(error = %e, "starting the audit writer's runtime; retrying in 1 s");
            std::thread::sleep(Duration::from_secs(1));
            Outcome::Moved
        }
    };
    (writer, stop, outcome)
}

fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Puts the calling thread in `SCHED_IDLE` (allowed without privileges); false if it is not.
fn enter_idle() -> bool {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id, thread_schedule_policy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // After the policy the crate also sets the nice value to 0, which a thread at nice 5 may
    // not without privileges: what counts is the policy.
    let _ = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle);
    thread_schedule_policy().is_ok_and(|policy| policy == idle)
}

/// Sets the calling thread's nice value; threads it starts later (the writer's, and theirs)
/// inherit it.
fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // Linux keeps the nice value per thread, so naming this thread's id changes only it.
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::debug!(error = %e, nice, "could not lower the audit writer's priority");
    }
}

// === impl Writer ===

impl Writer {
    /// Runs until every handle is gone or `stop` fires (`Stopped`), or until the writer
    /// should move to a thread of the other class (`Moved`).
    async fn run(&mut self, stop: &mut oneshot::Receiver<()>) -> Outcome {
        tokio::select! {
            outcome = self.work() => outcome,
            _ = stop => Outcome::Stopped,
        }
    }

    async fn work(&mut self) -> Outcome {
        // SQLite's connection, if one is open, was opened from the previous thread.
        self.store.reconnect_writes().await;
        let mut tick = tokio::time::interval(self.cfg.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Vec::new();
            let mut acks = Vec::new();
            let mut flushes = Vec::new();
            let mut closed = false;
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => sort(msg, &mut batch, &mut acks, &mut flushes),
                    None => closed = true,
                },
                _ = tick.tick() => {}
            }
            closed |= self.drain_queue(&mut batch, &mut acks, &mut flushes);
            // Group commit: a transaction costs far more than a row, so a batch waits for more
            // records until it is full or its first record has waited `flush_interval`, unless
            // a caller is waiting for durability (strict) or a flush. The writer sleeps through
            // the wait instead of taking records one by one: waking per record cost a context
            // switch each, on the core the requests run on.
            let deadline = tokio::time::Instant::now() + self.cfg.flush_interval;
            while !batch.is_empty()
                && batch.len() < self.cfg.batch_size
                && acks.is_empty()
                && flushes.is_empty()
                && !closed
            {
                let timed_out = tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => true,
                    _ = self.wake.notified() => false,
                };
                closed |= self.drain_queue(&mut batch, &mut acks, &mut flushes);
                if timed_out {
                    break;
                }
            }
            let from_queue = batch.len();
            if self.overflow_pending.swap(false, Ordering::AcqRel) {
                match self.overflow.take() {
                    Ok(records) => batch.extend(records),
                    Err(e) => tracing::error!(error = %e, "reading the audit overflow file"),
                }
            }
            self.commit(batch, acks).await;
            self.pending.fetch_sub(from_queue, Ordering::AcqRel);
            let force = closed || !flushes.is_empty();
            if !self.spool.is_empty()
                && (force || self.last_retry.elapsed() >= self.cfg.retry_interval)
            {
                self.replay().await;
            }
            self.maybe_checkpoint(force).await;
            let drained = self.spool.is_empty();
            for flush in flushes {
                let _ = flush.send(drained);
            }
            if closed {
                return Outcome::Stopped;
            }
            if self.class_due() {
                return Outcome::Moved;
            }
        }
    }

    /// Whether the writer should move to a thread of the other class, which it then is.
    fn class_due(&mut self) -> bool {
        if !self.cfg.idle {
            return false;
        }
        let waiting = self.pending.load(Ordering::Acquire);
        if !self.gate.due(&self.cfg, waiting, Instant::now()) {
            return false;
        }
        if self.gate.class == Class::Nice {
            tracing::info!(
                waiting,
                "audit records are piling up: the writer leaves SCHED_IDLE until they are written"
            );
            Metrics::add(&self.metrics.catch_ups, 1);
        }
        true
    }

    /// Moves what is queued right now into the batch, up to `batch_size`. True when every
    /// handle is gone and nothing is left.
    fn drain_queue(
        &mut self,
        batch: &mut Vec<AuditRecord>,
        acks: &mut Vec<Ack>,
        flushes: &mut Vec<oneshot::Sender<bool>>,
    ) -> bool {
        while batch.len() < self.cfg.batch_size {
            match self.rx.try_recv() {
                Ok(msg) => sort(msg, batch, acks, flushes),
                Err(mpsc::error::TryRecvError::Empty) => return false,
                Err(mpsc::error::TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    async fn commit(&mut self, batch: Vec<AuditRecord>, acks: Vec<Ack>) {
        if batch.is_empty() {
            return;
        }
        let mut chained = Vec::with_capacity(batch.len());
        for record in &batch {
            match self.chain.append(record) {
                Ok(c) => chained.push(c),
                Err(e) => {
                    tracing::error!(error = %e, "BUG: an audit record did not serialize");
                    Metrics::add(&self.metrics.dropped, 1);
                }
            }
        }
        let parsed = (chained.len() == batch.len()).then_some(batch);
        let result = self.store_or_spool(&chained, parsed).await;
        self.since_checkpoint += chained.len() as u64;
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }

    async fn store_or_spool(
        &mut self,
        chained: &[ChainedRecord],
        parsed: Option<Vec<AuditRecord>>,
    ) -> Result<(), String> {
        // Once anything is spooled, later records queue up behind it to keep the chain in order.
        if self.spool.is_empty() {
            match self.store.insert_with(chained, parsed).await {
                Ok(()) => {
                    Metrics::add(&self.metrics.written, chained.len());
                    Metrics::add(&self.metrics.batches, 1);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = chained.len(), "audit store write failed; spooling to disk");
                    self.last_retry = Instant::now();
                }
            }
        }
        match self.spool.append(chained) {
            Ok(()) => {
                Metrics::add(&self.metrics.spooled, chained.len());
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, records = chained.len(), "audit spool write failed; records dropped");
                Metrics::add(&self.metrics.dropped, chained.len());
                Err(e.to_string())
            }
        }
    }

    async fn replay(&mut self) {
        self.last_retry = Instant::now();
        let records = match self.spool.read() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "reading the audit spool");
                return;
            }
        };
        for chunk in records.chunks(self.cfg.batch_size.max(1)) {
            if let Err(e) = self.store.insert(chunk).await {
                tracing::debug!(error = %e, "audit store still failing; keeping the spool");
                return;
            }
        }
        match self.spool.clear() {
            Ok(()) => {
                tracing::info!(
                    records = records.len(),
                    "audit spool replayed into the store"
                );
                Metrics::add(&self.metrics.replayed, records.len());
            }
            Err(e) => tracing::error!(error = %e, "clearing the audit spool"),
        }
    }

    async fn maybe_checkpoint(&mut self, force: bool) {
        let Some(key) = &self.key else { return };
        let due = self.since_checkpoint >= self.cfg.checkpoint_every
            || self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval
            || force;
        if self.since_checkpoint == 0 || !due || !self.spool.is_empty() {
            return;
        }
        let (seq, hash) = self.chain.head();
        let cp = Checkpoint::sign(key, self.chain.name(), seq, hash, CheckpointKind::Periodic);
        match self.store.insert_checkpoint(&cp).await {
            Ok(()) => {
                Metrics::add(&self.metrics.checkpoints, 1);
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
            }
            Err(e) => tracing::warn!(error = %e, "storing an audit checkpoint failed; will retry"),
        }
    }
}

fn sort(
    msg: Msg,
    batch: &mut Vec<AuditRecord>,
    acks: &mut Vec<Ack>,
    flushes: &mut Vec<oneshot::Sender<bool>>,
) {
    match msg {
        Msg::Record(record, ack) => {
            batch.push(*record);
            acks.extend(ack);
        }
        Msg::Flush(tx) => flushes.push(tx),
    }
}
