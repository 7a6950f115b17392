//! The records the house keeps, as values: a call's detail record and how
//! it ended, a seat's chosen presence, a caller's rank.
//!
//! Room: the records office's forms. Pure data with serde; the ACD and the
//! calls fill them, the database keeps them (as JSON), reports read them.

use serde::{Deserialize, Serialize};

/// How a call ended, for the KPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// An agent answered.
    Answered,
    /// The caller hung up while waiting for an agent.
    Abandoned,
    /// `max_wait` passed with no agent (and no overflow took the call).
    Timeout,
    /// The queue was full or empty and nothing took the call.
    NoAgent,
    /// The flow ended the call itself (self-service, notices).
    SelfService,
    /// A backend system answered.
    Handoff,
    /// A transfer target answered.
    Transfer,
    /// The caller hung up in the IVR before asking for anyone.
    IvrHangup,
    /// Refused or failed before anything else (bad SDP, no ports, errors).
    #[default]
    Failed,
    /// The caller booked a callback and hung up, keeping their place.
    CallbackBooked,
    /// A callback: an agent was connected and the citizen answered.
    CallbackCompleted,
    /// A callback attempt the citizen did not answer.
    CallbackUnanswered,
    /// The server stopped without a clean shutdown while the call was up;
    /// closed out at the next start (`ended` is that start).
    Crashed,
    /// A stop's `drain_timeout` ran out with the call still up: both legs
    /// got BYE and the record was written before the process ended.
    Drained,
}

/// One call's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cdr {
    /// The caller's Call-ID.
    pub call_id: String,
    /// Hotline label of the route.
    pub hotline: String,
    /// Dialed number (normalized).
    pub dialed: String,
    /// Calling number.
    pub caller: String,
    /// Unix ms: INVITE received.
    pub arrived: u64,
    /// Unix ms: the flow finished (queue, hand-off, transfer or hangup).
    pub ivr_end: Option<u64>,
    /// Unix ms: entered the (first) queue.
    pub queued: Option<u64>,
    /// Unix ms: first offered to an agent.
    pub offered: Option<u64>,
    /// Unix ms: an agent (or backend, transfer target) answered.
    pub answered: Option<u64>,
    /// Unix ms: the call ended.
    pub ended: u64,
    /// Flow that took the call, if any.
    pub flow: String,
    /// Flow nodes visited (last ones).
    pub path: String,
    /// Keys pressed in the flow.
    pub keys: String,
    /// The flow's variables when it let the caller go (a survey's answer,
    /// digits collected), at most 20.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vars: std::collections::BTreeMap<String, String>,
    /// Queue the call waited in last.
    pub queue: String,
    /// Queues it overflowed from, in order.
    #[serde(default)]
    pub overflowed_from: Vec<String>,
    /// Agent (or backend/transfer target) who answered.
    pub agent: String,
    /// How it ended.
    pub disposition: Disposition,
    /// "caller", "agent", or "system".
    pub hung_up_by: String,
    /// The SIP status a call refused at setup got (488 for an offer we
    /// cannot answer, 480 for a flow gone, 503 for no RTP port); 0 otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: u16,
    /// The caller's rating in the after-call flow: satisfied, fair or
    /// unsatisfied; empty when not rated (or no such flow ran).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rating: String,
    /// Recording file, when recorded.
    pub recording: Option<String>,
    /// Service level of the queue at the time, seconds.
    pub service_level: u64,
    /// Priority rank in the queue.
    pub priority: String,
    /// Where agents transferred the call, in order (agent IDs, queues, numbers).
    #[serde(default)]
    pub transfers: Vec<String>,
    /// For a callback call: the Call-ID of the call that booked it.
    #[serde(default)]
    pub callback_for: String,
    /// How the dialed number joined 12345 (the route's mode).
    #[serde(default)]
    pub mode: String,
    /// For a call an agent's phone placed out of the hotline (through the
    /// trunk or to a peer centre): what it dialed, `emergency`, `centre`,
    /// or the number's class (`mobile`, `local`…). Empty for citizens'
    /// calls and calls between agents.
    #[serde(default)]
    pub outbound: String,
    /// For a call a peer centre sent on an `interconnect` route: the call
    /// data it sent (`X-Peer-…` names), passed on to our seats.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub peer_data: std::collections::BTreeMap<String, String>,
    /// Call data the ticket system set through the API (a ticket number…).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data: std::collections::BTreeMap<String, String>,
    /// How the caller's RTP reached us while bridged (received, lost,
    /// RFC 3550 jitter), from the call's last relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_caller: Option<crate::media::quality::Quality>,
    /// How the far leg's (agent's, backend's) RTP reached us while bridged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtp_far: Option<crate::media::quality::Quality>,
}

/// What an agent chose to be (kept across restarts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "presence", content = "reason", rename_all = "kebab-case")]
pub enum Presence {
    /// Not taking calls.
    LoggedOut,
    /// Taking calls.
    Available,
    /// Logged in but not taking calls, with a reason code.
    OnBreak(String),
}

/// Caller priority: lower ranks go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rank {
    /// Emergencies.
    Emergency = 0,
    /// The elderly/disabled list, or a flow's priority.
    Priority = 1,
    /// Everyone else.
    Normal = 2,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}
