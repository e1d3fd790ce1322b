//! Where a config error is and what to write instead: byte offsets turned into
//! line:column, and hints added to the TOML parser's own messages from the line they
//! point at (it says "invalid type: map, expected a sequence" where a user needs
//! "write `[[route]]`").

/// The line of `text` that holds byte `offset`, trimmed, and the part of it from
/// `offset` on (where an inline table's key is).
pub(super) fn line_at(text: &str, offset: usize) -> (&str, &str) {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    (text[start..end].trim(), text[offset..end].trim_start())
}

/// The TOML parser's message for a mistake, with what to write instead where the
/// message alone does not say (`line` is the source line it points at, `at` that
/// line from the point on).
pub(super) fn with_hint(message: &str, (line, at): (&str, &str)) -> String {
    let hint = match table_header(line) {
        Some(header) => header_hint(message, header),
        None => value_hint(message, line, at),
    };
    // serde names Rust's types; a config author thinks in numbers.
    let message = message
        .replace("expected i64", "expected a whole number")
        .replace("expected f64", "expected a number");
    match hint {
        Some(hint) => format!("{message}: {hint}"),
        None => message,
    }
}

/// The table a header line names (`[x]` or `[[x]]`, a comment after it allowed), and
/// whether it is a list header.
fn table_header(line: &str) -> Option<(&str, bool)> {
    let inner = line.strip_prefix('[')?;
    let list = inner.starts_with('[');
    let inner = inner.trim_start_matches('[');
    let name = &inner[..inner.find(']')?];
    Some((name.trim(), list))
}

/// A mistake pointed at a header: the table is written the wrong way.
fn header_hint(message: &str, (name, list): (&str, bool)) -> Option<String> {
    if message == "duplicate key" {
        let list_tables = ["listener", "route", "listener.tls.sni"];
        Some(if list_tables.contains(&name) {
            format!("`{name}` is defined twice: a list of tables is `[[{name}]]` every time")
        } else {
            format!("`{name}` is defined twice: write each table once")
        })
    } else if list && message.starts_with("invalid type: sequence, expected a map") {
        Some(format!(
            "`[[{name}]]` is a table of named entries: write `[{name}.NAME]`"
        ))
    } else if list && message.starts_with("invalid type: map, expected") {
        Some(format!(
            "`[[{name}]]` makes a list, and this takes one table: write `[{name}]`"
        ))
    } else if message.starts_with("invalid type: map, expected a sequence") {
        Some(format!(
            "`[{name}]` is a list: write `[[{name}]]` for each entry"
        ))
    } else {
        None
    }
}

/// Keys of the file's top level, which TOML reads as the last table's when written
/// after one.
const TOP_LEVEL: [&str; 4] = [
    "drain_timeout",
    "removal_grace",
    "workers",
    "max_connections",
];

/// A mistake pointed at a `key = value` line: the value has the wrong type.
fn value_hint(message: &str, line: &str, at: &str) -> Option<String> {
    let value = line.split_once('=').map_or("", |(_, v)| v.trim());
    let hint = if message == "duplicate key" {
        let key = at.split(|c: char| c == '=' || c.is_whitespace()).next();
        return Some(format!("`{}` is set twice in one table", key.unwrap_or("")));
    } else if message.ends_with("expected a string")
        && (message.starts_with("invalid type: sequence")
            || message.starts_with("invalid type: map"))
    {
        "one value here, not a list or table"
    } else if message.ends_with("expected a string") {
        "write it in quotes: durations with a unit like \"5s\", addresses like \"127.0.0.1:8080\""
    } else if message.ends_with("expected a sequence") && !value.starts_with('[') {
        "write a list: [\"...\", \"...\"]"
    } else if message.ends_with("expected a boolean") {
        "write true or false, without quotes"
    } else if message.starts_with("invalid type: string")
        && (message.ends_with("expected i64") || message.ends_with("expected f64"))
    {
        // Only where the quoted text is a number of the kind expected: "auto", "32k"
        // or "2.5" for a whole number would be no fix unquoted.
        let quoted = message.split('"').nth(1).unwrap_or("");
        let fits = if message.ends_with("i64") {
            quoted.parse::<i64>().is_ok()
        } else {
            quoted.parse::<f64>().is_ok_and(f64::is_finite)
        };
        if !fits {
            return None;
        }
        "write the number without quotes"
    } else if let Some(key) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
        .filter(|k| TOP_LEVEL.contains(k))
    {
        return Some(format!(
            "`{key}` belongs to no table: move it above the file's first [table] (a key written under a table header belongs to that table)"
        ));
    } else {
        return None;
    };
    Some(hint.to_owned())
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hint for an error that points at the start of `line`.
    fn hint(message: &str, line: &str) -> String {
        with_hint(message, (line, line))
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\nçd", 5), (2, 2));
        assert_eq!(line_col("x", 0), (1, 1));
    }

    #[test]
    fn hints_fit_the_line() {
        let map_for_list = "invalid type: map, expected a sequence";
        assert!(
            hint(map_for_list, "[listener]   # public")
                .ends_with("write `[[listener]]` for each entry")
        );
        assert!(
            hint("invalid type: map, expected a string", "[[admin]]").ends_with("write `[admin]`")
        );
        assert_eq!(
            hint("invalid type: map, expected a string", "[admin]"),
            "invalid type: map, expected a string",
            "no value hint on a header"
        );
        let seq = "invalid type: string \"a\", expected a sequence";
        assert!(hint(seq, "backends = \"a\"").ends_with("write a list: [\"...\", \"...\"]"));
        assert_eq!(hint(seq, "backends = [\"a\"]"), seq, "already a list");
        assert!(
            hint("duplicate key", "[upstream.app]").contains("`upstream.app` is defined twice")
        );
        assert!(
            hint("duplicate key", "path = \"/\"").ends_with("`path` is set twice in one table")
        );
        let auto = "invalid type: string \"auto\", expected i64";
        assert_eq!(
            hint(auto, "workers = \"auto\""),
            "invalid type: string \"auto\", expected a whole number"
        );
        let two = "invalid type: string \"2\", expected i64";
        assert!(hint(two, "rise = \"2\"").ends_with("without quotes"));
        let stray = "unknown field `workers`, expected one of `backends`";
        assert!(hint(stray, "workers = 1").contains("move it above the file's first [table]"));
        let half = "invalid type: string \"2.5\", expected i64";
        assert_eq!(
            hint(half, "workers = \"2.5\""),
            "invalid type: string \"2.5\", expected a whole number"
        );
        let inf = "invalid type: string \"inf\", expected f64";
        assert_eq!(
            hint(inf, "balance_factor = \"inf\""),
            "invalid type: string \"inf\", expected a number"
        );
        let list = "invalid type: sequence, expected a string";
        assert!(
            hint(list, "bind = [\"127.0.0.1:1\"]").ends_with("one value here, not a list or table")
        );
        // A list where lists are allowed: the item is what is wrong.
        let item = "invalid type: integer `1`, expected a string";
        assert!(hint(item, "host = [\"a.test\", 1]").ends_with("write it in quotes: durations with a unit like \"5s\", addresses like \"127.0.0.1:8080\""));
        // An inline table's repeated key is the one at the error, not the line's.
        let line = "backends = [{ addr = \"a:1\", addr = \"a:2\" }]";
        let at = &line[line.rfind("addr").unwrap()..];
        assert!(
            with_hint("duplicate key", (line, at)).ends_with("`addr` is set twice in one table")
        );
    }
}
