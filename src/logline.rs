//! Plain log lines: tracing-subscriber's default text format without colours, byte for
//! byte, written with under half the work.
//!
//! With the access log on (the default), an event through tracing-subscriber's `Full`
//! format cost about 13,700 instructions, a quarter of a proxied request's user-space
//! work: a date computed from scratch each time, every
//! field name passed through an (inactive) ANSI style, every value through
//! `fmt::Debug`. [`Plain`] writes the same line with the date of the current second
//! cached per thread, names written as they are, and plain strings quoted without the
//! escaping machinery when they need no escapes (README, Performance).
//!
//! Events inside a span and events forwarded from the `log` crate (rustls logs through
//! it) go to tracing-subscriber's own formatter: tether opens no spans, and those
//! lines are rare.

use std::cell::Cell;
use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::time::SystemTime as SubscriberClock;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event formatter for text logs that are not read on a terminal.
#[derive(Debug)]
pub struct Plain {
    /// For what [`Plain`] leaves to tracing-subscriber (see the module docs).
    full: Format<Full, SubscriberClock>,
}

impl Default for Plain {
    fn default() -> Plain {
        Plain {
            full: Format::default().with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if ctx.event_scope().is_some() || meta.fields().field("log.target").is_some() {
            return self.full.format_event(ctx, w, event);
        }
        timestamp(&mut w, SystemTime::now())?;
        w.write_char(' ')?;
        w.write_str(level(meta.level()))?;
        w.write_char(' ')?;
        w.write_str(meta.target())?;
        w.write_str(": ")?;
        let mut fields = Fields {
            w: &mut w,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        w.write_char('\n')
    }
}

/// Levels padded to five characters, as tracing-subscriber writes them.
fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// The fields as tracing-subscriber's default visitor writes them: the message as
/// text with terminal control characters escaped, then ` name=value` with the value's
/// `Debug` form (strings quoted).
struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// Writes the separator and `name=`, or nothing for the message; false for fields
    /// not written at all.
    fn start(&mut self, field: &Field) -> bool {
        if self.result.is_err() || field.name().starts_with("log.") {
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.w.write_char(' ');
        }
        let name = field.name();
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self
                .result
                .and_then(|()| self.w.write_str(name))
                .and_then(|()| self.w.write_char('='));
        }
        true
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            Escaping(self.w).write_str(value)
        } else if value
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            // What `Debug` writes for a string that needs no escapes.
            self.w
                .write_char('"')
                .and_then(|()| self.w.write_str(value))
                .and_then(|()| self.w.write_char('"'))
        } else {
            write!(self.w, "{value:?}")
        };
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.start(field) {
            self.result = write!(self.w, "{value}");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.start(field) {
            self.result = write!(self.w, "{value}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.start(field) {
            self.result = self.w.write_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !self.start(field) {
            return;
        }
        let mut out = Escaping(self.w);
        self.result = match value.source() {
            None => write!(out, "{value}"),
            // tracing-subscriber's form: `name=error name.sources=[source, ..]`.
            Some(mut source) => (|| {
                write!(out, "{value} {}.sources=[{source}", field.name())?;
                while let Some(next) = source.source() {
                    write!(out, ", {next}")?;
                    source = next;
                }
                out.write_char(']')
            })(),
        };
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            write!(Escaping(self.w), "{value:?}")
        } else {
            write!(self.w, "{value:?}")
        };
    }
}

/// Writes text with the control characters that can steer a terminal (ESC, BEL, BS,
/// FF, DEL and C1) escaped, as tracing-subscriber does for messages.
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // 0xC2 leads the UTF-8 form of every C1 character.
        if !s
            .bytes()
            .any(|b| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2))
        {
            return self.0.write_str(s);
        }
        for ch in s.chars() {
            match ch {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => {
                    write!(self.0, "\\x{:02x}", ch as u32)?
                }
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

thread_local! {
    /// The second last written and its `YYYY-MM-DDTHH:MM:SS` form.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// Writes `at` as tracing-subscriber does: RFC 3339 in UTC with microseconds. The date
/// is worked out once a second per thread.
fn timestamp(w: &mut impl Write, at: SystemTime) -> fmt::Result {
    let Ok(since) = at.duration_since(UNIX_EPOCH) else {
        return write!(w, "{}", Rfc3339(at));
    };
    let (second, date) = SECOND.get();
    if second == since.as_secs()
        && let Ok(date) = std::str::from_utf8(&date)
    {
        return write!(w, "{date}.{:06}Z", since.subsec_micros());
    }
    let full = Rfc3339(at).to_string();
    // Cached only in the common form, 2026-11-23T07:28:20.367980Z (not past 9999).
    if let Some(date) = full.as_bytes().get(..19).filter(|_| full.len() == 27)
        && let Ok(date) = date.try_into()
    {
        SECOND.set((since.as_secs(), date));
    }
    w.write_str(&full)
}

/// Any time, as tracing-subscriber writes it (years past 9999 with `+`, before 0
/// with five digits).
struct Rfc3339(SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = match self.0.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                match d.subsec_nanos() {
                    0 => (-(d.as_secs() as i64), 0),
                    n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
                }
            }
        };
        let (y, mo, d) = civil(secs.div_euclid(86_400));
        let s = secs.rem_euclid(86_400);
        if y > 9999 {
            write!(f, "+{y}")?;
        } else if y < 0 {
            write!(f, "{y:05}")?;
        } else {
            write!(f, "{y:04}")?;
        }
        write!(
            f,
            "-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            s / 3600,
            s / 60 % 60,
            s % 60,
            nanos / 1_000
        )
    }
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing::{debug, error, info, info_span, trace, warn};
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::time::FormatTime;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    #[derive(Debug)]
    struct Failure(&'static str, Option<Box<Failure>>);

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    /// Every kind of event tether writes, and hostile text in each place.
    fn events() {
        info!(
            target: "tether::access",
            kind = "upgrade",
            method = %hyper::Method::GET,
            route = "/chat",
            backend = "127.0.0.1:9001",
            status = 101u16,
            duration_ms = 160u64,
            bytes_down = 0u64,
            principal = %"fc27c3a0",
            "request"
        );
        warn!("reload failed: {}", "bad \x1b[31m red \x07 \u{85} é");
        error!(error = %"x\x1by", "plain \t tab");
        info!(
            r#type = "t",
            flag = true,
            neg = -5i64,
            f = 1.0f64,
            s = "quote\"d \\ \n ü \x1b",
            dbg = ?vec![1, 2],
            empty = ""
        );
        info!(a = 1u64);
        let chain = Failure(
            "outer \x1b",
            Some(Box::new(Failure(
                "middle",
                Some(Box::new(Failure("root", None))),
            ))),
        );
        warn!(
            error = &chain as &(dyn std::error::Error + 'static),
            "with sources"
        );
        let single = Failure("alone", None);
        warn!(r#err = &single as &(dyn std::error::Error + 'static));
        debug!(n = 3u64, "debug line");
        trace!("trace line");
        info_span!("outer", id = 7u64).in_scope(|| info!(x = "y", "in a span"));
        info!("");
    }

    fn capture(plain: bool) -> Vec<String> {
        let buffer = Buffer::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_max_level(Level::TRACE)
            .with_ansi(false);
        if plain {
            tracing::subscriber::with_default(
                builder.event_format(Plain::default()).finish(),
                events,
            );
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        buffer.lines()
    }

    #[test]
    fn lines_are_tracing_subscribers_own_after_the_timestamp() {
        let ours = capture(true);
        let theirs = capture(false);
        assert_eq!(ours.len(), 11);
        assert_eq!(ours.len(), theirs.len());
        for (ours, theirs) in ours.iter().zip(&theirs) {
            // 2026-11-23T07:28:20.367980Z
            assert_eq!(ours.as_bytes()[27], b' ', "{ours}");
            assert_eq!(ours[27..], theirs[27..]);
        }
        assert!(
            ours[1].contains(r"bad \x1b[31m red \x07 \u{85} é"),
            "{}",
            ours[1]
        );
    }

    #[test]
    fn timestamps_are_rfc_3339_in_utc_with_microseconds() {
        let at = |secs: i64, micros: u64| {
            let offset = Duration::from_secs(secs.unsigned_abs());
            let base = if secs >= 0 {
                UNIX_EPOCH + offset
            } else {
                UNIX_EPOCH - offset
            };
            let mut out = String::new();
            timestamp(&mut out, base + Duration::from_micros(micros)).unwrap();
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_709_164_799, 999_999), "2024-02-28T23:59:59.999999Z");
        // Again within the same second: from the cached date.
        assert_eq!(at(1_709_164_799, 5), "2024-02-28T23:59:59.000005Z");
        assert_eq!(at(1_795_000_000, 42), "2026-11-18T11:06:40.000042Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        assert_eq!(at(253_402_300_800, 0), "+10000-01-01T00:00:00.000000Z");
        assert_eq!(at(-1, 500_000), "1969-12-31T23:59:59.500000Z");
        assert_eq!(at(-62_135_596_800, 0), "0001-01-01T00:00:00.000000Z");
        assert_eq!(at(-62_135_596_801, 0), "0000-12-31T23:59:59.000000Z");
    }

    #[test]
    fn the_clock_agrees_with_tracing_subscribers() {
        // Both read the clock; retried if a minute turns between the two readings.
        let agree = (0..3).any(|_| {
            let mut theirs = String::new();
            SubscriberClock
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            let mut ours = String::new();
            timestamp(&mut ours, SystemTime::now()).unwrap();
            ours.len() == theirs.len() && ours[..16] == theirs[..16]
        });
        assert!(agree);
    }
}
