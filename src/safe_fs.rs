//! Opening files a submission (or a user on a submission's behalf) names. Only regular files are
//! opened: a FIFO would block the grader for ever, a device could be read without end. The path's
//! metadata is checked before opening, the file is opened non-blocking (opening a FIFO with no writer
//! would otherwise hang in `open` itself), and the opened descriptor is checked again, so a path
//! swapped between the two checks is caught too. Every read of a user-given path goes through here.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Opens `path` for reading when it is a regular file (symlinks to one are followed: the path was
/// given on the command line or already checked by the caller). `what` names it in errors ("model",
/// "image", ...).
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {what} {}: check the path", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a file but {}; give a regular file", path.display(), kind(&meta.file_type()));
    }
    let file = open_nonblocking(path).with_context(|| format!("cannot open {what} {}", path.display()))?;
    let meta = file.metadata().with_context(|| format!("cannot read {what} {}", path.display()))?;
    if !meta.is_file() {
        bail!("{what} {} is not a file but {}; give a regular file", path.display(), kind(&meta.file_type()));
    }
    Ok(file)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    // Regular files ignore O_NONBLOCK; clear it anyway so later reads behave as usual.
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok(f)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

fn kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "a device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a folder"
    } else {
        "something else"
    }
}

/// Reads a whole regular file of at most `max_bytes` (refused from its size before reading, and
/// read with a cap in case it grows meanwhile).
pub fn read_regular(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path, what)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max_bytes {
        bail!("{what} {} is {len} bytes, over the limit of {max_bytes} bytes", path.display());
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes).with_context(|| format!("cannot read {what} {}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        bail!("{what} {} grew past the limit of {max_bytes} bytes while being read", path.display());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("a.bin");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(read_regular(&f, 5, "model").unwrap(), b"hello");
        let e = read_regular(&f, 4, "model").unwrap_err().to_string();
        assert!(e.contains("a.bin") && e.contains("limit of 4 bytes"), "{e}");
        let e = open_regular(tmp.path(), "model").unwrap_err().to_string();
        assert!(e.contains("is not a file but a folder"), "{e}");
        let fifo = tmp.path().join("pipe.onnx");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        let e = read_regular(&fifo, 100, "model").unwrap_err().to_string();
        assert!(e.contains("pipe.onnx") && e.contains("a FIFO"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
        assert!(open_regular(Path::new("/dev/zero"), "image").unwrap_err().to_string().contains("a device"));
    }
}
