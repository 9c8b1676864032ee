//! `tally journal check` and `tally journal repair`: the journal as an operator sees it.
//!
//! [`inspect`] reads every segment without changing anything and says, with the same rules as
//! the scan at start ([`segment::judge`]), whether the node would start, and if not where the
//! damage is. [`repair`] drops what the node refuses to guess about: each damaged stretch is
//! cut out, the valid records after it are moved into a segment of their own (the scan takes
//! the gap this leaves), a segment whose header cannot be read is moved aside, and every file
//! it changes is copied first into a backup directory. It says exactly what it dropped: the
//! byte ranges and the sequence numbers of the records that could not be read, which may have
//! been acknowledged.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::JournalError;
use super::segment::{self, Damage, Header, Verdict, decode_header, io_error, judge, walk};
use crate::batch::BatchSeq;

/// One segment as [`inspect`] found it.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    /// The file.
    pub path: PathBuf,
    /// The epoch in its header; `None` when the header cannot be read.
    pub epoch: Option<u64>,
    /// The first LSN, from its name.
    pub first_lsn: u64,
    /// Valid records in it, damage or not.
    pub records: u64,
    /// Its size.
    pub bytes: u64,
    /// The lowest and highest batch of its valid records.
    pub batches: Option<(BatchSeq, BatchSeq)>,
    /// What is wrong with it, if anything, and what the node does about it at start.
    pub problem: Option<String>,
    /// The node refuses to start because of this segment.
    pub refuses_start: bool,
    header: Option<Header>,
    damages: Vec<Damage>,
}

/// What [`inspect`] found in a journal directory.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// The segments, oldest first.
    pub segments: Vec<SegmentReport>,
    /// LSN ranges missing between segments.
    pub gaps: Vec<String>,
}

impl Inspection {
    /// Whether a node would start on this journal (possibly cutting an unfinished write).
    pub fn opens(&self) -> bool {
        !self.segments.iter().any(|s| s.refuses_start)
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let records: u64 = self.segments.iter().map(|s| s.records).sum();
        writeln!(
            f,
            "{} segments, {records} readable records",
            self.segments.len()
        )?;
        for s in &self.segments {
            let name = s.path.file_name().unwrap_or_default().to_string_lossy();
            let epoch = s.epoch.map_or("?".into(), |e| e.to_string());
            let batches = s
                .batches
                .map_or("no records".into(), |(lo, hi)| format!("batches {lo}-{hi}"));
            write!(
                f,
                "  {name}: epoch {epoch}, {} records, {batches}, {} bytes",
                s.records, s.bytes
            )?;
            match &s.problem {
                Some(problem) => writeln!(f, "\n    {problem}")?,
                None => writeln!(f)?,
            }
        }
        for gap in &self.gaps {
            writeln!(f, "  gap: {gap} (tolerated at start)")?;
        }
        if self.opens() {
            write!(f, "the node starts on this journal")
        } else {
            write!(
                f,
                "the node refuses to start on this journal: `tally journal repair` drops the damage and says what it dropped"
            )
        }
    }
}

/// Reads the journal at `dir` and judges it, changing nothing.
pub fn inspect(dir: &Path) -> Result<Inspection, JournalError> {
    let mut inspection = Inspection::default();
    if !dir.is_dir() {
        return Ok(inspection);
    }
    let names = segment::list(dir, false)?;
    let mut expected: Option<u64> = None;
    let mut data = Vec::new();
    for (i, (name_lsn, path)) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        data.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(io_error("read", path))?;
        let mut report = SegmentReport {
            path: path.clone(),
            epoch: None,
            first_lsn: *name_lsn,
            records: 0,
            bytes: data.len() as u64,
            batches: None,
            problem: None,
            refuses_start: false,
            header: None,
            damages: Vec::new(),
        };
        let header = match decode_header(&data) {
            Ok(h) => h,
            Err(reason) if last && segment::is_short_header(&data) => {
                report.problem = Some(format!(
                    "a partial header, removed at start (never held a record): {reason}"
                ));
                inspection.segments.push(report);
                continue;
            }
            Err(reason) => {
                report.problem = Some(format!("unreadable header: {reason}"));
                report.refuses_start = true;
                inspection.segments.push(report);
                expected = None;
                continue;
            }
        };
        report.epoch = Some(header.epoch);
        report.header = Some(header);
        match expected {
            Some(expected) if header.first_lsn > expected => inspection.gaps.push(format!(
                "LSNs {expected} to {} are missing before {}",
                header.first_lsn - 1,
                path.display()
            )),
            Some(expected) if header.first_lsn < expected => {
                report.problem = Some(format!(
                    "starts at LSN {} but the previous segment ends at LSN {}: segments overlap (a copy of another journal?)",
                    header.first_lsn,
                    expected - 1
                ));
                report.refuses_start = true;
                inspection.segments.push(report);
                continue;
            }
            _ => {}
        }
        let mut batches: Option<(BatchSeq, BatchSeq)> = None;
        let mut records = 0;
        let walked = walk(&data, &header, |d, _, _| {
            records += 1;
            let b = d.record.batch;
            batches = Some(batches.map_or((b, b), |(lo, hi)| (lo.min(b), hi.max(b))));
        });
        report.records = records;
        report.batches = batches;
        report.problem = match judge(&walked, header.format, last) {
            Verdict::Whole => None,
            Verdict::Cut { offset, why } => Some(format!(
                "an unfinished write at byte {offset}, cut at start (never acknowledged): {why}"
            )),
            Verdict::Corrupt { offset, reason } => {
                report.refuses_start = true;
                Some(format!("corrupt at byte {offset}: {reason}"))
            }
        };
        report.damages = walked.damages;
        expected = Some(walked.next_lsn);
        inspection.segments.push(report);
    }
    Ok(inspection)
}

/// What [`repair`] did.
#[derive(Debug, Clone, Default)]
pub struct Repaired {
    /// One line per change, saying what was dropped.
    pub actions: Vec<String>,
    /// Where the files it changed were copied first; `None` when nothing needed repair.
    pub backup: Option<PathBuf>,
}

/// Drops the damage that makes the node refuse to start, keeping every readable record, after
/// copying each file it changes into `backup` (created if needed). Damage the node cuts by
/// itself at start is left to it. Run it only while no node uses the directory.
pub fn repair(dir: &Path, backup: &Path) -> Result<Repaired, JournalError> {
    let inspection = inspect(dir)?;
    let mut repaired = Repaired::default();
    for report in inspection.segments.iter().filter(|s| s.refuses_start) {
        if repaired.backup.is_none() {
            fs::create_dir_all(backup).map_err(io_error("create", backup))?;
            repaired.backup = Some(backup.to_owned());
        }
        let name = report.path.file_name().unwrap_or_default();
        fs::copy(&report.path, backup.join(name)).map_err(io_error("copy", &report.path))?;
        match report.header {
            None => {
                fs::remove_file(&report.path).map_err(io_error("remove", &report.path))?;
                repaired.actions.push(format!(
                    "{}: removed (its header cannot be read, so none of its {} bytes can be trusted); the records from LSN {} up to the next segment are lost",
                    report.path.display(),
                    report.bytes,
                    report.first_lsn
                ));
            }
            Some(_) if report.damages.is_empty() => {
                // Its records are whole but overlap the previous segment's.
                fs::remove_file(&report.path).map_err(io_error("remove", &report.path))?;
                repaired.actions.push(format!(
                    "{}: removed (it overlaps the previous segment); its {} records are only in the backup",
                    report.path.display(),
                    report.records
                ));
            }
            Some(header) => split_around_damage(dir, report, &header, &mut repaired.actions)?,
        }
    }
    if repaired.backup.is_some() {
        segment::sync_dir(dir)?;
    }
    Ok(repaired)
}

/// Cuts the segment at its first damage and writes each run of valid records after a damaged
/// stretch into a new segment of the same epoch and format, named for its first LSN.
fn split_around_damage(
    dir: &Path,
    report: &SegmentReport,
    header: &Header,
    actions: &mut Vec<String>,
) -> Result<(), JournalError> {
    let path = &report.path;
    let data = fs::read(path).map_err(io_error("read", path))?;
    let Some(first) = report.damages.first() else {
        return Ok(());
    };
    for (i, damage) in report.damages.iter().enumerate() {
        let lost = match damage.next_lsn {
            Some(next) if next > damage.first_lsn => format!(
                "the records with LSNs {} to {} ({} records) could not be read and are lost",
                damage.first_lsn,
                next - 1,
                next - damage.first_lsn
            ),
            Some(_) => "no whole record is lost".to_owned(),
            None => format!(
                "whatever records from LSN {} to the end of the file it held could not be read and are lost",
                damage.first_lsn
            ),
        };
        actions.push(format!(
            "{}: dropped bytes {} to {} ({}); {lost}",
            path.display(),
            damage.offset,
            damage.end,
            damage.reason
        ));
        // The valid records from this damage's end to the next damage (or the file's end).
        let run_end = report
            .damages
            .get(i + 1)
            .map_or(data.len(), |next| next.offset);
        if let Some(run_lsn) = damage.next_lsn
            && damage.end < run_end
        {
            let head = segment::encode_header_as(header.format, run_lsn, header.epoch);
            let (_, moved) = segment::create_with(dir, run_lsn, &head, &data[damage.end..run_end])?;
            actions.push(format!(
                "{}: the readable records after it, from LSN {run_lsn}, moved to {}",
                path.display(),
                moved.display()
            ));
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open", path))?;
    file.set_len(first.offset as u64)
        .map_err(io_error("truncate", path))?;
    file.sync_all().map_err(io_error("fsync", path))?;
    Ok(())
}
