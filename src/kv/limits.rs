//! Size limits checked before a command is proposed.

use super::{BatchOp, Op};
use crate::error::{Error, Result};

/// Default maximum key length: 4 KiB keeps keys cheap to hash, route and
/// index while fitting any realistic composite key.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Default maximum value length: 1 MiB keeps a single entry well below the
/// transport's frame limit and a round's write batch small.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most operations in one batch: with the byte bound below, this keeps a
/// batch's encoded size (each operation adds a fixed record to its key
/// and value) within the transport's request frame.
pub const MAX_BATCH_OPS: usize = 1024;

/// Limits on what a client may write.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest key accepted, in bytes.
    pub max_key: usize,
    /// Longest value accepted, in bytes.
    pub max_value: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: MAX_KEY_BYTES,
            max_value: MAX_VALUE_BYTES,
        }
    }
}

impl Limits {
    /// Rejects an empty or oversize key.
    pub fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::Invalid("empty key".into()));
        }
        if key.len() > self.max_key {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: self.max_key,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: self.max_value,
            });
        }
        Ok(())
    }

    /// Rejects an operation whose key or values exceed the limits.
    pub fn check(&self, op: &Op) -> Result<()> {
        if let Op::Batch { ops } = op {
            if ops.is_empty() {
                return Err(Error::Invalid("an empty batch".into()));
            }
            if ops.len() > MAX_BATCH_OPS {
                return Err(Error::Invalid(format!(
                    "a batch of {} operations; at most {MAX_BATCH_OPS}",
                    ops.len()
                )));
            }
            let mut total = 0usize;
            for o in ops {
                self.check_key(o.key())?;
                total += o.key().len();
                if let BatchOp::Put { value, .. } = o {
                    self.check_value(value)?;
                    total += value.len();
                }
            }
            // One batch is one log entry: hold it to the size of one value
            // plus its keys, so an entry never outgrows what Raft ships well.
            let max = self.max_value + self.max_key * ops.len().min(64);
            if total > max {
                return Err(Error::ValueTooLarge { len: total, max });
            }
            return Ok(());
        }
        self.check_key(op.key())?;
        match op {
            Op::Put { value, .. } => self.check_value(value),
            Op::Delete { .. } => Ok(()),
            Op::Cas { expected, new, .. } => {
                if let Some(v) = expected {
                    self.check_value(v)?;
                }
                if let Some(v) = new {
                    self.check_value(v)?;
                }
                Ok(())
            }
            Op::Batch { .. } => Ok(()),
        }
    }
}
