//! Readable differences between two lists of values (events, commands, timers, rows): each
//! value on its own lines in pretty `Debug`, the differing lines marked `-` (expected) and `+`
//! (actual), and the number of the first value that differs.
//!
//! The aggregate kit prints its failures with it; any other assertion over lists of `Debug +
//! PartialEq` values (a process manager's commands, a read model's rows) can too.

use std::fmt::{self, Debug, Display};

/// The difference between an expected and an actual list, ready to print.
///
/// Values are aligned on the longest run they have in common (so one extra event in the middle
/// shows as one `+` block, not as every later event changed); a changed value is shown line by
/// line, with only its differing lines marked.
///
/// ```
/// use eventsource_core::testkit::ListDiff;
///
/// #[derive(Debug, PartialEq)]
/// enum Event { Placed { customer: String }, Confirmed, Cancelled }
///
/// let expected = [Event::Placed { customer: "ada".into() }, Event::Confirmed];
/// let actual = [Event::Placed { customer: "ada".into() }, Event::Cancelled];
/// let diff = ListDiff::new(&expected, &actual);
/// assert_eq!(diff.first_difference(), Some(2));
/// let lines: Vec<String> = diff.to_string().lines().map(String::from).collect();
/// assert_eq!(lines, [
///     "  1  Placed {",
///     "         customer: \"ada\",",
///     "     }",
///     "- 2  Confirmed",
///     "+ 2  Cancelled",
/// ]);
/// assert!(ListDiff::new(&expected, &expected).is_same());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListDiff {
    expected_len: usize,
    actual_len: usize,
    first_difference: Option<usize>,
    lines: Vec<Line>,
}

/// One printed line: its mark, the label in the gutter (a value's number on its first line)
/// and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    mark: Mark,
    label: String,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Same,
    Expected,
    Actual,
}

impl Mark {
    fn as_str(self) -> &'static str {
        match self {
            Self::Same => " ",
            Self::Expected => "-",
            Self::Actual => "+",
        }
    }
}

/// One step of an alignment of two sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `expected[i] == actual[j]`.
    Same(usize, usize),
    /// Only in the expected sequence.
    Removed(usize),
    /// Only in the actual sequence.
    Added(usize),
}

impl ListDiff {
    /// Compares `expected` with `actual`.
    pub fn new<T: Debug + PartialEq>(expected: &[T], actual: &[T]) -> Self {
        let first_difference = expected
            .iter()
            .zip(actual)
            .position(|(e, a)| e != a)
            .or_else(|| (expected.len() != actual.len()).then(|| expected.len().min(actual.len())))
            .map(|index| index + 1);
        let mut lines = Vec::new();
        let steps = align(expected.len(), actual.len(), |i, j| {
            expected[i] == actual[j]
        });
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for step in steps {
            match step {
                Step::Same(i, j) => {
                    flush(expected, actual, &mut removed, &mut added, &mut lines);
                    let label = if i == j {
                        (i + 1).to_string()
                    } else {
                        format!("{}/{}", i + 1, j + 1)
                    };
                    push_value(&mut lines, Mark::Same, label, &pretty(&expected[i]));
                }
                Step::Removed(i) => removed.push(i),
                Step::Added(j) => added.push(j),
            }
        }
        flush(expected, actual, &mut removed, &mut added, &mut lines);
        Self {
            expected_len: expected.len(),
            actual_len: actual.len(),
            first_difference,
            lines,
        }
    }

    /// Whether the two lists are equal.
    pub fn is_same(&self) -> bool {
        self.first_difference.is_none()
    }

    /// The number (from 1) of the first position where the lists differ: the first unequal
    /// pair, or one past the shorter list when one is the start of the other.
    pub fn first_difference(&self) -> Option<usize> {
        self.first_difference
    }

    /// How many values were expected.
    pub fn expected_len(&self) -> usize {
        self.expected_len
    }

    /// How many values there were.
    pub fn actual_len(&self) -> usize {
        self.actual_len
    }
}

impl Display for ListDiff {
    /// One line per line of each value's pretty `Debug`: a mark (`-` only expected, `+` only
    /// actual, a space for both), the value's number on its first line, and the text. An empty
    /// comparison prints `  (none)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lines.is_empty() {
            return writeln!(f, "  (none)");
        }
        let width = self
            .lines
            .iter()
            .map(|l| l.label.chars().count())
            .max()
            .unwrap_or(0);
        for line in &self.lines {
            writeln!(
                f,
                "{} {:<width$}  {}",
                line.mark.as_str(),
                line.label,
                line.text
            )?;
        }
        Ok(())
    }
}

/// A list printed one value per block of lines, numbered from 1, in pretty `Debug` (for
/// failures that show what came instead of what was expected).
///
/// ```
/// use eventsource_core::testkit::Listing;
/// assert_eq!(Listing::new(&["a", "b"]).to_string(), "  1  \"a\"\n  2  \"b\"\n");
/// assert_eq!(Listing::new::<u8>(&[]).to_string(), "  (none)\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing(ListDiff);

impl Listing {
    /// Lists `values`.
    pub fn new<T: Debug>(values: &[T]) -> Self {
        let mut lines = Vec::new();
        for (i, value) in values.iter().enumerate() {
            push_value(&mut lines, Mark::Same, (i + 1).to_string(), &pretty(value));
        }
        Self(ListDiff {
            expected_len: values.len(),
            actual_len: values.len(),
            first_difference: None,
            lines,
        })
    }
}

impl Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Display::fmt(&self.0, f)
    }
}

/// Asserts that two lists are equal, like `assert_eq!`, and on failure panics at the caller's
/// line with a [`ListDiff`]: each value on its own lines, the differing lines marked, the first
/// differing value numbered. For rows of a read model, a process manager's commands, any list.
///
/// ```
/// use eventsource_core::testkit::assert_list_eq;
/// assert_list_eq(&[("ada", 2)], &[("ada", 2)]);
/// let failed = std::panic::catch_unwind(|| assert_list_eq(&[1, 2], &[1, 3])).unwrap_err();
/// let message = failed.downcast_ref::<String>().unwrap();
/// assert!(message.starts_with("the lists differ: expected 2 values, got 2; first difference at value 2\n"));
/// ```
#[track_caller]
pub fn assert_list_eq<T: Debug + PartialEq>(expected: &[T], actual: &[T]) {
    let diff = ListDiff::new(expected, actual);
    if let Some(first) = diff.first_difference() {
        panic!(
            "the lists differ: expected {}, got {}; first difference at value {first}\n(- expected, + actual)\n{}",
            values(expected.len()),
            actual.len(),
            diff.to_string().trim_end()
        );
    }
}

/// `1 value`, `2 values`.
fn values(n: usize) -> String {
    if n == 1 {
        "1 value".to_owned()
    } else {
        format!("{n} values")
    }
}

/// Pretty `Debug` of a value.
pub(crate) fn pretty<T: Debug + ?Sized>(value: &T) -> String {
    format!("{value:#?}")
}

/// Prints the changed values gathered between two common ones: pairs of an expected and an
/// actual value line by line, then the values left over whole.
fn flush<T: Debug>(
    expected: &[T],
    actual: &[T],
    removed: &mut Vec<usize>,
    added: &mut Vec<usize>,
    lines: &mut Vec<Line>,
) {
    let pairs = removed.len().min(added.len());
    for (&i, &j) in removed.iter().zip(added.iter()) {
        let label = if i == j {
            (i + 1).to_string()
        } else {
            format!("{}/{}", i + 1, j + 1)
        };
        push_changed(lines, label, &pretty(&expected[i]), &pretty(&actual[j]));
    }
    for &i in &removed[pairs..] {
        push_value(
            lines,
            Mark::Expected,
            (i + 1).to_string(),
            &pretty(&expected[i]),
        );
    }
    for &j in &added[pairs..] {
        push_value(
            lines,
            Mark::Actual,
            (j + 1).to_string(),
            &pretty(&actual[j]),
        );
    }
    removed.clear();
    added.clear();
}

/// A whole value under one mark, labelled on its first line.
fn push_value(lines: &mut Vec<Line>, mark: Mark, label: String, text: &str) {
    for (n, text) in text.lines().enumerate() {
        lines.push(Line {
            mark,
            label: if n == 0 { label.clone() } else { String::new() },
            text: text.to_owned(),
        });
    }
}

/// A changed value, line by line: common lines unmarked, the others `-` or `+`. The label goes
/// on the first line printed, and again on the first `+` line when the first line changed.
fn push_changed(lines: &mut Vec<Line>, label: String, expected: &str, actual: &str) {
    let old: Vec<&str> = expected.lines().collect();
    let new: Vec<&str> = actual.lines().collect();
    let mut labelled_expected = false;
    let mut labelled_actual = false;
    let mut first = true;
    for step in align(old.len(), new.len(), |i, j| old[i] == new[j]) {
        let (mark, text) = match step {
            Step::Same(i, _) => (Mark::Same, old[i]),
            Step::Removed(i) => (Mark::Expected, old[i]),
            Step::Added(j) => (Mark::Actual, new[j]),
        };
        let labelled = match mark {
            Mark::Same => first,
            Mark::Expected => first && !labelled_expected,
            Mark::Actual => !labelled_actual && (first || labelled_expected),
        };
        if labelled {
            match mark {
                Mark::Same => {
                    labelled_expected = true;
                    labelled_actual = true;
                }
                Mark::Expected => labelled_expected = true,
                Mark::Actual => labelled_actual = true,
            }
        }
        first = false;
        lines.push(Line {
            mark,
            label: if labelled {
                label.clone()
            } else {
                String::new()
            },
            text: text.to_owned(),
        });
    }
}

/// The longest common subsequence alignment of two sequences of lengths `n` and `m`, with
/// removals before additions inside each changed run. Quadratic: meant for test-sized lists.
fn align(n: usize, m: usize, same: impl Fn(usize, usize) -> bool) -> Vec<Step> {
    // lcs[i][j]: length of the longest common subsequence of the suffixes from i and j.
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if same(i, j) {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut steps = Vec::with_capacity(n + m);
    let (mut i, mut j) = (0, 0);
    let mut pending_added = Vec::new();
    while i < n || j < m {
        if i < n && j < m && same(i, j) {
            steps.append(&mut pending_added);
            steps.push(Step::Same(i, j));
            i += 1;
            j += 1;
        } else if j >= m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            steps.push(Step::Removed(i));
            i += 1;
        } else {
            pending_added.push(Step::Added(j));
            j += 1;
        }
    }
    steps.append(&mut pending_added);
    steps
}
