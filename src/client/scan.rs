//! Range scans, one page at a time.
//!
//! Keys are spread over groups by the hash of their vshard, so a range of
//! keys lives in every data group at once. A node answers a scan of its
//! group one page at a time (a row limit and a byte budget, see
//! `storage::scan`), with the key the next page starts from. A
//! [`Scanner`] asks every group for its first page together, then merges
//! the pages into one sequence in key order: a row is handed out only once
//! every group has answered past its key, and a group is asked for its
//! next page once all the rows it gave were handed out. Each page is read
//! linearizably on its own; the scan as a whole is not one snapshot, so a
//! row written meanwhile shows up if it lands after the pages already read.
//!
//! What the client holds is at most one page per group (the node's budget,
//! 4 MiB by default, times the groups).

use std::collections::VecDeque;

use tokio::task::JoinSet;

use super::{unexpected, Client, KeyRange};
use crate::api::{RpcRequest, RpcResponse};
use crate::error::{Error, Result};
use crate::storage::ScanPage;
use crate::types::{GroupId, CATALOG_GROUP};

/// One key and its value.
pub type Row = (Vec<u8>, Vec<u8>);

/// A scan in progress: call [`Scanner::next_page`] until it returns none.
pub struct Scanner {
    client: Client,
    /// End of the range (exclusive); none: no end.
    end: Option<Vec<u8>>,
    /// Rows still to hand out before the caller's limit.
    left: usize,
    /// Where each group stands.
    groups: Vec<Cursor>,
}

/// One group's part of a scan.
struct Cursor {
    group: GroupId,
    /// Rows received and not handed out yet, in key order.
    rows: VecDeque<Row>,
    /// Where its next page starts; none: the group has no more rows.
    next: Option<Vec<u8>>,
}

impl Client {
    /// A scan of up to `limit` keys of `range` with their values, in key
    /// order, gathered from every group page by page.
    ///
    /// ```no_run
    /// # async fn example(client: flotilla::client::Client) -> flotilla::Result<()> {
    /// use flotilla::client::KeyRange;
    /// let mut scan = client.scan_pages(KeyRange::Prefix(b"user/".to_vec()), 10_000).await?;
    /// while let Some(rows) = scan.next_page().await? {
    ///     for (key, value) in rows {
    ///         println!("{} = {} bytes", String::from_utf8_lossy(&key), value.len());
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn scan_pages(&self, range: KeyRange, limit: usize) -> Result<Scanner> {
        let (start, end) = range.bounds();
        let catalog = self.catalog().await?;
        let groups = catalog
            .groups
            .keys()
            .filter(|g| **g != CATALOG_GROUP)
            .map(|g| Cursor {
                group: *g,
                rows: VecDeque::new(),
                next: Some(start.clone()),
            })
            .collect();
        Ok(Scanner {
            client: self.clone(),
            end,
            left: limit,
            groups,
        })
    }

    /// Up to `limit` keys of `range` with their values, in key order,
    /// gathered from every group: [`Client::scan_pages`], collected.
    ///
    /// ```no_run
    /// # async fn example(client: flotilla::client::Client) -> flotilla::Result<()> {
    /// use flotilla::client::KeyRange;
    /// for (key, value) in client.scan(KeyRange::Prefix(b"user/".to_vec()), 100).await? {
    ///     println!("{} = {} bytes", String::from_utf8_lossy(&key), value.len());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn scan(&self, range: KeyRange, limit: usize) -> Result<Vec<Row>> {
        let mut scan = self.scan_pages(range, limit).await?;
        let mut rows = Vec::new();
        while let Some(page) = scan.next_page().await? {
            rows.extend(page);
        }
        Ok(rows)
    }

    /// One page of `group`'s rows from `start` to `end` (exclusive), at
    /// most `limit` of them and the node's byte budget, read linearizably
    /// through the group's leader.
    pub async fn scan_page(
        &self,
        group: GroupId,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ScanPage> {
        let req = RpcRequest::Scan {
            group,
            start,
            end,
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        };
        match self.call_group(group, &req).await? {
            RpcResponse::ScanPage { rows, resume } => Ok(ScanPage { rows, resume }),
            other => Err(unexpected(&other)),
        }
    }
}

impl Scanner {
    /// The next rows in key order, as soon as every group has answered
    /// past them; none once the range or the limit is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Row>>> {
        while self.left > 0 {
            self.fetch().await?;
            let rows = self.take_ready();
            if !rows.is_empty() {
                self.left -= rows.len();
                return Ok(Some(rows));
            }
            if self.groups.iter().all(|c| c.next.is_none()) {
                break;
            }
        }
        Ok(None)
    }

    /// Asks every group that has no row left to hand out, and more to
    /// give, for its next page, all at once.
    async fn fetch(&mut self) -> Result<()> {
        let mut calls = JoinSet::new();
        for (i, c) in self.groups.iter().enumerate() {
            if let (true, Some(from)) = (c.rows.is_empty(), &c.next) {
                let (client, group, from) = (self.client.clone(), c.group, from.clone());
                let (end, limit) = (self.end.clone(), self.left);
                calls.spawn(async move { (i, client.scan_page(group, from, end, limit).await) });
            }
        }
        while let Some(done) = calls.join_next().await {
            let (i, page) = done.map_err(|e| Error::Invalid(format!("scan task failed: {e}")))?;
            let page = page?;
            let c = &mut self.groups[i];
            c.rows.extend(page.rows);
            c.next = page.resume;
        }
        Ok(())
    }

    /// The rows every group has answered past, merged in key order, up to
    /// what is left of the limit.
    fn take_ready(&mut self) -> Vec<Row> {
        // Below this key every group has given all its rows.
        let bound = self.groups.iter().filter_map(|c| c.next.clone()).min();
        let mut rows = Vec::new();
        while rows.len() < self.left {
            let first = self
                .groups
                .iter_mut()
                .filter(|c| !c.rows.is_empty())
                .min_by(|a, b| a.rows[0].0.cmp(&b.rows[0].0));
            let Some(c) = first else { break };
            if bound.as_ref().is_some_and(|b| c.rows[0].0 >= *b) {
                break;
            }
            rows.extend(c.rows.pop_front());
        }
        rows
    }
}
