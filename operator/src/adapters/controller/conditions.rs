//! Status conditions as kstatus, Flux and Argo CD read them: `Ready` always set (True or False),
//! `Reconciling`, `Stalled` with the reason and message, and domain conditions; each with
//! `observedGeneration`. Pure: a condition whose status did not change keeps its
//! `lastTransitionTime`, so an unchanged object gets an unchanged status and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// One condition to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Wanted {
    pub fn new(type_: &'static str, status: bool, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Wanted { type_, status, reason: reason.into(), message: message.into() }
    }
}

/// The conditions of an object whose reconcile finished: `Ready` as given, `Reconciling` False,
/// `Stalled` True only with a message (an invalid configuration), then the domain conditions.
pub fn finished(ready: Wanted, stalled: Option<(String, String)>, domain: Vec<Wanted>) -> Vec<Wanted> {
    let mut wanted = vec![ready, Wanted::new("Reconciling", false, "Reconciled", "")];
    wanted.push(match stalled {
        Some((reason, message)) => Wanted::new("Stalled", true, reason, message),
        None => Wanted::new("Stalled", false, "Valid", ""),
    });
    wanted.extend(domain);
    wanted
}

/// Kubernetes wants a reason of letters, digits, `_`, `,` and `:`, starting with a letter.
fn reason(reason: &str) -> String {
    let cleaned: String = reason.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | ':')).collect();
    match cleaned.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => cleaned,
        _ => format!("R{cleaned}"),
    }
}

/// The API server refuses messages longer than 32 KiB.
const MAX_MESSAGE: usize = 32 * 1024;

fn message(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE - 3;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
}

/// Whether `previous` (a status's `conditions` as stored) already says what `wanted` does, in the
/// same order and for `generation`: then [`conditions`] would give them back unchanged, and the
/// status need not be compared whole (a namespace of 30,000 phones is compared at every reconcile).
pub fn already_set(wanted: &[Wanted], previous: Option<&serde_json::Value>, generation: Option<i64>) -> bool {
    let Some(previous) = previous.and_then(serde_json::Value::as_array) else { return false };
    previous.len() == wanted.len()
        && wanted.iter().zip(previous).all(|(w, p)| {
            p["type"] == w.type_
                && p["status"] == if w.status { "True" } else { "False" }
                && p["reason"] == reason(&w.reason).as_str()
                && p["message"].as_str().unwrap_or_default() == message(&w.message)
                && p["observedGeneration"].as_i64() == generation
                && p["lastTransitionTime"].is_string()
        })
}

/// The conditions to write, keeping the transition time of those whose status did not change.
pub fn conditions(wanted: &[Wanted], previous: &[Condition], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    wanted
        .iter()
        .map(|w| {
            let status = if w.status { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == w.type_ && p.status == status)
                .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
            Condition {
                type_: w.type_.to_owned(),
                status: status.to_owned(),
                reason: reason(&w.reason),
                message: message(&w.message),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn ready_reconciling_and_stalled_are_always_set() {
        let wanted = finished(Wanted::new("Ready", false, "InvalidConfiguration", "x"), Some(("Invalid".into(), "bad".into())), vec![]);
        let types: Vec<_> = wanted.iter().map(|w| (w.type_, w.status)).collect();
        assert_eq!(types, [("Ready", false), ("Reconciling", false), ("Stalled", true)]);
        let valid = finished(Wanted::new("Ready", true, "Ready", ""), None, vec![Wanted::new("TrustListPublished", true, "Published", "")]);
        assert_eq!(
            valid.iter().map(|w| (w.type_, w.status)).collect::<Vec<_>>(),
            [("Ready", true), ("Reconciling", false), ("Stalled", false), ("TrustListPublished", true)]
        );
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_time_and_a_changed_one_moves() {
        let wanted = [Wanted::new("Ready", true, "Ready", "")];
        let first = conditions(&wanted, &[], Some(1), &at(100));
        assert_eq!(first[0].last_transition_time, at(100));
        let again = conditions(&wanted, &first, Some(2), &at(200));
        assert_eq!(again[0].last_transition_time, at(100), "still True");
        assert_eq!(again[0].observed_generation, Some(2));
        let flipped = conditions(&[Wanted::new("Ready", false, "Locked", "m")], &again, Some(2), &at(300));
        assert_eq!((flipped[0].status.as_str(), flipped[0].last_transition_time.clone()), ("False", at(300)));
    }

    #[test]
    fn reasons_and_messages_fit_what_the_api_server_accepts() {
        let long = "é".repeat(MAX_MESSAGE);
        let c = conditions(&[Wanted::new("Ready", false, "3 bad-thing", long)], &[], None, &at(0));
        assert_eq!(c[0].reason, "R3badthing");
        assert!(c[0].message.len() <= MAX_MESSAGE && c[0].message.ends_with("..."));
    }

    /// What `conditions` would write unchanged is seen as already set; any difference is not.
    #[test]
    fn already_set_is_exactly_what_conditions_would_write_unchanged() {
        let wanted = finished(Wanted::new("Ready", false, "3 bad-thing", "é".repeat(MAX_MESSAGE)), None, vec![]);
        let stored = serde_json::to_value(conditions(&wanted, &[], Some(2), &at(100))).unwrap();
        assert!(already_set(&wanted, Some(&stored), Some(2)));
        assert!(!already_set(&wanted, Some(&stored), Some(3)), "a new generation");
        assert!(!already_set(&wanted, None, Some(2)), "no conditions yet");
        let mut other = wanted.clone();
        other[0].message = "another".into();
        assert!(!already_set(&other, Some(&stored), Some(2)), "a new message");
        let mut reordered = wanted.clone();
        reordered.swap(1, 2);
        assert!(!already_set(&reordered, Some(&stored), Some(2)), "another order");
        assert!(!already_set(&wanted[..2], Some(&stored), Some(2)), "one condition fewer");
    }
}
