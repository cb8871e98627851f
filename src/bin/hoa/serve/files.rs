//! `response_format: "url"`: images stored in a data folder under random names (128 bits from
//! the OS's CSPRNG, so unguessable), served at `GET /v1/files/images/{name}` for `--url-ttl-s`
//! seconds, then deleted by a sweeper task. A name is checked against the exact form hoa
//! writes (32 lowercase hex digits + `.png` or `.jpg`) before it touches the file system, so
//! no path (`..`, `/`, `%2e%2e`, absolute) can reach it.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const HEX: usize = 32;

pub struct Store {
    dir: PathBuf,
    ttl: Duration,
    /// A folder hoa made itself (no --data-dir): removed when the server exits.
    owned: bool,
}

/// The extensions hoa writes, with their media types.
const KINDS: [(&str, &str); 2] = [(".png", "image/png"), (".jpg", "image/jpeg")];

/// The media type of `name` if it is one hoa could have written: nothing else is looked up.
pub fn valid(name: &str) -> Option<&'static str> {
    let hex = name.get(..HEX)?;
    let kind = KINDS.iter().find(|(ext, _)| &name[HEX..] == *ext)?;
    hex.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        .then_some(kind.1)
}

/// 128 random bits in hex, then `ext`.
fn random_name(ext: &str) -> anyhow::Result<String> {
    let mut bytes = [0u8; HEX / 2];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the OS's random source: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex + ext)
}

impl Store {
    /// `dir`, created if missing, or a new private folder under the system's temp folder.
    pub fn open(dir: Option<&Path>, ttl: Duration) -> anyhow::Result<Store> {
        let (dir, owned) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("--data-dir {}", d.display()))?;
                (d.to_path_buf(), false)
            }
            None => {
                let d = std::env::temp_dir().join(format!("hoa-serve-{}", random_name("")?));
                let mut b = std::fs::DirBuilder::new();
                #[cfg(unix)]
                std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
                b.create(&d)
                    .with_context(|| format!("creating {}", d.display()))?;
                (d, true)
            }
        };
        Ok(Store { dir, ttl, owned })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes an image (`ext` `.png` or `.jpg`) under a new random name (never over an
    /// existing file); returns the name.
    pub fn save(&self, bytes: &[u8], ext: &str) -> anyhow::Result<String> {
        use std::io::Write as _;
        let name = random_name(ext)?;
        let path = self.dir.join(&name);
        let mut f = std::fs::File::create_new(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(name)
    }

    /// The bytes of image `name`, its media type and the seconds it has left, if it is
    /// valid, there and not expired.
    pub fn get(&self, name: &str) -> Option<(Vec<u8>, &'static str, u64)> {
        let kind = valid(name)?;
        let path = self.dir.join(name);
        let left = self.ttl.checked_sub(age(&path)?)?;
        Some((std::fs::read(&path).ok()?, kind, left.as_secs()))
    }

    /// Deletes the images older than the time to live; returns how many.
    pub fn sweep(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let path = e.path();
            let old =
                name.to_str().and_then(valid).is_some() && age(&path).is_none_or(|a| a >= self.ttl);
            if old && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Sweeps every few seconds (a tenth of the time to live, 1 to 60 s), forever.
    pub async fn sweeper(self: std::sync::Arc<Self>) {
        let every = (self.ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::time::sleep(every).await;
            let s = self.clone();
            let _ = tokio::task::spawn_blocking(move || s.sweep()).await;
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How long ago the file was written (None when it is gone).
fn age(path: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_hoa_writes_are_valid() {
        let name = random_name(".png").unwrap();
        assert_eq!(valid(&name), Some("image/png"), "{name}");
        assert_ne!(name, random_name(".png").unwrap());
        let jpg = random_name(".jpg").unwrap();
        assert_eq!(valid(&jpg), Some("image/jpeg"), "{jpg}");
        for bad in [
            "",
            "..",
            "../x.png",
            "%2e%2e",
            "/etc/passwd",
            "0123456789abcdef0123456789abcdef.PNG",
            "0123456789ABCDEF0123456789abcdef.png",
            "0123456789abcdef0123456789abcde.png",
            "0123456789abcdef0123456789abcdef0.png",
            "0123456789abcdef/123456789abcdef.png",
            "0123456789abcdef0123456789abcde\u{e9}.png",
            "\u{e9}123456789abcdef0123456789abcde.png",
            "0123456789abcdef0123456789abcdef.jpeg",
            "0123456789abcdef0123456789abcdef.png/",
        ] {
            assert_eq!(valid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn images_are_served_until_their_time_is_up_then_swept() {
        let s = Store::open(None, Duration::from_secs(3600)).unwrap();
        let name = s.save(b"png", ".png").unwrap();
        let (bytes, kind, left) = s.get(&name).unwrap();
        assert_eq!((bytes.as_slice(), kind), (b"png".as_slice(), "image/png"));
        assert!(left > 3500, "{left}");
        assert_eq!(s.sweep(), 0);
        let dir = s.dir().to_path_buf();
        // The same folder with no time to live: expired at once, then swept.
        let expired = Store {
            dir: dir.clone(),
            ttl: Duration::ZERO,
            owned: false,
        };
        assert!(expired.get(&name).is_none());
        std::fs::write(dir.join("keep.txt"), b"not hoa's").unwrap();
        assert_eq!(expired.sweep(), 1);
        assert!(dir.join("keep.txt").exists(), "only hoa's names are swept");
        drop(s);
        assert!(!dir.exists(), "the temp folder goes with the server");
    }
}
