//! Status conditions, as Kubernetes API conventions shape them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `True`, `False` or `Unknown`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// Not known (yet).
    Unknown,
}

/// One condition: `type` with a status, a CamelCase reason and a message for people.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's name (`Valid`, `Ready`, `Degraded`, ...).
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Why, in one CamelCase word.
    pub reason: String,
    /// Why, for people.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The object's generation this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition with no transition time yet (see [`Condition::carry_transition`]).
    pub fn new(type_: &str, status: ConditionStatus, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: None,
            observed_generation: None,
        }
    }

    /// Sets `observedGeneration`.
    pub fn at_generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }

    /// Keeps the old condition's transition time when the status did not change, else `now`.
    /// So re-applying an unchanged status is a no-op for the API server.
    pub fn carry_transition(mut self, old: &[Condition], now: &str) -> Self {
        let prev = old.iter().find(|c| c.type_ == self.type_);
        self.last_transition_time = match prev {
            Some(p) if p.status == self.status => p.last_transition_time.clone().or_else(|| Some(now.into())),
            _ => Some(now.into()),
        };
        self
    }
}
