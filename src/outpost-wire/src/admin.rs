//! Bodies of the admin API (`/api/admin/*`) used by `outpostctl`.

use serde::{Deserialize, Serialize};

use crate::log::{LogEvent, Phase};
use crate::sensor::{Activity, JobSpec, ReportOutcome, ReportSummary};

pub mod paths {
    pub const TOKENS: &str = "/api/admin/tokens";
    pub const JOBS: &str = "/api/admin/jobs";
    pub const SENSORS: &str = "/api/admin/sensors";

    pub fn job(id: i64) -> String {
        format!("/api/admin/jobs/{id}")
    }
    pub fn cancel_job(id: i64) -> String {
        format!("/api/admin/jobs/{id}/cancel")
    }
    pub fn job_report(id: i64) -> String {
        format!("/api/admin/jobs/{id}/report")
    }
    pub fn sensor(id: &str) -> String {
        format!("/api/admin/sensors/{id}")
    }
    pub fn sensor_log(id: &str) -> String {
        format!("/api/admin/sensors/{id}/log")
    }
    pub fn rotate_key(id: &str) -> String {
        format!("/api/admin/sensors/{id}/rotate-key")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateToken {
    pub site: String,
    /// How many sensors may enroll with it.
    pub uses: u32,
    /// Lifetime in seconds.
    pub ttl_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub site: String,
    pub expires_at: i64,
    pub uses: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateJob {
    pub site: String,
    pub spec: JobSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: i64,
    pub site: String,
    pub state: JobState,
    pub spec: JobSpec,
    #[serde(default)]
    pub sensor_id: Option<String>,
    pub attempts: u32,
    pub progress_percent: u8,
    pub cancel_requested: bool,
    #[serde(default)]
    pub failure_reason: Option<String>,
    pub created_at: i64,
    #[serde(default)]
    pub lease_expires_at: Option<i64>,
}

/// Portal-computed status: online = heartbeat within the threshold (default 2 minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorStatus {
    Online,
    Scanning,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorInfo {
    pub id: String,
    pub name: String,
    pub site: String,
    pub status: SensorStatus,
    pub hostname: String,
    pub board: String,
    pub agent_version: String,
    pub wg_public_key: String,
    pub registered_at: i64,
    #[serde(default)]
    pub last_heartbeat: Option<i64>,
    #[serde(default)]
    pub activity: Option<Activity>,
    #[serde(default)]
    pub phase: Option<Phase>,
    #[serde(default)]
    pub metrics: Option<crate::sensor::Metrics>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLogEvent {
    pub received_at: i64,
    #[serde(flatten)]
    pub event: LogEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportInfo {
    pub id: i64,
    pub job_id: i64,
    pub sensor_id: String,
    pub outcome: ReportOutcome,
    pub partial: bool,
    pub content_type: String,
    pub content: String,
    pub summary: ReportSummary,
    pub received_at: i64,
}
