//! RemoteActor: the only owner of the S3 client (`object_store`'s `AmazonS3`).
//!
//! Each message is one remote request (list, one part, complete, abort, the sidecar, one
//! download), so the operation in `ops/remote.rs` can record every finished part in the
//! catalog before it sends the next one: that is what makes a killed push resumable. The
//! client is built once, at start, from `[remote]` and the credentials; without a `[remote]`
//! section, or without credentials, every request answers with that error (exit 2 or 3).

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsAuthorizer, AwsCredential};
use object_store::client::{
    HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::reply;
use crate::archive::CancelFlag;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::remote::{
    Credentials, RemoteSettings, SIDECAR_SUFFIX, Sidecar, classify, load_credentials,
};

pub(crate) struct RemoteActor;

type Reply<T> = RpcReplyPort<Result<T>>;

/// What the remote holds under the prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct RemoteListing {
    /// Complete copies: a sidecar that parses (its archive object may still be missing or
    /// different: `verify` checks).
    pub copies: Vec<Sidecar>,
    /// Sidecars that do not parse (key, why).
    pub invalid: Vec<(String, String)>,
    /// Archive object sizes by archive name (with or without a sidecar).
    pub objects: std::collections::BTreeMap<String, u64>,
}

pub(crate) enum RemoteMsg {
    List(Reply<RemoteListing>),
    /// Fetches and parses one sidecar; `None` when it does not exist.
    GetSidecar(String, Reply<Option<Sidecar>>),
    CreateUpload(String, Reply<String>),
    PutPart {
        path: String,
        upload_id: String,
        index: u64,
        data: Bytes,
        reply: Reply<String>,
    },
    Complete {
        path: String,
        upload_id: String,
        etags: Vec<String>,
        reply: Reply<()>,
    },
    Abort {
        path: String,
        upload_id: String,
        reply: Reply<()>,
    },
    /// A small object written in one request (the sidecar).
    PutObject(String, Bytes, Reply<()>),
    /// Downloads an object into `dest` (created, must not exist), hashing it; returns its
    /// size and SHA-256. `dest` is removed on any error.
    Download {
        path: String,
        dest: PathBuf,
        progress: Progress,
        cancel: CancelFlag,
        reply: Reply<(u64, String)>,
    },
    /// Reads an object and returns its size and SHA-256 without storing it.
    Hash {
        path: String,
        progress: Progress,
        cancel: CancelFlag,
        reply: Reply<(u64, String)>,
    },
    /// Deletes one object. A refusal by the server (403: object lock, credentials without
    /// `s3:DeleteObject`) is an answer, not an error: `Deleted::Refused` with its words.
    Delete(String, Reply<Deleted>),
    /// The bucket's multipart uploads not completed or aborted under the prefix.
    ListUploads(Reply<Vec<PendingUpload>>),
}

/// What the server did with a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deleted {
    Yes,
    Refused(String),
}

/// A multipart upload the bucket holds (ListMultipartUploads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingUpload {
    /// Object name inside the bucket.
    pub path: String,
    pub upload_id: String,
    pub initiated: chrono::DateTime<chrono::Utc>,
}

pub(crate) struct RemoteState {
    client: std::result::Result<(AmazonS3, RemoteSettings), String>,
    /// The raw HTTP client and credentials for the one request `object_store` lacks
    /// (ListMultipartUploads); signed by `object_store`'s own `AwsAuthorizer`.
    http: Option<(HttpClient, Credentials)>,
    /// The error kind of a client that could not be built (true: environment, exit 3).
    refused: bool,
}

impl RemoteState {
    fn client(&self) -> Result<(&AmazonS3, &RemoteSettings)> {
        match &self.client {
            Ok((c, s)) => Ok((c, s)),
            Err(m) if self.refused => Err(Error::Refused(m.clone())),
            Err(m) => Err(Error::Usage(m.clone())),
        }
    }
}

fn build(settings: &RemoteSettings) -> Result<(AmazonS3, HttpClient, Credentials)> {
    let creds = load_credentials(settings)?;
    let kept = creds.clone();
    let mut options = ClientOptions::new()
        .with_timeout(settings.request_timeout)
        .with_connect_timeout(std::time::Duration::from_secs(10));
    if settings
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"))
    {
        options = options.with_allow_http(true);
    }
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: settings.request_timeout.saturating_mul(2),
        ..RetryConfig::default()
    };
    let http = ReqwestConnector::default()
        .connect(&options)
        .map_err(|e| Error::Usage(format!("remote {}: {e}", settings.url)))?;
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&settings.bucket)
        .with_region(&settings.region)
        .with_access_key_id(creds.access_key_id)
        .with_secret_access_key(creds.secret_access_key)
        .with_client_options(options)
        .with_retry(retry);
    if let Some(t) = creds.session_token {
        b = b.with_token(t);
    }
    if let Some(e) = &settings.endpoint {
        // Path-style requests: what MinIO, SeaweedFS, Ceph and moto expect by default.
        b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
    }
    let s3 = b
        .build()
        .map_err(|e| Error::Usage(format!("remote {}: {e}", settings.url)))?;
    Ok((s3, http, kept))
}

impl Actor for RemoteActor {
    type Msg = RemoteMsg;
    type State = RemoteState;
    type Arguments = Option<RemoteSettings>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        settings: Option<RemoteSettings>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let Some(settings) = settings else {
            return Ok(RemoteState {
                client: Err(
                    "no [remote] section in config.toml: offsite copies are not configured".into(),
                ),
                http: None,
                refused: false,
            });
        };
        Ok(match build(&settings) {
            Ok((c, http, creds)) => RemoteState {
                client: Ok((c, settings)),
                http: Some((http, creds)),
                refused: false,
            },
            Err(e) => RemoteState {
                refused: matches!(e.kind(), crate::error::ErrorKind::Refused),
                client: Err(e.to_string()),
                http: None,
            },
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RemoteMsg::List(r) => reply(r, list(state).await),
            RemoteMsg::GetSidecar(name, r) => reply(r, get_sidecar(state, &name).await),
            RemoteMsg::CreateUpload(path, r) => reply(
                r,
                with(state, "start multipart upload", |c| async move {
                    c.create_multipart(&ObjPath::from(path)).await
                })
                .await,
            ),
            RemoteMsg::PutPart {
                path,
                upload_id,
                index,
                data,
                reply: r,
            } => reply(
                r,
                with(state, "upload part", |c| async move {
                    c.put_part(
                        &ObjPath::from(path),
                        &upload_id,
                        index as usize,
                        PutPayload::from_bytes(data),
                    )
                    .await
                    .map(|p| p.content_id)
                })
                .await,
            ),
            RemoteMsg::Complete {
                path,
                upload_id,
                etags,
                reply: r,
            } => reply(
                r,
                with(state, "complete multipart upload", |c| async move {
                    let parts = etags
                        .into_iter()
                        .map(|content_id| PartId { content_id })
                        .collect();
                    c.complete_multipart(&ObjPath::from(path), &upload_id, parts)
                        .await
                        .map(|_| ())
                })
                .await,
            ),
            RemoteMsg::Abort {
                path,
                upload_id,
                reply: r,
            } => reply(
                r,
                with(state, "abort multipart upload", |c| async move {
                    c.abort_multipart(&ObjPath::from(path), &upload_id).await
                })
                .await,
            ),
            RemoteMsg::PutObject(path, data, r) => reply(
                r,
                with(state, "write object", |c| async move {
                    c.put(&ObjPath::from(path), PutPayload::from_bytes(data))
                        .await
                        .map(|_| ())
                })
                .await,
            ),
            RemoteMsg::Download {
                path,
                dest,
                progress,
                cancel,
                reply: r,
            } => {
                let result = read_object(state, &path, Some(&dest), &progress, &cancel).await;
                if result.is_err() {
                    let _ = std::fs::remove_file(&dest);
                }
                reply(r, result)
            }
            RemoteMsg::Hash {
                path,
                progress,
                cancel,
                reply: r,
            } => reply(r, read_object(state, &path, None, &progress, &cancel).await),
            RemoteMsg::Delete(path, r) => reply(r, delete(state, &path).await),
            RemoteMsg::ListUploads(r) => reply(r, list_uploads(state).await),
        }
        Ok(())
    }
}

/// Runs one request with the client, mapping its error (see `remote::classify`).
async fn with<T, F, Fut>(state: &RemoteState, what: &str, f: F) -> Result<T>
where
    F: FnOnce(AmazonS3) -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    let (client, settings) = state.client()?;
    f(client.clone())
        .await
        .map_err(|e| classify(&settings.url, what, &e))
}

async fn delete(state: &RemoteState, path: &str) -> Result<Deleted> {
    let (client, settings) = state.client()?;
    // `object_store` deletes through DeleteObjects: a refused request is a 403
    // (`PermissionDenied`), a refused key an `<Error>` with code AccessDenied in a 200 answer,
    // which it only passes on as text.
    match client.delete(&ObjPath::from(path)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(Deleted::Yes),
        Err(e @ object_store::Error::PermissionDenied { .. }) => {
            Ok(Deleted::Refused(e.to_string()))
        }
        Err(e) if e.to_string().contains("AccessDenied") => Ok(Deleted::Refused(e.to_string())),
        Err(e) => Err(classify(&settings.url, "delete object", &e)),
    }
}

async fn list(state: &RemoteState) -> Result<RemoteListing> {
    let (client, settings) = state.client()?;
    let prefix = (!settings.prefix.is_empty()).then(|| ObjPath::from(settings.prefix.as_str()));
    let mut stream = client.list(prefix.as_ref());
    let mut out = RemoteListing::default();
    let mut sidecars = Vec::new();
    while let Some(meta) = stream.next().await {
        let meta = match meta {
            Ok(m) => m,
            // No bucket yet (SeaweedFS creates it on the first upload): nothing there.
            Err(object_store::Error::NotFound { .. }) => break,
            Err(e) if e.to_string().contains("NoSuchBucket") => break,
            Err(e) => return Err(classify(&settings.url, "list objects", &e)),
        };
        let key = meta.location.to_string();
        let rel = key
            .strip_prefix(settings.prefix.as_str())
            .unwrap_or(&key)
            .trim_start_matches('/');
        if rel.contains('/') {
            continue; // not ours: only names directly under the prefix
        }
        if let Some(archive) = rel.strip_suffix(SIDECAR_SUFFIX) {
            if crate::encryption::is_archive_name(archive) {
                sidecars.push(archive.to_string());
            }
        } else if crate::encryption::is_archive_name(rel) {
            out.objects.insert(rel.to_string(), meta.size);
        }
    }
    for name in sidecars {
        match get_sidecar(state, &name).await {
            Ok(Some(s)) if s.archive == name => out.copies.push(s),
            Ok(Some(s)) => out.invalid.push((
                settings.sidecar_path(&name),
                format!("it names another archive ({})", s.archive),
            )),
            Ok(None) => {}
            Err(e @ Error::Corrupt { .. }) => out
                .invalid
                .push((settings.sidecar_path(&name), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    out.copies.sort_by(|a, b| a.created_at.cmp(&b.created_at));
    Ok(out)
}

async fn get_sidecar(state: &RemoteState, archive: &str) -> Result<Option<Sidecar>> {
    let (client, settings) = state.client()?;
    let key = settings.sidecar_path(archive);
    let got = match client.get(&ObjPath::from(key.as_str())).await {
        Ok(g) => g.bytes().await,
        Err(e) => Err(e),
    };
    match got {
        Ok(bytes) => Sidecar::parse(&bytes, &format!("s3://{}/{key}", settings.bucket)).map(Some),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(classify(&settings.url, "read sidecar", &e)),
    }
}

/// Streams an object, hashing it, into `dest` (when given); returns size and SHA-256.
async fn read_object(
    state: &RemoteState,
    path: &str,
    dest: Option<&std::path::Path>,
    progress: &Progress,
    cancel: &CancelFlag,
) -> Result<(u64, String)> {
    let (client, settings) = state.client()?;
    let got = client
        .get(&ObjPath::from(path))
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => Error::Remote(format!(
                "remote {}: object {path} does not exist",
                settings.url
            )),
            e => classify(&settings.url, "download", &e),
        })?;
    let total = got.meta.size;
    progress.phase(crate::progress::Phase::Downloading, Some(total), None);
    let mut file = match dest {
        Some(d) => Some(
            tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d)
                .await
                .ctx("cannot create", d)?,
        ),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut done = 0u64;
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        let chunk = chunk.map_err(|e| classify(&settings.url, "download", &e))?;
        hasher.update(&chunk);
        if let (Some(f), Some(d)) = (file.as_mut(), dest) {
            f.write_all(&chunk).await.ctx("cannot write", d)?;
        }
        done += chunk.len() as u64;
        progress.advance(done, 0, None);
    }
    if let (Some(f), Some(d)) = (file.as_mut(), dest) {
        f.flush().await.ctx("cannot write", d)?;
        f.sync_all().await.ctx("cannot sync", d)?;
    }
    Ok((done, hex::encode(hasher.finalize())))
}

/// ListMultipartUploads under the prefix, every page. `object_store` has no call for it, so
/// the request is built here, signed by `object_store`'s `AwsAuthorizer` (SigV4; nothing is
/// signed by hand) and sent through its HTTP client with the same options (timeouts, http).
async fn list_uploads(state: &RemoteState) -> Result<Vec<PendingUpload>> {
    let (_, settings) = state.client()?;
    let Some((http, creds)) = &state.http else {
        return Err(Error::Internal(
            "remote client without its HTTP client".into(),
        ));
    };
    let fail = |what: String| {
        Error::Remote(format!(
            "remote {}: list multipart uploads: {what}",
            settings.url
        ))
    };
    let base = match &settings.endpoint {
        Some(e) => format!("{}/{}", e.trim_end_matches('/'), settings.bucket),
        None => format!(
            "https://{}.s3.{}.amazonaws.com",
            settings.bucket, settings.region
        ),
    };
    let prefix = if settings.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", settings.prefix)
    };
    let credential = AwsCredential {
        key_id: creds.access_key_id.clone(),
        secret_key: creds.secret_access_key.clone(),
        token: creds.session_token.clone(),
    };
    let mut out = Vec::new();
    let mut markers: Option<(String, String)> = None;
    loop {
        let mut url = format!("{base}/?uploads=&prefix={}", encode_query(&prefix));
        if let Some((key, id)) = &markers {
            url.push_str(&format!(
                "&key-marker={}&upload-id-marker={}",
                encode_query(key),
                encode_query(id)
            ));
        }
        let mut req = HttpRequest::new(HttpRequestBody::empty());
        *req.uri_mut() = url
            .parse()
            .map_err(|e| fail(format!("bad request url {url}: {e}")))?;
        AwsAuthorizer::new(&credential, "s3", &settings.region).authorize(&mut req, None);
        let resp = http.execute(req).await.map_err(|e| {
            classify(
                &settings.url,
                "list multipart uploads",
                &object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(e),
                },
            )
        })?;
        let status = resp.status();
        let body = resp
            .into_body()
            .bytes()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if status == 404 && String::from_utf8_lossy(&body).contains("NoSuchBucket") {
            return Ok(out);
        }
        if status == 401 || status == 403 {
            return Err(Error::Refused(format!(
                "remote {}: list multipart uploads: access denied ({status})",
                settings.url
            )));
        }
        if !status.is_success() {
            return Err(fail(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )));
        }
        let page: ListUploadsResult = quick_xml::de::from_reader(body.as_ref())
            .map_err(|e| fail(format!("unreadable answer: {e}")))?;
        for u in page.uploads {
            let Ok(initiated) = chrono::DateTime::parse_from_rfc3339(&u.initiated) else {
                continue; // an upload we cannot date is never aborted as stale
            };
            out.push(PendingUpload {
                path: u.key,
                upload_id: u.upload_id,
                initiated: initiated.with_timezone(&chrono::Utc),
            });
        }
        match (
            page.is_truncated,
            page.next_key_marker,
            page.next_upload_id_marker,
        ) {
            (true, Some(k), Some(i)) if markers.as_ref() != Some(&(k.clone(), i.clone())) => {
                markers = Some((k, i));
            }
            _ => return Ok(out),
        }
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept), as SigV4 expects.
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUploadsResult {
    #[serde(default, rename = "Upload")]
    uploads: Vec<UploadXml>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
    initiated: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_list_multipart_uploads_answer() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>site-a/x.tar.gz</NextKeyMarker><NextUploadIdMarker>u2</NextUploadIdMarker>
  <Prefix>site-a/</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated>
  <Upload><Key>site-a/x.tar.gz</Key><UploadId>u1</UploadId>
    <Initiated>2026-11-01T10:00:00.000Z</Initiated><StorageClass>STANDARD</StorageClass></Upload>
  <Upload><Key>site-a/y.tar.gz</Key><UploadId>u2</UploadId>
    <Initiated>2026-11-02T10:00:00Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let page: ListUploadsResult = quick_xml::de::from_reader(xml.as_bytes()).unwrap();
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[1].upload_id, "u2");
        assert!(page.is_truncated);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("u2"));
        let empty = r#"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#;
        let page: ListUploadsResult = quick_xml::de::from_reader(empty.as_bytes()).unwrap();
        assert!(page.uploads.is_empty() && !page.is_truncated);
        assert_eq!(encode_query("site-a/b c"), "site-a%2Fb%20c");
    }
}
