//! Giving back the pages of code that only a burst of work ran.
//!
//! Startup parses arguments, reads and validates the config, builds TLS root stores and
//! starts every actor: megabytes of the executable that a running sidecar does not run
//! again. A reload and a burst of hook processes do the same on a smaller scale. The
//! kernel maps the pages around every page touched (64 KiB at a time), so those pages
//! would stay in tether's resident set for its whole life, more than its own memory at
//! a few targets. Once such work is over they are unmapped; the code that keeps running
//! (sockets, timers, the HTTP endpoints) is mapped back on its next use, from the page
//! cache, as after any reclaim.
//!
//! Only read-only mappings of files that hold no private copy of a page are touched: for
//! those, unmapping loses nothing, since every page reads back exactly as it was (this is
//! what the kernel itself does to them under memory pressure). Relocated data
//! (`.data.rel.ro`, made read-only after the loader wrote it) holds private copies and is
//! left alone, as is everything writable or anonymous.

use std::ops::Range;

/// Unmaps the read-only file pages of this process that hold no private data, and
/// returns how many bytes were resident in them. Linux only; elsewhere nothing happens.
pub fn release_file_pages() -> std::io::Result<u64> {
    #[cfg(target_os = "linux")]
    {
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut released = 0;
        for mapping in releasable(&smaps) {
            // SAFETY: the range is a whole mapping of a file, read-only and without a
            // private copy of any page (see `releasable`): MADV_DONTNEED only drops
            // the page table entries, and every page reads back unchanged from the file.
            let dropped = unsafe {
                libc::madvise(
                    mapping.range.start as *mut libc::c_void,
                    mapping.range.end - mapping.range.start,
                    libc::MADV_DONTNEED,
                )
            };
            if dropped == 0 {
                released += mapping.resident;
            }
        }
        Ok(released)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(0)
}

/// Gives back, on a blocking thread, what the work named by `after` left resident and
/// no longer needs: the heap pages it freed (at startup, those of the parsed config
/// file) and the pages of code it ran (see [`release_file_pages`]). Nothing outside a
/// runtime.
pub fn release_in_background(after: &'static str) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn_blocking(move || {
        crate::allocator::release_free_memory();
        match release_file_pages() {
            Ok(bytes) => tracing::debug!(
                after,
                kib = bytes / 1024,
                "released the pages of code no longer running"
            ),
            Err(e) => tracing::debug!(
                after,
                error = %e,
                "cannot release the pages of code no longer running"
            ),
        }
    });
}

/// A mapping whose resident pages can be given back.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    range: Range<usize>,
    /// Bytes resident in it, as `smaps` counted them.
    resident: u64,
}

/// The mappings of an `smaps` text that are safe to unmap page by page: read-only,
/// private, backed by a file still on disk, not locked, with no anonymous (copied on
/// write) page and something resident.
fn releasable(smaps: &str) -> Vec<Mapping> {
    let mut found = Vec::new();
    let mut current: Option<Candidate> = None;
    for line in smaps.lines() {
        if let Some(header) = Header::parse(line) {
            found.extend(current.take().and_then(Candidate::finish));
            current = Some(Candidate {
                range: header.range,
                eligible: header.eligible,
                resident: 0,
                anonymous: None,
                locked: false,
            });
            continue;
        }
        let Some(candidate) = current.as_mut() else {
            continue;
        };
        let mut fields = line.split_whitespace();
        match (
            fields.next(),
            fields.next().and_then(|n| n.parse::<u64>().ok()),
        ) {
            (Some("Rss:"), Some(kib)) => candidate.resident = kib * 1024,
            (Some("Anonymous:"), Some(kib)) => candidate.anonymous = Some(kib),
            (Some("VmFlags:"), _) => candidate.locked = line.split_whitespace().any(|f| f == "lo"),
            _ => {}
        }
    }
    found.extend(current.and_then(Candidate::finish));
    found
}

/// A mapping being read from `smaps`, with what decides whether it can be released.
struct Candidate {
    range: Range<usize>,
    eligible: bool,
    resident: u64,
    /// `None` until its line is read: a mapping whose private pages cannot be counted
    /// is never released.
    anonymous: Option<u64>,
    locked: bool,
}

impl Candidate {
    fn finish(self) -> Option<Mapping> {
        let clean = self.eligible && self.anonymous == Some(0) && !self.locked;
        (clean && self.resident > 0).then_some(Mapping {
            range: self.range,
            resident: self.resident,
        })
    }
}

/// The first line of a mapping in `smaps` (as in `maps`):
/// `start-end perms offset dev inode [path]`.
struct Header {
    range: Range<usize>,
    /// Readable, not writable, private, and a file that still exists.
    eligible: bool,
}

impl Header {
    fn parse(line: &str) -> Option<Header> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let range = usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
        let perms = fields.next()?.as_bytes();
        if perms.len() != 4 {
            return None;
        }
        let _offset = fields.next()?;
        let _device = fields.next()?;
        let inode: u64 = fields.next()?.parse().ok()?;
        let path = fields.collect::<Vec<_>>().join(" ");
        let eligible = perms[0] == b'r'
            && perms[1] == b'-'
            && perms[3] == b'p'
            && inode != 0
            && path.starts_with('/')
            && !path.ends_with("(deleted)");
        Some(Header { range, eligible })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
561534624000-561534880000 r--p 00000000 fe:00 10944988                   /usr/bin/tether
Size:               2416 kB
Rss:                1072 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
561534880000-561534d6b000 r-xp 0025b000 fe:00 10944988                   /usr/bin/tether
Size:               5036 kB
Rss:                3820 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
561534d6b000-561534dbc000 r--p 00745000 fe:00 10944988                   /usr/bin/tether
Size:                324 kB
Rss:                 324 kB
Anonymous:           324 kB
VmFlags: rd mr mw me ac sd
561534dbc000-561534dc1000 rw-p 00795000 fe:00 10944988                   /usr/bin/tether
Size:                 20 kB
Rss:                  20 kB
Anonymous:            12 kB
VmFlags: rd wr mr mw me ac sd
5615728cc000-56157290f000 rw-p 00000000 00:00 0                          [heap]
Size:                268 kB
Rss:                 136 kB
Anonymous:           136 kB
VmFlags: rd wr mr mw me ac sd
7fe27b800000-7fe27b828000 r-xp 00028000 fe:00 1234                       /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                160 kB
Rss:                 152 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo sd
7fe27c000000-7fe27c010000 r-xp 00000000 fe:00 999                        /tmp/old tether (deleted)
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7fe27d000000-7fe27d010000 r--p 00000000 fe:00 998                        /usr/lib/locale/C.utf8/LC_CTYPE
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7fe27e000000-7fe27e004000 r-xp 00000000 00:00 0                          [vdso]
Size:                 16 kB
Rss:                   8 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me de sd
";

    #[test]
    fn only_clean_read_only_file_pages_are_released() {
        let found = releasable(SMAPS);
        assert_eq!(
            found,
            vec![
                Mapping {
                    range: 0x561534624000..0x561534880000,
                    resident: 1072 * 1024,
                },
                Mapping {
                    range: 0x561534880000..0x561534d6b000,
                    resident: 3820 * 1024,
                },
            ],
            "relocated data, writable and anonymous mappings, locked pages, deleted \
             files, mappings with nothing resident and the vdso stay"
        );
    }

    #[test]
    fn a_mapping_whose_private_pages_are_not_counted_is_kept() {
        let smaps = "\
561534880000-561534d6b000 r-xp 0025b000 fe:00 10944988   /usr/bin/tether
Size:               5036 kB
Rss:                3820 kB
VmFlags: rd ex mr mw me sd
";
        assert_eq!(releasable(smaps), Vec::new());
    }

    /// Against this very process: its code pages leave the resident set, and the code
    /// keeps running (this test returns, other tests run on).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_pages_of_this_process_code_leave_its_resident_set_and_the_code_still_runs() {
        let before = file_resident_kib();
        let released = release_file_pages().expect("smaps is readable");
        let after = file_resident_kib();
        assert!(
            released > 0,
            "nothing released (file pages resident: {before} KiB)"
        );
        assert!(
            after < before,
            "file pages resident: {before} KiB before, {after} KiB after releasing {} KiB",
            released / 1024
        );
        let work: u64 = (1..=100u64).map(|n| n * n).sum();
        assert_eq!(work, 338_350);
    }

    fn file_resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("RssFile in /proc/self/status")
    }
}
