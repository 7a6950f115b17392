//! The queue log's events as values, and their two renderings: the
//! queue-log line (Asterisk's `queue_log` layout, which reports and
//! wallboards read) and the CTI event (`events`, webhooks).
//!
//! Room: the records office's vocabulary. The desk says what happened as a
//! [`QueueEvent`] (an agent paused with a reason, a caller entered at
//! position 3); nothing parses a word back into a meaning. The database
//! keeps a line in the layout it always had (`event` word and `data`
//! fields), so older records read back, and a word this version does not
//! know is kept as [`QueueEvent::Other`], never lost. Pure: it touches
//! nothing.

use serde::{Deserialize, Serialize};

/// What happened at a queue or to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueEvent {
    /// A caller joined the line (`ENTERQUEUE`).
    EnterQueue {
        /// Calling number.
        caller: String,
        /// Place in line on entering (1 is next).
        position: usize,
        /// The caller got back the place they left within `resume_window`.
        resumed: bool,
    },
    /// An agent answered (`CONNECT`).
    Connect {
        /// Seconds the caller waited in line.
        hold_s: u64,
        /// The Call-ID of the caller's leg bridged to the agent.
        bridged: String,
        /// Seconds the agent's phone rang.
        ring_s: u64,
    },
    /// An agent was rung and did not answer (`RINGNOANSWER`).
    RingNoAnswer {
        /// Milliseconds it rang.
        ring_ms: u64,
    },
    /// The caller hung up while waiting (`ABANDON`).
    Abandon(LeftLine),
    /// `max_wait` passed with no agent (`EXITWITHTIMEOUT`).
    ExitWithTimeout(LeftLine),
    /// The queue's members all fell into `leave_empty` (`EXITEMPTY`).
    ExitEmpty(LeftLine),
    /// An answered call was transferred on (`TRANSFER`).
    Transfer {
        /// Where it went (agent ID, queue, number).
        to: String,
        /// The call's figures up to the transfer.
        talk: Talk,
    },
    /// The caller hung up an answered call (`COMPLETECALLER`).
    CompleteCaller(Talk),
    /// The agent hung up an answered call (`COMPLETEAGENT`).
    CompleteAgent(Talk),
    /// The caller booked a callback and keeps their place (`CALLBACK`).
    Callback {
        /// Place in line when booking.
        position: usize,
    },
    /// The caller rated the call in the after-call flow (`RATED`).
    Rated {
        /// satisfied, fair or unsatisfied.
        rating: String,
    },
    /// An agent logged in (`AGENTLOGIN`).
    AgentLogin,
    /// An agent logged out (`AGENTLOGOFF`).
    AgentLogoff,
    /// An agent went on break (`PAUSE`).
    Pause {
        /// The break's reason code.
        reason: String,
    },
    /// An agent came back from a break (`UNPAUSE`).
    Unpause,
    /// A line whose word or fields this version does not know (written by
    /// another version): kept and shown as it was.
    Other {
        /// The word.
        event: String,
        /// The fields.
        data: Vec<String>,
    },
}

/// How a caller left the line without an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeftLine {
    /// Place in line when leaving.
    pub position: usize,
    /// Place in line on entering.
    pub first_position: usize,
    /// Seconds waited.
    pub wait_s: u64,
}

/// An answered call's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Talk {
    /// Seconds waited in line before the answer.
    pub hold_s: u64,
    /// Seconds talked.
    pub talk_s: u64,
    /// Place in line on entering.
    pub first_position: usize,
}

impl QueueEvent {
    /// The queue-log word (`ENTERQUEUE`, `CONNECT`…).
    pub fn word(&self) -> &str {
        match self {
            QueueEvent::EnterQueue { .. } => "ENTERQUEUE",
            QueueEvent::Connect { .. } => "CONNECT",
            QueueEvent::RingNoAnswer { .. } => "RINGNOANSWER",
            QueueEvent::Abandon(_) => "ABANDON",
            QueueEvent::ExitWithTimeout(_) => "EXITWITHTIMEOUT",
            QueueEvent::ExitEmpty(_) => "EXITEMPTY",
            QueueEvent::Transfer { .. } => "TRANSFER",
            QueueEvent::CompleteCaller(_) => "COMPLETECALLER",
            QueueEvent::CompleteAgent(_) => "COMPLETEAGENT",
            QueueEvent::Callback { .. } => "CALLBACK",
            QueueEvent::Rated { .. } => "RATED",
            QueueEvent::AgentLogin => "AGENTLOGIN",
            QueueEvent::AgentLogoff => "AGENTLOGOFF",
            QueueEvent::Pause { .. } => "PAUSE",
            QueueEvent::Unpause => "UNPAUSE",
            QueueEvent::Other { event, .. } => event,
        }
    }

    /// The queue-log fields after the word, in Asterisk's order.
    pub fn fields(&self) -> Vec<String> {
        let left = |l: &LeftLine| {
            vec![
                l.position.to_string(),
                l.first_position.to_string(),
                l.wait_s.to_string(),
            ]
        };
        let talk = |t: &Talk| {
            vec![
                t.hold_s.to_string(),
                t.talk_s.to_string(),
                t.first_position.to_string(),
            ]
        };
        match self {
            QueueEvent::EnterQueue {
                caller,
                position,
                resumed,
            } => vec![
                String::new(),
                caller.clone(),
                position.to_string(),
                if *resumed { "RESUMED" } else { "" }.to_string(),
            ],
            QueueEvent::Connect {
                hold_s,
                bridged,
                ring_s,
            } => vec![hold_s.to_string(), bridged.clone(), ring_s.to_string()],
            QueueEvent::RingNoAnswer { ring_ms } => vec![ring_ms.to_string()],
            QueueEvent::Abandon(l) | QueueEvent::ExitWithTimeout(l) | QueueEvent::ExitEmpty(l) => {
                left(l)
            }
            QueueEvent::Transfer { to, talk: t } => {
                let mut f = vec![to.clone(), String::new()];
                f.extend(talk(t));
                f
            }
            QueueEvent::CompleteCaller(t) | QueueEvent::CompleteAgent(t) => talk(t),
            QueueEvent::Callback { position } => vec![position.to_string()],
            QueueEvent::Rated { rating } => vec![rating.clone()],
            QueueEvent::Pause { reason } => vec![reason.clone()],
            QueueEvent::AgentLogin | QueueEvent::AgentLogoff | QueueEvent::Unpause => Vec::new(),
            QueueEvent::Other { data, .. } => data.clone(),
        }
    }

    /// The event from its word and fields; anything unknown or malformed is
    /// [`QueueEvent::Other`], kept as written.
    pub fn read(word: &str, data: &[String]) -> QueueEvent {
        Self::known(word, data).unwrap_or_else(|| QueueEvent::Other {
            event: word.to_string(),
            data: data.to_vec(),
        })
    }

    fn known(word: &str, data: &[String]) -> Option<QueueEvent> {
        let text = |i: usize| data.get(i).cloned();
        let num = |i: usize| data.get(i).and_then(|f| f.parse::<u64>().ok());
        let place = |i: usize| data.get(i).and_then(|f| f.parse::<usize>().ok());
        let exactly = |n: usize| (data.len() == n).then_some(());
        let left = || {
            exactly(3)?;
            Some(LeftLine {
                position: place(0)?,
                first_position: place(1)?,
                wait_s: num(2)?,
            })
        };
        let talk = |at: usize| {
            Some(Talk {
                hold_s: num(at)?,
                talk_s: num(at + 1)?,
                first_position: place(at + 2)?,
            })
        };
        Some(match word {
            "ENTERQUEUE" => {
                exactly(4)?;
                if !data[0].is_empty() {
                    return None;
                }
                QueueEvent::EnterQueue {
                    caller: text(1)?,
                    position: place(2)?,
                    resumed: match data[3].as_str() {
                        "RESUMED" => true,
                        "" => false,
                        _ => return None,
                    },
                }
            }
            "CONNECT" => {
                exactly(3)?;
                QueueEvent::Connect {
                    hold_s: num(0)?,
                    bridged: text(1)?,
                    ring_s: num(2)?,
                }
            }
            "RINGNOANSWER" => {
                exactly(1)?;
                QueueEvent::RingNoAnswer { ring_ms: num(0)? }
            }
            "ABANDON" => QueueEvent::Abandon(left()?),
            "EXITWITHTIMEOUT" => QueueEvent::ExitWithTimeout(left()?),
            "EXITEMPTY" => QueueEvent::ExitEmpty(left()?),
            "TRANSFER" => {
                exactly(5)?;
                if !data[1].is_empty() {
                    return None;
                }
                QueueEvent::Transfer {
                    to: text(0)?,
                    talk: talk(2)?,
                }
            }
            "COMPLETECALLER" => {
                exactly(3)?;
                QueueEvent::CompleteCaller(talk(0)?)
            }
            "COMPLETEAGENT" => {
                exactly(3)?;
                QueueEvent::CompleteAgent(talk(0)?)
            }
            "CALLBACK" => {
                exactly(1)?;
                QueueEvent::Callback {
                    position: place(0)?,
                }
            }
            "RATED" => {
                exactly(1)?;
                QueueEvent::Rated { rating: text(0)? }
            }
            "AGENTLOGIN" => {
                exactly(0)?;
                QueueEvent::AgentLogin
            }
            "AGENTLOGOFF" => {
                exactly(0)?;
                QueueEvent::AgentLogoff
            }
            "PAUSE" => {
                exactly(1)?;
                QueueEvent::Pause { reason: text(0)? }
            }
            "UNPAUSE" => {
                exactly(0)?;
                QueueEvent::Unpause
            }
            _ => return None,
        })
    }

    /// The CTI event kind it is published as.
    pub fn cti_kind(&self) -> &'static str {
        match self {
            QueueEvent::EnterQueue { .. } => "call.queued",
            QueueEvent::Connect { .. } => "call.answered",
            QueueEvent::RingNoAnswer { .. } => "agent.no_answer",
            QueueEvent::Abandon(_) => "call.abandoned",
            QueueEvent::ExitWithTimeout(_) | QueueEvent::ExitEmpty(_) => "call.left_queue",
            QueueEvent::Transfer { .. } => "call.transferred",
            QueueEvent::Callback { .. } => "call.callback_booked",
            QueueEvent::Rated { .. } => "call.rated",
            QueueEvent::CompleteCaller(_) | QueueEvent::CompleteAgent(_) => "call.completed",
            QueueEvent::AgentLogin
            | QueueEvent::AgentLogoff
            | QueueEvent::Pause { .. }
            | QueueEvent::Unpause => "agent.state",
            QueueEvent::Other { .. } => "queue.event",
        }
    }

    /// An agent event's new state, as the API names states.
    pub fn agent_state(&self) -> Option<&'static str> {
        match self {
            QueueEvent::AgentLogin | QueueEvent::Unpause => Some("available"),
            QueueEvent::AgentLogoff => Some("logged-out"),
            QueueEvent::Pause { .. } => Some("on-break"),
            _ => None,
        }
    }

    /// Whether an agent was offered the call (rung: answered or not).
    pub fn is_offer(&self) -> bool {
        matches!(
            self,
            QueueEvent::Connect { .. } | QueueEvent::RingNoAnswer { .. }
        )
    }
}

impl std::fmt::Display for QueueEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// One queue-log line: when, which call, queue and agent, and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredLine", into = "StoredLine")]
pub struct LogLine {
    /// Unix milliseconds (the desk's own time until its actor writes the
    /// line down).
    pub at: u64,
    /// Caller's Call-ID, or "NONE" for agent events.
    pub call_id: String,
    /// Queue, or "NONE".
    pub queue: String,
    /// Agent, or "NONE".
    pub agent: String,
    /// What happened.
    pub event: QueueEvent,
}

/// A line as the database and the API keep it (the layout before events
/// were typed): the word and its fields.
#[derive(Serialize, Deserialize)]
struct StoredLine {
    at: u64,
    call_id: String,
    queue: String,
    agent: String,
    event: String,
    #[serde(default)]
    data: Vec<String>,
}

impl From<StoredLine> for LogLine {
    fn from(s: StoredLine) -> LogLine {
        LogLine {
            event: QueueEvent::read(&s.event, &s.data),
            at: s.at,
            call_id: s.call_id,
            queue: s.queue,
            agent: s.agent,
        }
    }
}

impl From<LogLine> for StoredLine {
    fn from(l: LogLine) -> StoredLine {
        StoredLine {
            event: l.event.word().to_string(),
            data: l.event.fields(),
            at: l.at,
            call_id: l.call_id,
            queue: l.queue,
            agent: l.agent,
        }
    }
}

impl LogLine {
    /// Asterisk's layout: `epoch|callid|queue|agent|event|data…` (a `|` or
    /// line break inside a field becomes a space).
    pub fn queue_log_line(&self) -> String {
        let mut s = format!(
            "{}|{}|{}|{}|{}",
            self.at / 1000,
            self.call_id,
            self.queue,
            self.agent,
            self.event.word()
        );
        for d in self.event.fields() {
            s.push('|');
            s.push_str(&d.replace(['|', '\n'], " "));
        }
        s
    }

    /// The CTI event: its kind, what it is about, and its data (the
    /// queue-log word and fields, an agent's new state, a rating).
    pub fn cti_event(&self) -> (&'static str, crate::events::About, serde_json::Value) {
        let known = |v: &str| (v != "NONE" && !v.is_empty()).then(|| v.to_string());
        let mut data = serde_json::json!({
            "call_id": known(&self.call_id),
            "queue_log": self.event.word(),
            "fields": self.event.fields(),
        });
        if let Some(state) = self.event.agent_state() {
            data["state"] = state.into();
        }
        if let QueueEvent::Rated { rating } = &self.event {
            data["rating"] = rating.clone().into();
        }
        let about = crate::events::About {
            queue: known(&self.queue),
            agent: known(&self.agent),
            hotline: None,
        };
        (self.event.cti_kind(), about, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<QueueEvent> {
        let left = LeftLine {
            position: 3,
            first_position: 5,
            wait_s: 42,
        };
        let talk = Talk {
            hold_s: 12,
            talk_s: 180,
            first_position: 1,
        };
        vec![
            QueueEvent::EnterQueue {
                caller: "13800138000".into(),
                position: 2,
                resumed: false,
            },
            QueueEvent::EnterQueue {
                caller: String::new(),
                position: 1,
                resumed: true,
            },
            QueueEvent::Connect {
                hold_s: 10,
                bridged: "abc@host".into(),
                ring_s: 4,
            },
            QueueEvent::RingNoAnswer { ring_ms: 15_000 },
            QueueEvent::Abandon(left),
            QueueEvent::ExitWithTimeout(left),
            QueueEvent::ExitEmpty(left),
            QueueEvent::Transfer {
                to: "1002".into(),
                talk,
            },
            QueueEvent::CompleteCaller(talk),
            QueueEvent::CompleteAgent(talk),
            QueueEvent::Callback { position: 4 },
            QueueEvent::Rated {
                rating: "satisfied".into(),
            },
            QueueEvent::AgentLogin,
            QueueEvent::AgentLogoff,
            QueueEvent::Pause {
                reason: "lunch".into(),
            },
            QueueEvent::Unpause,
        ]
    }

    #[test]
    fn every_event_reads_back_from_its_word_and_fields() {
        for event in every_kind() {
            let back = QueueEvent::read(event.word(), &event.fields());
            assert_eq!(back, event, "{event}");
            assert_ne!(event.cti_kind(), "queue.event", "{event} has its own kind");
        }
    }

    #[test]
    fn unknown_or_malformed_lines_are_kept_as_written() {
        let s = |v: &[&str]| v.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        for (word, data) in [
            ("ADDMEMBER", s(&["x"])),
            ("CONNECT", s(&["ten", "x", "1"])),
            ("CONNECT", s(&["1", "x"])),
            ("PAUSE", s(&[])),
            ("ENTERQUEUE", s(&["", "1", "2", "MAYBE"])),
            ("UNPAUSE", s(&["extra"])),
        ] {
            let event = QueueEvent::read(word, &data);
            assert_eq!(
                event,
                QueueEvent::Other {
                    event: word.into(),
                    data: data.clone()
                }
            );
            assert_eq!((event.word(), event.fields()), (word, data));
            assert_eq!(event.cti_kind(), "queue.event");
        }
    }

    #[test]
    fn the_database_keeps_the_layout_it_always_had() {
        let line = LogLine {
            at: 1_700_000_000_123,
            call_id: "NONE".into(),
            queue: "NONE".into(),
            agent: "1001".into(),
            event: QueueEvent::Pause {
                reason: "lunch".into(),
            },
        };
        let json = serde_json::to_value(&line).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"at": 1_700_000_000_123u64, "call_id": "NONE", "queue": "NONE",
                "agent": "1001", "event": "PAUSE", "data": ["lunch"]})
        );
        let back: LogLine = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, line);
        assert_eq!(
            line.queue_log_line(),
            "1700000000|NONE|NONE|1001|PAUSE|lunch"
        );
        let (kind, about, data) = line.cti_event();
        assert_eq!(kind, "agent.state");
        assert_eq!(about.agent.as_deref(), Some("1001"));
        assert_eq!(about.queue, None);
        assert_eq!(data["state"], "on-break");
        assert_eq!(data["fields"], serde_json::json!(["lunch"]));
    }

    #[test]
    fn a_field_with_a_bar_or_line_break_cannot_split_the_line() {
        let line = LogLine {
            at: 5_000,
            call_id: "c".into(),
            queue: "main".into(),
            agent: "NONE".into(),
            event: QueueEvent::Rated {
                rating: "a|b\nc".into(),
            },
        };
        assert_eq!(line.queue_log_line(), "5|c|main|NONE|RATED|a b c");
    }
}
