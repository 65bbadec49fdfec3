//! When to renew a token and when to try again after a failure (pure).

use std::time::Duration;

/// The TokenRequest API's shortest lifetime (`expirationSeconds` below it is refused).
pub const MIN_LIFETIME: Duration = Duration::from_secs(600);
/// Share of a token's lifetime after which it is renewed (kubelet renews projected tokens at 80 %
/// too), so a renewal failure leaves a fifth of the lifetime for retries.
pub const RENEW_SHARE: f64 = 0.8;
/// First and longest wait between attempts after a failure.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long after issue a token of `lifetime` is renewed: at [`RENEW_SHARE`] of it, or after
/// `forced` (a test setting) when that is sooner. Never zero (a token that is already expired
/// when it arrives is renewed after a second, not in a busy loop).
pub fn renew_after(lifetime: Duration, forced: Option<Duration>) -> Duration {
    let share = lifetime.mul_f64(RENEW_SHARE);
    let after = match forced {
        Some(f) if f < share => f,
        _ => share,
    };
    after.max(Duration::from_secs(1))
}

/// The wait before the next attempt after `failures` consecutive failures (1 s, 2 s, 4 s, … up
/// to [`MAX_BACKOFF`]).
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1u32 << exp).min(MAX_BACKOFF)
}

/// The `expirationSeconds` to ask for: at least [`MIN_LIFETIME`].
pub fn requested_seconds(lifetime: Duration) -> i64 {
    i64::try_from(lifetime.max(MIN_LIFETIME).as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_at_four_fifths_of_its_lifetime() {
        assert_eq!(
            renew_after(Duration::from_secs(3600), None),
            Duration::from_secs(2880)
        );
        assert_eq!(
            renew_after(Duration::from_secs(600), None),
            Duration::from_secs(480)
        );
    }

    #[test]
    fn a_forced_period_renews_sooner_but_never_later_than_the_share() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            renew_after(hour, Some(Duration::from_secs(20))),
            Duration::from_secs(20)
        );
        assert_eq!(
            renew_after(hour, Some(Duration::from_secs(7200))),
            Duration::from_secs(2880)
        );
    }

    #[test]
    fn an_expired_or_tiny_lifetime_still_waits_a_second() {
        assert_eq!(renew_after(Duration::ZERO, None), Duration::from_secs(1));
        assert_eq!(
            renew_after(Duration::from_secs(600), Some(Duration::ZERO)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let s: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn the_requested_lifetime_is_at_least_the_api_minimum() {
        assert_eq!(requested_seconds(Duration::from_secs(60)), 600);
        assert_eq!(requested_seconds(Duration::from_secs(3600)), 3600);
    }
}
