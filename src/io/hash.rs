//! Content hashes for fingerprints: XXH3-128 (the `xxhash-rust` crate burn already builds).
//! Fast enough to hash data files and priors on every start; it detects mistakes (a changed
//! data file, a curvature from another fit), not tampering.

use std::io::Read;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3Default;

use crate::error::{Error, Result};

/// A running hash; [`Self::finish`] gives the `xxh3:<32 hex digits>` text stored in files.
#[derive(Default, Clone)]
pub struct ContentHasher(Xxh3Default);

impl ContentHasher {
    /// An empty hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update(bytes);
        self
    }

    /// Adds a string, length-prefixed so that ("ab", "c") and ("a", "bc") differ.
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.u64(text.len() as u64).bytes(text.as_bytes())
    }

    /// Adds an integer (little-endian).
    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes(&value.to_le_bytes())
    }

    /// Adds f32 values by their bit patterns (length-prefixed).
    pub fn f32s(&mut self, values: &[f32]) -> &mut Self {
        self.u64(values.len() as u64);
        for v in values {
            self.0.update(&v.to_bits().to_le_bytes());
        }
        self
    }

    /// Adds u32 values (token ids), length-prefixed.
    pub fn u32s(&mut self, values: &[u32]) -> &mut Self {
        self.u64(values.len() as u64);
        for v in values {
            self.0.update(&v.to_le_bytes());
        }
        self
    }

    /// The hash as `xxh3:` and 32 hex digits.
    pub fn finish(&self) -> String {
        format!("xxh3:{:032x}", self.0.digest128())
    }
}

/// The hash of `bytes`.
pub fn hash_bytes(bytes: &[u8]) -> String {
    ContentHasher::new().bytes(bytes).finish()
}

/// The hash of a file's content, read in 1 MiB pieces.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = ContentHasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.bytes(&buffer[..n]);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_equal_hash_and_any_change_shows() {
        let dir = std::env::temp_dir().join(format!("lalora-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.bin");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        // Read in pieces, the file hashes as the bytes do.
        assert_eq!(hash_file(&path).unwrap(), hash_bytes(&content));
        let mut changed = content.clone();
        changed[2_500_000] ^= 1;
        assert_ne!(hash_bytes(&changed), hash_bytes(&content));
        assert!(hash_bytes(b"").starts_with("xxh3:") && hash_bytes(b"").len() == 5 + 32);
        assert_ne!(ContentHasher::new().text("ab").text("c").finish(), ContentHasher::new().text("a").text("bc").finish());
        assert!(hash_file(&dir.join("missing")).unwrap_err().to_string().contains("missing"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
