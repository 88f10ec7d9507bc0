//! Key to vshard hashing.

use xxhash_rust::xxh3::xxh3_64;

use crate::types::VShard;

/// The vshard of `key`: `xxh3_64(key) % vshard_count`. Stable across
/// versions and platforms: it decides where data lives on disk.
pub fn vshard_of(key: &[u8], vshard_count: u32) -> VShard {
    assert!(vshard_count > 0, "vshard_count must be positive");
    VShard((xxh3_64(key) % u64::from(vshard_count)) as u32)
}
