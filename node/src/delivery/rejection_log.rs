//! Logging of refused envelopes that a flooding partner cannot turn into a disk-filling log.
//!
//! Per partner and reason, the first [`BURST`] refusals of each [`WINDOW`] are logged one by
//! one; the rest are counted and summarised in one line once the window is over. Nothing else
//! is thinned out: the ledger records every decision and `dccf_messages_rejected_total` counts
//! every refusal. The keys are bounded: partners are authenticated administrations named by
//! agreements and reasons are `RejectReason` names.

use std::collections::HashMap;
use std::sync::Mutex;

/// Refusals per partner and reason logged one by one in each window.
pub const BURST: u32 = 20;

/// Length of a window, milliseconds.
pub const WINDOW_MS: i64 = 60_000;

/// Refusals of one partner for one reason in the current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started_ms: i64,
    logged: u32,
    suppressed: u64,
}

/// Refusals counted but not logged one by one: `suppressed` of `partner` for `reason` in the
/// window that started at `since_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The partner administration.
    pub partner: String,
    /// The `RejectReason` name.
    pub reason: &'static str,
    /// How many were not logged.
    pub suppressed: u64,
    /// Start of their window, Unix ms.
    pub since_ms: i64,
}

/// The windows of one node.
#[derive(Debug, Default)]
pub struct RejectionLog {
    windows: Mutex<HashMap<(String, &'static str), Window>>,
}

impl RejectionLog {
    /// Records a refusal at `now_ms`; true if it is to be logged in full. A window that ended
    /// before it is returned as a summary to log first.
    pub fn admit(
        &self,
        partner: &str,
        reason: &'static str,
        now_ms: i64,
    ) -> (bool, Option<Summary>) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Window {
            started_ms: now_ms,
            logged: 0,
            suppressed: 0,
        };
        let window = windows.entry((partner.to_owned(), reason)).or_insert(fresh);
        let mut ended = None;
        if now_ms - window.started_ms >= WINDOW_MS {
            ended = summary(partner, reason, window);
            *window = fresh;
        }
        if window.logged < BURST {
            window.logged += 1;
            (true, ended)
        } else {
            window.suppressed += 1;
            (false, ended)
        }
    }

    /// Ends every window older than [`WINDOW_MS`] at `now_ms` (all of them with `all`),
    /// returning the summaries of those that suppressed anything.
    pub fn flush(&self, now_ms: i64, all: bool) -> Vec<Summary> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        windows.retain(|(partner, reason), window| {
            if !all && now_ms - window.started_ms < WINDOW_MS {
                return true;
            }
            out.extend(summary(partner, reason, window));
            false
        });
        out.sort_by(|a, b| (&a.partner, a.reason).cmp(&(&b.partner, b.reason)));
        out
    }
}

fn summary(partner: &str, reason: &'static str, window: &Window) -> Option<Summary> {
    (window.suppressed > 0).then(|| Summary {
        partner: partner.to_owned(),
        reason,
        suppressed: window.suppressed,
        since_ms: window.started_ms,
    })
}

/// Logs a summary (WARN, like the refusals it stands for).
pub fn log_summary(s: &Summary) {
    tracing::warn!(
        peer = %s.partner,
        reason = s.reason,
        suppressed = s.suppressed,
        since_ms = s.since_ms,
        "envelopes rejected and not logged one by one (more than {BURST} a minute for this \
         partner and reason); each is in the ledger and in dccf_messages_rejected_total"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_burst_of_a_window_is_logged_and_the_rest_summarised_once() {
        let log = RejectionLog::default();
        let logged = (0..100)
            .filter(|i| {
                let (full, ended) = log.admit("BR", "REJECT_REASON_MALFORMED", 1_000 + i);
                assert_eq!(ended, None);
                full
            })
            .count();
        assert_eq!(logged, BURST as usize);
        // Another partner or reason has its own budget.
        assert!(log.admit("DE", "REJECT_REASON_MALFORMED", 2_000).0);
        assert!(log.admit("BR", "REJECT_REASON_EXPIRED", 2_000).0);
        // Nothing is summarised before the window ends...
        assert!(log.flush(1_000 + WINDOW_MS - 1, false).is_empty());
        // ...and the next refusal after it starts a new window and brings the summary.
        let (full, ended) = log.admit("BR", "REJECT_REASON_MALFORMED", 1_000 + WINDOW_MS);
        assert!(full);
        assert_eq!(
            ended,
            Some(Summary {
                partner: "BR".into(),
                reason: "REJECT_REASON_MALFORMED",
                suppressed: 80,
                since_ms: 1_000,
            })
        );
    }

    #[test]
    fn flush_summarises_ended_windows_and_all_of_them_at_shutdown() {
        let log = RejectionLog::default();
        for i in 0..25 {
            log.admit("BR", "REJECT_REASON_MALFORMED", i);
            log.admit("DE", "REJECT_REASON_MALFORMED", 30_000 + i);
        }
        log.admit("NL", "REJECT_REASON_EXPIRED", 0);
        let ended = log.flush(WINDOW_MS, false);
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert_eq!((ended[0].partner.as_str(), ended[0].suppressed), ("BR", 5));
        // The ended windows are gone; the quiet one (nothing suppressed) leaves no summary.
        assert!(log.flush(WINDOW_MS, false).is_empty());
        let rest = log.flush(WINDOW_MS, true);
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!((rest[0].partner.as_str(), rest[0].suppressed), ("DE", 5));
        assert!(log.flush(i64::MAX, true).is_empty());
    }
}
