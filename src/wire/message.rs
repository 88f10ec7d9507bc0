//! Raft messages on the wire: rkyv mirrors of raft-rs's protobuf types.
//!
//! raft-rs speaks protobuf structs; Flotilla never decodes protobuf from a
//! socket. Outbound messages are converted into these plain types and
//! encoded with rkyv; inbound bytes are validated by bytecheck and converted
//! back, with unknown enum values rejected as corrupt.

use protobuf::ProtobufEnum;
use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};

use crate::error::{Error, Result};

/// A raft-rs `Entry`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireEntry {
    /// `EntryType` as its protobuf number.
    pub entry_type: i32,
    /// Term.
    pub term: u64,
    /// Index.
    pub index: u64,
    /// Payload.
    pub data: Vec<u8>,
    /// Proposal context.
    pub context: Vec<u8>,
}

/// A raft-rs `Snapshot` (metadata and data).
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireSnapshot {
    /// Index of the last entry the snapshot covers.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// ConfState.voters
    pub voters: Vec<u64>,
    /// ConfState.learners
    pub learners: Vec<u64>,
    /// ConfState.voters_outgoing
    pub voters_outgoing: Vec<u64>,
    /// ConfState.learners_next
    pub learners_next: Vec<u64>,
    /// ConfState.auto_leave
    pub auto_leave: bool,
    /// The state machine's bytes.
    pub data: Vec<u8>,
}

/// A raft-rs `Message`.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct WireMessage {
    /// `MessageType` as its protobuf number.
    pub msg_type: i32,
    /// Destination replica.
    pub to: u64,
    /// Source replica.
    pub from: u64,
    /// Term.
    pub term: u64,
    /// Log term.
    pub log_term: u64,
    /// Index.
    pub index: u64,
    /// Entries.
    pub entries: Vec<WireEntry>,
    /// Commit index.
    pub commit: u64,
    /// Commit term.
    pub commit_term: u64,
    /// Snapshot, for `MsgSnapshot`.
    pub snapshot: Option<WireSnapshot>,
    /// Requested snapshot index.
    pub request_snapshot: u64,
    /// Rejection.
    pub reject: bool,
    /// Rejection hint.
    pub reject_hint: u64,
    /// Context (ReadIndex and others).
    pub context: Vec<u8>,
    /// Election priority.
    pub priority: i64,
}

impl From<&Entry> for WireEntry {
    fn from(e: &Entry) -> Self {
        WireEntry {
            entry_type: e.get_entry_type().value(),
            term: e.term,
            index: e.index,
            data: e.data.to_vec(),
            context: e.context.to_vec(),
        }
    }
}

impl WireEntry {
    fn into_raft(self) -> Result<Entry> {
        let entry_type = EntryType::from_i32(self.entry_type)
            .ok_or_else(|| corrupt("entry type", self.entry_type))?;
        Ok(Entry {
            entry_type,
            term: self.term,
            index: self.index,
            data: self.data.into(),
            context: self.context.into(),
            ..Default::default()
        })
    }
}

fn corrupt(what: &'static str, value: i32) -> Error {
    Error::Corrupt {
        what,
        detail: format!("unknown value {value}"),
    }
}

impl From<&Message> for WireMessage {
    fn from(m: &Message) -> Self {
        let snapshot = m.snapshot.as_ref().map(|s| {
            let meta = s.get_metadata();
            let cs = meta.get_conf_state();
            WireSnapshot {
                index: meta.index,
                term: meta.term,
                voters: cs.voters.clone(),
                learners: cs.learners.clone(),
                voters_outgoing: cs.voters_outgoing.clone(),
                learners_next: cs.learners_next.clone(),
                auto_leave: cs.auto_leave,
                data: s.data.to_vec(),
            }
        });
        WireMessage {
            msg_type: m.get_msg_type().value(),
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries: m.entries.iter().map(WireEntry::from).collect(),
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot,
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context: m.context.to_vec(),
            priority: m.priority,
        }
    }
}

impl WireMessage {
    /// Converts back into raft-rs's type, rejecting unknown enum values.
    pub fn into_raft(self) -> Result<Message> {
        let msg_type = MessageType::from_i32(self.msg_type)
            .ok_or_else(|| corrupt("message type", self.msg_type))?;
        let entries = self
            .entries
            .into_iter()
            .map(WireEntry::into_raft)
            .collect::<Result<Vec<_>>>()?;
        let mut m = Message {
            msg_type,
            to: self.to,
            from: self.from,
            term: self.term,
            log_term: self.log_term,
            index: self.index,
            entries: entries.into(),
            commit: self.commit,
            commit_term: self.commit_term,
            request_snapshot: self.request_snapshot,
            reject: self.reject,
            reject_hint: self.reject_hint,
            context: self.context.into(),
            priority: self.priority,
            ..Default::default()
        };
        if let Some(s) = self.snapshot {
            let mut snap = Snapshot {
                data: s.data.into(),
                ..Default::default()
            };
            let meta = snap.mut_metadata();
            meta.index = s.index;
            meta.term = s.term;
            meta.set_conf_state(ConfState {
                voters: s.voters,
                learners: s.learners,
                voters_outgoing: s.voters_outgoing,
                learners_next: s.learners_next,
                auto_leave: s.auto_leave,
                ..Default::default()
            });
            m.set_snapshot(snap);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    #[test]
    fn an_append_with_entries_and_a_snapshot_survives_the_trip() {
        let mut m = Message {
            msg_type: MessageType::MsgAppend,
            to: 2,
            from: 1,
            term: 7,
            index: 40,
            commit: 39,
            ..Default::default()
        };
        m.entries = vec![
            Entry {
                entry_type: EntryType::EntryNormal,
                term: 7,
                index: 41,
                data: vec![1, 2, 3].into(),
                ..Default::default()
            },
            Entry {
                entry_type: EntryType::EntryConfChangeV2,
                term: 7,
                index: 42,
                context: vec![9].into(),
                ..Default::default()
            },
        ]
        .into();
        let bytes = encode(&WireMessage::from(&m));
        let back = decode::<WireMessage>("raft message", &bytes)
            .unwrap()
            .into_raft()
            .unwrap();
        assert_eq!(back, m);

        let mut s = Message {
            msg_type: MessageType::MsgSnapshot,
            to: 3,
            from: 1,
            term: 2,
            ..Default::default()
        };
        let mut snap = Snapshot {
            data: vec![5; 100].into(),
            ..Default::default()
        };
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 2;
        snap.mut_metadata().set_conf_state(ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        });
        s.set_snapshot(snap);
        let back = decode::<WireMessage>("raft message", &encode(&WireMessage::from(&s)))
            .unwrap()
            .into_raft()
            .unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn an_unknown_message_type_is_corrupt() {
        let mut w = WireMessage::from(&Message::default());
        w.msg_type = 99;
        assert!(matches!(
            w.into_raft(),
            Err(Error::Corrupt {
                what: "message type",
                ..
            })
        ));
    }
}
