//! The trunk's outbound door: what an agent may dial out through
//! `[trunk] outbound`, decided from the number and the agent's dialing
//! permissions before anything is sent.
//!
//! Room: the toll office. Agents call citizens back (回访) and transfer them
//! to outside numbers; a hijacked phone or a careless transfer must not turn
//! the city's trunk into a line to premium-rate (声讯) or international
//! numbers. Each number is put in a [`Class`] by its shape (mainland China
//! numbering after `[trunk] normalize`), and a permission list (the agent's
//! own `--dial`, or `[outbound] allow`) names the classes and number prefixes
//! that may go. Emergency numbers always go; premium and international
//! numbers go only when a list names their class or a prefix of them, so a
//! default never opens them by accident. Pure functions of their arguments:
//! no store, no sockets.

use serde::Deserialize;

/// `[outbound]`: what agents may dial through the trunk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSettings {
    /// Classes and prefixes an agent without its own `--dial` list may dial.
    pub allow: Vec<String>,
    /// Prefixes of premium-rate numbers (声讯台 160/168 and the like).
    pub premium: Vec<String>,
    /// Prefix of international numbers once `+86`/`0086` are stripped
    /// (numbers starting with `+` are international too).
    pub international_prefix: String,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        OutboundSettings {
            allow: ["local", "mobile", "national", "service"]
                .map(String::from)
                .to_vec(),
            premium: ["160", "168"].map(String::from).to_vec(),
            international_prefix: "00".into(),
        }
    }
}

/// What kind of number a dialed number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// One of `[transfer] emergency` (110, 119, 120, 122).
    Emergency,
    /// A fixed line in the city (7 or 8 digits).
    Local,
    /// A mainland mobile number (11 digits, 13x–19x).
    Mobile,
    /// Long distance: 0, an area code, a subscriber number.
    National,
    /// Short codes and service numbers (1xxxx, 95xxx, 96xxx, 400/800).
    Service,
    /// A premium-rate number (`[outbound] premium`).
    Premium,
    /// Outside the country.
    International,
    /// Nothing the numbering plan knows: never dialed unless listed by prefix.
    Unknown,
}

impl Class {
    /// Its name in permission lists and CDRs.
    pub fn label(self) -> &'static str {
        match self {
            Class::Emergency => "emergency",
            Class::Local => "local",
            Class::Mobile => "mobile",
            Class::National => "national",
            Class::Service => "service",
            Class::Premium => "premium",
            Class::International => "international",
            Class::Unknown => "unknown",
        }
    }

    /// The classes a permission list may name.
    pub const LISTABLE: [Class; 6] = [
        Class::Local,
        Class::Mobile,
        Class::National,
        Class::Service,
        Class::Premium,
        Class::International,
    ];

    fn from_label(s: &str) -> Option<Class> {
        Class::LISTABLE.into_iter().find(|c| c.label() == s)
    }
}

/// Puts a normalized number in its class (`emergency`: `[transfer]
/// emergency`). Premium prefixes win over every shape but emergency, and
/// international over premium (a `+` or `00` number is abroad whatever
/// follows).
pub fn classify(number: &str, settings: &OutboundSettings, emergency: &[String]) -> Class {
    if emergency.iter().any(|e| e == number) {
        return Class::Emergency;
    }
    if number.starts_with('+')
        || (!settings.international_prefix.is_empty()
            && number.starts_with(&settings.international_prefix))
    {
        return Class::International;
    }
    if !number.bytes().all(|b| b.is_ascii_digit()) || number.is_empty() {
        return Class::Unknown;
    }
    if settings
        .premium
        .iter()
        .any(|p| !p.is_empty() && number.starts_with(p.as_str()))
    {
        return Class::Premium;
    }
    let b = number.as_bytes();
    let len = b.len();
    match b[0] {
        b'1' if len == 11 && (b'3'..=b'9').contains(&b[1]) => Class::Mobile,
        b'1' if (3..=6).contains(&len) => Class::Service,
        b'0' if (10..=12).contains(&len) => Class::National,
        b'9' if len == 5 && matches!(b[1], b'5' | b'6') => Class::Service,
        b'4' | b'8' if len == 10 && (number.starts_with("400") || number.starts_with("800")) => {
            Class::Service
        }
        b'2'..=b'9' if (7..=8).contains(&len) => Class::Local,
        _ => Class::Unknown,
    }
}

/// The number an agent's dial goes out as: `[trunk] normalize` applied
/// (`+86`, `0086` and the city's own area code stripped), and any other
/// global `+` number written with the international prefix, so the trunk is
/// sent what is checked here. `None`: not a dialable number.
pub fn dialable(dialed: &str, normalize: &[String], settings: &OutboundSettings) -> Option<String> {
    let number = crate::routing::normalize(dialed, normalize)?;
    let global = dialed.trim_start().starts_with('+');
    // Only the '+' came off: no domestic prefix matched, so it is abroad.
    if global && crate::routing::normalize(dialed, &[]).as_deref() == Some(number.as_str()) {
        return Some(if settings.international_prefix.is_empty() {
            format!("+{number}")
        } else {
            format!("{}{number}", settings.international_prefix)
        });
    }
    Some(number)
}

/// Whether an agent may dial a number, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It may go out; its class goes into the CDR.
    Allowed(Class),
    /// It may not: the class, and a sentence for the Warning header and log.
    Refused(Class, String),
}

/// Decides whether `agent` may dial `number` (normalized) out through the
/// trunk. `list` is the agent's own permission list, or `None` for
/// `[outbound] allow`. A list entry is a class name, `none` (only
/// emergency numbers), or a prefix of digits (with an optional `+`), which
/// allows the numbers it starts, premium and international ones included.
pub fn decide(
    number: &str,
    agent: &str,
    list: Option<&[String]>,
    settings: &OutboundSettings,
    emergency: &[String],
) -> Verdict {
    let class = classify(number, settings, emergency);
    if class == Class::Emergency {
        return Verdict::Allowed(class);
    }
    let list = list.unwrap_or(&settings.allow);
    let by_prefix = list
        .iter()
        .filter(|e| Class::from_label(e).is_none() && e.as_str() != "none")
        .any(|p| !p.is_empty() && number.starts_with(p.as_str()));
    if by_prefix {
        return Verdict::Allowed(class);
    }
    if class != Class::Unknown && list.iter().any(|e| e == class.label()) {
        return Verdict::Allowed(class);
    }
    let why = match class {
        Class::Unknown => format!("{number} is not a number the trunk dials"),
        Class::Premium | Class::International => format!(
            "{} numbers are refused unless listed; agent {agent} may not dial {number}",
            class.label()
        ),
        _ => format!(
            "agent {agent} may not dial {} numbers ({number})",
            class.label()
        ),
    };
    Verdict::Refused(class, why)
}

/// Checks one permission list entry: a class name, `none`, or a prefix of
/// up to 16 digits with an optional leading `+`.
pub fn check_entry(entry: &str) -> Result<(), String> {
    if entry == "none" || Class::from_label(entry).is_some() {
        return Ok(());
    }
    let digits = entry.strip_prefix('+').unwrap_or(entry);
    if !digits.is_empty() && digits.len() <= 16 && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    let classes: Vec<&str> = Class::LISTABLE.iter().map(|c| c.label()).collect();
    Err(format!(
        "{entry:?} is neither a class ({}, none) nor a prefix of digits",
        classes.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emergency() -> Vec<String> {
        ["110", "119", "120", "122"].map(String::from).to_vec()
    }

    fn class(n: &str) -> Class {
        classify(n, &OutboundSettings::default(), &emergency())
    }

    #[test]
    fn numbers_fall_in_their_classes() {
        assert_eq!(class("110"), Class::Emergency);
        assert_eq!(class("13800000001"), Class::Mobile);
        assert_eq!(class("19912345678"), Class::Mobile);
        assert_eq!(class("12345678901"), Class::Unknown, "12x is not mobile");
        assert_eq!(class("85123456"), Class::Local);
        assert_eq!(class("6123456"), Class::Local);
        assert_eq!(class("01087654321"), Class::National);
        assert_eq!(class("0755123456"), Class::National);
        assert_eq!(class("10086"), Class::Service);
        assert_eq!(class("95588"), Class::Service);
        assert_eq!(class("4008123123"), Class::Service);
        assert_eq!(class("16812345"), Class::Premium, "168 wins over local");
        assert_eq!(class("1601234"), Class::Premium);
        assert_eq!(class("+442071234567"), Class::International);
        assert_eq!(class("00442071234567"), Class::International);
        assert_eq!(class("0016812345"), Class::International);
        assert_eq!(class("12*34"), Class::Unknown);
        assert_eq!(class(""), Class::Unknown);
        assert_eq!(class("0"), Class::Unknown);
        assert_eq!(class("999999999999999999"), Class::Unknown);
    }

    fn verdict(n: &str, list: Option<&[&str]>) -> Verdict {
        let list: Option<Vec<String>> = list.map(|l| l.iter().map(|s| s.to_string()).collect());
        decide(
            n,
            "1001",
            list.as_deref(),
            &OutboundSettings::default(),
            &emergency(),
        )
    }

    #[test]
    fn the_default_list_opens_ordinary_numbers_only() {
        assert_eq!(
            verdict("13800000001", None),
            Verdict::Allowed(Class::Mobile)
        );
        assert_eq!(verdict("85123456", None), Verdict::Allowed(Class::Local));
        assert!(matches!(
            verdict("16812345", None),
            Verdict::Refused(Class::Premium, why) if why.contains("refused unless listed")
        ));
        assert!(matches!(
            verdict("+442071234567", None),
            Verdict::Refused(Class::International, _)
        ));
        assert!(matches!(
            verdict("12*34", None),
            Verdict::Refused(Class::Unknown, _)
        ));
    }

    #[test]
    fn emergency_numbers_go_whatever_the_list() {
        assert_eq!(
            verdict("120", Some(&["none"])),
            Verdict::Allowed(Class::Emergency)
        );
        assert!(matches!(
            verdict("13800000001", Some(&["none"])),
            Verdict::Refused(Class::Mobile, why) if why.contains("agent 1001 may not dial mobile")
        ));
    }

    #[test]
    fn a_listed_class_or_prefix_opens_premium_and_international() {
        assert_eq!(
            verdict("+442071234567", Some(&["international"])),
            Verdict::Allowed(Class::International)
        );
        assert_eq!(
            verdict("00442071234567", Some(&["mobile", "0044"])),
            Verdict::Allowed(Class::International)
        );
        assert!(matches!(
            verdict("00332071234567", Some(&["mobile", "0044"])),
            Verdict::Refused(Class::International, _)
        ));
        assert_eq!(
            verdict("16812345", Some(&["168"])),
            Verdict::Allowed(Class::Premium)
        );
        // A narrow prefix list: only the city's own 8-prefix lines.
        assert_eq!(
            verdict("85123456", Some(&["8"])),
            Verdict::Allowed(Class::Local)
        );
        assert!(matches!(
            verdict("65123456", Some(&["8"])),
            Verdict::Refused(Class::Local, _)
        ));
    }

    #[test]
    fn global_numbers_go_out_with_the_international_prefix() {
        let prefixes = ["+86", "0086", "028"].map(String::from);
        let s = OutboundSettings::default();
        let d = |n| dialable(n, &prefixes, &s);
        assert_eq!(d("+44 20 7123 4567").as_deref(), Some("00442071234567"));
        assert_eq!(d("+8613800000001").as_deref(), Some("13800000001"));
        assert_eq!(d("0086-138-0000-0001").as_deref(), Some("13800000001"));
        assert_eq!(d("02885123456").as_deref(), Some("85123456"));
        assert_eq!(d("13800000001").as_deref(), Some("13800000001"));
        assert_eq!(d("sip-junk"), None);
        let bare = OutboundSettings {
            international_prefix: String::new(),
            ..OutboundSettings::default()
        };
        assert_eq!(
            dialable("+442071234567", &prefixes, &bare).as_deref(),
            Some("+442071234567")
        );
        assert_eq!(classify("00442071234567", &s, &[]), Class::International);
    }

    #[test]
    fn list_entries_are_checked() {
        for ok in ["local", "premium", "none", "0044", "+44", "168"] {
            assert_eq!(check_entry(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "+",
            "emergency",
            "unknown",
            "mobiles",
            "12a",
            "1234567890123456789",
        ] {
            let err = check_entry(bad).expect_err(bad);
            assert!(err.contains("neither a class"), "{err}");
        }
    }
}
