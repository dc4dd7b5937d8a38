//! The S3-compatible snapshot store, through `object_store`. Its calls are async: the
//! store owns a small current-thread runtime, and each blocking call runs one future to
//! completion on the calling thread (the uploader's own thread in a node, the main
//! thread in the offline commands), so the rest of the node stays on plain threads.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};

use super::{Listed, PART_BYTES, SnapshotStore, StoreConfig, StoreError};

/// A bucket (and a prefix in it) of an S3-compatible store.
pub struct S3Store {
    store: AmazonS3,
    /// The objects' common prefix, without a trailing slash ("" for the bucket's root).
    prefix: String,
    url: String,
    runtime: Mutex<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("url", &self.url).finish()
    }
}

fn failed(what: &str, e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound(what.to_string()),
        e => StoreError::Failed(format!("{what}: {e}")),
    }
}

impl S3Store {
    /// Opens `s3://bucket/prefix`, configured from `config` and the environment
    /// (`AWS_*` variables; flags in `config` win).
    ///
    /// # Errors
    /// The configuration is invalid, or the runtime cannot start.
    pub fn open(bucket: &str, prefix: &str, config: &StoreConfig) -> Result<S3Store, String> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(config.virtual_hosted)
            // Our own uploader retries with backoff; a request that fails should say so
            // soon, so that the node's status shows it.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(60)),
            );
        let endpoint = config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(endpoint) = &endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let region = config
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        builder = builder.with_region(region);
        if let Some(c) = &config.credentials {
            builder = builder
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(&c.secret_access_key);
        }
        let store = builder.build().map_err(|e| format!("s3://{bucket}: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the store's runtime: {e}"))?;
        let prefix = prefix.trim_matches('/').to_string();
        let mut url = format!("s3://{bucket}/{prefix}");
        if let Some(endpoint) = endpoint {
            url.push_str(&format!(" at {endpoint}"));
        }
        Ok(S3Store {
            store,
            prefix,
            url,
            runtime: Mutex::new(runtime),
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .block_on(f)
    }
}

/// Reads up to `PART_BYTES` from `data` (fewer only at its end).
fn read_part(data: &mut dyn Read, left: u64) -> std::io::Result<Vec<u8>> {
    let want = left.min(PART_BYTES as u64);
    let mut buf = Vec::with_capacity(want as usize);
    data.take(want).read_to_end(&mut buf)?;
    if (buf.len() as u64) < want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} bytes short", want - buf.len() as u64),
        ));
    }
    Ok(buf)
}

impl SnapshotStore for S3Store {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn put(&self, name: &str, data: &mut dyn Read, size: u64) -> Result<(), StoreError> {
        let path = self.path(name);
        let short = |e: std::io::Error| StoreError::Failed(format!("reading {name}: {e}"));
        if size <= PART_BYTES as u64 {
            let bytes = read_part(data, size).map_err(short)?;
            return self.block_on(async {
                self.store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|e| failed(name, e))
            });
        }
        // In parts: one in memory at a time.
        self.block_on(async {
            let mut upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(|e| failed(name, e))?;
            let mut left = size;
            while left > 0 {
                let part = match read_part(data, left) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = upload.abort().await;
                        return Err(short(e));
                    }
                };
                left -= part.len() as u64;
                if let Err(e) = upload.put_part(PutPayload::from(part)).await {
                    let _ = upload.abort().await;
                    return Err(failed(name, e));
                }
            }
            upload
                .complete()
                .await
                .map(|_| ())
                .map_err(|e| failed(name, e))
        })
    }

    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<bool, StoreError> {
        let path = self.path(name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        self.block_on(async {
            match self
                .store
                .put_opts(&path, PutPayload::from(data), opts)
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(failed(name, e)),
            }
        })
    }

    fn get(&self, name: &str, into: &mut dyn Write) -> Result<u64, StoreError> {
        let path = self.path(name);
        self.block_on(async {
            let got = self.store.get(&path).await.map_err(|e| failed(name, e))?;
            let mut stream = got.into_stream();
            let mut total = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| failed(name, e))?;
                into.write_all(&chunk)
                    .map_err(|e| StoreError::Failed(format!("writing {name}: {e}")))?;
                total += chunk.len() as u64;
            }
            Ok(total)
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let root = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut found = self.block_on(async {
            let mut stream = self.store.list(root.as_ref());
            let mut found = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| failed("listing", e))?;
                let full = meta.location.as_ref();
                if let Some(name) = full.strip_prefix(&strip)
                    && name.starts_with(prefix)
                {
                    found.push(Listed {
                        name: name.to_string(),
                        size: meta.size,
                    });
                }
            }
            Ok::<_, StoreError>(found)
        })?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    fn delete(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        self.block_on(async {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(failed(name, e)),
            }
        })
    }
}
