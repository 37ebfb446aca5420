//! Spending caps on the hot path: a capped user's call is admitted from
//! budget this instance leased from the authority (`billing::caps`, in
//! PostgreSQL), without a database or Redis round trip per call.
//!
//! - **What a call reserves.** The most it can add to its period's charge:
//!   the highest unit price of the version in force during the second it
//!   arrived in (and half a minor unit when it may open a line: rounding),
//!   from the price maxima held in memory. Those are read again every
//!   [`REFRESH_PRICES_EVERY`] while capped users call, and a call is never
//!   admitted on maxima older than [`PRICES_FRESH_FOR`]: a version starts at
//!   least `PRICE_NOTICE` (2 s) after it is written, so maxima that fresh
//!   know every version that can price the call (with instance clocks less
//!   than a second apart).
//! - **Never past the cap.** Every admitted call reserved from a grant, a
//!   grant keeps `bound + Σ held ≤ cap`, and the reservation is released only
//!   by the transaction that counts the call. A call that cannot be covered
//!   is answered 402 before the handler or upstream runs, and not counted.
//! - **Leases follow demand,** as the rate limits' do: a lease used up within
//!   [`LEASE_TARGET`] doubles the next, a slower one halves it — but far from
//!   the cap a grant is at least an eighth of what is left, so a user with
//!   headroom costs about one transaction per [`LEASE_VALID`]; budget a user
//!   left unused for [`GIVE_BACK_IDLE`] goes back to the authority, and a
//!   lease is renewed after [`LEASE_VALID`] or as soon as a change to the
//!   user (a lowered cap, a top-up) is heard.
//! - **Refused slightly early, bounded:** near the cap, budget another
//!   instance holds is not available here until it is spent or given back.
//! - **Fails closed:** without the database (no lease, or maxima too old) a
//!   capped user's call is answered 503, never admitted unchecked. Users
//!   without a cap never reach this module.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::auth::revocations::{ReadMark, Revocations};
use crate::billing::caps::{self, LeaseAnswer, LeaseRequest};
use crate::db::DbPool;
use crate::domain::spend::{NotAdmitted, SpendRefusal, reservation};
use crate::domain::{Currency, Period};
use crate::models::price::{PriceBook, UNPRICED};
use crate::models::spend::SpendLease;

/// How long a lease should last: used up sooner, the next is twice as
/// large; later, half.
pub const LEASE_TARGET: Duration = Duration::from_secs(2);

/// Budget a user has not used here for this long is given back (longer
/// than the rate limits' second: a grant is a PostgreSQL transaction).
pub const GIVE_BACK_IDLE: Duration = Duration::from_secs(2);

/// A lease is renewed (its rest given back in the same step) at least this
/// often, so a change missed while Redis was not heard applies within it.
/// Shorter than `Revocations` remembers a change (a minute at least), so a
/// heard change always voids the leases granted before it.
pub const LEASE_VALID: Duration = Duration::from_secs(30);

/// How long a lease is trusted while this instance cannot hear Redis (as a
/// cached standing is): a cap lowered meanwhile applies within it.
pub const UNHEARD_VALID: Duration = Duration::from_secs(1);

/// Price maxima older than this admit nothing: versions unknown to them may
/// start `PRICE_NOTICE` after they were read; one second of that is left
/// for clocks that disagree.
pub const PRICES_FRESH_FOR: Duration = Duration::from_secs(1);

/// How often the maxima are read again while capped users call.
pub const REFRESH_PRICES_EVERY: Duration = Duration::from_millis(250);

/// How often this instance tells the authority it is alive (its leases are
/// reclaimed after [`ABANDONED_AFTER`] of silence: a killed instance's
/// budget comes back).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
pub const ABANDONED_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// A refusal is answered from memory this long before the authority is
/// asked again.
const REFUSAL_MEMORY: Duration = Duration::from_millis(250);

/// A lease with nothing left, idle this long, is forgotten.
const FORGET_IDLE: Duration = Duration::from_secs(10);

/// Whether a failed request to the authority could have committed.
enum Sent {
    /// Nothing was sent, or the transaction was rolled back.
    No(String),
    /// The connection broke: its commit may have landed with its answer lost.
    Maybe(String),
}

impl Sent {
    /// An error a statement returned means the transaction rolled back; only
    /// a connection that broke leaves its commit in doubt.
    fn from_db(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) | Error::BrokenTransactionManager => {
                Sent::Maybe(e.to_string())
            }
            other => Sent::No(other.to_string()),
        }
    }
}

/// Per API, its versions' starts (Unix seconds), ids and highest unit
/// prices, oldest first.
#[derive(Default)]
struct PriceMaxima {
    read_at: Option<Instant>,
    per_api: HashMap<i32, Vec<(i64, i32, Decimal)>>,
}

impl PriceMaxima {
    fn from_book(book: &PriceBook, read_at: Instant) -> Self {
        let per_api = book
            .apis()
            .map(|(api, versions)| {
                let maxima = versions
                    .iter()
                    .map(|v| (v.effective_from.timestamp(), v.id, v.version.max_unit_price()))
                    .collect();
                (api, maxima)
            })
            .collect();
        Self {
            read_at: Some(read_at),
            per_api,
        }
    }

    fn fresh(&self, now: Instant) -> bool {
        self.read_at
            .is_some_and(|at| now.saturating_duration_since(at) < PRICES_FRESH_FOR)
    }

    /// The version in force during `second` and its highest unit price.
    fn at(&self, api_id: i32, second: i64) -> (i32, Decimal) {
        let Some(versions) = self.per_api.get(&api_id) else {
            return (UNPRICED, Decimal::ZERO);
        };
        let idx = versions.partition_point(|(start, _, _)| *start <= second);
        idx.checked_sub(1)
            .map_or((UNPRICED, Decimal::ZERO), |i| (versions[i].1, versions[i].2))
    }
}

struct LeaseState {
    /// Budget not yet reserved by a call.
    left: Decimal,
    granted: Decimal,
    granted_at: Instant,
    /// Taken before the grant was asked for: a change to the user heard
    /// since voids the lease.
    mark: Option<ReadMark>,
    /// (API, version) lines the period has, or that a call here reserved
    /// the rounding of.
    lines: HashSet<(i32, i32)>,
    refused_until: Option<(Instant, SpendRefusal)>,
    last_used: Instant,
}

impl LeaseState {
    fn new(now: Instant) -> Self {
        Self {
            left: Decimal::ZERO,
            granted: Decimal::ZERO,
            granted_at: now,
            mark: None,
            lines: HashSet::new(),
            refused_until: None,
            last_used: now,
        }
    }

    /// No change to the user (a cap, prepaid-only, a top-up) was heard
    /// since the last grant or refusal was asked for.
    /// While Redis is not heard a change may be missed: a lease is then
    /// trusted for [`UNHEARD_VALID`] only, and never across a resync (what
    /// changed meanwhile is unknown).
    fn current(&self, user: Uuid, revocations: &Revocations, now: Instant) -> bool {
        self.mark.is_some_and(|mark| revocations.still_current(user, mark))
            && (revocations.hearing() || now.saturating_duration_since(self.granted_at) < UNHEARD_VALID)
    }

    fn need(&self, line: (i32, i32), per_call: Decimal, currency: Currency) -> Decimal {
        reservation(per_call, !self.lines.contains(&line), currency)
    }

    /// Reserves one call from the lease, or repeats a refusal still in
    /// force; `None` when the authority must be asked: the lease is used up
    /// or past [`LEASE_VALID`], or (`current` false) a change to the user
    /// was heard since it was granted or refused.
    fn spend(
        &mut self,
        line: (i32, i32),
        per_call: Decimal,
        currency: Currency,
        current: bool,
        now: Instant,
    ) -> Option<Result<Decimal, NotAdmitted>> {
        self.last_used = now;
        if !current {
            return None;
        }
        if let Some((until, why)) = self.refused_until {
            if until > now {
                return Some(Err(NotAdmitted::Refused(why)));
            }
            self.refused_until = None;
        }
        if now.saturating_duration_since(self.granted_at) >= LEASE_VALID {
            return None;
        }
        let need = self.need(line, per_call, currency);
        if self.left < need {
            return None;
        }
        self.left -= need;
        self.lines.insert(line);
        Some(Ok(need))
    }

    /// What to ask for next: twice the last grant if it was used up within
    /// [`LEASE_TARGET`], else half; never less than `need` (the authority
    /// adds a line's rounding when the call needs it).
    fn want(&self, need: Decimal, now: Instant) -> Decimal {
        let want = if now.saturating_duration_since(self.granted_at) < LEASE_TARGET {
            self.granted * Decimal::TWO
        } else {
            self.granted / Decimal::TWO
        };
        want.max(need)
    }
}

struct UserLease {
    state: Mutex<LeaseState>,
    /// One request to the authority per (user, period) at a time here.
    refilling: tokio::sync::Mutex<()>,
}

pub struct SpendLimiter {
    instance_id: Uuid,
    db: DbPool,
    currency: Currency,
    billing_tz: Tz,
    prices: RwLock<Arc<PriceMaxima>>,
    /// One reload of the maxima at a time.
    reloading: tokio::sync::Mutex<()>,
    /// When a capped call last asked for the maxima, in ms since `started`
    /// (the refresh job skips reading them while nobody capped calls); an
    /// atomic, as every capped call writes it.
    last_capped_call_ms: AtomicU64,
    started: Instant,
    leases: RwLock<HashMap<(Uuid, Period), Arc<UserLease>>>,
}

impl SpendLimiter {
    /// `instance_id` must be the meter's: flushes release reservations
    /// from the leases of the instance that counted the calls.
    pub fn new(instance_id: Uuid, db: DbPool, currency: Currency, billing_tz: Tz) -> Self {
        Self {
            instance_id,
            db,
            currency,
            billing_tz,
            prices: RwLock::new(Arc::new(PriceMaxima::default())),
            reloading: tokio::sync::Mutex::new(()),
            last_capped_call_ms: AtomicU64::new(0),
            started: Instant::now(),
            leases: RwLock::new(HashMap::new()),
        }
    }

    /// Admits one call of a capped user: what it reserved (0 for a call no
    /// version charges for), or why not.
    pub async fn admit(
        &self,
        user_id: Uuid,
        period: Period,
        api_id: i32,
        second: i64,
        revocations: &Revocations,
    ) -> Result<Decimal, NotAdmitted> {
        let (price_id, per_call) = self.price_at(api_id, second).await?;
        if per_call.is_zero() {
            return Ok(Decimal::ZERO);
        }
        let line = (api_id, price_id);
        let lease = self.lease_of(user_id, period);
        let try_spend = |lease: &UserLease| {
            let now = Instant::now();
            let mut state = lease.state.lock().unwrap_or_else(|e| e.into_inner());
            let current = state.current(user_id, revocations, now);
            state.spend(line, per_call, self.currency, current, now)
        };
        if let Some(answer) = try_spend(&lease) {
            return answer;
        }
        let _one_request = lease.refilling.lock().await;
        // Whoever asked before may have just been granted.
        if let Some(answer) = try_spend(&lease) {
            return answer;
        }
        let mark = revocations.read_mark();
        let asked_at = Instant::now();
        let request = {
            let mut state = lease.state.lock().unwrap_or_else(|e| e.into_inner());
            LeaseRequest {
                user_id,
                period,
                instance_id: self.instance_id,
                returning: std::mem::take(&mut state.left),
                line,
                per_call,
                line_reserved_here: state.lines.contains(&line),
                want: state.want(per_call, asked_at),
            }
        };
        let answer = match self.db.get().await {
            Ok(mut conn) => caps::lease(&mut conn, request, self.billing_tz, self.currency)
                .await
                .map_err(Sent::from_db),
            Err(e) => Err(Sent::No(e.to_string())),
        };
        let now = Instant::now();
        let mut state = lease.state.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Err(Sent::No(e)) => {
                // Not committed: the budget is still held here.
                tracing::debug!(error = %e, "leasing spending budget failed; nothing changed");
                state.left += request.returning;
                Err(NotAdmitted::Unavailable)
            }
            Err(Sent::Maybe(e)) => {
                // The transaction may have committed (its answer lost): the
                // budget it gave back is not spent here. If it did not, that
                // budget stays held for this instance — refused early by
                // it, never late.
                tracing::warn!(error = %e, "leasing spending budget failed");
                Err(NotAdmitted::Unavailable)
            }
            Ok(LeaseAnswer::Granted { amount, lines }) => {
                // `+=`: budget a failed give-back kept may have come back meanwhile.
                state.left += amount;
                state.granted = amount;
                state.granted_at = asked_at;
                state.mark = Some(mark);
                state.lines.extend(lines);
                state.refused_until = None;
                state
                    .spend(line, per_call, self.currency, true, now)
                    .unwrap_or(Err(NotAdmitted::Unavailable))
            }
            Ok(LeaseAnswer::Refused(why)) => {
                state.granted = Decimal::ZERO;
                state.mark = Some(mark);
                state.refused_until = Some((now + REFUSAL_MEMORY, why));
                Err(NotAdmitted::Refused(why))
            }
            // The cap was removed: this instance has not heard yet; the
            // call needs no budget.
            Ok(LeaseAnswer::Uncapped) => {
                state.granted = Decimal::ZERO;
                Ok(Decimal::ZERO)
            }
        }
    }

    fn lease_of(&self, user_id: Uuid, period: Period) -> Arc<UserLease> {
        let key = (user_id, period);
        if let Some(lease) = self.leases.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return lease.clone();
        }
        self.leases
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert_with(|| {
                Arc::new(UserLease {
                    state: Mutex::new(LeaseState::new(Instant::now())),
                    refilling: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    /// The version in force for `api_id` during `second`, and its highest
    /// unit price, from maxima fresh enough to know every version that can
    /// be in force then (read again here when they are not).
    async fn price_at(&self, api_id: i32, second: i64) -> Result<(i32, Decimal), NotAdmitted> {
        let now = Instant::now();
        let now_ms = self.ms_since_start(now);
        // Written only when it moved: every capped call passes here.
        if now_ms.saturating_sub(self.last_capped_call_ms.load(Ordering::Relaxed)) >= 100 {
            self.last_capped_call_ms.store(now_ms, Ordering::Relaxed);
        }
        {
            let maxima = self.prices.read().unwrap_or_else(|e| e.into_inner());
            if maxima.fresh(now) {
                return Ok(maxima.at(api_id, second));
            }
        }
        self.reload_prices().await;
        let maxima = self.prices.read().unwrap_or_else(|e| e.into_inner()).clone();
        if maxima.fresh(Instant::now()) {
            Ok(maxima.at(api_id, second))
        } else {
            Err(NotAdmitted::Unavailable)
        }
    }

    /// Reads the price maxima again (one reload at a time; a reload that
    /// finished while this one waited is enough).
    pub async fn reload_prices(&self) {
        let waited_since = Instant::now();
        let _one = self.reloading.lock().await;
        let current = self.prices.read().unwrap_or_else(|e| e.into_inner()).clone();
        if current.read_at.is_some_and(|at| at >= waited_since) {
            return;
        }
        let book = async {
            let mut conn = self.db.get().await.map_err(|e| anyhow::anyhow!(e))?;
            // Read once the connection is ours: waiting for the pool must
            // not age the maxima before they are even read.
            let read_at = Instant::now();
            anyhow::Ok((PriceBook::load(&mut conn, None).await?, read_at))
        }
        .await;
        match book {
            Ok((book, read_at)) => {
                *self.prices.write().unwrap_or_else(|e| e.into_inner()) =
                    Arc::new(PriceMaxima::from_book(&book, read_at));
            }
            Err(e) => tracing::debug!(error = %e, "reading price maxima for spending caps failed"),
        }
    }

    /// The refresh job's step: read the maxima again if a capped user
    /// called recently (nobody capped, nothing read).
    pub async fn refresh_prices(&self) {
        let last = self.last_capped_call_ms.load(Ordering::Relaxed);
        let idle_ms = self.ms_since_start(Instant::now()).saturating_sub(last);
        if last > 0 && idle_ms < u64::try_from(FORGET_IDLE.as_millis()).unwrap_or(u64::MAX) {
            self.reload_prices().await;
        }
    }

    fn ms_since_start(&self, now: Instant) -> u64 {
        // From 1: 0 means "no capped call yet".
        u64::try_from(now.saturating_duration_since(self.started).as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// Gives back the unspent budget of leases idle for [`GIVE_BACK_IDLE`]
    /// or past [`LEASE_VALID`] (every lease's when `everything`, at
    /// shutdown), and forgets idle leases.
    pub async fn sweep(&self, everything: bool) {
        let now = Instant::now();
        let mut returns: Vec<(Uuid, Period, Decimal)> = Vec::new();
        let mut idle = Vec::new();
        for ((user, period), lease) in self.leases.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let mut state = lease.state.lock().unwrap_or_else(|e| e.into_inner());
            let expired = now.saturating_duration_since(state.granted_at) >= LEASE_VALID;
            let unused = now.saturating_duration_since(state.last_used) >= GIVE_BACK_IDLE;
            if state.left > Decimal::ZERO && (everything || unused || expired) {
                returns.push((*user, *period, std::mem::take(&mut state.left)));
            }
            if state.left.is_zero() && now.saturating_duration_since(state.last_used) >= FORGET_IDLE {
                idle.push((*user, *period));
            }
        }
        if !idle.is_empty() {
            let mut leases = self.leases.write().unwrap_or_else(|e| e.into_inner());
            for key in idle {
                let still_idle = leases.get(&key).is_some_and(|lease| {
                    let state = lease.state.lock().unwrap_or_else(|e| e.into_inner());
                    state.left.is_zero() && now.saturating_duration_since(state.last_used) >= FORGET_IDLE
                });
                if still_idle {
                    leases.remove(&key);
                }
            }
        }
        if returns.is_empty() {
            return;
        }
        returns.sort_unstable_by_key(|(u, p, _)| (*u, *p));
        let given = match self.db.get().await {
            Ok(mut conn) => caps::give_back(&mut conn, self.instance_id, &returns)
                .await
                .map_err(Sent::from_db),
            Err(e) => Err(Sent::No(e.to_string())),
        };
        match given {
            Ok(()) => {}
            // It may have committed: never spent here again (held there
            // until this instance's rows are reclaimed, if it did not).
            Err(Sent::Maybe(e)) => tracing::warn!(error = %e, "giving spending budget back failed"),
            // Never sent: still held by the authority; kept here, to spend
            // or to give back on the next sweep.
            Err(Sent::No(e)) => {
                tracing::debug!(error = %e, "no connection to give spending budget back; kept");
                self.keep(returns);
            }
        }
    }

    /// Puts budget that could not be given back into its leases again.
    fn keep(&self, returns: Vec<(Uuid, Period, Decimal)>) {
        for (user, period, amount) in returns {
            self.lease_of(user, period)
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .left += amount;
        }
    }

    /// Tells the authority this instance is alive, and reclaims the budget
    /// of instances silent for [`ABANDONED_AFTER`].
    pub async fn heartbeat(&self) {
        let beat = async {
            let mut conn = self.db.get().await.map_err(|e| anyhow::anyhow!(e))?;
            SpendLease::heartbeat(&mut conn, self.instance_id).await?;
            anyhow::Ok(SpendLease::reclaim(&mut conn, ABANDONED_AFTER).await?)
        }
        .await;
        match beat {
            Ok(0) => {}
            Ok(reclaimed) => tracing::info!(reclaimed, "reclaimed spending leases of silent instances"),
            Err(e) => tracing::debug!(error = %e, "spending lease heartbeat failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn eur() -> Currency {
        "EUR".parse().unwrap()
    }

    #[test]
    fn a_call_reserves_its_price_and_the_rounding_of_a_line_it_opens_once() {
        let now = Instant::now();
        let mut state = LeaseState::new(now);
        state.left = dec!(0.05);
        let line = (1, 7);
        assert_eq!(state.spend(line, dec!(0.01), eur(), true, now), Some(Ok(dec!(0.015))));
        assert_eq!(state.spend(line, dec!(0.01), eur(), true, now), Some(Ok(dec!(0.01))));
        assert_eq!(state.left, dec!(0.025));
        assert_eq!(state.spend((2, 8), dec!(0.02), eur(), true, now), Some(Ok(dec!(0.025))));
        assert_eq!(state.spend(line, dec!(0.01), eur(), true, now), None, "used up");
        state.left = dec!(1);
        assert_eq!(
            state.spend(line, dec!(0.01), eur(), false, now),
            None,
            "an invalid lease is renewed first"
        );
    }

    #[test]
    fn a_refusal_is_remembered_briefly() {
        let now = Instant::now();
        let mut state = LeaseState::new(now);
        state.refused_until = Some((now + REFUSAL_MEMORY, SpendRefusal::CapReached));
        state.granted_at = now;
        assert_eq!(
            state.spend((1, 1), dec!(0.01), eur(), true, now),
            Some(Err(NotAdmitted::Refused(SpendRefusal::CapReached)))
        );
        assert_eq!(state.spend((1, 1), dec!(0.01), eur(), true, now + REFUSAL_MEMORY), None);
    }

    #[test]
    fn leases_grow_while_used_up_quickly_and_shrink_otherwise() {
        let now = Instant::now();
        let mut state = LeaseState::new(now);
        assert_eq!(state.want(dec!(0.01), now), dec!(0.01), "the first lease is one call");
        state.granted = dec!(0.40);
        assert_eq!(state.want(dec!(0.01), now + Duration::from_millis(500)), dec!(0.80));
        assert_eq!(state.want(dec!(0.01), now + LEASE_TARGET * 2), dec!(0.20));
    }

    #[test]
    fn maxima_answer_the_version_in_force_during_a_second() {
        let mut maxima = PriceMaxima::default();
        maxima
            .per_api
            .insert(3, vec![(100, 1, dec!(0.01)), (200, 2, dec!(0.5))]);
        assert_eq!(maxima.at(3, 99), (UNPRICED, Decimal::ZERO));
        assert_eq!(maxima.at(3, 100), (1, dec!(0.01)));
        assert_eq!(maxima.at(3, 199), (1, dec!(0.01)));
        assert_eq!(maxima.at(3, 200), (2, dec!(0.5)));
        assert_eq!(maxima.at(4, 200), (UNPRICED, Decimal::ZERO));
        assert!(!maxima.fresh(Instant::now()), "never read: not fresh");
    }
}
