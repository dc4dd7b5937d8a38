//! The store checked before a node relies on it: a store that cannot work is said at
//! start, in words, instead of showing up later as failed uploads.

use super::{SnapshotStore, StoreConfig, StoreError};

/// Checks, before a node relies on the store, that it works: S3 credentials are given
/// (or the instance's are asked for), and a small object written under `node`'s name
/// reads back and is deleted. The error says the cause in words: no credentials, a
/// bucket that does not exist, an endpoint that cannot be reached, credentials the
/// store refused.
///
/// # Errors
/// The cause, with the store's own message after it.
pub fn check(config: &StoreConfig, store: &dyn SnapshotStore, node: &str) -> Result<(), String> {
    let url = store.url();
    if let Some(rest) = config.url.trim().strip_prefix("s3://") {
        let env = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
        let given = config.credentials.is_some()
            || (env("AWS_ACCESS_KEY_ID") && env("AWS_SECRET_ACCESS_KEY"))
            || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            || env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            || env("AWS_WEB_IDENTITY_TOKEN_FILE");
        if !given && !config.instance_credentials {
            return Err(format!(
                "no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (and AWS_SESSION_TOKEN for temporary ones), or give \
                 --store-instance-credentials to use this cloud instance's role"
            ));
        }
        let bucket = rest.split('/').next().unwrap_or(rest);
        return probe(store, node).map_err(|e| {
            let why = e.to_string();
            let has = |words: &[&str]| words.iter().any(|w| why.contains(w));
            let endpoint = config
                .endpoint
                .clone()
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                .unwrap_or_else(|| "the S3 endpoint".into());
            let cause = if has(&["NoSuchBucket", "bucket does not exist"]) {
                format!("bucket {bucket} does not exist")
            } else if has(&[
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "AccessDenied",
                "Forbidden",
                "403",
            ]) {
                "the store refused the credentials".to_string()
            } else if has(&[
                "error sending request",
                "onnection refused",
                "dns error",
                "timed out",
                "onnect",
            ]) {
                format!("cannot reach {endpoint}")
            } else {
                "the store does not work".to_string()
            };
            format!("{cause} ({url}): {why}")
        });
    }
    probe(store, node).map_err(|e| format!("the store does not work ({url}): {e}"))
}

/// Lists `node`'s objects (a bucket that does not exist says so here: some stores
/// create a bucket on a first write), then writes, reads back and deletes a small object
/// under `node`'s name.
fn probe(store: &dyn SnapshotStore, node: &str) -> Result<(), StoreError> {
    store.list(&format!("{node}/"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{node}/check/{}-{nanos}", std::process::id());
    let body = b"flintlog store check".to_vec();
    store.put_new(&name, body.clone())?;
    let mut back = Vec::new();
    store.get(&name, &mut back)?;
    store.delete(&name)?;
    if back != body {
        return Err(StoreError::Failed(format!(
            "{name} read back {} bytes, not the {} written",
            back.len(),
            body.len()
        )));
    }
    Ok(())
}
