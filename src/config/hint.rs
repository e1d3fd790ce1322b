//! Where a config error is and what to write instead: byte offsets turned into
//! line:column, and hints added to the TOML parser's own messages from the line they
//! point at (it says "invalid type: map, expected a sequence" where a user needs
//! "write `[[route]]`").

/// The line of `text` that holds byte `offset`, trimmed.
pub(super) fn line_at(text: &str, offset: usize) -> &str {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    text[start..end].trim()
}

/// The TOML parser's message for a mistake, with what to write instead where the
/// message alone does not say (`line` is the source line it points at).
pub(super) fn with_hint(message: &str, line: &str) -> String {
    let hint = match table_header(line) {
        Some(header) => header_hint(message, header),
        None => value_hint(message, line),
    };
    match hint {
        Some(hint) => format!("{message}: {hint}"),
        None => message.to_owned(),
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
        Some(format!(
            "`{name}` is defined twice: write each table once (a list of tables is `[[{name}]]` every time)"
        ))
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
const TOP_LEVEL: [&str; 3] = ["drain_timeout", "removal_grace", "workers"];

/// A mistake pointed at a `key = value` line: the value has the wrong type.
fn value_hint(message: &str, line: &str) -> Option<String> {
    let value = line.split_once('=').map_or("", |(_, v)| v.trim());
    let hint = if message == "duplicate key" {
        let key = line.split('=').next().unwrap_or("").trim();
        return Some(format!("`{key}` is set twice in one table"));
    } else if message.ends_with("expected a string") {
        "write it in quotes: durations with a unit like \"5s\", addresses like \"127.0.0.1:8080\""
    } else if message.ends_with("expected a sequence") && !value.starts_with('[') {
        "write a list: [\"...\", \"...\"]"
    } else if message.ends_with("expected a boolean") {
        "write true or false, without quotes"
    } else if message.starts_with("invalid type: string")
        && ["i64", "u64", "f64", "usize", "u32", "u16", "u8"]
            .iter()
            .any(|t| message.ends_with(&format!("expected {t}")))
    {
        // Only where the quoted text is a number: "auto" or "32k" unquoted is no fix.
        let quoted = message.split('"').nth(1).unwrap_or("");
        if quoted.parse::<f64>().is_err() {
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

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\nçd", 5), (2, 2));
        assert_eq!(line_col("x", 0), (1, 1));
    }

    #[test]
    fn hints_fit_the_line() {
        let map_for_list = "invalid type: map, expected a sequence";
        assert!(
            with_hint(map_for_list, "[listener]   # public")
                .ends_with("write `[[listener]]` for each entry")
        );
        assert!(
            with_hint("invalid type: map, expected a string", "[[admin]]")
                .ends_with("write `[admin]`")
        );
        assert_eq!(
            with_hint("invalid type: map, expected a string", "[admin]"),
            "invalid type: map, expected a string",
            "no value hint on a header"
        );
        let seq = "invalid type: string \"a\", expected a sequence";
        assert!(with_hint(seq, "backends = \"a\"").ends_with("write a list: [\"...\", \"...\"]"));
        assert_eq!(with_hint(seq, "backends = [\"a\"]"), seq, "already a list");
        assert!(
            with_hint("duplicate key", "[upstream.app]")
                .contains("`upstream.app` is defined twice")
        );
        assert!(
            with_hint("duplicate key", "path = \"/\"")
                .ends_with("`path` is set twice in one table")
        );
        let auto = "invalid type: string \"auto\", expected usize";
        assert_eq!(with_hint(auto, "workers = \"auto\""), auto);
        let two = "invalid type: string \"2\", expected i64";
        assert!(with_hint(two, "rise = \"2\"").ends_with("without quotes"));
        let stray = "unknown field `workers`, expected one of `backends`";
        assert!(with_hint(stray, "workers = 1").contains("move it above the file's first [table]"));
    }
}
