//! CSI endpoints: `unix:///abs/path.sock`. Binding (owner-only, stale-socket handling) and dialing.

use std::{
    io,
    os::unix::fs::FileTypeExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// The socket path of a `unix://` endpoint (a bare absolute path is accepted too).
pub fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    let path = Path::new(path);
    if !path.is_absolute() {
        bail!("endpoint {endpoint:?} must be unix:///absolute/path.sock");
    }
    Ok(path.to_owned())
}

/// Whether the socket path can be served on, changing nothing: `Ok(true)` when a stale socket is there to
/// replace, `Ok(false)` when the path is free. A live socket or any other file there is an error.
pub fn check(path: &Path) -> anyhow::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("{} is in use by a running server; stop it first", path.display());
            }
            Ok(true)
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
}

/// Binds the socket readable and writable by its owner only. A leftover socket is replaced only when it really
/// is a socket and nothing answers on it; any other file there is an error, never deleted.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if check(path)? {
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    // The mode is fixed by the umask at bind time, so the socket is never briefly open to others.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    bound.with_context(|| format!("binding {}", path.display()))
}

/// A gRPC channel over the unix socket of `endpoint`.
pub async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    let path = socket_path(endpoint)?;
    // The URI is required by tonic but unused: the connector below always dials the socket.
    let channel = Endpoint::try_from("http://[::]:0")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/loam/csi.sock").unwrap(),
            PathBuf::from("/run/loam/csi.sock")
        );
        assert_eq!(socket_path("/tmp/x.sock").unwrap(), PathBuf::from("/tmp/x.sock"));
        assert!(socket_path("unix://relative.sock").is_err());
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
    }

    #[tokio::test]
    async fn bind_is_owner_only_and_never_replaces_other_files() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("csi.sock");
        let l = bind(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live socket: refused.
        assert!(bind(&sock).is_err());
        drop(l);
        // Stale socket: replaced.
        bind(&sock).unwrap();
        let file = d.path().join("file.sock");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(bind(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
