//! NATS subjects: the relay's `<prefix>.<category>.<EventType>`, and the checks that keep a
//! subject publishable.

use eventsource_postgres::relay::OutgoingMessage;

/// Why a subject (or a part of one) cannot be published to.
///
/// A publish subject is one or more tokens separated by `.`; a token is not empty and holds no
/// whitespace, no control character and no wildcard (`*`, `>`).
pub(crate) fn check(subject: &str) -> Result<(), String> {
    if subject.is_empty() {
        return Err("the subject is empty".to_owned());
    }
    if subject.split('.').any(str::is_empty) {
        return Err(format!(
            "the subject {subject:?} has an empty token (a leading, trailing or doubled `.`)"
        ));
    }
    if let Some(bad) = subject
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
    {
        return Err(format!(
            "the subject {subject:?} holds {bad:?}: NATS subjects take no whitespace, control characters or wildcards"
        ));
    }
    Ok(())
}

/// `<prefix>.<category>.<EventType>`: where the relay publishes `message`.
pub(crate) fn for_message(prefix: &str, message: &OutgoingMessage) -> String {
    format!("{prefix}.{}", message.routing_key())
}

/// The dead-letter subject of a message that came on `subject`: `<dead_letter_prefix>.<subject>`.
pub(crate) fn dead_letter(dead_letter_prefix: &str, subject: &str) -> String {
    format!("{dead_letter_prefix}.{subject}")
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn publishable_subjects_pass() {
        assert!(check("events.order.OrderPlaced").is_ok());
        assert!(check("events.order.v2.Placed").is_ok());
        assert!(check("a").is_ok());
    }

    #[test]
    fn broken_subjects_are_refused_with_the_reason() {
        for bad in [
            "",
            "events..x",
            ".events",
            "events.",
            "events.a b",
            "events.*",
            "events.>",
            "a\nb",
        ] {
            assert!(check(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check("events.a b").is_err_and(|e| e.contains("whitespace")));
        assert!(check("events..x").is_err_and(|e| e.contains("empty token")));
    }
}
