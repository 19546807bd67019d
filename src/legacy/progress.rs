//! Progress of an import: on a terminal, a bar per seller being moved and one for the whole run;
//! elsewhere (a CI log, `kubectl logs`), one line per seller as it ends.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::SellerReport;

const OVERALL: &str =
    "{spinner} overall [{bar:30}] {pos}/{len} sellers, {msg} ({elapsed}, ~{eta} left)";
const SELLER: &str = "  {prefix} [{bar:30}] {pos}/{len} rows {msg}";
/// A seller's bar until its rows are read and counted (a count of 0/0 would read as "no rows").
const SELLER_READING: &str = "  {prefix} {spinner} {msg}";

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars on a terminal, lines otherwise.
    Auto,
    /// Nothing (tests, library callers).
    Quiet,
}

/// The bars of one run.
#[derive(Debug)]
pub(super) struct Progress {
    multi: MultiProgress,
    overall: ProgressBar,
    /// Lines instead of bars: standard error is not a terminal.
    lines: bool,
    total: u64,
}

impl Progress {
    /// Progress over `sellers`.
    pub(super) fn new(sellers: u64, mode: ProgressMode) -> Self {
        let target = match mode {
            ProgressMode::Auto => ProgressDrawTarget::stderr(),
            ProgressMode::Quiet => ProgressDrawTarget::hidden(),
        };
        let multi = MultiProgress::with_draw_target(target);
        let lines = mode == ProgressMode::Auto && multi.is_hidden();
        let overall = multi.add(ProgressBar::new(sellers).with_style(style(OVERALL)));
        overall.set_message("0 rows carried");
        overall.enable_steady_tick(Duration::from_millis(200));
        Self {
            multi,
            overall,
            lines,
            total: sellers,
        }
    }

    /// A bar for one seller's rows, shown above the overall bar while the seller is moved.
    pub(super) fn seller(&self, user_id: uuid::Uuid) -> ProgressBar {
        let bar = ProgressBar::new(0).with_style(style(SELLER_READING));
        let bar = self.multi.insert_before(&self.overall, bar);
        bar.set_prefix(user_id.to_string());
        bar.set_message("reading rows");
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// The seller's `rows` are read: its bar counts them as they are written.
    pub(super) fn seller_rows(bar: &ProgressBar, rows: u64) {
        bar.set_length(rows);
        bar.set_style(style(SELLER));
        bar.set_message("");
    }

    /// The seller is done: its bar goes, the overall bar moves, and without a terminal its line is
    /// printed.
    pub(super) fn seller_done(&self, bar: ProgressBar, seller: &SellerReport, rows_so_far: u64) {
        bar.finish_and_clear();
        self.multi.remove(&bar);
        self.overall.inc(1);
        self.overall
            .set_message(format!("{rows_so_far} rows carried"));
        if self.lines {
            eprintln!(
                "[{}/{}] {}",
                self.overall.position(),
                self.total,
                seller.line()
            );
        }
    }

    /// The run is over.
    pub(super) fn finish(&self) {
        self.overall.finish_and_clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    // The templates are the constants above, which a unit test parses.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_templates_parse() {
        for template in [OVERALL, SELLER, SELLER_READING] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
