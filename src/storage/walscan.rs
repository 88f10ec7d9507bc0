//! Reading the round log back when a node opens: each file's run of
//! records, and past the runs the proof that a record redb still needs was
//! synced yet cannot be read.
//!
//! `wal` explains the record layout and why a record's synced mark tells a
//! damaged record from a torn tail. This module only reads: it walks each
//! file from offset 0 while records continue one another (the run), then
//! looks at every later offset for an intact record whose mark reaches
//! what the caller still needs (the witnesses), and keeps the witness with
//! the highest mark. [`LogScan::damage`] then names the first record up to
//! that mark that no run holds.
//!
//! Left out: repairing anything. A damaged log is reported, never patched:
//! the records it lost were acknowledged, and only the node's peers still
//! have them.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use super::wal::{checksum, NamedLogFile, HEADER};

/// An intact record found in a file's bytes.
struct Found<'a> {
    seq: u64,
    synced: u64,
    body: &'a [u8],
    /// Offset of the first byte after it.
    end: usize,
}

fn word<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The record at `at` of `data`, when its sequence number and synced mark
/// pass `plausible` and it is whole and passes its checksum. The cheap
/// test comes first, so that scanning garbage rarely hashes anything.
fn record_at(data: &[u8], at: usize, plausible: impl Fn(u64, u64) -> bool) -> Option<Found<'_>> {
    let seq = u64::from_le_bytes(word(data, at + 4)?);
    let synced = u64::from_le_bytes(word(data, at + 12)?);
    if !plausible(seq, synced) {
        return None;
    }
    let n = u32::from_le_bytes(word(data, at)?) as usize;
    let sum = u64::from_le_bytes(word(data, at + 20)?);
    let end = at.checked_add(HEADER)?.checked_add(n)?;
    let body = data.get(at + HEADER..end)?;
    (checksum(seq, synced, body) == sum).then_some(Found {
        seq,
        synced,
        body,
        end,
    })
}

/// Where one file's run of records ended.
#[derive(Clone, Copy, Debug, Default)]
struct RunEnd {
    /// Offset of the first byte past the run.
    offset: u64,
    /// Records in the run.
    count: u64,
    /// The sequence number the next record of the run would carry; `None`
    /// when the run is empty.
    next: Option<u64>,
}

/// An intact record and the synced mark it carries.
#[derive(Clone, Copy, Debug)]
struct Witness {
    /// Which of the two files holds it.
    file: usize,
    /// Its offset in that file.
    offset: u64,
    /// Its sequence number.
    seq: u64,
    /// Every record up to this one was on disk when it was written.
    synced: u64,
}

/// What reading both files of the round log found.
pub(crate) struct LogScan {
    /// Every record of both files' runs, by sequence number. Records of a
    /// run were each written once, in order, so the two runs never
    /// disagree about a number.
    pub(crate) records: BTreeMap<u64, Vec<u8>>,
    /// The files' names, for errors.
    names: [String; 2],
    /// Where each file's run ended.
    ends: [RunEnd; 2],
    /// The intact record with the highest synced mark of those that
    /// reach the caller's floor.
    witness: Option<Witness>,
}

impl LogScan {
    /// Reads both files. Witnesses past the runs count only when their
    /// mark is at least `floor`: lower marks vouch for records the caller
    /// no longer needs.
    pub(crate) fn read(files: &[NamedLogFile; 2], floor: u64) -> io::Result<LogScan> {
        let mut scan = LogScan {
            records: BTreeMap::new(),
            names: [files[0].0.clone(), files[1].0.clone()],
            ends: [RunEnd::default(); 2],
            witness: None,
        };
        for (i, (_, file)) in files.iter().enumerate() {
            let len = usize::try_from(file.size()?)
                .map_err(|_| io::Error::other("round log larger than memory"))?;
            let mut data = vec![0; len];
            file.read(0, &mut data)?;
            scan.ends[i] = scan.read_file(i, &data, floor);
        }
        Ok(scan)
    }

    /// Adds one file's run to `records`, notes the witnesses of the whole
    /// file, and returns where the run ended.
    fn read_file(&mut self, file: usize, data: &[u8], floor: u64) -> RunEnd {
        let mut end = RunEnd::default();
        let mut at = 0;
        while let Some(r) = record_at(data, at, |seq, _| end.next.is_none_or(|n| seq == n)) {
            self.note(file, at, &r);
            self.records.insert(r.seq, r.body.to_vec());
            end.next = Some(r.seq.saturating_add(1));
            end.count += 1;
            at = r.end;
        }
        end.offset = at as u64;
        // Within a file's use, a record's mark trails its sequence by at
        // most the records written since the file started, and no more of
        // them fit in the file than headers do.
        let reach = (data.len() / HEADER) as u64;
        let plausible =
            |seq: u64, synced: u64| synced >= floor && seq > synced && seq - synced <= reach;
        while at + HEADER <= data.len() {
            match record_at(data, at, plausible) {
                Some(r) => {
                    self.note(file, at, &r);
                    at = r.end;
                }
                None => at += 1,
            }
        }
        end
    }

    fn note(&mut self, file: usize, offset: usize, r: &Found<'_>) {
        if self.witness.is_none_or(|w| r.synced > w.synced) {
            self.witness = Some(Witness {
                file,
                offset: offset as u64,
                seq: r.seq,
                synced: r.synced,
            });
        }
    }

    /// The first record from `from` on that a witness proves was synced
    /// but that no run holds, with where it should have been.
    pub(crate) fn damage(&self, from: u64) -> Option<Damage> {
        let w = self.witness.filter(|w| w.synced >= from)?;
        let mut missing = from;
        for seq in self.records.range(from..=w.synced).map(|(s, _)| *s) {
            if seq != missing {
                break;
            }
            missing += 1;
        }
        if missing > w.synced {
            return None;
        }
        // The run that stopped where the record should have come next; or
        // an empty run in the witness's file, whose first record it was.
        let at = (0..2)
            .find(|f| self.ends[*f].next == Some(missing))
            .or_else(|| (self.ends[w.file].next.is_none()).then_some(w.file))
            .map(|f| (self.names[f].clone(), self.ends[f]));
        Some(Damage {
            seq: missing,
            at,
            witness: (self.names[w.file].clone(), w.offset, w.seq),
        })
    }
}

/// A record the round log must hold but does not.
#[derive(Debug)]
pub(crate) struct Damage {
    /// Its sequence number.
    seq: u64,
    /// The file where it should be and where that file's run broke off,
    /// when a run broke off just before it.
    at: Option<(String, RunEnd)>,
    /// The file, offset and sequence number of the record that proves it
    /// was synced.
    witness: (String, u64, u64),
}

impl Damage {
    /// Whether a file's run broke off just before the record, so that the
    /// damage has a place.
    pub(crate) fn located(&self) -> bool {
        self.at.is_some()
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.at {
            Some((name, end)) => write!(
                f,
                "{name}: record {} (number {} in the file) at offset {} is damaged",
                self.seq,
                end.count + 1,
                end.offset
            )?,
            None => write!(f, "record {} is in neither file", self.seq)?,
        }
        let (name, offset, seq) = &self.witness;
        write!(
            f,
            ", yet record {seq} at offset {offset} of {name} was written after it was synced"
        )
    }
}
