//! Text as admins write it and read it: positions in a file, plain names,
//! durations, and text tables.
//!
//! Room: the foundation; it imports nothing of ours. Settings, flows, the
//! number plan and reports all read and print through these, so a duration
//! is written the same way everywhere and every error names a line and
//! column.

use serde::Deserialize;
use unicode_width::UnicodeWidthStr;

/// 1-based line and column (in characters) of a byte offset into a file's
/// text, for `file:line:column` messages (toml spans are byte ranges).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
    (line, column)
}

/// A plain name: letters, digits, `_` and `-` (variables, nodes, lists).
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A duration as admins write it anywhere (settings and flows alike): a
/// string with a unit, `"500ms"`, `"15s"`, `"2m"`, `"1h"`. Settings also take
/// a bare integer as seconds (and flows a bare integer too, see
/// [`DurationText`]).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!("{s:?} is not a duration: write 15 (seconds), \"500ms\", \"15s\", \"2m\" or \"1h\"")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = |factor: u64| {
        n.checked_mul(factor)
            .map(Duration::from_secs)
            .ok_or_else(bad)
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" | "min" => secs(60),
        "h" => secs(3600),
        _ => Err(bad()),
    }
}

/// A duration field as written: an integer (seconds) or a string with a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationText {
    /// Seconds.
    Seconds(u64),
    /// `"5s"`, `"500ms"`, `"2m"`.
    Text(String),
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = DurationText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration: 15 (seconds), \"500ms\", \"15s\", \"2m\" or \"1h\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DurationText, E> {
                Ok(DurationText::Seconds(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DurationText, E> {
                u64::try_from(v)
                    .map(DurationText::Seconds)
                    .map_err(|_| E::custom(format!("{v} is not a duration: it is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl std::fmt::Display for DurationText {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            DurationText::Seconds(n) => write!(f, "{n}"),
            DurationText::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl DurationText {
    /// The duration it says.
    pub fn duration(&self) -> Result<std::time::Duration, String> {
        match self {
            DurationText::Seconds(n) => Ok(std::time::Duration::from_secs(*n)),
            DurationText::Text(t) => parse_duration(t),
        }
    }
}

/// Deserializes a whole number of seconds from `15` or `"15s"`, `"2m"`, `"1h"`.
pub fn seconds<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error;
    let secs = match DurationText::deserialize(d)? {
        DurationText::Seconds(n) => n,
        // The environment layer may hand numbers over as text.
        DurationText::Text(t)
            if !t.trim().is_empty() && t.trim().chars().all(|c| c.is_ascii_digit()) =>
        {
            t.trim().parse().map_err(D::Error::custom)?
        }
        DurationText::Text(t) => {
            let d = parse_duration(&t).map_err(D::Error::custom)?;
            if d.subsec_nanos() != 0 {
                return Err(D::Error::custom(format!(
                    "{t:?} is not a whole number of seconds"
                )));
            }
            d.as_secs()
        }
    };
    T::try_from(secs).map_err(|_| D::Error::custom(format!("{secs} seconds is too long")))
}

/// A text table: a header and rows, each column as wide as its widest
/// cell (Chinese characters count two columns, as a terminal shows them).
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Columns aligned right (figures); the others align left.
    right: Vec<bool>,
}

impl Table {
    /// A table with these column titles; a title ending in `>` is
    /// aligned right (the `>` is not shown).
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header
                .iter()
                .map(|h| h.trim_end_matches('>').to_string())
                .collect(),
            right: header.iter().map(|h| h.ends_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank; extra ones are dropped).
    pub fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.header.len(), String::new());
        // A cell is one line: a newline or tab would break the columns.
        for c in &mut cells {
            if c.contains(['\n', '\r', '\t']) {
                *c = c.replace(['\n', '\r', '\t'], " ");
            }
        }
        self.rows.push(cells);
    }

    /// The table as CSV (RFC 4180: a cell with a comma, quote or line
    /// break is quoted), the header first.
    pub fn csv(&self) -> String {
        let cell = |c: &String| {
            if c.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        };
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = row.iter().map(cell).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// The table as text, one line per row, the header first.
    pub fn render(&self) -> String {
        let mut width: Vec<usize> = self.header.iter().map(|h| h.width()).collect();
        for row in &self.rows {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.width());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
                let pad = " ".repeat(w.saturating_sub(c.width()));
                if i > 0 {
                    s.push_str("  ");
                }
                if self.right[i] {
                    s.push_str(&pad);
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    if i + 1 < cells.len() {
                        s.push_str(&pad);
                    }
                }
            }
            s.truncate(s.trim_end().len());
            s.push('\n');
            s
        };
        let mut out = line(&self.header);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_form_everywhere() {
        assert_eq!(
            parse_duration("500ms"),
            Ok(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("2m"),
            Ok(std::time::Duration::from_secs(120))
        );
        assert_eq!(
            parse_duration("1h"),
            Ok(std::time::Duration::from_secs(3600))
        );
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("5").is_err(), "a string wants its unit");
        assert!(parse_duration("5 parsecs").is_err());
        assert!(
            parse_duration("5 s").is_err(),
            "the unit follows the number"
        );
    }

    #[test]
    fn columns_line_up_with_chinese_text_and_figures_align_right() {
        let mut t = Table::new(&["QUEUE", "WAITING>", "DESCRIPTION"]);
        t.row(vec![
            "hrss".into(),
            "3".into(),
            "社保 social insurance".into(),
        ]);
        t.row(vec!["housing-fund".into(), "12".into(), "x\ny".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "QUEUE         WAITING  DESCRIPTION");
        assert_eq!(lines[1], "hrss                3  社保 social insurance");
        assert_eq!(lines[2], "housing-fund       12  x y");
    }

    #[test]
    fn positions_count_lines_and_characters_and_names_stay_plain() {
        let text = "a = 1\n名字 = x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        // "x" on line 2: two characters and " = " before it.
        let x = text.find('x').expect("x is there");
        assert_eq!(line_col(text, x), (2, 6));
        assert_eq!(line_col(text, 10_000), (3, 1), "past the end is the end");
        assert!(is_plain_name("after-hours_2"));
        assert!(!is_plain_name("") && !is_plain_name("a b") && !is_plain_name("名字"));
        assert!(!is_plain_name(&"a".repeat(65)));
    }
}
