//! How many envelopes one partner may have refused per minute.
//!
//! Every refusal is a ledger entry, so a hostile or broken partner sending envelopes that can
//! only be refused grows the ledger as fast as it can send (measured: ~16 MiB/s from one
//! partner). Past `[limits] max_refusals_per_peer_per_minute` in the current minute, the
//! partner's envelopes are answered "retry later" without being judged: nothing is ledgered,
//! nothing is lost (the sender's outbox retries), and judging resumes when the minute is over.
//! Keys are authenticated partner administrations, a set the agreements bound.

use std::collections::HashMap;
use std::sync::Mutex;

/// Length of a budget window, milliseconds.
pub const WINDOW_MS: i64 = 60_000;

/// Refusals of one partner in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started_ms: i64,
    refused: u64,
}

/// The per-partner refusal budgets of one node.
#[derive(Debug)]
pub struct RefusalBudget {
    per_minute: u64,
    windows: Mutex<HashMap<String, Window>>,
}

impl RefusalBudget {
    /// Budgets of `per_minute` refusals per partner.
    pub fn new(per_minute: u64) -> Self {
        RefusalBudget {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The limit per minute.
    pub fn per_minute(&self) -> u64 {
        self.per_minute
    }

    /// If `partner` has used up its budget at `now_ms`: when its window ends (Unix ms).
    pub fn exhausted(&self, partner: &str, now_ms: i64) -> Option<i64> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = windows.get(partner)?;
        (now_ms - w.started_ms < WINDOW_MS && w.refused >= self.per_minute)
            .then_some(w.started_ms + WINDOW_MS)
    }

    /// Counts one refusal of `partner` at `now_ms`; true if this one used up the budget (to
    /// log once per window).
    pub fn spend(&self, partner: &str, now_ms: i64) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = windows.entry(partner.to_owned()).or_insert(Window {
            started_ms: now_ms,
            refused: 0,
        });
        if now_ms - w.started_ms >= WINDOW_MS {
            *w = Window {
                started_ms: now_ms,
                refused: 0,
            };
        }
        w.refused += 1;
        w.refused == self.per_minute
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_past_its_budget_waits_for_the_window_to_end_and_others_are_unaffected() {
        let budget = RefusalBudget::new(3);
        assert_eq!(budget.exhausted("BR", 0), None);
        assert!(!budget.spend("BR", 0));
        assert!(!budget.spend("BR", 10));
        assert_eq!(budget.exhausted("BR", 10), None);
        assert!(budget.spend("BR", 20), "the third uses it up");
        assert_eq!(budget.exhausted("BR", 20), Some(WINDOW_MS));
        assert_eq!(budget.exhausted("BR", WINDOW_MS - 1), Some(WINDOW_MS));
        assert_eq!(budget.exhausted("DE", 20), None, "per partner");
        // A new window: judged again, with a fresh budget.
        assert_eq!(budget.exhausted("BR", WINDOW_MS), None);
        assert!(!budget.spend("BR", WINDOW_MS));
        assert_eq!(budget.exhausted("BR", WINDOW_MS + 1), None);
    }
}
