//! Call recordings over HTTP: their metadata in pages, and the audio itself,
//! streamed with HTTP range support so a player can seek through a long call.
//!
//! Room: the front desk's archive window. A recording is named by its path
//! under `[recording] dir` (`2026/12/06/161500-<call>.wav`), and only a file
//! whose metadata the store holds is ever served: a name is looked up, never
//! opened as given, so no request reaches another file. Admins and
//! supervisors hear every call, an agent only its own; each download is
//! written to the audit log (who listened to which call). It may read the
//! store and the recordings folder; nothing else.

use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{authorize, blocking, page_of, record_action, Api, ErrorBody, Failure, Page, PageBody};
use crate::store::{RecordingMeta, Role};

/// Who may list and hear recordings: admins and supervisors all, an agent its own.
const LISTENERS: &[Role] = &[Role::Admin, Role::Supervisor, Role::Agent];

/// `?call_id=…&agent=…&queue=…` for the recordings list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RecordingFilter {
    /// Only this call's recordings (a call paused and resumed has several).
    call_id: Option<String>,
    /// Only this agent's.
    agent: Option<String>,
    /// Only this queue's.
    queue: Option<String>,
}

/// A recording's name in the API: its path under `dir`, with `/` between
/// parts (`None`: it lies elsewhere, as after `dir` was changed).
fn id_of(dir: &FsPath, meta: &RecordingMeta) -> Option<String> {
    let rel = FsPath::new(&meta.path).strip_prefix(dir).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// The file a recording's name stands for, if the name is a plain relative
/// path (no `..`, no root, no empty parts).
fn path_of(dir: &FsPath, id: &str) -> Option<PathBuf> {
    let rel = FsPath::new(id);
    if id.is_empty()
        || id.len() > 512
        || id.split('/').any(str::is_empty)
        || !rel.components().all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    Some(dir.join(rel))
}

/// What a list entry shows: the metadata, its name, where to fetch it, and
/// its size now (a call still being recorded grows).
fn entry(dir: &FsPath, meta: &RecordingMeta) -> Value {
    let id = id_of(dir, meta);
    let bytes = std::fs::metadata(&meta.path).map(|m| m.len()).ok();
    json!({
        "id": id,
        "audio": id.as_ref().map(|id| format!("/api/v1/recordings/{id}")),
        "call_id": meta.call_id,
        "agent": meta.agent,
        "queue": meta.queue,
        "started": meta.started,
        "bytes": bytes,
        // Stereo 16-bit at 8 kHz after a 44-byte header.
        "seconds": bytes.map(|b| b.saturating_sub(44) as f64 / 32_000.0),
    })
}

#[utoipa::path(get, path = "/api/v1/recordings", tag = "records", security(("bearer" = [])),
    params(Page, RecordingFilter),
    responses((status = 200, description = "a page of recordings that started in the window, oldest first: id, audio (its download), call_id, agent, queue, started, bytes, seconds; an agent token: its own calls", body = PageBody),
        (status = 400, description = "a parameter is wrong; the message names it", body = ErrorBody),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody)))]
pub(super) async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(page): Query<Page>,
    Query(filter): Query<RecordingFilter>,
) -> Result<Json<Value>, Failure> {
    let caller = authorize(&api, &headers, LISTENERS, "list recordings")?;
    let w = page.read(api.utc_offset_minutes)?;
    let agent = caller.own_agent().map(str::to_string).or(filter.agent);
    let dir = api.recordings_dir.clone();
    let (since, until) = (w.since, w.until);
    let items = blocking(&api.store, move |s| {
        Ok(s.recordings_between(since, until)?
            .iter()
            .filter(|m| {
                agent.as_ref().is_none_or(|a| &m.agent == a)
                    && filter.queue.as_ref().is_none_or(|q| &m.queue == q)
                    && filter.call_id.as_ref().is_none_or(|c| &m.call_id == c)
            })
            .map(|m| entry(&dir, m))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(page_of(items, &w)))
}

#[utoipa::path(get, path = "/api/v1/recordings/{id}", tag = "records", security(("bearer" = [])),
    params(("id" = String, Path, description = "the recording's id from the list: its path under [recording] dir, e.g. 2026/12/06/161500-abc.wav")),
    responses((status = 200, description = "the WAV file (stereo: caller left, agent right)", content_type = "audio/wav"),
        (status = 206, description = "the byte range asked for with Range", content_type = "audio/wav"),
        (status = 401, description = "no valid bearer token", body = ErrorBody),
        (status = 403, description = "the token's role may not", body = ErrorBody),
        (status = 404, description = "no such recording (or not the agent's own)", body = ErrorBody),
        (status = 416, description = "the range lies outside the file")))]
pub(super) async fn audio(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, Failure> {
    let caller = authorize(&api, request.headers(), LISTENERS, "hear recordings")?;
    let gone = || Failure(StatusCode::NOT_FOUND, format!("no recording {id:?}"));
    let path = path_of(&api.recordings_dir, &id).ok_or_else(gone)?;
    let key = path.display().to_string();
    let meta = blocking(&api.store, move |s| s.recording(&key))
        .await?
        .ok_or_else(gone)?;
    if caller.own_agent().is_some_and(|own| own != meta.agent) {
        return Err(gone());
    }
    // A player's later range requests are the same listening: the audit
    // log has one line per download, from its first byte.
    let from_start = request
        .headers()
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .is_none_or(|r| r.trim_start_matches("bytes=").starts_with("0-"));
    if from_start {
        record_action(
            &api,
            &caller,
            "recording.download",
            &meta.call_id,
            json!({ "recording": id }),
        )
        .await?;
    }
    let served = tower_http::services::ServeFile::new_with_mime(
        &meta.path,
        &"audio/wav".parse().expect("a valid MIME type literal"),
    )
    .try_call(request)
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{id}: {e}")))?;
    Ok(served.map(axum::body::Body::new).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_a_plain_path_under_the_folder_or_nothing() {
        let dir = FsPath::new("/data/recordings");
        assert_eq!(
            path_of(dir, "2026/12/06/161500-abc.wav"),
            Some(PathBuf::from("/data/recordings/2026/12/06/161500-abc.wav"))
        );
        for hostile in [
            "",
            "../secrets",
            "2026/../../etc/passwd",
            "/etc/passwd",
            "2026//x.wav",
            "./x.wav",
            "x.wav/",
        ] {
            assert_eq!(path_of(dir, hostile), None, "{hostile:?}");
        }
        let meta = RecordingMeta {
            path: "/data/recordings/2026/12/06/161500-abc.wav".into(),
            call_id: "abc".into(),
            agent: "1001".into(),
            queue: "main".into(),
            started: 1,
        };
        let id = id_of(dir, &meta).expect("under the folder");
        assert_eq!(id, "2026/12/06/161500-abc.wav");
        assert_eq!(path_of(dir, &id), Some(PathBuf::from(&meta.path)));
        assert_eq!(id_of(FsPath::new("/elsewhere"), &meta), None);
    }
}
