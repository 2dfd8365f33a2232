//! Client-side pacing under Cognito's and STS's quotas.
//!
//! AWS's default Cognito Identity quotas are per account and region: GetId 25 requests/s
//! and GetCredentialsForIdentity 200 requests/s. Going over them answers
//! TooManyRequestsException to every client of the account, not just to us. So calls
//! wait for a token from a per-region, per-operation bucket before they go out: a mass
//! apply or a restart becomes a steady stream at the quota instead of a burst of errors.
//! The basic flow's two calls have buckets of their own: GetOpenIdToken (a Cognito
//! operation with its own quota) and STS AssumeRoleWithWebIdentity (STS's quota, shared
//! with every other STS caller of the account, so our default takes a modest share).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::aws::cognito::{Around, CognitoError, Operation, REGIONS_KEPT, Wrapped};
use crate::common::bounded::Bounded;

/// Requests per second allowed per region and operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quotas {
    pub get_id_per_second: f64,
    pub get_credentials_per_second: f64,
    pub get_open_id_token_per_second: f64,
    pub assume_role_per_second: f64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            get_id_per_second: 25.0,
            get_credentials_per_second: 200.0,
            get_open_id_token_per_second: 200.0,
            assume_role_per_second: 100.0,
        }
    }
}

/// Calls that may go out at once from a full bucket. Small, so that our calls never
/// arrive faster than the account's own bucket refills.
const BURST: f64 = 5.0;
/// The share of a quota we use: the rest absorbs timing jitter between our clock and
/// Cognito's, and other clients of the account.
pub const HEADROOM: f64 = 0.95;

/// A token bucket that hands out reservations: each caller learns when its turn is.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    stamp: Instant,
}

impl Bucket {
    /// `rate` tokens a second; a burst of at most 5 (at least 1) stored.
    pub fn new(rate: f64, now: Instant) -> Self {
        let burst = rate.clamp(1.0, BURST);
        Self {
            rate,
            burst,
            tokens: burst,
            stamp: now,
        }
    }

    /// Takes a token (possibly one not yet earned) and returns how long to wait for it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return Duration::ZERO; // no quota configured: no pacing
        }
        let earned = now.saturating_duration_since(self.stamp).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.stamp = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Waits for each call's turn under its operation's quota, per region.
pub struct Pacer {
    quotas: Quotas,
    buckets: Mutex<Bounded<(String, Operation), Bucket>>,
}

/// A Cognito client that waits for its turn under the quotas.
pub type Paced<C> = Wrapped<Pacer, C>;

impl Pacer {
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            // Four paced operations for each region with a client kept.
            buckets: Mutex::new(Bounded::new(4 * REGIONS_KEPT)),
        }
    }

    /// Requests per second for `op`; `None`: not paced. STS GetCallerIdentity is not under
    /// Cognito's quotas, and its own is far higher.
    fn rate(&self, op: Operation) -> Option<f64> {
        let q = &self.quotas;
        match op {
            Operation::GetId => Some(q.get_id_per_second),
            Operation::GetCredentialsForIdentity => Some(q.get_credentials_per_second),
            Operation::GetOpenIdToken => Some(q.get_open_id_token_per_second),
            Operation::AssumeRoleWithWebIdentity => Some(q.assume_role_per_second),
            Operation::GetCallerIdentity => None,
        }
    }

    async fn turn(&self, region: &str, op: Operation) {
        let Some(rate) = self.rate(op) else { return };
        let rate = HEADROOM * rate;
        let wait = {
            let mut buckets = crate::lock(&self.buckets);
            let now = Instant::now();
            buckets
                .get_or_insert_with(&(region.to_string(), op), || Bucket::new(rate, now))
                .reserve(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

impl Around for Pacer {
    async fn around<T: Send>(
        &self,
        op: Operation,
        region: &str,
        call: impl Future<Output = Result<T, CognitoError>> + Send,
    ) -> Result<T, CognitoError> {
        self.turn(region, op).await;
        call.await
    }

    fn forget_region(&self, region: &str) {
        crate::lock(&self.buckets).retain(|(r, _)| r != region);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::aws::cognito::Cognito;
    use crate::aws::fake::Fake;

    #[tokio::test]
    async fn a_region_nobody_uses_takes_its_buckets_with_it() {
        let pacer = std::sync::Arc::new(Pacer::new(Quotas::default()));
        let paced = Wrapped::new(Shared(pacer.clone()), Fake::default());
        for region in ["us-east-1", "zz-aa-1"] {
            let _ = paced.get_id(region, "pool").await;
            let _ = paced.get_credentials(region, "id", None).await;
            // Not paced: no bucket.
            let _ = paced
                .caller_identity(region, &crate::aws::fake::credentials())
                .await;
        }
        assert_eq!(crate::lock(&pacer.buckets).len(), 4);
        paced.forget_region("zz-aa-1");
        let buckets = crate::lock(&pacer.buckets);
        assert_eq!(buckets.len(), 2);
        assert!(buckets.contains_key(&("us-east-1".to_string(), Operation::GetId)));
    }

    /// The pacer, shared with the test that looks into it.
    struct Shared(std::sync::Arc<Pacer>);

    impl Around for Shared {
        async fn around<T: Send>(
            &self,
            op: Operation,
            region: &str,
            call: impl Future<Output = Result<T, CognitoError>> + Send,
        ) -> Result<T, CognitoError> {
            self.0.around(op, region, call).await
        }

        fn forget_region(&self, region: &str) {
            self.0.forget_region(region);
        }
    }

    #[test]
    fn a_full_bucket_lets_a_small_burst_through_then_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::new(25.0, t0);
        for _ in 0..5 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
        // The 6th waits one interval, the 7th two: reservations queue up in order.
        assert!((b.reserve(t0).as_secs_f64() - 0.04).abs() < 1e-9);
        assert!((b.reserve(t0).as_secs_f64() - 0.08).abs() < 1e-9);
    }

    #[test]
    fn n_calls_take_about_n_over_rate_seconds() {
        let t0 = Instant::now();
        let mut b = Bucket::new(25.0 * HEADROOM, t0);
        let last = (0..1000).map(|_| b.reserve(t0)).max().unwrap_or_default();
        // 1000 calls at 95% of 25/s with a burst of 5: the last goes at 995/23.75 s,
        // within the benchmark's 1.1 × N/25 target.
        assert!(
            (last.as_secs_f64() - 995.0 / 23.75).abs() < 1e-6,
            "{last:?}"
        );
        assert!(last.as_secs_f64() < 1.1 * 1000.0 / 25.0);
    }

    #[test]
    fn tokens_refill_with_time_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, t0);
        for _ in 0..5 {
            b.reserve(t0);
        }
        assert!(b.reserve(t0) > Duration::ZERO);
        // A minute later the bucket is full again, but holds no more than the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.reserve(later), Duration::ZERO);
        }
        assert!(b.reserve(later) > Duration::ZERO);
    }

    #[test]
    fn zero_rate_means_no_pacing() {
        let t0 = Instant::now();
        let mut b = Bucket::new(0.0, t0);
        for _ in 0..1000 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
    }
}
