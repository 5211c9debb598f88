//! A failed ClickHouse operation, and whether trying again can help: errors that say the
//! data is at fault (`Code: 117`, `53`, `27`, `33`, `6`, `70`) are not retried (the rows
//! become dead letters); network errors, timeouts and other server errors are.

/// A failed ClickHouse operation, and whether trying again can help. Its text carries the
/// causes too (a network error's is what went wrong: refused, a certificate not trusted).
#[derive(Debug, thiserror::Error)]
#[error("clickhouse {action}: {}", with_causes(source))]
pub struct ClickHouseError {
    pub action: &'static str,
    #[source]
    pub source: clickhouse::error::Error,
}

/// `error: cause: cause's cause`, each cause once (a wrapper that repeats its cause's
/// text adds nothing).
fn with_causes(error: &clickhouse::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// Server error codes that mean the data itself is wrong: retrying sends the same bytes.
const DATA_ERROR_CODES: [u32; 6] = [117, 53, 27, 33, 6, 70];

impl ClickHouseError {
    /// The server's error code (`Code: 117.` on current servers, `Code: 117,` on 18.16).
    pub fn code(&self) -> Option<u32> {
        let clickhouse::error::Error::BadResponse(text) = &self.source else {
            return None;
        };
        // With an empty body the crate reports the bare X-ClickHouse-Exception-Code.
        if let Ok(code) = text.trim().parse() {
            return Some(code);
        }
        let rest = &text[text.find("Code: ")? + 6..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// Whether the same request may succeed later. Not when the server blames the data, nor
    /// for meterflow's own checks of what it sends (a batch of another shape, a version it
    /// cannot read): those fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        if matches!(
            self.source,
            clickhouse::error::Error::Custom(_) | clickhouse::error::Error::Compression(_)
        ) {
            return false;
        }
        !self.code().is_some_and(|c| DATA_ERROR_CODES.contains(&c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_not_retried() {
        let data = ClickHouseError {
            action: "inserting readings",
            source: clickhouse::error::Error::BadResponse(
                "Code: 117. DB::Exception: Unknown type".into(),
            ),
        };
        assert!(!data.is_retryable());
        let old_server = ClickHouseError {
            action: "inserting readings",
            source: clickhouse::error::Error::BadResponse(
                "Code: 53, e.displayText() = DB::Exception: Type mismatch".into(),
            ),
        };
        assert_eq!(old_server.code(), Some(53));
        assert!(!old_server.is_retryable());
        let busy = ClickHouseError {
            action: "inserting readings",
            source: clickhouse::error::Error::BadResponse("Code: 252. Too many parts".into()),
        };
        assert!(busy.is_retryable());
        let net = ClickHouseError {
            action: "inserting readings",
            source: clickhouse::error::Error::TimedOut,
        };
        assert!(net.is_retryable());
    }
}
