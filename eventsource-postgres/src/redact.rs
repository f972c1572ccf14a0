//! Keeping passwords out of messages: a connection URL as it may be shown, and the target of a
//! connection (host, port, database, user) without its password.
//!
//! Every error, `Debug` output and log line of the crate that names a server goes through this
//! file: [`redact_url`] for the URL as written, [`target`] for parsed connection options.

use std::fmt;

use sqlx::postgres::PgConnectOptions;

/// What replaces a password.
const HIDDEN: &str = "***";

/// The URL with every password replaced by `***`, for messages.
///
/// Handles the forms a PostgreSQL URL allows:
/// - `scheme://user:password@host/...`: the user information is everything before the *last*
///   `@` ahead of the query (`?`), and the password everything after its first `:`, so a
///   password holding `@`, `:`, `/` or `#`, encoded or not, is hidden whole, and so is a
///   percent-encoded one. (A URL's authority ends at its first `/`, `?` or `#`; looking past `/`
///   and `#` for the `@` covers passwords that hold them unencoded, which a URL parser cuts
///   short. A path holding `@` may then be hidden too: more than the password, never less.)
/// - `?password=...` and `&password=...` query parameters (the key compared case-insensitively,
///   after percent-decoding);
/// - a URL without a password comes back unchanged.
pub(crate) fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL with an authority: only query parameters can carry a password.
        return match query {
            Some(query) => format!("{head}?{}", redact_query(query)),
            None => url.to_owned(),
        };
    };
    let scheme_len = scheme.len() + "://".len();
    // The brief form of the rule is "the authority ends at the first `/`, `?` or `#`, and the
    // user information at its last `@`"; searching up to the first `?` instead also hides a
    // password holding an unencoded `/` or `#` (which a URL parser would cut short).
    let query_start = rest.find('?').unwrap_or(rest.len());
    let Some(userinfo_end) = rest[..query_start].rfind('@') else {
        return redact_query_of(url, scheme_len);
    };
    let userinfo = &rest[..userinfo_end];
    let Some(colon) = userinfo.find(':') else {
        return redact_query_of(url, scheme_len);
    };
    let user = &userinfo[..colon];
    let after = &rest[userinfo_end..];
    let redacted = format!("{scheme}://{user}:{HIDDEN}{after}");
    // The query, if any, is now in `after`.
    redact_query_of(&redacted, scheme_len + user.len() + 1 + HIDDEN.len())
}

/// `url` with the password parameters of its query (searched from byte `from` on) hidden.
fn redact_query_of(url: &str, from: usize) -> String {
    match url.get(from..).and_then(|tail| tail.find('?')) {
        Some(offset) => {
            let at = from + offset;
            format!("{}?{}", &url[..at], redact_query(&url[at + 1..]))
        }
        None => url.to_owned(),
    }
}

/// A query string (after `?`, possibly followed by a `#fragment`) with the values of its
/// `password` parameters hidden.
fn redact_query(query: &str) -> String {
    let (query, fragment) = match query.split_once('#') {
        Some((query, fragment)) => (query, Some(fragment)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_password_key(key) => format!("{key}={HIDDEN}"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = pairs.join("&");
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// A query key of `url` that names the password in another case than `password` (`PASSWORD`,
/// `Password`...), as written. The driver only knows `password`, and logs the value of keys it
/// does not know: such a URL must be refused before the driver sees it.
pub(crate) fn misspelled_password_key(url: &str) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    query
        .split('&')
        .filter_map(|pair| {
            pair.split_once('=')
                .map_or(Some(pair), |(key, _)| Some(key))
        })
        .find(|key| is_password_key(key) && percent_decode(key) != "password")
        .map(str::to_owned)
}

/// Whether a query key names the password (`password`, any case, possibly percent-encoded).
fn is_password_key(key: &str) -> bool {
    percent_decode(key).eq_ignore_ascii_case("password")
}

/// Decodes `%XX` escapes (and `+` as a space, as in query strings); malformed escapes stay as
/// they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match bytes[i] {
            b'%' => text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok()),
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The server a set of connection options points at, shown without the password:
/// `host:port, database d, user u`.
pub(crate) fn target(options: &PgConnectOptions) -> Target<'_> {
    Target(options)
}

/// See [`target`].
pub(crate) struct Target<'a>(&'a PgConnectOptions);

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = self.0;
        match options.get_socket() {
            Some(socket) => write!(f, "socket {}", socket.display())?,
            None => write!(f, "{}:{}", options.get_host(), options.get_port())?,
        }
        let user = options.get_username();
        // PostgreSQL's default database is the one named after the user.
        let database = options.get_database().unwrap_or(user);
        write!(f, ", database {database}, user {user}")
    }
}

impl fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    const SECRET: &str = "S3cr3t-PW@x:y/z";
    /// The secret percent-encoded as a URL's user information needs it.
    const ENCODED: &str = "S3cr3t-PW%40x%3Ay%2Fz";

    fn assert_hidden(url: &str, expected: &str) {
        let redacted = redact_url(url);
        assert_eq!(redacted, expected, "redacting {url}");
        for secret in [SECRET, ENCODED, "S3cr3t", "x:y/z", "x%3Ay"] {
            assert!(!redacted.contains(secret), "{secret} in {redacted}");
        }
    }

    #[test]
    fn hides_a_plain_password() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
    }

    #[test]
    fn hides_a_percent_encoded_password() {
        assert_hidden(
            &format!("postgres://u:{ENCODED}@h:5432/db"),
            "postgres://u:***@h:5432/db",
        );
    }

    #[test]
    fn hides_a_password_holding_at_and_colon() {
        // `@` and `:` unencoded, `/` encoded: the user information ends at the last `@`.
        assert_hidden(
            "postgres://u:S3cr3t-PW@x:y%2Fz@h:5432/db?sslmode=disable",
            "postgres://u:***@h:5432/db?sslmode=disable",
        );
    }

    #[test]
    fn hides_a_password_holding_an_unencoded_slash() {
        assert_hidden(
            &format!("postgres://u:{SECRET}@h:5432/db"),
            "postgres://u:***@h:5432/db",
        );
    }

    #[test]
    fn hides_password_query_parameters() {
        assert_hidden(
            &format!("postgres://u@h:5432/db?password={ENCODED}"),
            "postgres://u@h:5432/db?password=***",
        );
        assert_hidden(
            &format!(
                "postgres://u@h:5432/db?sslmode=disable&PassWord={ENCODED}&application_name=a"
            ),
            "postgres://u@h:5432/db?sslmode=disable&PassWord=***&application_name=a",
        );
        assert_hidden(
            &format!("postgres://u@h/db?pass%77ord={ENCODED}#top"),
            "postgres://u@h/db?pass%77ord=***#top",
        );
        assert_hidden(
            &format!("postgres:///db?password={ENCODED}"),
            "postgres:///db?password=***",
        );
    }

    #[test]
    fn hides_both_forms_at_once() {
        assert_hidden(
            &format!("postgres://u:{ENCODED}@h/db?password={ENCODED}"),
            "postgres://u:***@h/db?password=***",
        );
    }

    #[test]
    fn finds_password_keys_the_driver_does_not_know() {
        use super::misspelled_password_key as misspelled;
        assert_eq!(
            misspelled("postgres://h/db?sslmode=disable&PassWord=x#f"),
            Some("PassWord".to_owned())
        );
        assert_eq!(
            misspelled("postgres://h/db?PASSWORD"),
            Some("PASSWORD".into())
        );
        assert_eq!(misspelled("postgres://h/db?password=x&pass%77ord=y"), None);
        assert_eq!(misspelled("postgres://u:PassWord@h/db"), None);
    }

    #[test]
    fn leaves_urls_without_a_password_unchanged() {
        for url in [
            "postgres://u@h/db",
            "postgres://h:5432/db",
            "postgres://u@h:5432/db?sslmode=disable&application_name=app",
            "postgres:///db",
            "postgres://u@[::1]:5432/db",
            "not a url",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
