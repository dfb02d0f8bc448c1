//! Typed calls of the sensor API on top of a [`Transport`]: JSON in, JSON out, and a
//! non-2xx answer turned into an [`ApiError`] that carries the portal's reason.

use std::sync::Arc;

use std::io::Read as _;

use outpost_wire::feed::{
    self, FeedBlobsRequest, FeedDeltaPair, FeedDeltasRequest, FeedReleaseInfo,
};
use outpost_wire::sensor::{
    ClaimRequest, HeartbeatRequest, HeartbeatResponse, Job, JobStatusResponse, JobStatusUpdate,
    RegisterRequest, RegisterResponse, ReportAck, ReportUpload, RotateKeyRequest, TunnelConfig,
    UpdateStateReport,
};
use outpost_wire::{paths, ErrorBody, ErrorCode, Secret};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::transport::{Download, GetRequest, Request, Response, Transport, TransportError};

/// Most of an error answer to a download that is read for its reason.
const MAX_ERROR_BODY: u64 = 64 * 1024;
/// Most of a small JSON answer fetched with `GET`.
const MAX_JSON_ANSWER: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the portal: {0}")]
    Transport(#[from] TransportError),
    #[error("the portal answered {status}: {}", describe(.body.as_ref()))]
    Status {
        status: u16,
        body: Option<ErrorBody>,
    },
    #[error("the portal sent an answer the daemon cannot read: {0}")]
    Decode(String),
}

fn describe(body: Option<&ErrorBody>) -> String {
    body.map(|b| b.to_string())
        .unwrap_or_else(|| "no reason given".into())
}

impl ApiError {
    /// Worth trying again later with backoff: the portal was unreachable or broken.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport(_) => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 429,
            ApiError::Decode(_) => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Status { body, .. } => body.as_ref().map(|b| b.error),
            _ => None,
        }
    }

    /// The portal's sentence for a human, if it gave one.
    pub fn portal_message(&self) -> Option<&str> {
        match self {
            ApiError::Status { body: Some(b), .. } => Some(&b.message),
            _ => None,
        }
    }
}

/// A sensor API client: the transport plus the credential to present.
#[derive(Clone)]
pub struct PortalClient {
    transport: Arc<dyn Transport>,
    api_key: Secret,
}

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";

/// `POST /api/sensor/register` with the enrollment token as Bearer.
pub fn register(
    transport: &dyn Transport,
    token: &Secret,
    req: &RegisterRequest,
) -> Result<RegisterResponse, ApiError> {
    let resp = post_json(transport, paths::REGISTER, token, req, None)?;
    decode(&resp)
}

impl PortalClient {
    pub fn new(transport: Arc<dyn Transport>, api_key: Secret) -> PortalClient {
        PortalClient { transport, api_key }
    }

    pub fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatResponse, ApiError> {
        decode(&self.post(paths::HEARTBEAT, req, None)?)
    }

    /// Tells the portal the sensor's new WireGuard public key; answered with the tunnel
    /// settings to use with it.
    pub fn rotate_key(&self, req: &RotateKeyRequest) -> Result<TunnelConfig, ApiError> {
        decode(&self.post(paths::WG_KEY, req, None)?)
    }

    /// `None` when the portal has no job for this sensor (204).
    pub fn claim(&self, req: &ClaimRequest) -> Result<Option<Job>, ApiError> {
        let resp = self.post(paths::CLAIM, req, None)?;
        if resp.status == 204 {
            return Ok(None);
        }
        decode(&resp).map(Some)
    }

    pub fn job_status(
        &self,
        job: i64,
        update: &JobStatusUpdate,
    ) -> Result<JobStatusResponse, ApiError> {
        decode(&self.post(&paths::job_status(job), update, None)?)
    }

    /// Uploads a report with `idempotency-key = request_id`, so a retry is stored once.
    pub fn upload_report(&self, job: i64, report: &ReportUpload) -> Result<ReportAck, ApiError> {
        let resp = self.post(&paths::report(job), report, Some(&report.request_id))?;
        decode(&resp)
    }

    /// Update progress or outcome; the portal answers 2xx with nothing we need.
    pub fn update_state(&self, report: &UpdateStateReport) -> Result<(), ApiError> {
        self.post(paths::UPDATE_STATE, report, None).map(|_| ())
    }

    /// Starts downloading bundle `id` from byte `from` on (`Range: bytes=<from>-` when
    /// `from` > 0). A 2xx answer is returned with its body unread; anything else is an
    /// [`ApiError::Status`] with the portal's reason.
    pub fn bundle(&self, id: i64, from: u64) -> Result<Download, ApiError> {
        let path = paths::bundle(id);
        let d = self.transport.get(&GetRequest {
            path: &path,
            bearer: Some(&self.api_key),
            range_from: (from > 0).then_some(from),
        })?;
        if (200..300).contains(&d.status) {
            return Ok(d);
        }
        let mut body = Vec::new();
        // The reason is a nicety; a body that cannot be read leaves it out.
        let _ = d.body.take(MAX_ERROR_BODY).read_to_end(&mut body);
        Err(ApiError::Status {
            status: d.status,
            body: serde_json::from_slice(&body).ok(),
        })
    }

    /// `GET /api/sensor/feed/release`: the feed release to run; `None` when the portal
    /// has published none (204).
    pub fn feed_release(&self) -> Result<Option<FeedReleaseInfo>, ApiError> {
        let d = self.transport.get(&GetRequest {
            path: feed::RELEASE_PATH,
            bearer: Some(&self.api_key),
            range_from: None,
        })?;
        let status = d.status;
        let mut body = Vec::new();
        d.body
            .take(MAX_JSON_ANSWER)
            .read_to_end(&mut body)
            .map_err(|e| ApiError::Transport(TransportError(format!("reading the answer: {e}"))))?;
        match status {
            204 => Ok(None),
            200..=299 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| ApiError::Decode(e.to_string())),
            _ => Err(ApiError::Status {
                status,
                body: serde_json::from_slice(&body).ok(),
            }),
        }
    }

    /// `POST /api/sensor/feed/blobs`: one batch of blobs, its body unread (zstd,
    /// `outpost_feed::batch`).
    pub fn feed_blobs(&self, sha256: &[String]) -> Result<Download, ApiError> {
        let body = serde_json::to_vec(&FeedBlobsRequest {
            sha256: sha256.to_vec(),
        })
        .map_err(|e| ApiError::Decode(e.to_string()))?;
        self.feed_post(feed::BLOBS_PATH, body)?
            .map_err(|(status, body)| ApiError::Status { status, body })
    }

    /// `POST /api/sensor/feed/deltas`: in-file deltas in one batch, its body unread;
    /// `None` when the portal predates deltas (404 for the path).
    pub fn feed_deltas(&self, pairs: &[FeedDeltaPair]) -> Result<Option<Download>, ApiError> {
        let body = serde_json::to_vec(&FeedDeltasRequest {
            deltas: pairs.to_vec(),
        })
        .map_err(|e| ApiError::Decode(e.to_string()))?;
        match self.feed_post(feed::DELTAS_PATH, body)? {
            Ok(d) => Ok(Some(d)),
            // An older portal has no such endpoint (its fallback's 404); a 404 naming a
            // blob is the release collected meanwhile, an error like for blobs.
            Err((404, body))
                if body
                    .as_ref()
                    .is_none_or(|b| b.message == "no such endpoint") =>
            {
                Ok(None)
            }
            Err((status, body)) => Err(ApiError::Status { status, body }),
        }
    }

    /// POSTs a JSON request to a feed download endpoint: the unread stream, or the
    /// status with the portal's error body.
    fn feed_post(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Result<Download, (u16, Option<ErrorBody>)>, ApiError> {
        let d = self.transport.post_stream(&Request {
            path,
            bearer: Some(&self.api_key),
            content_type: JSON,
            body,
            idempotency_key: None,
        })?;
        if (200..300).contains(&d.status) {
            return Ok(Ok(d));
        }
        let mut raw = Vec::new();
        // The reason is a nicety; a body that cannot be read leaves it out.
        let _ = d.body.take(MAX_ERROR_BODY).read_to_end(&mut raw);
        Ok(Err((d.status, serde_json::from_slice(&raw).ok())))
    }

    /// Sends one NDJSON batch of log events.
    pub fn send_log(&self, ndjson: String) -> Result<(), ApiError> {
        let resp = self.transport.post(&Request {
            path: paths::LOG,
            bearer: Some(&self.api_key),
            content_type: NDJSON,
            body: ndjson.into_bytes(),
            idempotency_key: None,
        })?;
        check(resp).map(|_| ())
    }

    fn post(
        &self,
        path: &str,
        body: &impl Serialize,
        idempotency_key: Option<&str>,
    ) -> Result<Response, ApiError> {
        post_json(
            self.transport.as_ref(),
            path,
            &self.api_key,
            body,
            idempotency_key,
        )
    }
}

/// The portal as the feed sync's source: the sensor API through the tunnel.
impl outpost_feedsync::FeedSource for PortalClient {
    fn release(&self) -> Result<Option<FeedReleaseInfo>, outpost_feedsync::SourceError> {
        self.feed_release()
            .map_err(|e| outpost_feedsync::SourceError(e.to_string()))
    }

    fn blobs(
        &self,
        sha256: &[String],
    ) -> Result<Box<dyn std::io::Read + Send>, outpost_feedsync::SourceError> {
        self.feed_blobs(sha256)
            .map(|d| d.body)
            .map_err(|e| outpost_feedsync::SourceError(e.to_string()))
    }

    fn deltas(
        &self,
        pairs: &[FeedDeltaPair],
    ) -> Result<Option<Box<dyn std::io::Read + Send>>, outpost_feedsync::SourceError> {
        self.feed_deltas(pairs)
            .map(|d| d.map(|d| d.body))
            .map_err(|e| outpost_feedsync::SourceError(e.to_string()))
    }
}

fn post_json(
    transport: &dyn Transport,
    path: &str,
    bearer: &Secret,
    body: &impl Serialize,
    idempotency_key: Option<&str>,
) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(body).map_err(|e| ApiError::Decode(e.to_string()))?;
    let resp = transport.post(&Request {
        path,
        bearer: Some(bearer),
        content_type: JSON,
        body,
        idempotency_key,
    })?;
    check(resp)
}

/// Passes 2xx through; anything else becomes `ApiError::Status` with the parsed body.
fn check(resp: Response) -> Result<Response, ApiError> {
    if (200..300).contains(&resp.status) {
        return Ok(resp);
    }
    Err(ApiError::Status {
        status: resp.status,
        body: serde_json::from_slice(&resp.body).ok(),
    })
}

fn decode<T: DeserializeOwned>(resp: &Response) -> Result<T, ApiError> {
    serde_json::from_slice(&resp.body).map_err(|e| ApiError::Decode(e.to_string()))
}

#[cfg(test)]
pub mod fake {
    //! A scripted in-memory portal for unit tests of the logic above the transport.

    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use super::*;

    /// What the fake saw: path, bearer, idempotency key and body.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub path: String,
        pub bearer: Option<String>,
        pub idempotency_key: Option<String>,
        pub body: String,
    }

    /// Answers each path from a queue of scripted responses; when a path's queue is
    /// empty it answers with that path's default, or 404. `GET`s are served from
    /// `files` (honouring the range) or answered 404.
    #[derive(Default)]
    pub struct FakeTransport {
        pub script: Mutex<HashMap<String, VecDeque<Result<Response, TransportError>>>>,
        pub defaults: Mutex<HashMap<String, Response>>,
        pub seen: Mutex<Vec<Seen>>,
        pub files: Mutex<HashMap<String, Vec<u8>>>,
        /// Every `GET` as (path, range start).
        pub gets: Mutex<Vec<(String, Option<u64>)>>,
    }

    pub fn ok_json(body: &impl Serialize) -> Response {
        Response {
            status: 200,
            body: serde_json::to_vec(body).unwrap(),
        }
    }

    pub fn status(status: u16, error: Option<ErrorBody>) -> Response {
        Response {
            status,
            body: error
                .map(|e| serde_json::to_vec(&e).unwrap())
                .unwrap_or_default(),
        }
    }

    fn sha(b: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    }

    /// Offers a feed release of `files` (manifest path, content) signed with `key`, and
    /// scripts the two batches a sync from nothing asks for: the manifest, then every
    /// content blob (in digest order, as the sync asks).
    pub fn serve_feed(
        t: &FakeTransport,
        key: &outpost_bundle::SecretKey,
        files: &[(&str, &[u8])],
    ) -> FeedReleaseInfo {
        use outpost_feed::{sign_manifest, FeedFile, FeedManifest, MANIFEST_FORMAT};
        let mut list: Vec<FeedFile> = files
            .iter()
            .map(|(p, b)| FeedFile {
                path: (*p).into(),
                size: b.len() as u64,
                sha256: sha(b),
            })
            .collect();
        list.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = FeedManifest {
            format: MANIFEST_FORMAT,
            plugin_set: "202509150400".into(),
            notus_version: None,
            vt_count: 1,
            nasl_scripts: 1,
            nasl_oids: 1,
            notus_advisories: 0,
            upstream_signers: vec![],
            files: list,
        }
        .to_bytes();
        let offer = FeedReleaseInfo {
            release_id: 1,
            plugin_set: "202509150400".into(),
            vt_count: 1,
            files: files.len() as u64,
            bytes: files.iter().map(|(_, b)| b.len() as u64).sum(),
            manifest_sha256: sha(&manifest),
            manifest_size: manifest.len() as u64,
            signature: sign_manifest(&manifest, key).to_line().trim_end().into(),
        };
        t.files.lock().unwrap().insert(
            feed::RELEASE_PATH.into(),
            serde_json::to_vec(&offer).unwrap(),
        );
        let batch = |items: &[&[u8]]| {
            let names: Vec<String> = items.iter().map(|b| sha(b)).collect();
            Response {
                status: 200,
                body: outpost_feed::batch::encode(
                    names.iter().map(String::as_str).zip(items.iter().copied()),
                )
                .unwrap(),
            }
        };
        t.push(feed::BLOBS_PATH, Ok(batch(&[&manifest])));
        let mut content: Vec<&[u8]> = files.iter().map(|(_, b)| *b).collect();
        content.sort_by_key(|b| sha(b));
        content.dedup();
        t.push(feed::BLOBS_PATH, Ok(batch(&content)));
        offer
    }

    impl FakeTransport {
        pub fn push(&self, path: &str, r: Result<Response, TransportError>) {
            self.script
                .lock()
                .unwrap()
                .entry(path.to_owned())
                .or_default()
                .push_back(r);
        }
        pub fn default_for(&self, path: &str, r: Response) {
            self.defaults.lock().unwrap().insert(path.to_owned(), r);
        }
        pub fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
        pub fn seen_on(&self, path: &str) -> Vec<Seen> {
            self.seen().into_iter().filter(|s| s.path == path).collect()
        }
    }

    impl Transport for FakeTransport {
        fn post(&self, req: &Request<'_>) -> Result<Response, TransportError> {
            self.seen.lock().unwrap().push(Seen {
                path: req.path.to_owned(),
                bearer: req.bearer.map(|b| b.expose().to_owned()),
                idempotency_key: req.idempotency_key.map(str::to_owned),
                body: String::from_utf8_lossy(&req.body).into_owned(),
            });
            if let Some(r) = self
                .script
                .lock()
                .unwrap()
                .get_mut(req.path)
                .and_then(|q| q.pop_front())
            {
                return r;
            }
            Ok(self
                .defaults
                .lock()
                .unwrap()
                .get(req.path)
                .cloned()
                .unwrap_or(Response {
                    status: 404,
                    body: Vec::new(),
                }))
        }

        fn get(&self, req: &GetRequest<'_>) -> Result<Download, TransportError> {
            self.gets
                .lock()
                .unwrap()
                .push((req.path.to_owned(), req.range_from));
            let files = self.files.lock().unwrap();
            let Some(file) = files.get(req.path) else {
                return Ok(Download {
                    status: 404,
                    content_range: None,
                    body: Box::new(std::io::empty()),
                });
            };
            let from = req.range_from.unwrap_or(0).min(file.len() as u64) as usize;
            Ok(Download {
                status: if req.range_from.is_some() { 206 } else { 200 },
                content_range: req
                    .range_from
                    .map(|_| format!("bytes {from}-{}/{}", file.len() - 1, file.len())),
                body: Box::new(std::io::Cursor::new(file[from..].to_vec())),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;
    use outpost_wire::sensor::Capability;

    fn client(t: &Arc<FakeTransport>) -> PortalClient {
        PortalClient::new(t.clone(), Secret::new("osk_key"))
    }

    #[test]
    fn claim_204_is_no_job_and_carries_the_api_key() {
        let t = Arc::new(FakeTransport::default());
        t.push(paths::CLAIM, Ok(status(204, None)));
        let req = ClaimRequest {
            capabilities: vec![Capability::Scan],
        };
        assert_eq!(client(&t).claim(&req).unwrap(), None);
        let seen = t.seen_on(paths::CLAIM);
        assert_eq!(seen[0].bearer.as_deref(), Some("osk_key"));
        assert_eq!(seen[0].body, r#"{"capabilities":["scan"]}"#);
    }

    #[test]
    fn error_body_reason_is_kept() {
        let t = Arc::new(FakeTransport::default());
        t.push(
            paths::HEARTBEAT,
            Ok(status(
                403,
                Some(ErrorBody::new(ErrorCode::Forbidden, "sensor was deleted")),
            )),
        );
        let err = client(&t)
            .heartbeat(&HeartbeatRequest {
                activity: Default::default(),
                uptime_s: 1,
                agent_version: "0".into(),
                phase: None,
                firmware_version: None,
                boot_slot: None,
                metrics: Default::default(),
                running_jobs: None,
                feed_release: None,
            })
            .unwrap_err();
        assert_eq!(err.status(), Some(403));
        assert_eq!(err.code(), Some(ErrorCode::Forbidden));
        assert_eq!(err.portal_message(), Some("sensor was deleted"));
        assert!(!err.is_transient());
    }

    #[test]
    fn transient_classification() {
        let net = ApiError::Transport(TransportError("connection refused".into()));
        assert!(net.is_transient());
        let s503 = ApiError::Status {
            status: 503,
            body: None,
        };
        assert!(s503.is_transient());
        assert!(s503.to_string().contains("503"));
        let s401 = ApiError::Status {
            status: 401,
            body: None,
        };
        assert!(!s401.is_transient());
    }

    /// The client calls drive a whole feed sync: release info by GET, the manifest and
    /// the content in zstd batches by POST, checked against the feed key.
    #[test]
    fn the_portal_client_feeds_a_sync() {
        let t = Arc::new(FakeTransport::default());
        let c = client(&t);
        // A 404 is an error; only a 204 means "no release published".
        assert!(c.feed_release().is_err());

        let key = outpost_bundle::SecretKey::from_seed(&[3; 32]);
        let script = b"script_oid(\"1.3.6.1.4.1.25623.1.0.1\");\n".to_vec();
        let info = b"PLUGIN_SET = \"202509150400\";\n".to_vec();
        let offer = serve_feed(
            &t,
            &key,
            &[("nvt/a.nasl", &script), ("nvt/plugin_feed_info.inc", &info)],
        );
        assert_eq!(c.feed_release().unwrap(), Some(offer.clone()));

        let dir = tempfile::tempdir().unwrap();
        let trusted =
            outpost_bundle::TrustedKeys::parse(&key.public_line(""), std::path::Path::new("k"))
                .unwrap();
        let cfg = outpost_feedsync::SyncConfig::new(dir.path(), trusted);
        let out = outpost_feedsync::sync(&cfg, &c, &mut |_| {}).unwrap();
        let outpost_feedsync::SyncOutcome::Applied(r) = out else {
            panic!("{out:?}");
        };
        assert_eq!((r.fetched_blobs, r.batches), (3, 2));
        let seen = t.seen_on(feed::BLOBS_PATH);
        assert_eq!(seen[0].bearer.as_deref(), Some("osk_key"));
        assert_eq!(
            seen[0].body,
            format!(r#"{{"sha256":["{}"]}}"#, offer.manifest_sha256)
        );
        assert_eq!(
            std::fs::read(dir.path().join("current/plugins/a.nasl")).unwrap(),
            script
        );

        // A refusal carries the portal's reason.
        t.push(
            feed::BLOBS_PATH,
            Ok(status(
                404,
                Some(ErrorBody::new(ErrorCode::NotFound, "no blob 00")),
            )),
        );
        let err = c.feed_blobs(&["00".repeat(32)]).unwrap_err();
        assert_eq!(err.portal_message(), Some("no blob 00"));

        // Deltas: a portal without the endpoint (its fallback's 404) serves none, and the
        // sync fetches whole; a 404 naming a blob is a refusal like for blobs.
        let pair = [FeedDeltaPair {
            base: "aa".repeat(32),
            target: "bb".repeat(32),
        }];
        t.push(
            feed::DELTAS_PATH,
            Ok(status(
                404,
                Some(ErrorBody::new(ErrorCode::NotFound, "no such endpoint")),
            )),
        );
        assert!(c.feed_deltas(&pair).unwrap().is_none());
        t.push(
            feed::DELTAS_PATH,
            Ok(status(
                404,
                Some(ErrorBody::new(
                    ErrorCode::NotFound,
                    "the portal holds no blob bb",
                )),
            )),
        );
        assert!(c.feed_deltas(&pair).is_err());
        assert_eq!(
            t.seen_on(feed::DELTAS_PATH)[0].body,
            format!(
                r#"{{"deltas":[{{"base":"{}","target":"{}"}}]}}"#,
                "aa".repeat(32),
                "bb".repeat(32)
            )
        );
    }

    #[test]
    fn report_upload_sends_idempotency_key() {
        let t = Arc::new(FakeTransport::default());
        t.push(
            &paths::report(7),
            Ok(ok_json(&ReportAck {
                report_id: 1,
                created: true,
            })),
        );
        let report = ReportUpload {
            request_id: "req-1".into(),
            outcome: outpost_wire::sensor::ReportOutcome::Completed,
            partial: false,
            content_type: "application/xml".into(),
            content: "<x/>".into(),
            summary: Default::default(),
        };
        let ack = client(&t).upload_report(7, &report).unwrap();
        assert!(ack.created);
        assert_eq!(
            t.seen_on(&paths::report(7))[0].idempotency_key.as_deref(),
            Some("req-1")
        );
    }
}
