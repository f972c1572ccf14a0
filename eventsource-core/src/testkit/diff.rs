//! A line diff for the kits' failure messages.

/// The lines of `expected` and `actual` as a diff: unchanged lines indented, lines only
/// expected marked `-`, lines only found marked `+` (a longest common subsequence, so one
/// wrong line among many shows as one `-` and one `+`).
///
/// ```
/// use eventsource_core::testkit::line_diff;
/// let diff = line_diff(&["a", "b", "c"], &["a", "x", "c"]);
/// assert_eq!(diff, "    a\n  - b\n  + x\n    c\n");
/// ```
pub fn line_diff<S: AsRef<str>>(expected: &[S], actual: &[S]) -> String {
    let (n, m) = (expected.len(), actual.len());
    // lcs[i][j]: the longest common subsequence of expected[i..] and actual[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i].as_ref() == actual[j].as_ref() {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i].as_ref() == actual[j].as_ref() {
            out.push_str(&format!("    {}\n", expected[i].as_ref()));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("  - {}\n", expected[i].as_ref()));
            i += 1;
        } else {
            out.push_str(&format!("  + {}\n", actual[j].as_ref()));
            j += 1;
        }
    }
    out
}
